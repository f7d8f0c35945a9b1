"""Memory and swap time against the number of live tasks: a worker's LoadedBank syncs versions
of a growing synthetic bank, as the inference worker does between batches."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from adapters_store.blobstore import BlobStore
from adapters_store.collector import collector_held
from adapters_store.records import BankManifest, BaseModelInfo, HeadRecord, ModuleRecord, Route
from worker.bank import LoadedBank
from worker.modules import AdapterModule, head_to_bytes
from worker.serving_bench.synthetic import SyntheticBank, build_bank
from worker.version_prefetch import ServingGate

IDLE_WINDOW_MAX_S = 10.0


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where it is not available)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


class BankWriter:
    """Writes a synthetic bank's modules and heads as blobs and versions over a task prefix."""

    def __init__(self, bank: SyntheticBank, blobs: BlobStore, base: BaseModelInfo) -> None:
        self.bank, self.blobs, self.base = bank, blobs, base
        self.records: dict[AdapterModule, ModuleRecord] = {}
        self.heads: dict[str, HeadRecord] = {}

    def _record(self, module: AdapterModule, task_id: str) -> ModuleRecord:
        if module not in self.records:
            data = module.to_bytes()
            self.records[module] = ModuleRecord(
                id=module.content_id(), kind=module.kind, layer=module.layer,
                params=module.num_params, config=module.config, blob=self.blobs.put(data),
                created_by=task_id, created_in="v1")
        return self.records[module]

    def _head(self, task_id: str) -> HeadRecord:
        if task_id not in self.heads:
            head = self.bank.heads[task_id]
            self.heads[task_id] = HeadRecord(labels=["negative", "positive"],
                                             blob=self.blobs.put(head_to_bytes(head)),
                                             params=sum(p.numel() for p in head.parameters()))
        return self.heads[task_id]

    def manifest(self, tasks: int, number: int, parent: str | None) -> BankManifest:
        routes: dict[str, Route] = {}
        modules: dict[str, ModuleRecord] = {}
        for task_id in self.bank.task_ids[:tasks]:
            layers = []
            for module in self.bank.routes[task_id]:
                if module is None:
                    layers.append(None)
                    continue
                rec = self._record(module, task_id)
                modules[rec.id] = rec
                layers.append(rec.id)
            routes[task_id] = Route(
                task_id=task_id, layers=layers, head=self._head(task_id), input_kind="single",
                strategy="per_task", dataset_id="ds_synthetic", job_id="job_synthetic",
                trained_in=f"v{number}", full_route_params=0)
        return BankManifest(version=f"v{number}", number=number, parent=parent, base=self.base,
                            modules=modules, routes=routes, strategy="per_task",
                            note=f"synthetic {self.bank.shape} bank of {tasks} tasks")


