"""HAM's group math (seed 001, methods.md §3.3): similarity of a task adapter to each group,
magnitude pruning, consolidation by concatenation (rank grows), the truncated-SVD rank cap, and
the all-groups module of the task-agnostic route. Pure functions on modules and tensors."""

from __future__ import annotations

import torch
from torch import nn

from adapters_store.module_config import HamConfig
from worker.modules import AdapterModule, LoraPart

ModuleSet = list[AdapterModule]  # one module per layer


def _deltas(modules: ModuleSet) -> list[torch.Tensor]:
    return [part.delta().detach().float().cpu().flatten()
            for m in modules for _, part in sorted(m.parts.items())]


def similarity(a: ModuleSet, b: ModuleSet, per_layer: bool) -> float:
    """cos(vec ΔW_a, vec ΔW_b): over all layers and targets flattened together, or the mean of
    the per-layer cosines."""
    if not per_layer:
        va, vb = torch.cat(_deltas(a)), torch.cat(_deltas(b))
        return float(nn.functional.cosine_similarity(va, vb, dim=0))
    return sum(similarity([x], [y], False) for x, y in zip(a, b, strict=True)) / len(a)


def prune_(part: LoraPart, keep_ratio: float) -> float:
    """Keep the top ``keep_ratio`` entries (by magnitude) of the part's ΔW = scale·α·B·A, then
    re-factorise the pruned ΔW to the part's rank by SVD (its best rank-r approximation), in
    place, with α folded in (gain 1). Returns the fraction of ΔW's entries pruned. Pruning the
    factors themselves would cut A's random projection, not the task's weights."""
    with torch.no_grad():
        delta = part.delta().detach().double()
        flat = delta.flatten()
        keep = max(1, round(keep_ratio * flat.numel()))
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[flat.abs().topk(keep, sorted=False).indices] = True
        pruned = (flat * mask).view_as(delta)
        u, s, vh = torch.linalg.svd(pruned, full_matrices=False)
        rank = part.lora_A.shape[0]
        part.lora_B.copy_((u[:, :rank] * s[:rank] / part.scale).to(part.lora_B.dtype))
        part.lora_A.copy_(vh[:rank].to(part.lora_A.dtype))
        if part.gain is not None:
            part.gain.fill_(1.0)
    return 1.0 - keep / flat.numel()


def svd_cap(b: torch.Tensor, a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors (Eckart–Young) of B·A, as (U_k·S_k, V_kᵀ)."""
    u, s, vh = torch.linalg.svd(b.double() @ a.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]).float(), vh[:rank].float()


def concat(parts: list[LoraPart], rank_cap: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors whose product is Σ_p scale_p·α_p·B_p·A_p: B's columns and A's rows stacked, each
    member's scale and gain folded into its B block; capped by SVD when the rank exceeds
    ``rank_cap``."""
    b = torch.cat([p.lora_B.detach().float().cpu() * p.effective_scale() for p in parts], dim=1)
    a = torch.cat([p.lora_A.detach().float().cpu() for p in parts], dim=0)
    if rank_cap is not None and b.shape[1] > rank_cap:
        b, a = svd_cap(b, a, rank_cap)
    return b, a


def module_from_factors(layer: int, hidden: int, factors: dict[str, tuple[torch.Tensor,
                                                                          torch.Tensor]]
                        ) -> AdapterModule:
    """A HAM module (gain 1, scale 1: alpha = rank) holding the given (B, A) per target."""
    ranks = {b.shape[1] for b, _ in factors.values()}
    if len(ranks) != 1:
        raise ValueError("every target of one module must have the same rank")
    rank = ranks.pop()
    config = HamConfig(hidden=hidden, rank=rank, alpha=float(rank), targets=sorted(factors))
    module = AdapterModule(layer, config)
    with torch.no_grad():
        for target, (b, a) in factors.items():
            part = module.parts[target]
            part.lora_B.copy_(b)
            part.lora_A.copy_(a)
    return module.eval()


def merge_sets(sets: list[ModuleSet], rank_cap: int | None) -> ModuleSet:
    """Per layer, one module that adds every set's delta (concatenation, capped)."""
    out = []
    for layer_modules in zip(*sets, strict=True):
        targets = sorted(layer_modules[0].parts)
        factors = {t: concat([m.parts[t] for m in layer_modules], rank_cap) for t in targets}
        out.append(module_from_factors(layer_modules[0].layer, layer_modules[0].config.hidden,
                                       factors))
    return out
