"""SAFM's decision stage: per layer, a softmax mixture of empty / each old module / a new one."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from worker.bank import LoadedVersion
from worker.modules import PARALLEL, AdapterModule
from worker.strategies.fit import FitContext
from worker.training import Progress, items_of, param_groups

EMPTY = "empty"
NEW = "new"


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


def old_modules_at(parent: LoadedVersion | None, layer: int,
                   kind: str) -> list[tuple[str, AdapterModule]]:
    """Distinct modules earlier tasks use at ``layer``, oldest first (the code's numeric order)."""
    if parent is None:
        return []
    manifest = parent.manifest
    ids = {r.layers[layer] for r in manifest.routes.values() if r.layers[layer] is not None}
    recs = sorted((manifest.modules[i] for i in ids if manifest.modules[i].kind == kind),
                  key=lambda rec: (int(rec.created_in.lstrip("v") or 0), rec.id))
    by_id = {id_: m for t in parent.tasks.values()
             for id_, m in zip(manifest.routes[t.task_id].layers, t.modules, strict=True)
             if id_ is not None}
    return [(rec.id, by_id[rec.id]) for rec in recs]


def build_search(ctx: FitContext, with_empty: bool) -> tuple[list[LayerSearch],
                                                               list[AdapterModule]]:
    p = ctx.params
    forced = set(p["forced_layers"])
    layers, new_modules = [], []
    for layer in range(ctx.model.num_layers):
        new = ctx.new_module(layer)
        new_modules.append(new)
        if layer in forced:
            layers.append(LayerSearch(layer, [NEW], [new], None, True))
            continue
        old = old_modules_at(ctx.parent, layer, p["module_kind"])
        labels = ([EMPTY] if with_empty else []) + [i for i, _ in old] + [NEW]
        modules = ([None] if with_empty else []) + [m for _, m in old] + [new]
        init = ([p["alpha"]] if with_empty else []) + [p["beta"]] * len(old) + [-p["beta"]]
        logits = nn.Parameter(torch.tensor(init, device=ctx.device), requires_grad=False)
        layers.append(LayerSearch(layer, labels, modules, logits, False))
    return layers, new_modules


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum()


def run_decision(ctx: FitContext, layers: list[LayerSearch], new_modules: list[AdapterModule],
                 head: nn.Linear) -> None:
    """Warm-up epochs train the new modules (and head) inside the mixture with logits frozen;
    search epochs also train the logits, with the entropy penalty on each layer's softmax."""
    p = ctx.params
    warmup, search = p["warmup_epochs"], p["search_epochs"]
    logits = [s.logits for s in layers if s.logits is not None]
    for module in new_modules:
        module.train().requires_grad_(True)
    head.train().requires_grad_(True)
    groups = param_groups(new_modules, head, ctx.train_config())
    if logits:  # weight decay reaches the logits too in the authors' code
        groups.append({"params": logits, "lr": p["search_learning_rate"],
                       "weight_decay": ctx.weight_decay})
    optimizer = torch.optim.AdamW(groups, eps=1e-6)
    routing = MixtureRouting(layers)
    rows, bs = ctx.train_rows, p["batch_size"]
    rng = random.Random(ctx.seed)
    order = list(range(len(rows)))
    total = (warmup + search) * -(-len(rows) // bs)
    step, started, ema = 0, time.monotonic(), None
    for epoch in range(warmup + search):
        searching = epoch >= warmup
        for lg in logits:
            lg.requires_grad_(searching)
        rng.shuffle(order)
        for start in range(0, len(order), bs):
            batch_rows = [rows[i] for i in order[start:start + bs]]
            batch = ctx.model.base.tokenize(items_of(batch_rows), ctx.device)
            targets = torch.tensor([ctx.label_index[r.label] for r in batch_rows],
                                   device=ctx.device)
            loss = nn.functional.cross_entropy(head(ctx.model.embed(batch, routing)), targets)
            if searching and logits:
                loss = loss + p["entropy_coef"] * sum(entropy(lg) for lg in logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([q for g in groups for q in g["params"]], 1.0)
            optimizer.step()
            step += 1
            value = loss.item()
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            elapsed = time.monotonic() - started
            ctx.progress(Progress("searching" if searching else "warmup", epoch + 1,
                                  warmup + search, step, total, ema,
                                  elapsed / step * (total - step)))
    for lg in logits:
        lg.requires_grad_(False)


def decide(layers: list[LayerSearch], new_modules: list[AdapterModule]
           ) -> tuple[list[AdapterModule | None], list[AdapterModule], list[dict[str, Any]]]:
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
        decisions.append({
            "layer": search.layer, "choice": choice, "forced": search.forced,
            "module": label if choice == "reuse" else None,
            "weights": {lbl: round(w, 6) for lbl, w in zip(search.labels, weights, strict=True)},
            "logits": [] if search.logits is None else [round(v, 6)
                                                        for v in search.logits.tolist()],
        })
    return route, kept, decisions
