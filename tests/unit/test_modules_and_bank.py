"""Modules round-trip through safetensors with stable ids; the bank loads by set difference."""

from __future__ import annotations

import torch

from adapters_store.blobstore import BlobStore
from tests.factories import CPU, bank_manifest, random_module
from worker.bank import LoadedBank
from worker.modules import AdapterModule, head_from_bytes, head_to_bytes


def test_module_round_trip_and_content_id() -> None:
    for kind in ("bottleneck", "lora"):
        module = random_module(kind, 1, seed=2)
        again = AdapterModule.from_bytes(1, module.config, module.to_bytes())
        assert again.content_id() == module.content_id()
        for k, v in module.state_dict().items():
            assert torch.equal(v, again.state_dict()[k])
        other = random_module(kind, 1, seed=3)
        assert other.content_id() != module.content_id()
    assert random_module("bottleneck", 0).num_params == 2 * (32 * 8 + 8 + 8 * 32 + 32)


def test_head_round_trip() -> None:
    head = torch.nn.Linear(32, 3)
    again = head_from_bytes(head_to_bytes(head))
    assert torch.equal(again.weight, head.weight) and torch.equal(again.bias, head.bias)


def test_bank_sync_loads_only_missing_and_unloads_evicted(tmp_path) -> None:
    blobs = BlobStore(tmp_path)
    a0, a1, b0 = (random_module("bottleneck", 0, seed=1), random_module("bottleneck", 1, seed=2),
                  random_module("bottleneck", 0, seed=3))
    v1 = bank_manifest(blobs, 1, [a0, a1], {"a": [0, 1]})
    v2 = bank_manifest(blobs, 2, [a0, a1, b0], {"a": [0, 1], "b": [0, None], "c": [2, None]})
    v3 = bank_manifest(blobs, 3, [b0], {"b": [0, None]})
    bank = LoadedBank(blobs, CPU, keep=2)
    first = bank.sync(v1)
    loaded_a0 = bank.modules[a0.content_id()]
    second = bank.sync(v2)
    assert bank.modules[a0.content_id()] is loaded_a0  # shared module not reloaded
    assert second.tasks["a"].modules[0] is second.tasks["b"].modules[0] is loaded_a0
    assert second.tasks["b"].modules[1] is None
    assert bank.sync(v2) is second  # idempotent
    assert first.tasks["a"].modules[0] is loaded_a0
    bank.sync(v3)  # v1 evicted (keep=2); v2 still holds a0/a1
    assert set(bank.versions) == {"v2", "v3"}
    assert a0.content_id() in bank.modules
    bank.sync(bank_manifest(blobs, 4, [b0], {"b": [0, None]}))  # v2 evicted -> a0, a1 unloaded
    assert set(bank.modules) == {b0.content_id()}
