"""Row routing: which module each row of a batch takes at each layer, applied in one forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from adapters_store.model_families import PARALLEL
from worker.modules import AdapterModule
from worker.weight_pool import (
    PooledLora,
    PooledPart,
    PooledSparse,
    ServedModule,
    SitePool,
    csr_matrix,
)

# From this many segments of one pool at a site on, one gather of each row's weights from the
# pool and batched matmuls beat a pair of small matmuls per segment (measured on 2 CPU cores with
# MiniLM: LoRA r8 went from 0.84-0.90x to 0.99-1.02x the bare forward at 8-64 tasks;
# bottleneck-48 weights are 9x larger, so gathering them per row pays off later and less).
LORA_BATCH_MIN_SEGMENTS = 2
BOTTLENECK_BATCH_MIN_SEGMENTS = 4


@dataclass(frozen=True)
class Group:
    """Rows (None = all rows) that take ``module`` at one layer."""

    module: AdapterModule
    rows: torch.Tensor | None


class Routing:
    """A per-forward assignment of rows to modules, one group list per layer.

    Built from each row's route (module or None per layer); rows are grouped by module so each
    module runs once per layer on exactly its rows, and rows with an empty slot pass through.
    """

    def __init__(self, groups: list[list[Group]]) -> None:
        self.groups = groups

    @classmethod
    def from_rows(cls, row_routes: list[list[AdapterModule | None]], num_layers: int,
                  device: torch.device) -> Routing:
        n = len(row_routes)
        per_layer: list[list[Group]] = []
        for layer in range(num_layers):
            by_module: dict[AdapterModule, list[int]] = {}
            for row, route in enumerate(row_routes):
                module = route[layer]
                if module is not None:
                    by_module.setdefault(module, []).append(row)
            groups = []
            for module, rows in by_module.items():
                idx = None if len(rows) == n else torch.tensor(rows, device=device)
                groups.append(Group(module, idx))
            per_layer.append(groups)
        return cls(per_layer)

    @classmethod
    def uniform(cls, route: list[AdapterModule | None]) -> Routing:
        """Every row takes the same route (training on one task)."""
        return cls([[] if m is None else [Group(m, None)] for m in route])

    def apply(self, layer: int, part: str, mode: str, x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor:
        for group in self.groups[layer]:
            fn = group.module.parts[part] if part in group.module.parts else None
            if fn is None:
                continue
            if group.rows is None:
                y = y + fn(x) if mode == PARALLEL else fn(y)
            elif mode == PARALLEL:
                y = y.index_add(0, group.rows, fn(x.index_select(0, group.rows)))
            else:
                y = y.index_copy(0, group.rows, fn(y.index_select(0, group.rows)))
        return y


@dataclass(frozen=True)
class Segment:
    """Consecutive rows ``start:end`` that take ``module`` at one layer."""

    start: int
    end: int
    module: ServedModule


class SegmentRouting:
    """Routing for a batch whose rows are sorted by route (LoRAX's segments): at each layer, runs of
    consecutive rows with the same module are contiguous slices, so a module reads and writes its
    rows in place, with no index_select/index_copy and no copy of the whole activation.

    Sorting rows by their whole route keeps each task's rows together at every layer; a module
    shared by tasks that are not neighbours in that order just gets one segment per run.
    """

    def __init__(self, layers: list[list[Segment]], rows: int) -> None:
        self.layers = layers
        self.rows = rows

    @classmethod
    def from_sorted_rows(cls, row_routes: list[list[ServedModule | None]],
                         num_layers: int) -> SegmentRouting:
        layers: list[list[Segment]] = []
        for layer in range(num_layers):
            segments: list[Segment] = []
            start = 0
            for row in range(1, len(row_routes) + 1):
                module = row_routes[start][layer]
                if row < len(row_routes) and row_routes[row][layer] is module:
                    continue
                if module is not None:
                    segments.append(Segment(start, row, module))
                start = row
            layers.append(segments)
        return cls(layers, len(row_routes))

    def merged_weight(self, layer: int, parts: list[tuple[str, str]],
                      base: nn.Linear) -> torch.Tensor | None:
        """W0 + ΔW when every row takes the same sparse part at this Linear and nothing else:
        one product with the merged weight instead of the base's plus the sparse one (seed 002's
        merge, per forward: W0 + a CSR ΔW costs 60 µs at 384×384, the sparse product on 32 rows
        of MiniLM 0.5-1 ms). fp32 only: the small ΔW would be rounded into a bf16 W0."""
        if base.weight.dtype != torch.float32 or torch.is_grad_enabled():
            return None
        found = [(seg.module.parts[part], mode, seg) for part, mode in parts
                 for seg in self.layers[layer] if part in seg.module.parts]
        if len(found) != 1:
            return None
        fn, mode, seg = found[0]
        if mode != PARALLEL or not isinstance(fn, PooledSparse) \
                or (seg.start, seg.end) != (0, self.rows):
            return None
        return torch.add(base.weight, fn.csr())

    def apply(self, layer: int, part: str, mode: str, x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor:
        segments = [s for s in self.layers[layer] if part in s.module.parts]
        if not segments:
            return y
        if torch.is_grad_enabled():  # a module's backward may need the rows it read
            if len(segments) == 1 and segments[0].start == 0 and segments[0].end == self.rows:
                fn = segments[0].module.parts[part]
                return y + fn(x) if mode == PARALLEL else fn(y)
            return self._out_of_place(segments, part, mode, x, y)
        # y is the frozen Linear's fresh output: writing into it is safe and saves a full copy.
        pooled, unpooled = _pool_groups(segments, part)
        for group in pooled:
            first = group[0].module.parts[part]
            if isinstance(first, PooledSparse):
                _batched_sparse(group, part, x, y)
                continue
            if len(group) >= (LORA_BATCH_MIN_SEGMENTS if isinstance(first, PooledLora)
                              else BOTTLENECK_BATCH_MIN_SEGMENTS):
                _batched(group, part, x, y)
                continue
            for seg in group:
                seg.module.parts[part].apply_(x[seg.start:seg.end], y[seg.start:seg.end])
        for seg in unpooled:
            fn = seg.module.parts[part]
            if mode == PARALLEL:
                y[seg.start:seg.end] += fn(x[seg.start:seg.end])
            else:
                y[seg.start:seg.end] = fn(y[seg.start:seg.end])
        return y

    def _out_of_place(self, segments: list[Segment], part: str, mode: str, x: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
        pieces, at = [], 0
        for seg in segments:
            pieces.append(y[at:seg.start])
            fn = seg.module.parts[part]
            ys = y[seg.start:seg.end]
            pieces.append(ys + fn(x[seg.start:seg.end]) if mode == PARALLEL else fn(ys))
            at = seg.end
        pieces.append(y[at:])
        return torch.cat(pieces)


def _pool_groups(segments: list[Segment], part: str
                 ) -> tuple[list[list[Segment]], list[Segment]]:
    """Segments whose part lives in a pool, grouped by pool; and the unpooled ones."""
    by_pool: dict[SitePool, list[Segment]] = {}
    unpooled: list[Segment] = []
    for seg in segments:
        fn = seg.module.parts[part]
        if isinstance(fn, PooledPart):
            by_pool.setdefault(fn.pool, []).append(seg)
        else:
            unpooled.append(seg)
    return list(by_pool.values()), unpooled


def _batched(group: list[Segment], part: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """Every segment of one pool at this site in two batched matmuls (Punica's BGMV: each row
    gathers its own weights from the pool), instead of two small matmuls per segment."""
    first = group[0].module.parts[part]
    pool = first.pool
    slots, rows = _row_slots(group, part, y.device), _RowSpan(group, y.device)
    if isinstance(first, PooledLora):  # the scale goes on the rank-r product, the expand into y
        shrunk = torch.bmm(rows.read(x), pool.gather("A", slots).transpose(1, 2))
        shrunk *= pool.gather("scale", slots)[:, None, None]
        rows.add_product(y, shrunk, pool.gather("B", slots).transpose(1, 2))
        return
    hidden = nn.functional.silu(torch.baddbmm(
        pool.gather("down_b", slots)[:, None, :], rows.read(y),
        pool.gather("down_w", slots).transpose(1, 2)), inplace=True)
    # a(y) = y + up(silu(down(y))): the up projection and its bias accumulate into y.
    rows.add_product(y, hidden, pool.gather("up_w", slots).transpose(1, 2),
                     pool.gather("up_b", slots))


def _batched_sparse(group: list[Segment], part: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """Every segment of one sparse pool at this site in one CSR product: the rows' matrices
    form one block-diagonal matrix (block b = row b's ΔW) times the rows' inputs stacked as
    blocks of columns, so one call does what one call per segment did, with the same multiply-
    adds. Measured on 2 CPU cores, 32 rows of 50 MiniLM tokens at 5% kept: over 17 segments,
    one call plus building the matrix took about 3 ms against 4.7 for one call per segment;
    even for one segment, blocks of one row's 50 columns (which stay in cache) took 3.7-3.9 ms
    against 4.9-5.3 for one product over all 1,600 columns."""
    first = group[0].module.parts[part]
    pool, (out_f, in_f) = first.pool, first.shape
    slots, rows = _row_slots(group, part, y.device), _RowSpan(group, y.device)
    n, kept = slots.numel(), pool.specs["col"][0][0]
    block = torch.arange(n, device=y.device, dtype=torch.int32)[:, None]
    crow = torch.empty(n * out_f + 1, dtype=torch.int32, device=y.device)
    torch.add(pool.gather("crow", slots)[:, :-1], block * kept, out=crow[:-1].view(n, out_f))
    crow[-1] = n * kept
    # The pool's columns may be int16: widened by a copy, then offset (a mixed-dtype add with
    # out= took twice as long).
    col = pool.scratch.get("sparse_col", (n, kept), torch.int32)
    col.copy_(pool.gather("col", slots)).add_(block * in_f)
    big = csr_matrix(crow, col.view(-1), pool.gather("val", slots).view(-1),
                     (n * out_f, n * in_f))
    length = x.shape[1]
    stacked = pool.scratch.get("sparse_in", (n, in_f, length), torch.float32)
    stacked.copy_(rows.read(x).transpose(1, 2))
    # Into a reused buffer with beta=0: torch.sparse.mm zero-fills a fresh output and copies
    # the product into it (measured: 1.3 ms per call, 0.48 ms like this).
    delta = pool.scratch.get("sparse_out", (n * out_f, length), torch.float32)
    torch.addmm(delta, big, stacked.view(n * in_f, length), beta=0, out=delta)
    rows.add_(y, delta.view(n, out_f, length).transpose(1, 2).to(y.dtype))


def _row_slots(group: list[Segment], part: str, device: torch.device) -> torch.Tensor:
    """Each row's slot in the group's pool, in row order."""
    return _to(torch.tensor([seg.module.parts[part].slot for seg in group
                             for _ in range(seg.end - seg.start)]), device)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Index tensors are built on the host; on a GPU the copy must not wait for running kernels.
    return t if device.type == "cpu" else t.to(device, non_blocking=True)


class _RowSpan:
    """The rows of a group of segments: a slice when they are contiguous (the usual case once
    rows are sorted by route), else an index for index_select/index_add."""

    def __init__(self, group: list[Segment], device: torch.device) -> None:
        self.start, self.end = group[0].start, group[-1].end
        contiguous = all(a.end == b.start for a, b in zip(group, group[1:], strict=False))
        self.index = None if contiguous else _to(
            torch.tensor([r for seg in group for r in range(seg.start, seg.end)]), device)

    def read(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.start:self.end] if self.index is None else t.index_select(0, self.index)

    def add_(self, y: torch.Tensor, delta: torch.Tensor) -> None:
        """y[rows] += delta, in place."""
        if self.index is None:
            y[self.start:self.end] += delta
        else:
            y.index_add_(0, self.index, delta)

    def add_product(self, y: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                    bias: torch.Tensor | None = None) -> None:
        """y[rows] += h @ w (+ bias per row), in place: into a contiguous span directly."""
        if self.index is None:
            span = y[self.start:self.end]
            if bias is not None:  # before the product: measured ~10% faster than after
                span += bias[:, None, :]
            span.baddbmm_(h, w)
            return
        delta = torch.bmm(h, w)
        if bias is not None:
            delta += bias[:, None, :]
        y.index_add_(0, self.index, delta)


def route_order(keys: list[tuple[str, ...]]) -> list[int]:
    """Row indexes sorted by route key (stable), so equal routes become neighbours."""
    return sorted(range(len(keys)), key=keys.__getitem__)


class RoutingLike(Protocol):
    """Anything that can transform a routed site's output: row routing or a search mixture."""

    def apply(self, layer: int, part: str, mode: str, x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor: ...


class RoutingSlot:
    """The routing of the forward in progress; None means the bare base model."""

    def __init__(self) -> None:
        self.current: RoutingLike | None = None


class RoutedLinear(nn.Module):
    """A frozen base Linear whose output is passed through the routed modules' parts for its
    sites: parallel deltas (computed from the input) first, then post transforms."""

    def __init__(self, base: nn.Linear, slot: RoutingSlot, layer: int,
                 parts: list[tuple[str, str]]) -> None:
        super().__init__()
        self.base = base
        self.slot = slot
        self.layer = layer
        self.parts = sorted(parts, key=lambda pm: pm[1] != PARALLEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.slot.current
        if routing is None:
            return self.base(x)
        if isinstance(routing, SegmentRouting):
            merged = routing.merged_weight(self.layer, self.parts, self.base)
            if merged is not None:
                return nn.functional.linear(x, merged, self.base.bias)
        y = self.base(x)
        for part, mode in self.parts:
            y = routing.apply(self.layer, part, mode, x, y)
        return y
