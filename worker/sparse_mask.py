"""Sparse-adapter mask selection: score every entry of each targeted ΔW, keep the top fraction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from worker.modules import AdapterModule, SparsePart, kept_entries
from worker.routed_model import RoutedEncoder


@dataclass(frozen=True)
class MaskedSite:
    """One trainable sparse part and the frozen base weight W0 it adds to."""

    layer: int
    target: str
    part: SparsePart
    base_weight: torch.Tensor


def masked_sites(model: RoutedEncoder, modules: list[AdapterModule]) -> list[MaskedSite]:
    return [MaskedSite(m.layer, name, part, model.site_linear(m.layer, name).weight)
            for m in modules for name, part in m.parts.items() if isinstance(part, SparsePart)]


def select_masks(sites: list[MaskedSite], keep_ratio: float, criterion: str,
                 loss_fn: Callable[[], torch.Tensor]) -> None:
    """Set each part's mask to its top ``round(keep_ratio·numel)`` entries by ``criterion``.

    snip: |∂L/∂M ⊙ (W0 + M⊙ΔW)|, the connection sensitivity of the effective weight (SNIP with
    the mask over W0+ΔW, as mttl's later ``snip`` updater scores it); snip_signed: the same
    without the absolute value (mttl's first code keeps the largest signed scores); magnitude:
    |W0 + M⊙ΔW|. ``loss_fn`` runs one forward on a training batch (unused by magnitude).
    """
    if criterion not in ("snip", "snip_signed", "magnitude"):
        raise ValueError(f"unknown mask criterion {criterion!r}")
    grads: list[torch.Tensor | None] = [None] * len(sites)
    if criterion != "magnitude":
        for site in sites:
            site.part.probe = True
        try:
            loss_fn().backward()
            grads = [site.part.probed.grad if site.part.probed is not None else None
                     for site in sites]
        finally:
            for site in sites:
                site.part.probe, site.part.probed = False, None
    with torch.no_grad():
        for site, grad in zip(sites, grads, strict=True):
            weight = site.base_weight.to(site.part.delta.dtype) + site.part.effective()
            if criterion == "magnitude":
                score = weight.abs()
            else:
                if grad is None:
                    raise RuntimeError(f"layer {site.layer} {site.target}: no gradient reached "
                                       "the sparse part; is it on the batch's route?")
                score = grad * weight
                if criterion == "snip":
                    score = score.abs()
            keep = kept_entries(keep_ratio, score.numel())
            mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
            mask[torch.topk(score.flatten(), keep, sorted=False).indices] = True
            site.part.mask.copy_(mask.view_as(site.part.mask))
