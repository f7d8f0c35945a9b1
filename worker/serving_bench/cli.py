"""`adapterd bench serving` / benchmarks/serving.py: options, the four parts, result files."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("engine", "heap", "http", "swap", "memory")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapterd bench serving", description=__doc__)
    p.add_argument("--parts", default=",".join(PARTS), help=f"any of {','.join(PARTS)}")
    p.add_argument("--base-model", default="all-MiniLM-L6-v2")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--shapes", default="bottleneck,lora,safm")
    p.add_argument("--tasks", default="1,8,64,256,1000", help="live tasks per engine case")
    p.add_argument("--batch-rows", type=int, default=32)
    p.add_argument("--words", type=int, default=40, help="words per row (~1.2 tokens each)")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--no-peft", action="store_true", help="skip the peft contenders")
    p.add_argument("--http-tasks", type=int, default=64)
    p.add_argument("--http-shape", default="lora")
    p.add_argument("--overhead-requests", type=int, default=300,
                   help="predicts per client in the concurrency-1 overhead breakdown")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per HTTP level")
    p.add_argument("--swap-versions", type=int, default=5)
    p.add_argument("--memory-tasks", default="1,8,64,256,1000")
    p.add_argument("--memory-shapes", default="lora,safm,sparse,bottleneck,bottleneck@bfloat16",
                   help="shapes, each optionally @dtype (the worker's serving_dtype)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--note", action="append", default=[], help="a line for the notes section")
    return p


def recorded_argv(argv: list[str]) -> list[str]:
    """The command line as recorded: notes are listed under it, not inside it."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"unknown parts {unknown}; choose from {PARTS}", file=sys.stderr)
        return 2
    import torch

    from adapters_store.settings import Settings
    from worker.bench_env import hardware, versions
    from worker.runtime import build_model
    from worker.serving_bench.bank_growth import growth
    from worker.serving_bench.engine import PEFT_MAX_TASKS, EngineCase, run_case
    from worker.serving_bench.host_heap import compare
    from worker.serving_bench.http_load import (
        closed_loop,
        hot_swap,
        overhead_breakdown,
        running_service,
        summarise,
    )
    from worker.serving_bench.report import write

    settings = Settings(base_model=args.base_model, device=args.device,
                        torch_threads=args.threads)
    model, device = build_model(settings)
    model.eval()
    command = "adapterd bench serving " + shlex.join(
        recorded_argv(argv if argv is not None else sys.argv[1:]))
    payload: dict[str, Any] = {
        "base_model": args.base_model, "hardware": hardware(device), "versions": versions(),
        "command": command, "peft_max_tasks": PEFT_MAX_TASKS, "notes": args.note,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "engine" in parts:
        payload["engine_config"] = {"batch_rows": args.batch_rows, "words": args.words,
                                    "reps": args.reps}
        payload["engine"] = []
        for shape in args.shapes.split(","):
            for tasks in _ints(args.tasks):
                case = EngineCase(shape, tasks, args.batch_rows, args.words, args.reps)
                row = run_case(model, case, with_peft=not args.no_peft)
                payload["engine"].append(row)
                print(f"engine {shape:10s} {tasks:5d} tasks: " + "  ".join(
                    f"{k} {v:.3f}" for k, v in row["ratio_to_bare"].items()), flush=True)
    # On a GPU the forward's activations are not on the host heap.
    if "heap" in parts and device.type == "cpu":
        payload["heap"] = compare(args.base_model, args.threads, args.batch_rows, args.words,
                                  args.reps, settings.malloc_keep_mb)
        print(f"host heap: {payload['heap']}", flush=True)
    info = model.base.info
    env = {"ADAPTERD_DEVICE": args.device, "ADAPTERD_TORCH_THREADS": str(args.threads)}
    if "http" in parts or "swap" in parts:
        levels = _ints(args.concurrency)
        with tempfile.TemporaryDirectory(prefix="adapterd-serving-") as tmp, \
                running_service(Path(tmp), args.http_shape, args.http_tasks,
                                args.swap_versions, info, env) as service:
            task_ids = [f"task-{t:04d}" for t in range(args.http_tasks)]
            payload["http_config"] = {"tasks": args.http_tasks, "shape": args.http_shape,
                                      "duration_s": args.duration, "workers": 1}
            payload["http"] = []
            for c in levels if "http" in parts else []:
                samples = asyncio.run(closed_loop(service.url, task_ids, c, args.duration, c))
                row = {"concurrency": c} | summarise(samples, args.duration)
                payload["http"].append(row)
                print(f"http c={c:3d}: {row}", flush=True)
            if "http" in parts:
                payload["http_overhead"], payload["http_floors"] = asyncio.run(
                    overhead_breakdown(service.url, service.redis_url, task_ids,
                                       args.overhead_requests, 3))
                print(f"http overhead at c=1: {payload['http_overhead']}; floors: "
                      f"{payload['http_floors']}", flush=True)
            if "swap" in parts:
                c = 16
                baseline = next((r for r in payload["http"] if r["concurrency"] == c), None)
                if baseline is None:
                    samples = asyncio.run(closed_loop(service.url, task_ids, c, args.duration, 1))
                    baseline = summarise(samples, args.duration)
                swap = asyncio.run(hot_swap(service, task_ids, args.swap_versions, c,
                                            args.duration, 2))
                payload["swap"] = swap | {"concurrency": c, "duration_s": args.duration,
                                          "tasks": args.http_tasks, "shape": args.http_shape,
                                          "baseline": baseline}
                print(f"swap: {payload['swap']}", flush=True)
    if "memory" in parts:
        payload["memory"] = []
        with tempfile.TemporaryDirectory(prefix="adapterd-growth-") as tmp:
            for spec in args.memory_shapes.split(","):
                shape, _, dtype = spec.partition("@")
                rows = growth(shape, _ints(args.memory_tasks), info, Path(tmp), device,
                              dtype or "float32", malloc_keep_mb=settings.malloc_keep_mb)
                payload["memory"] += rows
                for r in rows:
                    print(f"memory {r}", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    files = write(payload, args.out, with_plots=not args.no_plots)
    print("wrote " + ", ".join(map(str, files)))
    return 0
