"""Typed configuration per adapter module kind (what a module's tensors need to be rebuilt)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ModuleKind = Literal["bottleneck", "lora"]
# Site names a module may target; each model family maps them to its own sublayers.
AdapterSite = Literal["attn", "ffn", "query", "key", "value"]
LORA_SITES: tuple[str, ...] = ("query", "key", "value")


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


ModuleConfig = BottleneckConfig | LoraConfig
CONFIG_TYPES: dict[str, type[BottleneckConfig] | type[LoraConfig]] = {
    "bottleneck": BottleneckConfig, "lora": LoraConfig}


def config_kind(config: ModuleConfig) -> ModuleKind:
    return "bottleneck" if isinstance(config, BottleneckConfig) else "lora"
