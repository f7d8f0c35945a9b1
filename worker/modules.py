"""Adapter modules (bottleneck, LoRA): their parts, parameters, serialisation and content ids."""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from adapters_store.module_config import (
    BottleneckConfig,
    LoraConfig,
    ModuleConfig,
    ModuleKind,
    config_kind,
)


class BottleneckPart(nn.Module):
    """Houlsby adapter a(y) = y + up(swish(down(y))), applied to a sublayer's output."""

    def __init__(self, hidden: int, size: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        self.act = nn.SiLU()
        # Near-identity start so a fresh module barely perturbs the frozen base (Houlsby et al.).
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.normal_(self.up.weight, std=1e-2)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(self.act(self.down(y)))


class LoraPart(nn.Module):
    """LoRA delta B·A·x·(alpha/r) on one projection (peft's initialisation: A random, B zero)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


class AdapterModule(nn.Module):
    """One module at one layer: a named part per site (attn/ffn or LoRA targets)."""

    def __init__(self, layer: int, config: ModuleConfig) -> None:
        super().__init__()
        self.layer = layer
        self.config = config
        parts: dict[str, nn.Module] = {}
        if isinstance(config, BottleneckConfig):
            for name in ("attn", "ffn"):
                parts[name] = BottleneckPart(config.hidden, config.size)
        elif isinstance(config, LoraConfig):
            for name in config.targets:
                parts[name] = LoraPart(config.hidden, config.hidden, config.rank, config.alpha)
        else:
            raise TypeError(f"unknown module config {type(config).__name__}")
        self.parts = nn.ModuleDict(parts)

    @property
    def kind(self) -> ModuleKind:
        return config_kind(self.config)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", torch.float32).contiguous()
                for k, v in self.state_dict().items()}

    def content_id(self) -> str:
        """sha256 over the spec and each tensor's name, shape and bytes: same content, same id."""
        h = hashlib.sha256()
        spec = {"kind": self.kind, "layer": self.layer, "config": self.config.model_dump()}
        h.update(json.dumps(spec, sort_keys=True).encode())
        for name, t in sorted(self.tensors().items()):
            h.update(f"\0{name}\0{tuple(t.shape)}\0".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        # One metadata key: safetensors writes several in hash order, so the same module would
        # get different bytes (and blob digests) in different processes.
        spec = json.dumps({"kind": self.kind, "layer": self.layer}, sort_keys=True)
        return st_save(self.tensors(), metadata={"adapterd": spec})

    @classmethod
    def from_bytes(cls, layer: int, config: ModuleConfig, data: bytes) -> AdapterModule:
        module = cls(layer, config)
        module.load_state_dict(st_load(data), strict=True)
        return module


def head_to_bytes(head: nn.Linear) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()})


def head_from_bytes(data: bytes) -> nn.Linear:
    tensors = st_load(data)
    out_features, in_features = tensors["weight"].shape
    head = nn.Linear(in_features, out_features)
    head.load_state_dict(tensors, strict=True)
    return head
