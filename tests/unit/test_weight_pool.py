"""Pooled serving weights: equal to the modules they came from, checked on load, slots reused
only after the serving thread reclaims them."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from adapters_store.model_families import PARALLEL
from adapters_store.module_config import HamConfig, SparseConfig
from adapters_store.streams import InputItem
from tests.factories import CPU, random_module, tiny_model
from worker.modules import AdapterModule, sparse_csr_arrays
from worker.routing import (
    BOTTLENECK_BATCH_MIN_SEGMENTS,
    LORA_BATCH_MIN_SEGMENTS,
    Routing,
    SegmentRouting,
    route_order,
)
from worker.serving_bench import synthetic
from worker.weight_pool import FIRST_CAPACITY, PooledModule, WeightPools


def _ham_module(layer: int, seed: int) -> AdapterModule:
    config = HamConfig(hidden=32, rank=4, alpha=8.0, targets=["query", "key"])
    module = synthetic.random_module(layer, config, torch.Generator().manual_seed(seed), std=0.2)
    with torch.no_grad():
        for part in module.parts.values():
            part.gain.fill_(0.5 + 0.1 * seed)  # a gain that is not 1 must reach the scale
    return module


def _denser_sparse_module(layer: int, seed: int) -> AdapterModule:
    """Sparse with more kept entries than ``random_module``'s: a pool of its own at each site."""
    config = SparseConfig(hidden=32, intermediate=64, keep_ratio=0.3, targets=["query", "ffn_in"])
    return synthetic.random_module(layer, config, torch.Generator().manual_seed(seed), std=0.2)


def _served(pools: WeightPools, module: AdapterModule) -> PooledModule:
    return pools.load(module.layer, module.config, module.to_bytes())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_segments_equal_the_modules_per_group_in_any_order(seed: int) -> None:
    """Enough tasks that every kind's pool runs batched at some site, alongside pools run
    segment by segment and sparse pools of different sizes at one site; any arrival order, any
    mix of row lengths."""
    rng = random.Random(seed)
    model = tiny_model()
    pools = WeightPools(torch.float32, CPU)
    kinds = ["bottleneck", "lora", "sparse"] * 4
    modules = [[random_module(kind, layer, seed=100 * layer + k) for k, kind in enumerate(kinds)]
               + [_ham_module(layer, seed=100 * layer + 50),
                  _denser_sparse_module(layer, seed=100 * layer + 60)] for layer in range(2)]
    served = {id(m): _served(pools, m) for layer in modules for m in layer}
    tasks = [[rng.choice(modules[layer] + [None]) for layer in range(2)] for _ in range(20)]
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    items = [InputItem(text=" ".join(rng.sample(words, rng.randint(1, 12)))) for _ in range(32)]
    routes = [rng.choice(tasks) for _ in items]
    # Keys by position in ``modules`` (not id(), which would make the order, and so the number
    # of segments per pool, differ from run to run).
    position = {id(m): f"{k:02d}" for layer in modules for k, m in enumerate(layer)}
    order = route_order([tuple("" if m is None else position[id(m)] for m in r) for r in routes])
    sorted_items = [items[k] for k in order]
    sorted_routes = [routes[k] for k in order]
    pooled_routes = [[None if m is None else served[id(m)] for m in r] for r in sorted_routes]
    batch = model.base.tokenize(sorted_items, CPU)
    with torch.inference_mode():
        grouped = model.embed(batch, Routing.from_rows(sorted_routes, 2, CPU))
        routing = SegmentRouting.from_sorted_rows(pooled_routes, 2)
        pooled = model.embed(batch, routing)
        for row, route in enumerate(sorted_routes[:6]):
            alone = model.embed(model.base.tokenize([sorted_items[row]], CPU),
                                Routing.uniform(route))
            torch.testing.assert_close(pooled[row], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, grouped, atol=1e-5, rtol=0)
    # Each kind's batched path ran over several segments: a pool had enough at some layer
    # (sparse pools always run batched; two segments make a block-diagonal of two modules).
    for kind, at_least in (("bottleneck", BOTTLENECK_BATCH_MIN_SEGMENTS),
                           ("lora", LORA_BATCH_MIN_SEGMENTS),
                           ("sparse", 2)):
        assert any(sum(1 for s in segs if isinstance(s.module, PooledModule)
                       and s.module.config == modules[0][kinds.index(kind)].config) >= at_least
                   for segs in routing.layers), kind


