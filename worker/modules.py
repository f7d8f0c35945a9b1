"""Adapter modules (bottleneck, LoRA): their parts, parameters, serialisation and content ids."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from adapters_store.records import ModuleKind

# Where each part plugs into a BERT layer; "post" transforms a sublayer's output (Houlsby),
# "parallel" adds a low-rank delta computed from the projection's input (LoRA).
POST = "post"
PARALLEL = "parallel"
BERT_SITES: dict[str, tuple[str, str]] = {
    "attn": ("attention.output.dense", POST),
    "ffn": ("output.dense", POST),
    "query": ("attention.self.query", PARALLEL),
    "key": ("attention.self.key", PARALLEL),
    "value": ("attention.self.value", PARALLEL),
}


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

    def __init__(self, kind: ModuleKind, layer: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.kind = kind
        self.layer = layer
        self.config = dict(config)
        hidden = int(config["hidden"])
        parts: dict[str, nn.Module] = {}
        if kind == "bottleneck":
            for name in ("attn", "ffn"):
                parts[name] = BottleneckPart(hidden, int(config["size"]))
        elif kind == "lora":
            for name in config["targets"]:
                if name not in ("query", "key", "value"):
                    raise ValueError(f"unsupported LoRA target {name!r}")
                parts[name] = LoraPart(hidden, hidden, int(config["rank"]), float(config["alpha"]))
        else:
            raise ValueError(f"unknown module kind {kind!r}")
        self.parts = nn.ModuleDict(parts)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", torch.float32).contiguous()
                for k, v in self.state_dict().items()}

    def content_id(self) -> str:
        """sha256 over the spec and each tensor's name, shape and bytes: same content, same id."""
        h = hashlib.sha256()
        spec = {"kind": self.kind, "layer": self.layer, "config": self.config}
        h.update(json.dumps(spec, sort_keys=True).encode())
        for name, t in sorted(self.tensors().items()):
            h.update(f"\0{name}\0{tuple(t.shape)}\0".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        return st_save(self.tensors(), metadata={"kind": self.kind, "layer": str(self.layer)})

    @classmethod
    def from_bytes(cls, kind: ModuleKind, layer: int, config: dict[str, Any],
                   data: bytes) -> AdapterModule:
        module = cls(kind, layer, config)
        module.load_state_dict(st_load(data), strict=True)
        return module


def module_config(kind: ModuleKind, hidden: int, *, size: int, rank: int, alpha: float,
                  targets: list[str]) -> dict[str, Any]:
    if kind == "bottleneck":
        return {"hidden": hidden, "size": size, "act": "swish"}
    return {"hidden": hidden, "rank": rank, "alpha": alpha, "targets": sorted(targets)}


def head_to_bytes(head: nn.Linear) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()})


def head_from_bytes(data: bytes) -> nn.Linear:
    tensors = st_load(data)
    out_features, in_features = tensors["weight"].shape
    head = nn.Linear(in_features, out_features)
    head.load_state_dict(tensors, strict=True)
    return head
