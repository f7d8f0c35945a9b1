"""Per-upload strategy hyperparameters: the upload's overrides, the resolved typed params per
strategy (validated ranges here, server defaults in Settings), and the strategy names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_serializer, model_validator

from adapters_store.module_config import (
    BottleneckConfig,
    DenseKind,
    HamConfig,
    LoraConfig,
    ModuleConfig,
    ModuleKind,
    SparseConfig,
    SparseTarget,
)

if TYPE_CHECKING:
    from adapters_store.settings import Settings

# The one list of strategy names: Settings, the API, the CLI and the trainer all read it.
# In reporting order: the baselines, then the searches, then the upper bound.
StrategyName = Literal["seqft", "per_task", "sparse", "sparse_merged", "ham", "acm", "safm",
                       "multitask"]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)
PlainStrategy = Literal["per_task", "seqft", "multitask"]
SearchStrategy = Literal["safm", "acm"]
SparseStrategy = Literal["sparse", "sparse_merged"]
PLAIN_STRATEGIES: tuple[str, ...] = get_args(PlainStrategy)
SPARSE_STRATEGIES: tuple[str, ...] = get_args(SparseStrategy)
LoraTarget = Literal["query", "key", "value"]
# The task-agnostic HAM route (every group at once, one head over every HAM task's labels,
# named "task/label"): reserved, no upload or merge may claim the id.
HAM_ALL_TASK = "ham-all"
RESERVED_TASK_IDS = frozenset({HAM_ALL_TASK})
# How a sparse mask is chosen: |∂L/∂M| with M over W0+ΔW (SNIP on the effective weights), the
# same signed (mttl's code), or |W0+ΔW| (magnitude).
MaskCriterion = Literal["snip", "snip_signed", "magnitude"]
# HAM's task-to-group cosine: over all layers flattened together, or the mean per layer.
GroupSimilarity = Literal["flat", "per_layer"]
# SAFM's decision stage: the paper's logit search at its fixed rate ("paper"), the same search
# with the logits' rate scaled so that rate x search steps matches the paper's ~2k x 1.75e-4
# ("budget"), or a held-out comparison of each layer's candidates after a sampled-path warm-up
# ("validation").
DecisionMode = Literal["paper", "budget", "validation"]
# Before a publish, every earlier task whose route a job changes is evaluated before and after:
# "fallback" keeps a failing task's modules and head as they were (the new task keeps its tuned
# copies as modules of its own), "fail" fails the job with the bank unchanged, "off" skips it.
GateMode = Literal["fallback", "fail", "off"]


class StrategyOverrides(BaseModel):
    """What an upload may override; ``None`` means the server default for the chosen strategy."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1, le=100, description="(tuning) epochs")
    batch_size: int | None = Field(None, ge=1, le=1024)
    learning_rate: float | None = Field(None, gt=0, le=1.0)
    head_learning_rate: float | None = Field(None, gt=0, le=1.0)
    module_kind: DenseKind | None = None
    bottleneck_size: int | None = Field(None, ge=1, le=4096)
    lora_rank: int | None = Field(None, ge=1, le=1024)
    warmup_epochs: int | None = Field(None, ge=0, le=50, description="decision: modules only")
    search_epochs: int | None = Field(None, ge=0, le=50, description="decision: logits too")
    alpha: float | None = Field(None, ge=-10, le=10, description="initial logit of empty")
    beta: float | None = Field(None, ge=0, le=10, description="reuse +β, new −β")
    entropy_coef: float | None = Field(None, ge=0, le=10)
    search_learning_rate: float | None = Field(None, gt=0, le=1.0)
    layer_loss_weight: float | None = Field(None, ge=0, le=10)
    replay_ratio: float | None = Field(None, ge=0, le=10)
    forced_layers: list[int] | None = Field(None, max_length=256)
    keep_ratio: float | None = Field(None, gt=0, le=1, description="sparse: kept fraction")
    mask_update_interval: int | None = Field(None, ge=1, le=1_000_000,
                                             description="sparse: steps between mask updates")
    sparse_targets: list[SparseTarget] | None = Field(None, min_length=1, max_length=6)
    mask_criterion: MaskCriterion | None = None
    max_groups: int | None = Field(None, ge=1, le=64, description="ham: G_max")
    group_threshold: float | None = Field(None, ge=-1, le=1,
                                          description="ham: τ, open a new group below it")
    group_similarity: GroupSimilarity | None = None
    prune_keep_ratio: float | None = Field(None, gt=0, le=1,
                                           description="ham: kept fraction of B and A")
    rank_cap: int | None = Field(None, ge=0, le=4096,
                                 description="ham: SVD cap on a group's rank (0: none)")
    decision: DecisionMode | None = None
    decision_tolerance: float | None = Field(
        None, ge=0, le=10, description="validation decision: nats of held-out loss a cheaper "
        "candidate may add over the all-new route")
    replay_adaptive: bool | None = Field(
        None, description="replay each shared task in proportion to how much of its path is "
        "reused (replay_ratio is the floor, the new task's row count the cap)")
    regression_gate: GateMode | None = None
    regression_tolerance: float | None = Field(
        None, ge=0, le=1, description="largest allowed held-out drop (fraction); default "
        "max(0.01, 2 binomial standard errors)")

    @model_validator(mode="after")
    def _layers_non_negative(self) -> StrategyOverrides:
        if self.forced_layers is not None and any(i < 0 for i in self.forced_layers):
            raise ValueError("forced_layers must be layer indexes >= 0")
        return self

    @model_serializer(mode="wrap")
    def _given_only(self, handler: Any) -> dict[str, Any]:
        # A job shows what the upload gave, not sixteen nulls.
        return {k: v for k, v in handler(self).items() if v is not None}

    def given(self) -> set[str]:
        return {k for k, v in self if v is not None}