def test_nothing_reads_a_scratch_buffer_before_writing_it() -> None:
    """Buffers keep the previous forward's values (or garbage): poisoned with NaN between two
    forwards, the second still equals the first (beta=0 products ignore what they overwrite)."""
    model = tiny_model()
    pools = WeightPools(torch.float32, CPU)
    modules = [random_module(kind, 0, seed=s) for s, kind in
               enumerate(["sparse", "sparse", "lora", "lora", "bottleneck"] * 2)]
    served = [pools.adopt(m) for m in modules]
    items = [InputItem(text=f"row {k} " + "word " * k) for k in range(len(served))]
    batch = model.base.tokenize(items, CPU)
    routing = SegmentRouting.from_sorted_rows([[m, None] for m in served], 2)
    with torch.inference_mode():
        first = model.embed(batch, routing)
        buffers = pools.scratch._local.buffers
        assert {"sparse_in", "sparse_out", "gather:col", "gather:A"} <= buffers.keys()
        for buf in buffers.values():
            buf.fill_(float("nan") if buf.is_floating_point() else torch.iinfo(buf.dtype).max)
        again = model.embed(batch, routing)
    torch.testing.assert_close(again, first, atol=0, rtol=0)


def test_a_single_pooled_task_equals_its_module() -> None:
    model = tiny_model()
    pools = WeightPools(torch.float32, CPU)
    items = [InputItem(text="a b c d"), InputItem(text="e f")]
    batch = model.base.tokenize(items, CPU)
    for module in (random_module("bottleneck", 0, seed=1), random_module("lora", 1, seed=2),
                   _ham_module(0, seed=3), random_module("sparse", 1, seed=4)):
        route = [module, None] if module.layer == 0 else [None, module]
        pooled = [None if m is None else pools.adopt(m) for m in route]
        with torch.inference_mode():
            want = model.embed(batch, Routing.uniform(route))
            got = model.embed(batch, SegmentRouting.from_sorted_rows([pooled] * 2, 2))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_one_sparse_part_over_every_row_folds_into_the_base_weight() -> None:
    pools = WeightPools(torch.float32, CPU)
    module = random_module("sparse", 0, seed=5)
    served = pools.adopt(module)
    base = torch.nn.Linear(32, 32)
    query = [("query", PARALLEL)]
    every_row = SegmentRouting.from_sorted_rows([[served, None]] * 3, 2)
    with torch.inference_mode():
        merged = every_row.merged_weight(0, query, base)
        assert merged is not None
        torch.testing.assert_close(merged, base.weight + module.parts["query"].dense())
        # Not when a row takes something else, at another layer, with grad, or in bf16.
        some_rows = SegmentRouting.from_sorted_rows([[served, None], [None, None]], 2)
        assert some_rows.merged_weight(0, query, base) is None
        assert every_row.merged_weight(1, query, base) is None
        assert every_row.merged_weight(0, query, base.to(torch.bfloat16)) is None
    assert torch.is_grad_enabled() and every_row.merged_weight(0, query, base) is None


def test_load_checks_names_and_shapes_like_the_module_would() -> None:
    pools = WeightPools(torch.float32, CPU)
    module = random_module("lora", 0, seed=1)
    tensors = st_load(module.to_bytes())
    broken = {
        "missing": {k: v for k, v in tensors.items() if not k.endswith("lora_B")},
        "unexpected": {**tensors, "parts.query.extra": torch.zeros(2)},
        "shape": {**tensors, "parts.query.lora_A": torch.zeros(3, 32)},
    }
    for name, bad in broken.items():
        with pytest.raises(ValueError, match="lora module"):
            pools.load(0, module.config, st_save(bad))
        assert all(p.slots_in_use == 0 for p in pools.pools.values()), name
    loaded = pools.load(0, module.config, module.to_bytes())
    part = loaded.parts["query"]
    torch.testing.assert_close(part.pool.tensors["A"][part.slot], module.parts["query"].lora_A)


