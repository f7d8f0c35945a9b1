"""The merge-scaling benchmark (seed 002's in-distribution merging result, on our data): train
one expert per task (sparse, and LoRA), merge the first 2, 4, 8, ... experts with each method,
and score every member through the merged modules with its own head, relative to its expert.

Usage: adapterd bench merging [--tasks mnli,cb,...] [--sizes 2,4,8] [--train-cap 400]
Writes docs/benchmarks/merge-scaling.{json,md}. Accuracies are on each dataset's test split
(capped) and, beside them, on the held-out split of its training rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from adapters_store.settings import Settings
from adapters_store.strategy_params import StrategyOverrides
from worker.bench_env import hardware, versions
from worker.continual.cli import ROOT, default_data_dir
from worker.continual.presets import PRESETS
from worker.continual.sequences import SEQUENCES, load_task
from worker.evaluation import accuracy
from worker.merging import merge_layer
from worker.runtime import build_model
from worker.sequence import Sequence

# expert kind -> (strategy, upload overrides, merge methods that apply to it)
EXPERTS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "sparse": ("sparse", {}, ("uniform_sparse", "uniform", "ties")),
    "lora": ("per_task", {"module_kind": "lora"}, ("uniform", "ties")),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapterd bench merging", description=__doc__)
    p.add_argument("--tasks", default=",".join(SEQUENCES["long15"]),
                   help="dataset names in merge order (default: long15's order)")
    p.add_argument("--sizes", default="2,4,8", help="how many of the first tasks to merge")
    p.add_argument("--experts", default="sparse,lora")
    p.add_argument("--train-cap", type=int, default=400)
    p.add_argument("--test-cap", type=int, default=200)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--density", type=float, default=0.2, help="ties: fraction kept per task")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--base-model", default="all-MiniLM-L6-v2")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    return p


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    sizes = [s for s in sizes if 2 <= s <= len(names)]
    names = names[:max(sizes)]
    data_dir = args.data_dir or default_data_dir()
    settings = Settings(**(PRESETS["cpu"].settings | {
        "max_length": args.max_length, "base_model": args.base_model, "device": args.device,
        "seed": args.seed, "torch_threads": args.threads}))
    tasks = [load_task(data_dir, n, args.train_cap, args.test_cap, args.seed) for n in names]
    model, device = build_model(settings)
    out: dict[str, Any] = {"tasks": names, "sizes": sizes, "density": args.density,
                           "train_cap": args.train_cap, "test_cap": args.test_cap,
                           "settings": {"max_length": args.max_length, **PRESETS["cpu"].settings},
                           "hardware": hardware(device), "versions": versions(), "experts": {}}
    for kind in [k.strip() for k in args.experts.split(",") if k.strip()]:
        strategy, given, methods = EXPERTS[kind]
        started = time.monotonic()
        with TemporaryDirectory(prefix=f"adapterd-merge-{kind}-") as tmp:
            seq = Sequence(model, Path(tmp), settings, device=device)
            for task in tasks:
                seq.add(task.name, task.train, strategy, StrategyOverrides.model_validate(given))
                print(f"{kind} expert {task.name} trained", flush=True)
            loaded = seq.bank.sync(seq.live)
            experts = {}
            for task in tasks:
                rt = loaded.tasks[task.name]
                experts[task.name] = {
                    "test": accuracy(model, rt.modules, rt.head, task.test, rt.label_index),
                    "val": accuracy(model, rt.modules, rt.head, seq.data[task.name][1],
                                    rt.label_index)}
            train_s = time.monotonic() - started
            rows = []
            for size in sizes:
                members = names[:size]
                for method in methods:
                    merged = [merge_layer([loaded.tasks[t].modules[layer] for t in members],
                                          method, model.intermediate_size, args.density)
                              for layer in range(model.num_layers)]
                    merged = [None if m is None else m.to(device) for m in merged]
                    per = {}
                    for task in tasks[:size]:
                        rt = loaded.tasks[task.name]
                        per[task.name] = {
                            "test": accuracy(model, merged, rt.head, task.test, rt.label_index),
                            "val": accuracy(model, merged, rt.head, seq.data[task.name][1],
                                            rt.label_index)}
                    params = sum(m.num_params for m in merged if m is not None)
                    row = {"size": size, "method": method, "members": per, "merged_params": params,
                           "experts_params": sum(loaded.manifest.route_params(t) for t in members)}
                    for split in ("test", "val"):
                        row[f"mean_{split}"] = _mean([p[split] for p in per.values()])
                        row[f"expert_mean_{split}"] = _mean([experts[t][split] for t in members])
                        row[f"relative_{split}"] = _mean([
                            per[t][split] / experts[t][split] for t in members
                            if experts[t][split] > 0])
                    rows.append(row)
                    print(f"{kind:6s} {method:14s} k={size:2d}: merged "
                          f"{100 * row['mean_test']:.2f} vs experts "
                          f"{100 * row['expert_mean_test']:.2f} (relative "
                          f"{row['relative_test']:.3f})", flush=True)
        out["experts"][kind] = {"strategy": strategy, "overrides": given, "experts": experts,
                                "merges": rows, "train_seconds": round(train_s, 1)}
    return out


def markdown(payload: dict[str, Any]) -> str:
    lines = ["# Merge scaling (seed 002's in-distribution merging, on our data)", "",
             f"Tasks in merge order: {', '.join(payload['tasks'])}. Each expert is trained alone "
             f"on {payload['train_cap']} rows (cpu preset, {payload['settings']['max_length']} "
             "tokens); a merge of k experts serves each member through the merged modules with "
             "the member's own head. *relative* = mean over members of merged accuracy ÷ the "
             f"member's expert accuracy (test split, ≤{payload['test_cap']} rows; val = the "
             f"held-out split of the training rows). ties keeps {payload['density']:.0%} per "
             "task (peft's ties).", "",
             f"Hardware: {payload['hardware']}", ""]
    for kind, block in payload["experts"].items():
        lines += [f"## {kind} experts ({block['strategy']} {block['overrides'] or ''})", "",
                  "| k | method | merged acc (test) | experts (test) | relative (test) | "
                  "relative (val) | merged params | experts' params |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in block["merges"]:
            lines.append(f"| {r['size']} | {r['method']} | {100 * r['mean_test']:.2f} | "
                         f"{100 * r['expert_mean_test']:.2f} | {r['relative_test']:.3f} | "
                         f"{r['relative_val']:.3f} | {r['merged_params']:,} | "
                         f"{r['experts_params']:,} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    payload = run(args)
    payload["command"] = "adapterd bench merging " + " ".join(argv or sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "merge-scaling.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / "merge-scaling.md").write_text(markdown(payload))
    print(f"wrote {args.out / 'merge-scaling.json'}, {args.out / 'merge-scaling.md'}")
    return 0