class _Params(BaseModel):
    """Resolved hyperparameters every strategy has: the module it trains and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    module_kind: ModuleKind
    epochs: int = Field(ge=1, le=100)
    batch_size: int = Field(ge=1, le=1024)
    learning_rate: float = Field(gt=0, le=1.0)
    head_learning_rate: float = Field(gt=0, le=1.0)
    # Older manifests predate these two being recorded: their defaults are what ran then.
    weight_decay: float = Field(0.01, ge=0, le=1.0)
    bottleneck_size: int = Field(ge=1, le=4096)
    lora_rank: int = Field(ge=1, le=1024)
    lora_alpha: float = Field(gt=0)
    lora_targets: list[LoraTarget] = Field(min_length=1)
    # Older manifests predate the gate: "off" is what ran then.
    regression_gate: GateMode = "off"
    regression_tolerance: float | None = Field(None, ge=0, le=1)

    def module_config(self, hidden: int, intermediate: int) -> ModuleConfig:
        if self.module_kind == "bottleneck":
            return BottleneckConfig(hidden=hidden, size=self.bottleneck_size)
        return LoraConfig(hidden=hidden, rank=self.lora_rank, alpha=self.lora_alpha,
                          targets=sorted(self.lora_targets))


class _DenseParams(_Params):
    @model_validator(mode="after")
    def _dense_kind(self) -> _DenseParams:
        if self.module_kind == "sparse":
            raise ValueError("sparse modules are trained by strategy sparse or sparse_merged")
        return self


class PlainParams(_DenseParams):
    """per_task, seqft, multitask: one plain route trained, no search."""

    strategy: PlainStrategy


class SearchParams(_DenseParams):
    """safm and its acm ablation: decision stage (warm-up, search) then replay-tuned route."""

    strategy: SearchStrategy
    warmup_epochs: int = Field(ge=0, le=50)
    search_epochs: int = Field(ge=0, le=50)
    alpha: float = Field(ge=-10, le=10)
    beta: float = Field(ge=0, le=10)
    entropy_coef: float = Field(ge=0, le=10)
    search_learning_rate: float = Field(gt=0, le=1.0)
    layer_loss_weight: float = Field(ge=0, le=10)
    replay_ratio: float = Field(ge=0, le=10)
    forced_layers: list[int] = Field(max_length=256)
    # Older manifests predate these: the paper's search with fixed replay is what ran then.
    decision: DecisionMode = "paper"
    decision_tolerance: float = Field(0.02, ge=0, le=10)
    replay_adaptive: bool = False

    @model_validator(mode="after")
    def _rules(self) -> SearchParams:
        if self.strategy == "acm" and self.layer_loss_weight != 0.0:
            raise ValueError("acm has no layer-wise loss; layer_loss_weight must be 0")
        if self.strategy == "safm" and not self.alpha > self.beta > 0:
            raise ValueError("safm needs alpha > beta > 0 (empty first, then reuse, then new)")
        if any(i < 0 for i in self.forced_layers):
            raise ValueError("forced_layers must be layer indexes >= 0")
        return self


class SparseParams(_Params):
    """sparse (one new sparse module per layer per task) and sparse_merged (the same, then every
    sparse_merged task so far merged into one set with uniform_sparse), seed 002."""

    strategy: SparseStrategy
    keep_ratio: float = Field(gt=0, le=1)
    mask_update_interval: int = Field(ge=1, le=1_000_000)
    sparse_targets: list[SparseTarget] = Field(min_length=1, max_length=6)
    mask_criterion: MaskCriterion

    @model_validator(mode="after")
    def _sparse_kind(self) -> SparseParams:
        if self.module_kind != "sparse":
            raise ValueError(f"strategy {self.strategy} trains sparse modules only")
        if len(set(self.sparse_targets)) != len(self.sparse_targets):
            raise ValueError("sparse_targets lists a target twice")
        return self

    def module_config(self, hidden: int, intermediate: int) -> ModuleConfig:
        return SparseConfig(hidden=hidden, intermediate=intermediate, keep_ratio=self.keep_ratio,
                            targets=sorted(self.sparse_targets))


class HamParams(_Params):
    """HAM (seed 001): a LoRA with an importance gain per task, trained beside the frozen group
    adapters (their gains train), then grouped by cosine similarity and merged into its group."""

    strategy: Literal["ham"]
    max_groups: int = Field(ge=1, le=64)
    group_threshold: float = Field(ge=-1, le=1)
    group_similarity: GroupSimilarity
    prune_keep_ratio: float = Field(gt=0, le=1)
    rank_cap: int = Field(ge=0, le=4096)
    replay_ratio: float = Field(ge=0, le=10)

    @model_validator(mode="after")
    def _ham_kind(self) -> HamParams:
        if self.module_kind != "ham":
            raise ValueError("strategy ham trains ham modules only")
        if 0 < self.rank_cap < self.lora_rank:
            raise ValueError("rank_cap must be 0 (none) or at least lora_rank")
        return self

    def module_config(self, hidden: int, intermediate: int) -> ModuleConfig:
        return HamConfig(hidden=hidden, rank=self.lora_rank, alpha=self.lora_alpha,
                         targets=sorted(self.lora_targets))


AnyParams = PlainParams | SearchParams | SparseParams | HamParams
TrainParams = Annotated[AnyParams, Field(discriminator="strategy")]
_TRAIN_PARAMS: TypeAdapter[AnyParams] = TypeAdapter(TrainParams)
_SEARCH_ONLY = set(SearchParams.model_fields) - set(PlainParams.model_fields)
_SPARSE_ONLY = set(SparseParams.model_fields) - set(PlainParams.model_fields)
_HAM_ONLY = set(HamParams.model_fields) - set(PlainParams.model_fields) - {"replay_ratio"}
# What each strategy family does not take (module_kind: sparse strategies train sparse only).
NOT_FOR: dict[str, set[str]]
NOT_FOR = {**{s: _SEARCH_ONLY | _SPARSE_ONLY | _HAM_ONLY for s in PLAIN_STRATEGIES},
            **{s: _SPARSE_ONLY | _HAM_ONLY for s in get_args(SearchStrategy)},
            **{s: _SEARCH_ONLY | _HAM_ONLY | {"module_kind", "bottleneck_size", "lora_rank"}
               for s in SPARSE_STRATEGIES},
            "ham": (_SEARCH_ONLY - {"replay_ratio"}) | _SPARSE_ONLY
            | {"module_kind", "bottleneck_size"}}


def strategies_taking(name: str) -> list[str]:
    """The strategies an upload hyperparameter applies to, in reporting order."""
    return [s for s in STRATEGY_NAMES if name not in NOT_FOR[s]]


def parse_params(data: object) -> AnyParams:
    return _TRAIN_PARAMS.validate_python(data)


def resolve(strategy: str, overrides: StrategyOverrides, settings: Settings,
            num_layers: int) -> AnyParams:
    """Server defaults for ``strategy`` with the upload's overrides applied and checked; raises
    ValueError (pydantic's ValidationError is one) naming what is wrong."""
    if strategy not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {list(STRATEGY_NAMES)}")
    given = overrides.model_dump()
    unknown = sorted(NOT_FOR[strategy] & set(given))
    if unknown:
        raise ValueError(f"{unknown} do not apply to strategy {strategy!r}")
    base: dict[str, Any] = {
        "strategy": strategy, "module_kind": settings.module_kind,
        "batch_size": settings.batch_size, "head_learning_rate": settings.head_learning_rate,
        "weight_decay": settings.weight_decay, "bottleneck_size": settings.bottleneck_size,
        "lora_rank": settings.lora_rank, "lora_alpha": settings.lora_alpha,
        "lora_targets": sorted(settings.lora_targets),
        # seqft is the forgetting baseline: a gate would turn it into per_task.
        "regression_gate": "off" if strategy == "seqft" else settings.regression_gate,
        "regression_tolerance": settings.regression_tolerance,
    }
    if strategy in PLAIN_STRATEGIES:
        base |= {"epochs": settings.epochs, "learning_rate": settings.learning_rate}
    elif strategy == "ham":
        base |= {"module_kind": "ham", "epochs": settings.epochs,
                 "learning_rate": settings.learning_rate,
                 "max_groups": settings.ham_max_groups,
                 "group_threshold": settings.ham_group_threshold,
                 "group_similarity": settings.ham_group_similarity,
                 "prune_keep_ratio": settings.ham_prune_keep_ratio,
                 "rank_cap": settings.ham_rank_cap, "replay_ratio": settings.ham_replay_ratio}
    elif strategy in SPARSE_STRATEGIES:
        # weight_decay 0 as in mttl's sparse config: decay would pull ΔW's kept entries to W0.
        base |= {"module_kind": "sparse", "epochs": settings.epochs, "weight_decay": 0.0,
                 "learning_rate": settings.sparse_learning_rate,
                 "keep_ratio": settings.sparse_keep_ratio,
                 "mask_update_interval": settings.sparse_mask_update_interval,
                 "sparse_targets": list(settings.sparse_targets),
                 "mask_criterion": settings.sparse_mask_criterion}
    else:
        forced = settings.safm_forced_layers
        base |= {
            "epochs": settings.safm_epochs, "learning_rate": settings.safm_learning_rate,
            "warmup_epochs": settings.safm_warmup_epochs,
            "search_epochs": settings.safm_search_epochs,
            "alpha": settings.safm_alpha, "beta": settings.safm_beta,
            "entropy_coef": settings.safm_entropy_coef,
            "search_learning_rate": settings.safm_search_learning_rate
            or settings.safm_learning_rate,
            # ACM has no empty candidate and no layer-wise loss (the paper's ablation).
            "layer_loss_weight": settings.safm_layer_loss_weight if strategy == "safm" else 0.0,
            "replay_ratio": settings.safm_replay_ratio,
            "forced_layers": forced if forced is not None else [(num_layers - 1) // 2],
            "decision": settings.safm_decision,
            "decision_tolerance": settings.safm_decision_tolerance,
            "replay_adaptive": settings.safm_replay_adaptive,
        }
    merged = base | given
    if "forced_layers" in merged:
        bad = [i for i in merged["forced_layers"] if i >= num_layers]
        if bad:
            raise ValueError(f"forced_layers {bad} out of range for a {num_layers}-layer base")
        merged["forced_layers"] = sorted(set(merged["forced_layers"]))
    return parse_params(merged)
