"""The host-heap part: the bare forward under glibc's default heap against the workers' policy.

The two policies cannot be compared in one process (glibc's dynamic thresholds, once fixed by
mallopt, do not come back), so two child processes hold the same model and batch, and the parent
steps them in turn, one forward each, so machine drift falls on both alike.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

WARMUP = 3


def _child(keep_mb: int, base_name: str, threads: int, rows: int, words: int) -> None:
    """Answer each "go" on stdin with one timed forward: its seconds and minor page faults."""
    import torch

    from worker.base_model import load_base
    from worker.host_memory import keep_freed_memory
    from worker.routed_model import RoutedEncoder
    from worker.serving_bench.synthetic import sentences

    applied = keep_freed_memory(keep_mb)
    if threads:
        torch.set_num_threads(threads)
    model = RoutedEncoder(load_base(base_name, torch.device("cpu"), 128)).eval()
    batch = model.base.tokenize(sentences(rows, words, 0), torch.device("cpu"))
    with torch.inference_mode():
        for _ in range(WARMUP):
            model.embed(batch, None)
        _say({"ready": True, "applied": applied})
        for line in sys.stdin:
            if line.strip() != "go":
                break
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.perf_counter()
            model.embed(batch, None)
            took = time.perf_counter() - started
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            _say({"s": took, "faults": faults})


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def compare(base_name: str, threads: int, rows: int, words: int, reps: int,
            keep_mb: int) -> dict[str, Any]:
    """Median forward time and page faults per forward under each policy, stepped in turn."""
    policies = {"glibc_default": 0, "kept": keep_mb}
    children = {
        name: subprocess.Popen(
            [sys.executable, "-m", "worker.serving_bench.host_heap", str(keep), base_name,
             str(threads), str(rows), str(words)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=os.environ | {"HF_HUB_OFFLINE": "1"})
        for name, keep in policies.items()}
    try:
        applied = {name: json.loads(_line(child))["applied"] for name, child in children.items()}
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in children}
        for _ in range(reps):
            for name, child in children.items():
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
                samples[name].append(json.loads(_line(child)))
    finally:
        for child in children.values():
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    out: dict[str, Any] = {"rows": rows, "words": words, "reps": reps, "keep_mb": keep_mb,
                           "applied": applied["kept"]}
    for name, got in samples.items():
        out[name] = {"median_ms": round(1000 * statistics.median(s["s"] for s in got), 2),
                     "faults_per_forward": round(statistics.mean(s["faults"] for s in got), 1)}
    out["speedup"] = round(out["glibc_default"]["median_ms"] / out["kept"]["median_ms"], 3)
    return out


def _line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"host-heap child {child.args!r} exited with {child.wait()}")
    return line


if __name__ == "__main__":
    keep_arg, base_arg, threads_arg, rows_arg, words_arg = sys.argv[1:6]
    _child(int(keep_arg), base_arg, int(threads_arg), int(rows_arg), int(words_arg))
