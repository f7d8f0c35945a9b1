"""Serving weights pooled per site: each loaded LoRA, bottleneck or sparse part is one slot."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from torch import nn

from adapters_store.module_config import (
    BottleneckConfig,
    LoraConfig,
    ModuleConfig,
    ModuleKind,
    SparseConfig,
    config_kind,
)
from worker.modules import (
    SPARSE_INDICES,
    SPARSE_VALUES,
    AdapterModule,
    csr_matrix,
    csr_product,
    sparse_csr_arrays,
)

# Why pools (S-LoRA's unified pool, at the granularity of one site): a batch of rows of many
# tasks gathers its rows' weights with one index_select per tensor instead of stacking one
# tensor per row, and a thousand loaded modules are a few large tensors instead of thousands of
# nn.Module trees (measured: about 32 KB of Python objects per bottleneck module and 15 KB per
# LoRA module on top of the weights), which also loads without building and randomly
# initialising a module only to overwrite it.
FIRST_CAPACITY = 8


class Scratch:
    """Buffers each forward thread reuses, by name, across every pool of a bank: a site's
    batched path fills one, uses it and is done with it before the next site runs. A fresh
    megabyte tensor per call page-faults on every forward (measured for pool gathers: 0.5 ms per
    gather instead of 0.1)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._local = threading.local()

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape`` for ``name``, valid until this thread's next ``get`` of it."""
        buffers: dict[str, torch.Tensor] = self._local.__dict__.setdefault("buffers", {})
        numel = math.prod(shape)
        buf = buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = buffers[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buf[:numel].view(shape)


class SitePool:
    """The stacked tensors of every loaded part of one kind and shape at one site (layer, part);
    ``specs`` gives each tensor's per-slot shape and dtype.

    Slots are written only while the bank's lock is held (a version being loaded); the serving
    thread reads them without a lock. A released slot is retired, not reused, until the serving
    thread says no forward that began before the release is still running (``reclaim``).
    """

    def __init__(self, specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 device: torch.device, lock: threading.Lock,
                 scratch: Scratch | None = None) -> None:
        self.specs = dict(specs)
        self.device = device
        self.scratch = scratch or Scratch(device)
        self._lock = lock
        self.capacity = 0
        self.tensors: dict[str, torch.Tensor] = {}
        self.tensors = self._grown(FIRST_CAPACITY)
        self._free: list[int] = []
        self._retired: list[int] = []
        self._used = 0

    def _grown(self, capacity: int) -> dict[str, torch.Tensor]:
        # empty: pages of slots never written are not resident.
        tensors = {n: torch.empty((capacity, *s), dtype=dtype, device=self.device)
                   for n, (s, dtype) in self.specs.items()}
        for name, old in self.tensors.items():
            tensors[name][:self.capacity].copy_(old)
        self.capacity = capacity
        return tensors

    def put(self, values: Mapping[str, torch.Tensor]) -> int:
        with self._lock:
            slot = self._free.pop() if self._free else None
        if slot is None:
            if self._used == self.capacity:
                # A new dict, assigned at once: a forward that read the old one keeps valid
                # tensors (every slot it can use was copied and is unchanged).
                self.tensors = self._grown(2 * self.capacity)
            slot, self._used = self._used, self._used + 1
        for name, value in values.items():
            self.tensors[name][slot].copy_(value)
        return slot

    def release(self, slot: int) -> None:
        with self._lock:
            self._retired.append(slot)

    def reclaim(self) -> None:
        with self._lock:
            self._free += self._retired
            self._retired = []

    @property
    def slots_in_use(self) -> int:
        with self._lock:
            return self._used - len(self._free) - len(self._retired)

    def gather(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` of tensor ``name``, into this thread's scratch buffer for ``name``:
        valid until its next gather of ``name`` from any pool of the bank."""
        src = self.tensors[name]
        out = self.scratch.get(f"gather:{name}", (index.numel(), *src.shape[1:]), src.dtype)
        return torch.index_select(src, 0, index, out=out)


class _PoolSlot:
    __slots__ = ("pool", "slot")

    def __init__(self, pool: SitePool, slot: int) -> None:
        self.pool, self.slot = pool, slot


class PooledLora(_PoolSlot):
    """A LoRA part served from its pool: y += scale · (x·Aᵀ)·Bᵀ (scale = alpha/r, times α)."""

    __slots__ = ()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = self.pool.tensors
        return (x @ t["A"][self.slot].t() @ t["B"][self.slot].t()) * t["scale"][self.slot]

    def apply_(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """y += this part's delta of x, in place (y contiguous, as a Linear's output is)."""
        t = self.pool.tensors
        shrunk = x @ t["A"][self.slot].t()
        shrunk *= t["scale"][self.slot]
        _addmm_into(y, shrunk, t["B"][self.slot].t())


class PooledBottleneck(_PoolSlot):
    """A bottleneck part served from its pool: a(y) = y + up(silu(down(y)))."""

    __slots__ = ()

    def _hidden(self, y: torch.Tensor) -> torch.Tensor:
        t = self.pool.tensors
        return nn.functional.silu(
            nn.functional.linear(y, t["down_w"][self.slot], t["down_b"][self.slot]),
            inplace=True)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        t = self.pool.tensors
        return y + nn.functional.linear(self._hidden(y), t["up_w"][self.slot],
                                        t["up_b"][self.slot])

    def apply_(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """y = a(y), in place: the up projection and its bias accumulate into y. ``x`` (the
        site's input) is not read: the same call as a LoRA part's, for the routing."""
        t = self.pool.tensors
        hidden = self._hidden(y)
        y += t["up_b"][self.slot]  # before the product: measured ~10% faster than after
        _addmm_into(y, hidden, t["up_w"][self.slot].t())


class PooledSparse(_PoolSlot):
    """A sparse ΔW served from its pool as CSR: y += ΔW·x, in fp32 whatever the serving dtype.
    The pool keeps CSR's own arrays (``sparse_csr_arrays``): int32 row pointers, int16 columns
    where they fit, fp32 values. A loaded part is 6 bytes per kept entry (1,000 tasks at 5% of
    q, k, v: 760 MiB) instead of the 28 of a SparseDelta with its cache. The routing runs every
    segment of a sparse pool in one product (``routing._batched_sparse``)."""

    __slots__ = ("shape",)

    def __init__(self, pool: SitePool, slot: int, shape: tuple[int, int]) -> None:
        super().__init__(pool, slot)
        self.shape = shape

    def csr(self) -> torch.Tensor:
        t = self.pool.tensors
        return csr_matrix(t["crow"][self.slot], t["col"][self.slot].to(torch.int32),
                          t["val"][self.slot], self.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return csr_product(self.csr(), x)


PooledPart = PooledLora | PooledBottleneck | PooledSparse


def _addmm_into(y: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> None:
    if y.is_contiguous():
        y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), w)
    else:
        y += h @ w


@dataclass(eq=False)
class PooledModule:
    """A served module whose parts live in pools; routes and routing use it as an AdapterModule
    (``layer``, ``parts`` by name), without an nn.Module tree. Hashed by identity, like one."""

    layer: int
    config: ModuleConfig
    parts: dict[str, PooledPart]

    @property
    def kind(self) -> ModuleKind:
        return config_kind(self.config)


ServedModule = AdapterModule | PooledModule


def poolable(config: ModuleConfig) -> bool:
    """LoRA (HAM's too), bottleneck and sparse modules are pooled."""
    return isinstance(config, LoraConfig | BottleneckConfig | SparseConfig)


class WeightPools:
    """Every site pool of one bank (one dtype and device); loads stored modules into slots."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype = dtype
        self.device = device
        self._lock = threading.Lock()
        self.pools: dict[tuple[object, ...], SitePool] = {}
        self.scratch = Scratch(device)
        self._expected: dict[str, dict[str, tuple[int, ...]]] = {}

    def _expected_shapes(self, config: ModuleConfig) -> dict[str, tuple[int, ...]]:
        """The tensors a stored module of ``config`` holds: a module of it, built once, says."""
        key = f"{config_kind(config)}:{config.model_dump_json()}"
        if key not in self._expected:
            template = AdapterModule(0, config)
            self._expected[key] = {k: tuple(v.shape) for k, v in template.state_dict().items()}
        return self._expected[key]

    def _pool(self, key: tuple[object, ...], shapes: dict[str, tuple[int, ...]],
              dtypes: Mapping[str, torch.dtype] | None = None) -> SitePool:
        pool = self.pools.get(key)
        if pool is None:
            specs = {n: (s, (dtypes or {}).get(n, self.dtype)) for n, s in shapes.items()}
            pool = self.pools[key] = SitePool(specs, self.device, self._lock, self.scratch)
        return pool

    def load(self, layer: int, config: ModuleConfig, data: bytes) -> PooledModule:
        """A stored module (safetensors bytes) into slots; the same checks as loading it into an
        AdapterModule: exactly the expected tensor names, each of its expected shape (a sparse
        module's indices in range and ascending, which its SparseDelta parts check)."""
        if isinstance(config, SparseConfig):
            return self.adopt(AdapterModule.from_bytes(layer, config, data))
        kind = config_kind(config)
        expected = self._expected_shapes(config)
        tensors = st_load(data)
        missing, unexpected = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
        if missing or unexpected:
            raise ValueError(f"{kind} module: missing tensors {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"{kind} module: {name} has shape "
                                 f"{tuple(tensors[name].shape)}, expected {shape}")
        return self._place(layer, config, tensors)

    def adopt(self, module: AdapterModule) -> PooledModule:
        """An in-memory module's weights copied into slots (benchmarks, tests)."""
        return self._place(module.layer, module.config, module.tensors())

    def _place(self, layer: int, config: ModuleConfig,
               tensors: dict[str, torch.Tensor]) -> PooledModule:
        parts: dict[str, PooledPart] = {}
        if isinstance(config, LoraConfig):
            for name in config.targets:
                a, b = tensors[f"parts.{name}.lora_A"], tensors[f"parts.{name}.lora_B"]
                gain = tensors.get(f"parts.{name}.gain")
                scale = config.alpha / config.rank * (1.0 if gain is None else float(gain))
                pool = self._pool((layer, name, "lora", tuple(a.shape), tuple(b.shape)),
                                  {"A": tuple(a.shape), "B": tuple(b.shape), "scale": ()})
                parts[name] = PooledLora(pool, pool.put(
                    {"A": a, "B": b, "scale": torch.tensor(scale)}))
        elif isinstance(config, BottleneckConfig):
            for name in ("attn", "ffn"):
                p = f"parts.{name}."
                values = {"down_w": tensors[p + "down.weight"], "down_b": tensors[p + "down.bias"],
                          "up_w": tensors[p + "up.weight"], "up_b": tensors[p + "up.bias"]}
                pool = self._pool((layer, name, "bottleneck", tuple(values["down_w"].shape)),
                                  {k: tuple(v.shape) for k, v in values.items()})
                parts[name] = PooledBottleneck(pool, pool.put(values))
        elif isinstance(config, SparseConfig):
            for name in config.targets:
                shape = config.shape(name)
                arrays = sparse_csr_arrays(tensors[f"parts.{name}.{SPARSE_INDICES}"],
                                           tensors[f"parts.{name}.{SPARSE_VALUES}"], shape)
                # One pool per number of kept entries: a merge keeps the union of its members'.
                pool = self._pool((layer, name, "sparse", shape, arrays["col"].numel()),
                                  {k: tuple(v.shape) for k, v in arrays.items()},
                                  {k: v.dtype for k, v in arrays.items()})
                parts[name] = PooledSparse(pool, pool.put(arrays), shape)
        else:
            raise TypeError(f"{type(config).__name__} modules are not pooled")
        return PooledModule(layer, config, parts)

    def release(self, module: PooledModule) -> None:
        for part in module.parts.values():
            part.pool.release(part.slot)

    def reclaim(self) -> None:
        """Called by the serving thread between forwards: slots released so far may be reused."""
        for pool in list(self.pools.values()):
            pool.reclaim()
