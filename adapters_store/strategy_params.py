"""Per-upload strategy hyperparameters: validated ranges here, server defaults in Settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters_store.records import ModuleKind
from adapters_store.settings import Settings

StrategyName = Literal["safm", "acm", "per_task", "seqft", "multitask"]
STRATEGY_NAMES: tuple[str, ...] = ("safm", "acm", "per_task", "seqft", "multitask")
# Strategies that train one plain route (no search): they share per_task's epochs and lr.
PLAIN_STRATEGIES = ("per_task", "seqft", "multitask")


class StrategyParams(BaseModel):
    """What an upload may override; ``None`` means the server default for the chosen strategy."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1, le=100, description="(tuning) epochs")
    batch_size: int | None = Field(None, ge=1, le=1024)
    learning_rate: float | None = Field(None, gt=0, le=1.0)
    head_learning_rate: float | None = Field(None, gt=0, le=1.0)
    module_kind: ModuleKind | None = None
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

    @model_validator(mode="after")
    def _layers_non_negative(self) -> StrategyParams:
        if self.forced_layers is not None and any(i < 0 for i in self.forced_layers):
            raise ValueError("forced_layers must be layer indexes >= 0")
        return self

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def resolve(strategy: str, overrides: dict[str, Any], settings: Settings,
            num_layers: int) -> dict[str, Any]:
    """Server defaults for ``strategy`` with the upload's overrides applied and checked."""
    given = StrategyParams.model_validate(overrides).overrides()
    base: dict[str, Any] = {
        "module_kind": settings.module_kind, "batch_size": settings.batch_size,
        "head_learning_rate": settings.head_learning_rate,
        "bottleneck_size": settings.bottleneck_size, "lora_rank": settings.lora_rank,
        "lora_alpha": settings.lora_alpha, "lora_targets": sorted(settings.lora_targets),
    }
    if strategy in PLAIN_STRATEGIES:
        base |= {"epochs": settings.epochs, "learning_rate": settings.learning_rate}
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
        }
    unknown = set(given) - set(base)
    if unknown:
        raise ValueError(f"{sorted(unknown)} do not apply to strategy {strategy!r}")
    params = base | given
    if strategy == "acm" and params["layer_loss_weight"] != 0.0:
        raise ValueError("acm has no layer-wise loss; layer_loss_weight must be 0")
    if strategy == "safm" and not params["alpha"] > params["beta"] > 0:
        raise ValueError("safm needs alpha > beta > 0 (empty first, then reuse, then new)")
    bad = [i for i in params.get("forced_layers", []) if i >= num_layers]
    if bad:
        raise ValueError(f"forced_layers {bad} out of range for a {num_layers}-layer base")
    params["forced_layers"] = sorted(set(params.get("forced_layers", []))) or []
    if strategy in PLAIN_STRATEGIES:
        params.pop("forced_layers")
    return {"strategy": strategy, **params}
