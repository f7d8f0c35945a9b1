"""The routed encoder: frozen base with routed sites, mean pooling and per-task heads."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from worker.base_model import BaseEncoder
from worker.routing import RoutedLinear, RoutingLike, RoutingSlot


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> nn.Linear:
    parent_path, _, attr = dotted.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


class RoutedEncoder(nn.Module):
    """Runs one forward for a batch whose rows may each follow a different route."""

    def __init__(self, base: BaseEncoder) -> None:
        super().__init__()
        self.base = base
        self.encoder = base.model
        self.slot = RoutingSlot()
        self.num_layers = base.info.num_layers
        family = base.family
        by_path: dict[str, list[tuple[str, str]]] = {}
        for part, site in family.sites.items():
            by_path.setdefault(site.path, []).append((part, site.mode))
        for layer_idx, layer in enumerate(self.encoder.get_submodule(family.layers)):
            for path, parts in by_path.items():
                linear = layer.get_submodule(path)
                if isinstance(linear, RoutedLinear):
                    continue
                _replace(layer, path, RoutedLinear(linear, self.slot, layer_idx, parts))

    @contextmanager
    def routed(self, routing: RoutingLike | None):
        previous, self.slot.current = self.slot.current, routing
        try:
            yield
        finally:
            self.slot.current = previous

    def site_linear(self, layer: int, part: str) -> nn.Linear:
        """The frozen base Linear that ``part`` of ``layer`` wraps."""
        site = self.base.family.sites[part]
        layers = self.encoder.get_submodule(self.base.family.layers)
        routed = layers[layer].get_submodule(site.path)
        return routed.base if isinstance(routed, RoutedLinear) else routed

    @property
    def intermediate_size(self) -> int:
        return self.site_linear(0, "ffn_in").out_features

    def embed(self, batch: dict[str, torch.Tensor], routing: RoutingLike | None) -> torch.Tensor:
        """Mean-pooled last hidden state (sentence-transformers' pooling for MiniLM)."""
        with self.routed(routing):
            hidden = self.encoder(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def embed_with_layers(self, batch: dict[str, torch.Tensor], routing: RoutingLike | None
                          ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Pooled output plus every block boundary: states[l] enters layer l, states[l+1] leaves."""
        with self.routed(routing):
            out = self.encoder(**batch, output_hidden_states=True)
        return mean_pool(out.last_hidden_state, batch["attention_mask"]), out.hidden_states


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