def test_sparse_load_checks_indices_and_keeps_csr_arrays() -> None:
    pools = WeightPools(torch.bfloat16, CPU)
    module = random_module("sparse", 0, seed=3)
    tensors = st_load(module.to_bytes())
    name = "parts.query.indices"
    broken = {
        "out of range": {**tensors, name: tensors[name] + 32 * 32},
        "not ascending": {**tensors, name: tensors[name].flip(0)},
        "missing": {k: v for k, v in tensors.items() if k != "parts.key.values"},
    }
    for why, bad in broken.items():
        with pytest.raises(ValueError, match="sparse"):
            pools.load(0, module.config, st_save(bad))
        assert all(p.slots_in_use == 0 for p in pools.pools.values()), why
    part = pools.load(0, module.config, module.to_bytes()).parts["query"]
    # Columns of a matrix this narrow fit int16; values in fp32 whatever the serving dtype.
    assert [part.pool.tensors[k].dtype for k in ("crow", "col", "val")] == \
        [torch.int32, torch.int16, torch.float32]
    torch.testing.assert_close(part.csr().to_dense(), module.parts["query"].dense())
    x = torch.randn(2, 3, 32, dtype=torch.bfloat16)
    torch.testing.assert_close(part(x), module.parts["query"](x.float()).to(torch.bfloat16))


def test_sparse_columns_are_int16_only_where_they_fit() -> None:
    for width, dtype in ((2**15, torch.int16), (2**15 + 1, torch.int32)):
        index = torch.tensor([0, width - 1, width + 2], dtype=torch.int32)
        arrays = sparse_csr_arrays(index, torch.ones(3), (2, width))
        assert arrays["col"].dtype == dtype
        assert arrays["col"].tolist() == [0, width - 1, 2] and arrays["crow"].tolist() == [0, 2, 3]


def test_slots_are_reused_only_after_reclaim_and_growth_keeps_them() -> None:
    pools = WeightPools(torch.float32, CPU)
    modules = [random_module("bottleneck", 0, seed=s) for s in range(FIRST_CAPACITY + 3)]
    served = [pools.adopt(m) for m in modules]  # past the first capacity: the pool grew
    pool = served[0].parts["attn"].pool
    assert pool.capacity == 2 * FIRST_CAPACITY and pool.slots_in_use == len(modules)
    for module, got in zip(modules, served, strict=True):
        part = got.parts["ffn"]
        torch.testing.assert_close(part.pool.tensors["down_w"][part.slot],
                                   module.parts["ffn"].down.weight)
    gone = served[2]
    slot, held = gone.parts["attn"].slot, pool.tensors["down_w"][gone.parts["attn"].slot].clone()
    pools.release(gone)
    fresh = pools.adopt(random_module("bottleneck", 0, seed=99))
    # A forward that began before the release may still read the slot: it is not reused yet.
    assert fresh.parts["attn"].slot != slot
    torch.testing.assert_close(pool.tensors["down_w"][slot], held)
    pools.reclaim()
    again = pools.adopt(random_module("bottleneck", 0, seed=98))
    assert again.parts["attn"].slot == slot


def test_bf16_pools_hold_bf16_weights() -> None:
    pools = WeightPools(torch.bfloat16, CPU)
    module = random_module("bottleneck", 1, seed=4)
    part = pools.adopt(module).parts["attn"]
    assert part.pool.tensors["up_w"].dtype == torch.bfloat16
    y = torch.randn(2, 3, 32, dtype=torch.bfloat16)
    want = module.to(torch.bfloat16).parts["attn"](y)
    got = y.clone()
    part.apply_(y, got)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def test_gathers_reuse_a_buffer_per_thread() -> None:
    pools = WeightPools(torch.float32, CPU)
    served = [pools.adopt(random_module("lora", 0, seed=s)) for s in range(4)]
    pool = served[0].parts["query"].pool
    index = torch.tensor([p.parts["query"].slot for p in served[::-1]])
    first = pool.gather("A", index)
    torch.testing.assert_close(first, pool.tensors["A"].index_select(0, index))
    again = pool.gather("A", index[:2])  # the same buffer, fewer rows
    assert again.data_ptr() == first.data_ptr()
    torch.testing.assert_close(again, pool.tensors["A"].index_select(0, index[:2]))
    other: list[torch.Tensor] = []
    thread = threading.Thread(target=lambda: other.append(pool.gather("A", index)))
    thread.start()
    thread.join()
    assert other[0].data_ptr() != first.data_ptr()  # another thread, its own buffer
