"""Typed configuration per adapter module kind (what a module's tensors need to be rebuilt)."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

ModuleKind = Literal["bottleneck", "lora", "sparse", "ham"]
# The kinds the plain and search strategies train; sparse modules have their own strategies.
DenseKind = Literal["bottleneck", "lora"]
# Site names a module may target; each model family maps them to its own sublayers.
AdapterSite = Literal["attn", "ffn", "query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
LORA_SITES: tuple[str, ...] = ("query", "key", "value")
# Projections a sparse ΔW may target: the attention projections and the FFN's two matrices.
SparseTarget = Literal["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
SPARSE_TARGETS: tuple[str, ...] = get_args(SparseTarget)


class _Config(BaseModel):
    # Frozen and exact: the dump is hashed into the module's content id, so it must not drift.
    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(ge=1)


class BottleneckConfig(_Config):
    """Houlsby bottleneck after the attention output and the FFN output of one layer."""

    size: int = Field(ge=1, le=4096)
    act: Literal["swish"] = "swish"


class LoraConfig(_Config):
    """LoRA on some of the layer's attention projections."""

    rank: int = Field(ge=1, le=1024)
    alpha: float = Field(gt=0)
    targets: Annotated[list[Literal["query", "key", "value"]], Field(min_length=1)]


class HamConfig(LoraConfig):
    """A HAM group adapter (seed 001) at one layer: LoRA factors plus a learnable gain α per
    target, y += α · (alpha/rank) · B·A·x. A task's own adapter before consolidation has the same
    shape (its gain is the task's importance α_i)."""


class SparseConfig(_Config):
    """A masked ΔW on some of the layer's projections (seed 002): only the kept entries are
    stored. ``keep_ratio`` is the fraction trained per matrix; a merged module may hold more."""

    intermediate: int = Field(ge=1, description="FFN width: the ffn_in/ffn_out shapes")
    keep_ratio: float = Field(gt=0, le=1)
    targets: Annotated[list[SparseTarget], Field(min_length=1)]

    def shape(self, target: str) -> tuple[int, int]:
        """(out_features, in_features) of ``target``'s projection."""
        if target == "ffn_in":
            return self.intermediate, self.hidden
        if target == "ffn_out":
            return self.hidden, self.intermediate
        return self.hidden, self.hidden

    def dense_size(self) -> int:
        return sum(o * i for o, i in map(self.shape, self.targets))


ModuleConfig = BottleneckConfig | HamConfig | LoraConfig | SparseConfig
CONFIG_TYPES: dict[str, type[ModuleConfig]] = {
    "bottleneck": BottleneckConfig, "lora": LoraConfig, "sparse": SparseConfig,
    "ham": HamConfig}


def config_kind(config: ModuleConfig) -> ModuleKind:
    if isinstance(config, SparseConfig):
        return "sparse"
    if isinstance(config, HamConfig):
        return "ham"
    return "bottleneck" if isinstance(config, BottleneckConfig) else "lora"
