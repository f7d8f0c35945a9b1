"""Synthetic banks and request batches for the serving benchmark: many tasks with random
(non-trivial) adapters of a given shape, and seeded sentences of a given length."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from adapters_store.module_config import BottleneckConfig, LoraConfig, ModuleConfig, SparseConfig
from adapters_store.streams import InputItem
from worker.modules import AdapterModule

# bottleneck / lora / sparse: a new module at every layer per task (per_task; sparse: 5% of q,
# k, v as strategy=sparse trains); safm: one bottleneck at the forced middle layer and empty
# elsewhere (what SAFM's decision picked on olora1).
SHAPES = ("bottleneck", "lora", "sparse", "safm")
WORDS = ("the a of and to in is was for on with as by at from that this it film market team "
         "said new first year people time world report city game show service price company "
         "music story government season player police court night water school family life "
         "great small large early late good bad high low long short strong weak open free").split()


def shape_config(shape: str, hidden: int, intermediate: int) -> ModuleConfig:
    if shape == "lora":
        return LoraConfig(hidden=hidden, rank=8, alpha=16.0, targets=["query", "value"])
    if shape == "sparse":
        return SparseConfig(hidden=hidden, intermediate=intermediate, keep_ratio=0.05,
                            targets=["key", "query", "value"])
    return BottleneckConfig(hidden=hidden, size=48)


def random_module(layer: int, config: ModuleConfig, gen: torch.Generator,
                  std: float = 0.02) -> AdapterModule:
    """Every tensor random (a fresh LoRA's B is zero and a fresh bottleneck nearly identity:
    too cheap for the kernels to skip, but too weak to check outputs with). A sparse module
    gets a random mask of its keep ratio and comes back in its served (stored) form."""
    module = AdapterModule(layer, config)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        if isinstance(config, SparseConfig):
            for part in module.parts.values():
                keep = torch.randperm(part.mask.numel(), generator=gen)[
                    :round(config.keep_ratio * part.mask.numel())]
                mask = torch.zeros(part.mask.numel(), dtype=torch.bool)
                mask[keep] = True
                part.mask.copy_(mask.view_as(part.mask))
            module = AdapterModule.from_bytes(layer, config, module.to_bytes())
    return module.eval().requires_grad_(False)


@dataclass
class SyntheticBank:
    shape: str
    routes: dict[str, list[AdapterModule | None]]
    heads: dict[str, nn.Linear]

    @property
    def task_ids(self) -> list[str]:
        return list(self.routes)

    def modules(self) -> list[AdapterModule]:
        seen: dict[AdapterModule, None] = {}
        for route in self.routes.values():
            seen.update(dict.fromkeys(m for m in route if m is not None))
        return list(seen)


def build_bank(shape: str, tasks: int, hidden: int, layers: int, seed: int = 0,
               labels: int = 2, intermediate: int | None = None) -> SyntheticBank:
    gen = torch.Generator().manual_seed(seed)
    config = shape_config(shape, hidden, intermediate or 4 * hidden)
    forced = (layers - 1) // 2
    routes: dict[str, list[AdapterModule | None]] = {}
    heads: dict[str, nn.Linear] = {}
    for t in range(tasks):
        task_id = f"task-{t:04d}"
        if shape == "safm":
            routes[task_id] = [random_module(layer, config, gen) if layer == forced else None
                               for layer in range(layers)]
        else:
            routes[task_id] = [random_module(layer, config, gen) for layer in range(layers)]
        head = nn.Linear(hidden, labels)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.1)
            head.bias.zero_()
        heads[task_id] = head.eval().requires_grad_(False)
    return SyntheticBank(shape, routes, heads)


def sentences(n: int, words: int, seed: int) -> list[InputItem]:
    rng = random.Random(seed)
    return [InputItem(text=" ".join(rng.choice(WORDS) for _ in range(words))) for _ in range(n)]


def assign(n_rows: int, task_ids: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(task_ids) for _ in range(n_rows)]
