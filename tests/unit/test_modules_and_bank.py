"""Modules round-trip through safetensors with stable ids; the bank loads by set difference."""

from __future__ import annotations

import pytest
import torch

from adapters_store.blobstore import BlobStore
from tests.factories import CPU, bank_manifest, random_module
from worker.bank import LoadedBank
from worker.modules import AdapterModule, head_from_bytes, head_to_bytes
from worker.weight_pool import PooledModule


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


def test_pooled_bank_serves_from_pools_and_reuses_evicted_slots_after_reclaim(tmp_path) -> None:
    blobs = BlobStore(tmp_path)
    mods = [random_module(k, layer, seed=s) for s, (k, layer) in enumerate(
        [("bottleneck", 0), ("lora", 1), ("sparse", 0), ("bottleneck", 0)])]
    bank = LoadedBank(blobs, CPU, keep=1, pooled=True)
    v1 = bank.sync(bank_manifest(blobs, 1, mods[:3], {"a": [0, 1], "b": [2, None]}))
    a0, a1 = v1.tasks["a"].modules
    assert isinstance(a0, PooledModule) and isinstance(a1, PooledModule)
    sparse = v1.tasks["b"].modules[0]
    assert isinstance(sparse, PooledModule)  # sparse too: CSR arrays in a pool
    torch.testing.assert_close(sparse.parts["key"].csr().to_dense(),
                               mods[2].parts["key"].dense())
    pool, slot = a0.parts["attn"].pool, a0.parts["attn"].slot
    torch.testing.assert_close(pool.tensors["down_w"][slot], mods[0].parts["attn"].down.weight)
    # v2 drops a0: its slots are released, but not reused before the serving thread reclaims.
    bank.sync(bank_manifest(blobs, 2, [mods[1], mods[3]], {"a": [1, 0]}))
    assert mods[0].content_id() not in bank.modules
    fresh = bank.sync(bank_manifest(blobs, 3, [mods[1], mods[2], mods[3], random_module(
        "bottleneck", 0, seed=9)], {"a": [1, 0], "c": [3, None]})).tasks["c"].modules[0]
    assert isinstance(fresh, PooledModule) and fresh.parts["attn"].slot != slot
    bank.reclaim()
    again = bank.sync(bank_manifest(blobs, 4, [random_module("bottleneck", 0, seed=10)],
                                    {"d": [0, None]})).tasks["d"].modules[0]
    assert isinstance(again, PooledModule) and again.parts["attn"].slot in {
        slot, fresh.parts["attn"].slot, v1.tasks["a"].modules[0].parts["attn"].slot}


def test_pooled_bank_gives_back_the_slots_of_a_version_that_fails_to_load(tmp_path) -> None:
    blobs = BlobStore(tmp_path)
    good = random_module("bottleneck", 0, seed=1)
    bank = LoadedBank(blobs, CPU, keep=2, pooled=True)
    manifest = bank_manifest(blobs, 1, [good, random_module("bottleneck", 1, seed=2)],
                             {"a": [0, 1]})
    bad_id = next(m for m, rec in manifest.modules.items() if rec.layer == 1)
    manifest.modules[bad_id].blob = blobs.put(b"not safetensors")
    with pytest.raises(Exception):  # noqa: B017 - whatever the blob's parser raises
        bank.sync(manifest)
    assert bank.versions == {} and bank.modules == {}
    assert bank.pools is not None
    assert all(p.slots_in_use == 0 for p in bank.pools.pools.values())
