"""Scoring a route and head on labelled rows: predictions, accuracy, the majority baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from adapters_store.datasets import Row
from adapters_store.streams import InputItem
from worker.modules import AdapterModule
from worker.routed_model import RoutedEncoder
from worker.routing import Routing


def items_of(rows: Sequence[Row]) -> list[InputItem]:
    return [InputItem(text=r.text, text_pair=r.text_pair) for r in rows]


@torch.no_grad()
def route_features(model: RoutedEncoder, route: Sequence[AdapterModule | None],
                   rows: Sequence[Row], device: torch.device, batch_size: int = 64
                   ) -> torch.Tensor:
    """The pooled sentence vector of each row along one route (rows × hidden)."""
    routing = Routing.uniform(list(route))
    out = [model.embed(model.base.tokenize(items_of(rows[start:start + batch_size]), device),
                       routing) for start in range(0, len(rows), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.base.info.hidden_size, device=device)


@torch.no_grad()
def route_logits(model: RoutedEncoder, route: Sequence[AdapterModule | None], head: nn.Linear,
                 rows: Sequence[Row], batch_size: int = 64) -> torch.Tensor:
    """The head's logits for each row along one route (rows × classes)."""
    device = next(head.parameters()).device
    return head(route_features(model, route, rows, device, batch_size))


def predict_route(model: RoutedEncoder, route: Sequence[AdapterModule | None], head: nn.Linear,
                  rows: Sequence[Row], batch_size: int = 64) -> list[int]:
    """Argmax class index for each row along one route."""
    return route_logits(model, route, head, rows, batch_size).argmax(-1).tolist()


def mean_loss(model: RoutedEncoder, route: Sequence[AdapterModule | None], head: nn.Linear,
              rows: Sequence[Row], label_index: dict[str, int]) -> float:
    """Mean cross-entropy of ``rows`` (whose labels the head knows) along one route."""
    logits = route_logits(model, route, head, rows)
    targets = torch.tensor([label_index[r.label] for r in rows], device=logits.device)
    return float(nn.functional.cross_entropy(logits, targets))


def accuracy(model: RoutedEncoder, route: Sequence[AdapterModule | None], head: nn.Linear,
             rows: Sequence[Row], label_index: dict[str, int]) -> float:
    if not rows:
        return float("nan")
    predicted = predict_route(model, route, head, rows)
    # A label the head lacks (a test row of a class absent from training) counts as wrong.
    right = sum(p == label_index.get(r.label, -1) for p, r in zip(predicted, rows, strict=True))
    return right / len(rows)


def majority_share(rows: Sequence[Row]) -> float:
    labels = [r.label for r in rows]
    return max(labels.count(label) for label in set(labels)) / len(labels) if labels else 0.0
