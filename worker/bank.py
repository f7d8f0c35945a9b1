"""The worker's loaded bank: modules and heads in memory, routing tables per loaded version."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from adapters_store.blobstore import Blobs
from adapters_store.records import PAUSE_EVERY, BankManifest, InputKind
from worker.host_memory import return_freed_memory
from worker.modules import AdapterModule, head_from_bytes
from worker.weight_pool import PooledModule, ServedModule, WeightPools, poolable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRuntime:
    """What serving one task needs: its module per layer (with the module's id), head, labels."""

    task_id: str
    module_ids: list[str | None]
    modules: list[ServedModule | None]
    head: nn.Linear
    labels: list[str]
    input_kind: InputKind

    @property
    def label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


@dataclass(frozen=True)
class LoadedVersion:
    manifest: BankManifest
    tasks: dict[str, TaskRuntime]
    modules: dict[str, ServedModule]  # this version's modules by id

    def module(self, module_id: str) -> ServedModule:
        return self.modules[module_id]

    @property
    def version(self) -> str:
        return self.manifest.version


class LoadedBank:
    """Reconciles wanted (manifest) against loaded modules by set difference; loads are idempotent.

    Modules are keyed by content id, so a module shared by many versions is loaded once, and a
    swap only loads what the new version adds. The newest ``keep`` versions stay servable.
    Syncs are serialised by a lock: the inference worker prefetches versions on a second thread
    while its serving thread may ask for the live one.

    A ``pooled`` bank (the inference worker's) loads LoRA and bottleneck modules into per-site
    weight pools instead of nn.Modules (worker/weight_pool.py); the trainer's bank keeps
    AdapterModules, which it trains, copies and merges. A pooled bank's serving thread calls
    ``reclaim`` between forwards, so slots of evicted modules are reused only once no forward
    can still read them.
    """

    def __init__(self, blobs: Blobs, device: torch.device, keep: int = 2,
                 dtype: torch.dtype = torch.float32, pooled: bool = False) -> None:
        self.blobs = blobs
        self.device = device
        self.dtype = dtype  # serving may run in bf16/fp16; modules are stored in fp32
        self.keep = keep
        self.pools = WeightPools(dtype, device) if pooled else None
        self.modules: dict[str, ServedModule] = {}
        self.heads: dict[str, nn.Linear] = {}
        self.versions: OrderedDict[str, LoadedVersion] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, version: str) -> LoadedVersion | None:
        return self.versions.get(version)

    def _load_module(self, manifest: BankManifest, module_id: str) -> ServedModule:
        rec = manifest.modules[module_id]
        if self.pools is not None and poolable(rec.config):
            return self.pools.load(rec.layer, rec.config, self.blobs.get(rec.blob))
        module = AdapterModule.from_bytes(rec.layer, rec.config, self.blobs.get(rec.blob))
        return module.to(self.device, self.dtype).eval().requires_grad_(False)

    def _load_head(self, digest: str) -> nn.Linear:
        head = head_from_bytes(self.blobs.get(digest))
        return head.to(self.device, self.dtype).eval().requires_grad_(False)

    def sync(self, manifest: BankManifest, protect: frozenset[str] = frozenset(),
             pause: Callable[[], None] | None = None) -> LoadedVersion:
        """Make ``manifest`` servable; check everything loads before anything changes. Versions
        in ``protect`` (the one being served) are never evicted to make room; ``pause`` runs
        every few modules and routes (a loader thread yielding to the serving one)."""
        with self._lock:
            return self._sync(manifest, protect, pause or (lambda: None))

    def _sync(self, manifest: BankManifest, protect: frozenset[str],
              pause: Callable[[], None]) -> LoadedVersion:
        if manifest.version in self.versions:
            self.versions.move_to_end(manifest.version)
            return self.versions[manifest.version]
        new_modules: dict[str, ServedModule] = {}
        try:
            for n, m in enumerate(manifest.modules.keys() - self.modules.keys(), 1):
                new_modules[m] = self._load_module(manifest, m)
                if n % PAUSE_EVERY == 0:
                    pause()
            wanted_heads = {r.head.blob for r in manifest.routes.values()}
            new_heads = {h: self._load_head(h) for h in wanted_heads - self.heads.keys()}
        except BaseException:
            self._release(new_modules.values())  # nothing changed: the slots go back
            raise
        self.modules.update(new_modules)
        self.heads.update(new_heads)
        tasks = {}
        for n, (task_id, route) in enumerate(manifest.routes.items(), 1):
            tasks[task_id] = TaskRuntime(
                task_id=task_id,
                module_ids=list(route.layers),
                modules=[None if m is None else self.modules[m] for m in route.layers],
                head=self.heads[route.head.blob],
                labels=route.head.labels,
                input_kind=route.input_kind,
            )
            if n % PAUSE_EVERY == 0:
                pause()
        loaded = LoadedVersion(manifest=manifest, tasks=tasks,
                               modules={m: self.modules[m] for m in manifest.modules})
        self.versions[manifest.version] = loaded
        evictable = [v for v in self.versions if v not in protect and v != manifest.version]
        for version in evictable[:max(0, len(self.versions) - self.keep)]:
            del self.versions[version]
        self._unload_unused()
        if new_modules or new_heads:
            return_freed_memory()  # the load's buffers, not kept for the forwards
        log.info("bank %s loaded: %d new modules, %d new heads, %d modules resident",
                 manifest.version, len(new_modules), len(new_heads), len(self.modules))
        return loaded

    def _unload_unused(self) -> None:
        used = {m for v in self.versions.values() for m in v.manifest.modules}
        used_heads = {r.head.blob for v in self.versions.values()
                      for r in v.manifest.routes.values()}
        self._release(self.modules.pop(m) for m in self.modules.keys() - used)
        for digest in self.heads.keys() - used_heads:
            del self.heads[digest]

    def _release(self, modules: Iterable[ServedModule]) -> None:
        for module in modules:
            if isinstance(module, PooledModule) and self.pools is not None:
                self.pools.release(module)

    def reclaim(self) -> None:
        """The serving thread, between forwards: released pool slots may be reused now."""
        if self.pools is not None:
            self.pools.reclaim()
