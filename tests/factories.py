"""Factories for tiny models, modules and data used across tests (no fixtures forest)."""

from __future__ import annotations

import random

import torch

from adapters_store.blobstore import Blobs
from adapters_store.datasets import Row
from adapters_store.module_config import (
    BottleneckConfig,
    LoraConfig,
    ModuleConfig,
    SparseConfig,
)
from adapters_store.records import BankManifest, BaseModelInfo, HeadRecord, ModuleRecord, Route
from worker.base_model import TINY, load_base
from worker.modules import AdapterModule, head_to_bytes
from worker.routed_model import RoutedEncoder
from worker.serving_bench import synthetic

CPU = torch.device("cpu")


def tiny_model(max_length: int = 64) -> RoutedEncoder:
    return RoutedEncoder(load_base(TINY, CPU, max_length)).eval()


def random_module(kind: str, layer: int, hidden: int = 32, seed: int = 0) -> AdapterModule:
    """A module with every tensor random (fresh ones are near-identity, too weak to test with).

    A sparse one gets a random mask per target and is returned in its served (stored) form."""
    config: ModuleConfig
    if kind == "bottleneck":
        config = BottleneckConfig(hidden=hidden, size=8)
    elif kind == "lora":
        config = LoraConfig(hidden=hidden, rank=4, alpha=8.0, targets=["query", "value"])
    else:
        config = SparseConfig(hidden=hidden, intermediate=2 * hidden, keep_ratio=0.1,
                              targets=["query", "key", "value", "attn_out", "ffn_in", "ffn_out"])
    return synthetic.random_module(layer, config, torch.Generator().manual_seed(seed), std=0.2)


def keyword_rows(n_per_label: int = 30, seed: int = 0, pair: bool = False) -> list[Row]:
    """A trivially learnable task: the label word appears in the text."""
    rng = random.Random(seed)
    fillers = ["the", "a", "report", "today", "about", "news", "some", "story", "and", "of"]
    rows = []
    for label, cue in (("red", "apple cherry tomato"), ("blue", "ocean sky sapphire")):
        for _ in range(n_per_label):
            words = rng.sample(fillers, 4) + rng.sample(cue.split(), 2)
            rng.shuffle(words)
            text = " ".join(words)
            rows.append(Row(text=text, label=label,
                            text_pair=" ".join(rng.sample(fillers, 3)) if pair else None))
    rng.shuffle(rows)
    return rows


def tiny_model_layers(layers: int, max_length: int = 64) -> RoutedEncoder:
    return RoutedEncoder(load_base(f"{TINY}:{layers}", CPU, max_length)).eval()


TEST_SETTINGS = dict(base_model="tiny-bert", batch_size=8, learning_rate=1e-2,
                     head_learning_rate=1e-2, bottleneck_size=8, safm_learning_rate=1e-2,
                     safm_epochs=3, safm_warmup_epochs=2, safm_search_epochs=3, seed=0,
                     val_fraction=0.2)


def make_settings(**overrides: object):  # noqa: ANN201 - Settings; import kept local
    from adapters_store.settings import Settings

    return Settings(**(TEST_SETTINGS | overrides))


def bank_manifest(blobs: Blobs, number: int, modules: list[AdapterModule],
                  routes: dict[str, list[int | None]], parent: str | None = None
                  ) -> BankManifest:
    """A manifest over tiny-bert of ``modules`` (stored in ``blobs``) and routes given as
    indexes into ``modules`` per layer."""
    recs = {}
    for m in modules:
        rec = ModuleRecord(id=m.content_id(), kind=m.kind, layer=m.layer, params=m.num_params,
                           config=m.config, blob=blobs.put(m.to_bytes()), created_by="t",
                           created_in=f"v{number}")
        recs[rec.id] = rec
    ids = [m.content_id() for m in modules]
    head = HeadRecord(labels=["a", "b"], blob=blobs.put(head_to_bytes(torch.nn.Linear(32, 2))),
                      params=66)
    return BankManifest(
        version=f"v{number}", number=number, parent=parent,
        base=BaseModelInfo(name="tiny-bert", fingerprint="f", num_layers=2, hidden_size=32),
        modules=recs, strategy="per_task",
        routes={t: Route(task_id=t, layers=[None if i is None else ids[i] for i in layers],
                         head=head, input_kind="single", strategy="per_task", dataset_id="d",
                         job_id="j", trained_in=f"v{number}", full_route_params=0)
                for t, layers in routes.items()})
