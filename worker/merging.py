"""Merging adapter modules into one (seed 002's uniform_sparse, plain uniform, TIES), per layer.

Members are the modules several tasks use at one layer (None: the task has none there). What
merges into what:
- sparse → sparse: every method works on the kept entries (union of the members' supports).
- LoRA, uniform (and uniform_sparse, which equals it: a product B·A is dense) → LoRA: the mean of
  the members' B·A·scale is exactly a LoRA of rank Σr (A stacked, B stacked and scaled by
  scale_t/T), so the merged module stays low-rank and serves on the batched LoRA path.
- LoRA, ties → sparse: TIES trims each dense ΔW, so its result is sparse, not low-rank.
- bottleneck, uniform → bottleneck: the mean of each parameter over the members that have one
  (a bottleneck is not an additive weight delta; a missing one is the identity, not a zero).
  TIES needs additive deltas and refuses bottlenecks.
TIES itself is peft's ``merge_utils.ties`` (magnitude trim, sign election, disjoint mean).
uniform_sparse is not in peft: its ``disjoint_merge`` also elects a sign, which the paper's
overlap-aware mean does not, so it is written here (a few lines over index tensors).
"""

from __future__ import annotations

import torch
from peft.utils.merge_utils import ties

from adapters_store.module_config import BottleneckConfig, LoraConfig, SparseConfig
from worker.modules import SPARSE_COUNTS, SPARSE_INDICES, SPARSE_VALUES, AdapterModule

MERGE_METHODS = ("uniform_sparse", "uniform", "ties")
# (flat indices, values, counts) of one sparse matrix; counts None means one expert.
SparseEntries = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def uniform_sparse(members: list[SparseEntries]) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """Δ[e] = Σ_t Δ_t[e] / max(1, #{t: Δ_t[e] ≠ 0}), over the union of the supports.

    A member that is itself a merge carries per-entry counts: its values count that many times,
    so merging merges equals merging all their experts at once. Entries no member changed are
    dropped. Returns ascending indices (int32), values, counts (int32)."""
    index = torch.cat([m[0].long() for m in members])
    changed = torch.cat([(m[1] != 0).to(torch.float64) * (
        1.0 if m[2] is None else m[2].to(torch.float64)) for m in members])
    weighted = torch.cat([m[1].to(torch.float64) for m in members]) * \
        torch.cat([torch.ones_like(m[1], dtype=torch.float64) if m[2] is None
                   else m[2].to(torch.float64) for m in members])
    unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, weighted)
    counts = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, changed)
    keep = counts > 0
    return (unique[keep].to(torch.int32), (sums[keep] / counts[keep]).to(torch.float32),
            counts[keep].round().to(torch.int32))


