"""Row routing: which module each row of a batch takes at each layer, applied in one forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from worker.model_families import PARALLEL
from worker.modules import AdapterModule


@dataclass(frozen=True)
class Group:
    """Rows (None = all rows) that take ``module`` at one layer."""

    module: AdapterModule
    rows: torch.Tensor | None


class Routing:
    """A per-forward assignment of rows to modules, one group list per layer.

    Built from each row's route (module or None per layer); rows are grouped by module so each
    module runs once per layer on exactly its rows, and rows with an empty slot pass through.
    """

    def __init__(self, groups: list[list[Group]]) -> None:
        self.groups = groups

    @classmethod
    def from_rows(cls, row_routes: list[list[AdapterModule | None]], num_layers: int,
                  device: torch.device) -> Routing:
        n = len(row_routes)
        per_layer: list[list[Group]] = []
        for layer in range(num_layers):
            by_module: dict[AdapterModule, list[int]] = {}
            for row, route in enumerate(row_routes):
                module = route[layer]
                if module is not None:
                    by_module.setdefault(module, []).append(row)
            groups = []
            for module, rows in by_module.items():
                idx = None if len(rows) == n else torch.tensor(rows, device=device)
                groups.append(Group(module, idx))
            per_layer.append(groups)
        return cls(per_layer)

    @classmethod
    def uniform(cls, route: list[AdapterModule | None]) -> Routing:
        """Every row takes the same route (training on one task)."""
        return cls([[] if m is None else [Group(m, None)] for m in route])

    def apply(self, layer: int, part: str, mode: str, x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor:
        for group in self.groups[layer]:
            fn = group.module.parts[part] if part in group.module.parts else None
            if fn is None:
                continue
            if group.rows is None:
                y = y + fn(x) if mode == PARALLEL else fn(y)
            elif mode == PARALLEL:
                y = y.index_add(0, group.rows, fn(x.index_select(0, group.rows)))
            else:
                y = y.index_copy(0, group.rows, fn(y.index_select(0, group.rows)))
        return y


class RoutingLike(Protocol):
    """Anything that can transform a routed site's output: row routing or a search mixture."""

    def apply(self, layer: int, part: str, mode: str, x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor: ...


class RoutingSlot:
    """The routing of the forward in progress; None means the bare base model."""

    def __init__(self) -> None:
        self.current: RoutingLike | None = None


class RoutedLinear(nn.Module):
    """A frozen base Linear whose output is passed through the routed modules' part for its site."""

    def __init__(self, base: nn.Linear, slot: RoutingSlot, layer: int, part: str,
                 mode: str) -> None:
        super().__init__()
        self.base = base
        self.slot = slot
        self.layer = layer
        self.part = part
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        routing = self.slot.current
        if routing is None:
            return y
        return routing.apply(self.layer, self.part, self.mode, x, y)