def _step_times(step: Callable[[], object], while_alive: threading.Thread | None,
                seconds: float) -> list[float]:
    """Durations of serving steps run back to back while ``while_alive`` runs, or for
    ``seconds`` (at least one step either way)."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while not times or (while_alive.is_alive() if while_alive is not None
                        else time.perf_counter() < end):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def _measure(blobs: Path, manifest: Path, grown: Path, base_name: str, device: str,
             dtype_name: str, malloc_keep_mb: int) -> dict:
    """In a fresh process: RSS after loading the base, after loading ``manifest`` (cold load),
    then ``grown`` (one more task) prepared as the inference worker's prefetch thread does it
    (parse + load of the new modules) while this thread keeps running one-row forwards: how
    long the prepare takes and the longest forward meanwhile, against the longest without."""
    from worker.base_model import load_base
    from worker.host_memory import keep_freed_memory
    from worker.routed_model import RoutedEncoder
    from worker.serving_bench.synthetic import sentences

    keep_freed_memory(malloc_keep_mb)  # as the inference worker does: its heap is measured
    dev, dtype = torch.device(device), getattr(torch, dtype_name)
    model = RoutedEncoder(load_base(base_name, dev, 128)).eval().to(dtype)
    batch = model.base.tokenize(sentences(1, 20, 0), dev)
    gc.collect()
    before = rss_bytes()
    loaded = LoadedBank(BlobStore(blobs), dev, keep=2, dtype=dtype, pooled=True)
    started = time.perf_counter()
    current = loaded.sync(BankManifest.from_json(manifest.read_text()))
    cold = time.perf_counter() - started
    after = rss_bytes()

    gate = ServingGate()  # the forwards mark themselves, as the inference worker's do

    def forward() -> None:
        with gate.forward(), torch.inference_mode():
            model.embed(batch, None)

    for _ in range(3):
        forward()  # warm
    prepared: list[float] = []

    def prepare() -> None:
        begun = time.perf_counter()
        with collector_held():
            loaded.sync(BankManifest.from_json(grown.read_text(), gate.pause),
                        protect=frozenset({current.version}), pause=gate.pause)
        prepared.append(time.perf_counter() - begun)

    thread = threading.Thread(target=prepare)
    thread.start()
    during = _step_times(forward, thread, 0.0)
    thread.join()
    # As many seconds of forwards with nothing loading beside them: on a shared machine the
    # longest of many forwards grows with their number, so both sides get the same window.
    idle = _step_times(forward, None, min(prepared[0], IDLE_WINDOW_MAX_S))
    return {"rss_over_base_mib": round((after - before) / 2**20, 1), "cold_load_s": round(cold, 3),
            "prepare_one_more_task_s": round(prepared[0], 4),
            "longest_forward_ms_while_preparing": round(1000 * max(during), 1),
            "longest_forward_ms_idle": round(1000 * max(idle), 1),
            "median_forward_ms_while_preparing": round(1000 * statistics.median(during), 1),
            "median_forward_ms_idle": round(1000 * statistics.median(idle), 1),
            "rss_base_mib": round(before / 2**20, 1), "dtype": dtype_name}


def growth(shape: str, checkpoints: list[int], base: BaseModelInfo, root: Path,
           device: torch.device, dtype: str = "float32", *, malloc_keep_mb: int
           ) -> list[dict[str, float | int | str]]:
    """Versions of 1 … max tasks; for each checkpoint a fresh process loads the base, syncs that
    version (resident memory over the base, cold load time), then the version with one more
    task (the swap time), as an inference worker would, under its heap policy
    (``malloc_keep_mb``)."""
    bank = build_bank(shape, max(checkpoints) + 1, base.hidden_size, base.num_layers,
                      seed=int(hashlib.sha256(shape.encode()).hexdigest()[:6], 16))
    writer = BankWriter(bank, BlobStore(root / shape), base)
    out = []
    for i, n in enumerate(checkpoints):
        manifest = writer.manifest(n, i + 1, None)
        grown = writer.manifest(n + 1, 10_000 + n, manifest.version)
        paths = [root / f"{shape}-{n}.json", root / f"{shape}-{n}-grown.json"]
        for path, m in zip(paths, (manifest, grown), strict=True):
            path.write_text(m.model_dump_json())
        args = [str(root / shape), *map(str, paths), base.name, str(device), dtype,
                str(malloc_keep_mb)]
        done = subprocess.run([sys.executable, "-m", "worker.serving_bench.bank_growth", *args],
                              capture_output=True, text=True, check=True,
                              env=os.environ | {"HF_HUB_OFFLINE": "1"})
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        out.append({"shape": shape, "tasks": n, "modules": len(manifest.modules),
                    "adapter_params": sum(m.params for m in manifest.modules.values())}
                   | measured)
    return out


if __name__ == "__main__":
    blobs_dir, manifest_path, grown_path, base_name, device_name, dtype_arg, keep = sys.argv[1:8]
    sys.stdout.write(json.dumps(_measure(Path(blobs_dir), Path(manifest_path), Path(grown_path),
                                         base_name, device_name, dtype_arg, int(keep))) + "\n")