def uniform_mean(members: list[SparseEntries], total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t Δ_t / T over the union of the supports (T counts members without this matrix too)."""
    index = torch.cat([m[0].long() for m in members])
    values = torch.cat([m[1].to(torch.float64) for m in members])
    unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, values)
    keep = sums != 0
    return unique[keep].to(torch.int32), (sums[keep] / total).to(torch.float32)


def ties_dense(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES over dense deltas of one shape (peft's: trim to top ``density``, elect sign,
    disjoint mean), each task weighted 1."""
    return ties([d.to(torch.float32) for d in deltas], torch.ones(len(deltas)), density)


def _entries(module: AdapterModule, target: str) -> SparseEntries | None:
    part = module.parts[target] if target in module.parts else None
    if part is None:
        return None
    index, values = part.compact()
    return index, values, getattr(part, "counts", None)


def _sparse_module(layer: int, config: SparseConfig,
                   tensors: dict[str, dict[str, torch.Tensor]]) -> AdapterModule:
    stored = {f"parts.{target}.{name}": t for target, parts in tensors.items()
              for name, t in parts.items()}
    return AdapterModule(layer, config, stored=stored)


def _dense(module: AdapterModule | None, target: str, shape: tuple[int, int]) -> torch.Tensor:
    if module is None or target not in module.parts:
        return torch.zeros(shape)
    part = module.parts[target]
    if isinstance(module.config, LoraConfig):
        return part.delta().detach().float().cpu()
    flat = torch.zeros(shape[0] * shape[1])
    index, values = part.compact()
    return flat.index_put_((index.long(),), values.float()).view(shape)


def merge_layer(members: list[AdapterModule | None], method: str, intermediate: int,
                density: float = 0.2) -> AdapterModule | None:
    """One module equivalent to merging ``members`` (one per task) by ``method``; None when no
    member has a module at this layer. Raises ValueError for what cannot be merged."""
    if method not in MERGE_METHODS:
        raise ValueError(f"unknown merge method {method!r}; one of {list(MERGE_METHODS)}")
    present = [m for m in members if m is not None]
    if not present:
        return None
    kinds = {m.kind for m in present}
    if len(kinds) > 1:
        raise ValueError(f"members use different module kinds {sorted(kinds)}; merge tasks of "
                         "one kind")
    layer, kind, total = present[0].layer, present[0].kind, len(members)
    hidden = present[0].config.hidden
    if kind == "bottleneck":
        return _merge_bottleneck(present, method)
    if kind in ("lora", "ham"):  # a HAM group is a LoRA with its gain folded in
        configs = {tuple(m.config.targets) for m in present}  # type: ignore[union-attr]
        if len(configs) > 1:
            raise ValueError("members' LoRA modules target different projections")
        targets = list(configs.pop())
        if method != "ties":
            return _merge_lora_uniform(members, targets, total)
        config = SparseConfig(hidden=hidden, intermediate=intermediate, keep_ratio=density,
                              targets=targets)
    else:
        sparse_configs = [m.config for m in present]
        targets = sorted({t for c in sparse_configs for t in c.targets})  # type: ignore[union-attr]
        config = SparseConfig(hidden=hidden, intermediate=intermediate,
                              keep_ratio=max(c.keep_ratio for c in sparse_configs),  # type: ignore[union-attr]
                              targets=targets)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for target in config.targets:
        if method == "ties":
            shape = config.shape(target)
            merged = ties_dense([_dense(m, target, shape) for m in members], density).flatten()
            index = merged.nonzero().squeeze(1)
            tensors[target] = {SPARSE_INDICES: index.to(torch.int32),
                               SPARSE_VALUES: merged.index_select(0, index)}
            continue
        entries = [e for m in present if (e := _entries(m, target)) is not None]
        if method == "uniform_sparse":
            index, values, counts = uniform_sparse(entries)
            tensors[target] = {SPARSE_INDICES: index, SPARSE_VALUES: values,
                               SPARSE_COUNTS: counts}
        else:
            index, values = uniform_mean(entries, total)
            tensors[target] = {SPARSE_INDICES: index, SPARSE_VALUES: values}
    return _sparse_module(layer, config, tensors)


def _merge_lora_uniform(members: list[AdapterModule | None], targets: list[str],
                        total: int) -> AdapterModule:
    present = [m for m in members if m is not None]
    rank = sum(m.config.rank for m in present)  # type: ignore[union-attr]
    # alpha = rank gives scale 1: each member's own scale moves into its B block.
    config = LoraConfig(hidden=present[0].config.hidden, rank=rank, alpha=float(rank),
                        targets=targets)
    state = {}
    for target in targets:
        parts = [m.parts[target] for m in present]
        state[f"parts.{target}.lora_A"] = torch.cat([p.lora_A.detach().float().cpu()
                                                     for p in parts])
        state[f"parts.{target}.lora_B"] = torch.cat([p.lora_B.detach().float().cpu()
                                                     * (p.effective_scale() / total)
                                                     for p in parts], dim=1)
    module = AdapterModule(present[0].layer, config)
    module.load_state_dict(state, strict=True)
    return module


def _merge_bottleneck(present: list[AdapterModule], method: str) -> AdapterModule:
    if method == "ties":
        raise ValueError("ties merges additive weight deltas; bottleneck modules are not "
                         "additive (use uniform)")
    config = present[0].config
    if any(m.config != config for m in present):
        raise ValueError("members' bottleneck modules differ in size")
    assert isinstance(config, BottleneckConfig)
    states = [m.state_dict() for m in present]
    mean = {k: torch.stack([s[k].detach().float().cpu() for s in states]).mean(0)
            for k in states[0]}
    module = AdapterModule(present[0].layer, config)
    module.load_state_dict(mean, strict=True)
    return module
