"""SAFM's decision stage: per layer, empty / each old module / a new one, chosen by the paper's
logit search (at its own rate, or at a rate scaled to the step count) or on held-out loss."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from adapters_store.model_families import PARALLEL
from adapters_store.records import LayerDecision
from worker.evaluation import mean_loss
from worker.fit_loop import (
    Batch,
    Fit,
    param_groups,
    set_trainable,
    shuffled_batches,
    steps_per_epoch,
)
from worker.modules import AdapterModule
from worker.routing import Routing
from worker.strategies.fit import FitContext

EMPTY = "empty"
NEW = "new"
WARMUP = "warmup"
SEARCH = "searching"
# methods.md 1.3: ~2k search steps at 1.75e-4 move a logit by at most ~0.35 under AdamW, the
# same order as the initial margins; "budget" keeps that product whatever the step count.
PAPER_LOGIT_BUDGET = 2000 * 1.75e-4
# The validation decision's warm-up trains the new module on this share of the steps at each
# layer (the rest spread over empty and the old modules), so the new candidate it is compared
# as is trained on as many rows as any other, and the head sees every candidate.
NEW_SHARE = 0.5
# Held-out rows the validation decision scores each candidate on (a seeded sample beyond it).
DECISION_ROWS = 512


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
    search = 0 if p.decision == "validation" else per_epoch * p.search_epochs
    return {WARMUP: per_epoch * p.warmup_epochs, SEARCH: search}


def search_learning_rate(ctx: FitContext) -> float:
    """The logits' rate: the configured one, or (``budget``) the paper's budget over the steps."""
    p = ctx.search_params()
    if p.decision != "budget":
        return p.search_learning_rate
    return PAPER_LOGIT_BUDGET / max(1, decision_steps(ctx)[SEARCH])


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
        groups.append({"params": logits, "lr": search_learning_rate(ctx),
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


def _sampled_route(layers: list[LayerSearch], rng: random.Random) -> list[AdapterModule | None]:
    route: list[AdapterModule | None] = []
    for search in layers:
        others = len(search.modules) - 1  # the new module is the last candidate
        pick = others if others == 0 or rng.random() < NEW_SHARE else rng.randrange(others)
        route.append(search.modules[pick])
    return route


def run_sampled_warmup(ctx: FitContext, layers: list[LayerSearch],
                       new_modules: list[AdapterModule], head: nn.Linear) -> None:
    """Train the new modules and the head on single paths sampled per batch (one candidate per
    layer), so each candidate can later be scored alone at full strength. Old modules stay
    frozen; the rate is constant, as in the paper's decision stage."""
    p = ctx.search_params()
    set_trainable([*new_modules, head], True)
    fit = Fit(ctx.model, ctx.clock, param_groups(new_modules, [head], p.learning_rate,
                                                 p.head_learning_rate, p.weight_decay),
              decision_steps(ctx)[WARMUP], warmup_fraction=None)
    rng = random.Random(ctx.seed)
    for epoch in range(p.warmup_epochs):
        batches = (Batch(rows, Routing.uniform(_sampled_route(layers, rng)), head,
                         ctx.label_index)
                   for rows in shuffled_batches(ctx.train_rows, p.batch_size, rng))
        fit.epoch(WARMUP, epoch, p.warmup_epochs, batches)
    set_trainable([*new_modules, head], False)


def choose_by_validation(ctx: FitContext, layers: list[LayerSearch], head: nn.Linear
                         ) -> tuple[list[int], list[dict[str, float]]]:
    """Per layer, bottom up, each candidate's held-out loss with the other layers as chosen so
    far (starting from new everywhere). Among the candidates within ``decision_tolerance`` nats
    of the all-new route, an old module wins (the lowest loss of them), then empty, then new:
    reuse and empty add no parameters, and a reused module keeps training on the new task (its
    owners replayed, the regression gate guarding them), so it gives the task at least what
    empty would. Returns the chosen index and the losses per layer."""
    p = ctx.search_params()
    rows = ctx.val_rows or ctx.train_rows  # no held-out split (a direct call): training rows
    if len(rows) > DECISION_ROWS:
        rows = random.Random(ctx.seed).sample(rows, DECISION_ROWS)
    chosen = [len(s.modules) - 1 for s in layers]

    def loss_of(choice: list[int]) -> float:
        return mean_loss(ctx.model, [s.modules[c] for s, c in zip(layers, choice, strict=True)],
                         head, rows, ctx.label_index)

    current = reference = loss_of(chosen)
    ctx.clock.note("deciding")
    all_losses: list[dict[str, float]] = []
    for i, search in enumerate(layers):
        if search.logits is None:
            all_losses.append({})
            continue
        losses = [current if c == chosen[i] else loss_of([*chosen[:i], c, *chosen[i + 1:]])
                  for c in range(len(search.modules))]
        ok = [c for c in range(len(search.modules))
              if losses[c] <= reference + p.decision_tolerance]
        reuse = [c for c in ok if search.labels[c] not in (EMPTY, NEW)]
        empty = [c for c in ok if search.labels[c] == EMPTY]
        if reuse or empty:
            chosen[i] = min(reuse, key=losses.__getitem__) if reuse else empty[0]
            current = losses[chosen[i]]
        all_losses.append({lbl: round(v, 6) for lbl, v in zip(search.labels, losses,
                                                               strict=True)})
    return chosen, all_losses


def decide(layers: list[LayerSearch], new_modules: list[AdapterModule], method: str,
           chosen: list[int] | None = None, losses: list[dict[str, float]] | None = None
           ) -> tuple[list[AdapterModule | None], list[AdapterModule], list[LayerDecision]]:
    """``chosen`` per layer (else the argmax of the logits); unselected new modules are dropped."""
    route: list[AdapterModule | None] = []
    kept: list[AdapterModule] = []
    decisions = []
    for i, (search, new) in enumerate(zip(layers, new_modules, strict=True)):
        weights: dict[str, float] = {}
        if search.logits is None:
            idx, weights = 0, {NEW: 1.0}
        elif chosen is not None:
            idx = chosen[i]
        else:
            probs = torch.softmax(search.logits.detach(), -1).tolist()
            idx = max(range(len(probs)), key=probs.__getitem__)
            weights = {lbl: round(w, 6) for lbl, w in zip(search.labels, probs, strict=True)}
        label = search.labels[idx]
        choice = EMPTY if label == EMPTY else NEW if label == NEW else "reuse"
        route.append(search.modules[idx])
        if choice == NEW:
            kept.append(new)
        decisions.append(LayerDecision(
            layer=search.layer, choice=choice, forced=search.forced,
            module=label if choice == "reuse" else None,
            weights=weights,
            logits=[] if search.logits is None or chosen is not None
            else [round(v, 6) for v in search.logits.tolist()],
            method=None if search.forced else method,
            losses=losses[i] if losses is not None else {}))
    return route, kept, decisions
