"""In-process engine comparison on the same batches: the bare base forward (the floor),
adapterd's segment routing over weight pools, its per-group routing over the modules, peft's
mixed-batch LoRA (``adapter_names``) and the naive baseline (peft ``set_adapter`` and one forward
per task in the batch)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from worker.routed_model import RoutedEncoder
from worker.routing import Routing, SegmentRouting, route_order
from worker.serving_bench.synthetic import SyntheticBank, assign, build_bank, sentences
from worker.weight_pool import WeightPools, poolable

Forward = Callable[[], torch.Tensor]
PEFT_MAX_TASKS = 256  # peft re-walks every module per add_adapter: thousands take minutes


@dataclass(frozen=True)
class EngineCase:
    shape: str
    tasks: int
    batch_rows: int
    words: int
    reps: int
    seed: int = 0


def _peft_model(model: RoutedEncoder, bank: SyntheticBank) -> torch.nn.Module:
    """A peft LoRA model on a fresh copy of the same base with the bank's LoRA weights."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from worker.base_model import load_base

    base = load_base(model.base.info.name, next(model.parameters()).device,
                     model.base.max_length).model
    config = PeftLoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                            lora_dropout=0.0)
    names = bank.task_ids
    peft_model = get_peft_model(base, config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    layers = peft_model.base_model.model.encoder.layer
    with torch.no_grad():
        for name in names:
            for layer, module in enumerate(bank.routes[name]):
                assert module is not None
                for part in ("query", "value"):
                    target = getattr(layers[layer].attention.self, part)
                    target.lora_A[name].weight.copy_(module.parts[part].lora_A)
                    target.lora_B[name].weight.copy_(module.parts[part].lora_B)
    return peft_model.eval()


def contenders(model: RoutedEncoder, bank: SyntheticBank, batch: dict[str, torch.Tensor],
               names: list[str], peft_model: torch.nn.Module | None) -> dict[str, Forward]:
    routes = [bank.routes[n] for n in names]
    layers = model.num_layers
    mask = batch["attention_mask"]
    # adapterd serves from weight pools, as the inference worker's bank loads them.
    weights = next(model.parameters())
    pools = WeightPools(weights.dtype, weights.device)
    served = {m: pools.adopt(m) if poolable(m.config) else m
              for r in bank.routes.values() for m in r if m is not None}
    served_routes = [[None if m is None else served[m] for m in r] for r in routes]

    def bare() -> torch.Tensor:
        return model.embed(batch, None)

    def adapterd() -> torch.Tensor:
        # What the worker does per forward: sort rows by route, segment, run in place.
        order = route_order([(n,) for n in names])
        perm = torch.tensor(order, device=mask.device)
        sorted_batch = {k: v.index_select(0, perm) for k, v in batch.items()}
        routing = SegmentRouting.from_sorted_rows([served_routes[k] for k in order], layers)
        pooled = model.embed(sorted_batch, routing)
        return pooled.index_select(0, torch.argsort(perm))

    def per_group() -> torch.Tensor:
        return model.embed(batch, Routing.from_rows(routes, layers, mask.device))

    out: dict[str, Forward] = {"bare": bare, "adapterd": adapterd, "per_group": per_group}
    if peft_model is not None:
        from worker.routed_model import mean_pool

        def peft_mixed() -> torch.Tensor:
            hidden = peft_model(**batch, adapter_names=names).last_hidden_state
            return mean_pool(hidden, mask)

        def peft_naive() -> torch.Tensor:
            pooled = torch.empty(len(names), model.base.info.hidden_size, device=mask.device)
            for name in dict.fromkeys(names):
                rows = torch.tensor([i for i, n in enumerate(names) if n == name],
                                    device=mask.device)
                sub = {k: v.index_select(0, rows) for k, v in batch.items()}
                peft_model.set_adapter(name)
                pooled[rows] = mean_pool(peft_model(**sub).last_hidden_state,
                                         sub["attention_mask"])
            return pooled

        out |= {"peft_mixed": peft_mixed, "peft_naive": peft_naive}
    return out


def time_interleaved(fns: dict[str, Forward], reps: int, device: torch.device,
                     warmup: int = 2) -> dict[str, list[float]]:
    """Each rep runs every contender once, in turn, so machine drift hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for rep in range(warmup + reps):
            for name, fn in fns.items():
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                fn()
                if cuda:  # kernels run asynchronously: time them to completion
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - started
                if rep >= warmup:
                    times[name].append(elapsed)
    return times


def run_case(model: RoutedEncoder, case: EngineCase, with_peft: bool) -> dict[str, object]:
    info = model.base.info
    bank = build_bank(case.shape, case.tasks, info.hidden_size, info.num_layers, case.seed)
    items = sentences(case.batch_rows, case.words, case.seed)
    names = assign(case.batch_rows, bank.task_ids, case.seed + 1)
    device = next(model.parameters()).device
    batch = model.base.tokenize(items, device)
    peft_model = None
    if with_peft and case.shape == "lora" and case.tasks <= PEFT_MAX_TASKS:
        peft_model = _peft_model(model, bank)
    fns = contenders(model, bank, batch, names, peft_model)
    with torch.inference_mode():  # every contender must give the same embeddings
        reference = fns["per_group"]()
        agreement = {name: float((fn() - reference).abs().max()) for name, fn in fns.items()
                     if name != "bare"}
        effect = float((fns["bare"]() - reference).abs().max())
    times = time_interleaved(fns, case.reps, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    rows = case.batch_rows
    return {
        "shape": case.shape, "tasks": case.tasks, "distinct_in_batch": len(set(names)),
        "batch_rows": rows, "tokens": int(batch["attention_mask"].sum()),
        "padded_tokens": int(batch["attention_mask"].numel()),
        "median_ms": {k: round(1000 * v, 3) for k, v in median.items()},
        "rows_per_s": {k: round(rows / v, 1) for k, v in median.items()},
        "ratio_to_bare": {k: round(median["bare"] / v, 3) for k, v in median.items()},
        "max_abs_diff_vs_per_group": agreement,
        "adapter_effect_max_abs": effect,  # the adapters change the embeddings this much
        "reps": case.reps,
    }
