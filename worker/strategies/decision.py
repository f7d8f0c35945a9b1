"""SAFM's decision stage: per layer, a softmax mixture of empty / each old module / a new one."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from adapters_store.model_families import PARALLEL
from adapters_store.records import LayerDecision
from worker.fit_loop import (
    Batch,
    Fit,
    param_groups,
    set_trainable,
    shuffled_batches,
    steps_per_epoch,
)
from worker.modules import AdapterModule
from worker.strategies.fit import FitContext

EMPTY = "empty"
NEW = "new"
WARMUP = "warmup"
SEARCH = "searching"


@dataclass
class LayerSearch:
    """One layer's candidates (labels: "empty", an old module id, "new") and their logits."""

    layer: int
    labels: list[str]
    modules: list[AdapterModule | None]
    logits: nn.Parameter | None  # None: the layer is forced to its new module
    forced: bool


class MixtureRouting:
    """Every row takes, at each layer, Σ softmax(logits)_i · candidate_i (Eq. 1 of the paper).

    Written as y + Σ w_i·δ_i so the empty candidate (δ = 0) costs nothing and both Houlsby
    positions of a layer share one weight vector, as in the authors' code.
    """

    def __init__(self, layers: list[LayerSearch]) -> None:
        self.layers = layers

    def apply(self, layer: int, part: str, mode: str, x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor:
        search = self.layers[layer]
        if search.logits is None:
            weights: list[torch.Tensor | float] = [1.0] * len(search.modules)
        else:
            weights = list(torch.softmax(search.logits, -1).unbind())
        out = y
        for module, w in zip(search.modules, weights, strict=True):
            if module is None or part not in module.parts:
                continue
            fn = module.parts[part]
            out = out + w * (fn(x) if mode == PARALLEL else fn(y) - y)
        return out


def old_modules_at(ctx: FitContext, layer: int) -> list[tuple[str, AdapterModule]]:
    """Distinct modules of this kind that earlier tasks use at ``layer``, oldest first (the
    authors' code orders candidates by creation)."""
    parent = ctx.parent
    if parent is None:
        return []
    manifest = parent.manifest
    ids = {r.layers[layer] for r in manifest.routes.values() if r.layers[layer] is not None}
    recs = sorted((manifest.modules[i] for i in ids
                   if manifest.modules[i].kind == ctx.params.module_kind),
                  key=lambda rec: (int(rec.created_in.lstrip("v") or 0), rec.id))
    return [(rec.id, parent.module(rec.id)) for rec in recs]


def build_search(ctx: FitContext, with_empty: bool) -> tuple[list[LayerSearch],
                                                               list[AdapterModule]]:
    p = ctx.search_params()
    forced = set(p.forced_layers)
    layers, new_modules = [], []
    for layer in range(ctx.num_layers):
        new = ctx.new_module(layer)
        new_modules.append(new)
        if layer in forced:
            layers.append(LayerSearch(layer, [NEW], [new], None, True))
            continue
        old = old_modules_at(ctx, layer)
        labels = ([EMPTY] if with_empty else []) + [i for i, _ in old] + [NEW]
        modules = ([None] if with_empty else []) + [m for _, m in old] + [new]
        init = ([p.alpha] if with_empty else []) + [p.beta] * len(old) + [-p.beta]
        logits = nn.Parameter(torch.tensor(init, device=ctx.device), requires_grad=False)
        layers.append(LayerSearch(layer, labels, modules, logits, False))
    return layers, new_modules


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum()


def decision_steps(ctx: FitContext) -> dict[str, int]:
    p = ctx.search_params()
    per_epoch = steps_per_epoch(len(ctx.train_rows), p.batch_size)
    return {WARMUP: per_epoch * p.warmup_epochs, SEARCH: per_epoch * p.search_epochs}


def run_decision(ctx: FitContext, layers: list[LayerSearch], new_modules: list[AdapterModule],
                 head: nn.Linear) -> None:
    """Warm-up epochs train the new modules (and head) inside the mixture with logits frozen;
    search epochs also train the logits, with the entropy penalty on each layer's softmax. One
    optimiser spans both, at a constant rate, as in the authors' code."""
    p = ctx.search_params()
    warmup, search = p.warmup_epochs, p.search_epochs
    logits = [s.logits for s in layers if s.logits is not None]
    set_trainable([*new_modules, head], True)
    groups = param_groups(new_modules, [head], p.learning_rate, p.head_learning_rate,
                          p.weight_decay)
    if logits:  # weight decay reaches the logits too in the authors' code
        groups.append({"params": logits, "lr": p.search_learning_rate,
                       "weight_decay": p.weight_decay})
    total = sum(decision_steps(ctx).values())
    fit = Fit(ctx.model, ctx.clock, groups, total, warmup_fraction=None)
    routing = MixtureRouting(layers)
    rng = random.Random(ctx.seed)

    def regulariser() -> torch.Tensor:
        return p.entropy_coef * sum(entropy(lg) for lg in logits)  # type: ignore[return-value]

    for epoch in range(warmup + search):
        searching = epoch >= warmup
        for lg in logits:
            lg.requires_grad_(searching)
        batches = (Batch(rows, routing, head, ctx.label_index)
                   for rows in shuffled_batches(ctx.train_rows, p.batch_size, rng))
        stage, stage_epoch, stage_epochs = (SEARCH, epoch - warmup, search) if searching \
            else (WARMUP, epoch, warmup)
        fit.epoch(stage, stage_epoch, stage_epochs, batches,
                  regulariser if searching and logits else None)
    for lg in logits:
        lg.requires_grad_(False)


def decide(layers: list[LayerSearch], new_modules: list[AdapterModule]
           ) -> tuple[list[AdapterModule | None], list[AdapterModule], list[LayerDecision]]:
    """argmax per layer; unselected new modules are dropped."""
    route: list[AdapterModule | None] = []
    kept: list[AdapterModule] = []
    decisions = []
    for search, new in zip(layers, new_modules, strict=True):
        if search.logits is None:
            idx, weights = 0, [1.0]
        else:
            weights = torch.softmax(search.logits.detach(), -1).tolist()
            idx = max(range(len(weights)), key=weights.__getitem__)
        label = search.labels[idx]
        choice = EMPTY if label == EMPTY else NEW if label == NEW else "reuse"
        route.append(search.modules[idx])
        if choice == NEW:
            kept.append(new)
        decisions.append(LayerDecision(
            layer=search.layer, choice=choice, forced=search.forced,
            module=label if choice == "reuse" else None,
            weights={lbl: round(w, 6) for lbl, w in zip(search.labels, weights, strict=True)},
            logits=[] if search.logits is None else [round(v, 6)
                                                     for v in search.logits.tolist()]))
    return route, kept, decisions
