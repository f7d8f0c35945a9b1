"""SAFM's decision on a duplicate task: the same rows uploaded again under a new name, for each
decision mode (paper, budget, validation), on the cpu preset with the real base model.

A task is trained with per_task; the same rows are then trained with safm as a second task.
A decision that shares should reuse the first task's modules at most searched layers and add
parameters only at the forced layer. Writes docs/benchmarks/safm-duplicate.json and .md.
Usage: python benchmarks/safm_duplicate.py [--dataset amazon] [--train-cap 400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from adapters_store.settings import Settings
from worker.continual.presets import PRESETS
from worker.continual.sequences import load_task
from worker.evaluation import accuracy
from worker.runtime import build_model
from worker.sequence import Sequence

ROOT = Path(__file__).resolve().parents[1]
MODES = ("paper", "budget", "validation")


def run_mode(mode: str, rows: list, settings: Settings, name: str) -> dict:
    model, device = build_model(settings)
    with TemporaryDirectory() as tmp:
        seq = Sequence(model, Path(tmp), settings, device=device)
        started = time.monotonic()
        seq.add(name, rows, "per_task")
        per_task_s = time.monotonic() - started
        started = time.monotonic()
        out = seq.add(f"{name}-again", rows, "safm", decision=mode)
        safm_s = time.monotonic() - started
        manifest, job = out.manifest, out.result
        loaded = seq.bank.sync(manifest)
        acc = {t: accuracy(model, r.modules, r.head, seq.data[t][1], r.label_index)
               for t, r in loaded.tasks.items()}
        first = set(manifest.routes[name].layers)
        searched = [d for d in job.decisions if not d.forced]
        return {
            "mode": mode, "per_task_seconds": round(per_task_s, 1),
            "safm_seconds": round(safm_s, 1),
            "choices": [d.choice + ("*" if d.forced else "") for d in job.decisions],
            "reused_searched": sum(d.choice == "reuse" for d in searched),
            "searched": len(searched),
            "shares_first_task": sum(m in first for m in manifest.routes[f"{name}-again"].layers
                                     if m is not None),
            "params_added": job.params_added,
            "one_route_params": manifest.routes[name].full_route_params,
            "val_accuracy": acc, "replayed_rows": job.replayed_rows,
            "gate": job.gate.model_dump() if job.gate else None,
            "decisions": [d.model_dump(include={"layer", "choice", "forced", "weights", "losses",
                                                "method"}) for d in job.decisions],
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="amazon")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--train-cap", type=int, default=400)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    preset = PRESETS["cpu"]
    settings = Settings(**preset.settings, device="auto", torch_threads=args.threads)
    task = load_task(args.data_dir, args.dataset, args.train_cap, 1, settings.seed)
    results = []
    for mode in args.modes.split(","):
        r = run_mode(mode, task.train, settings, args.dataset)
        print(f"{mode:10s} {' '.join(r['choices'])} reused {r['reused_searched']}/"
              f"{r['searched']} params +{r['params_added']:,} acc {r['val_accuracy']} "
              f"{r['safm_seconds']}s (per_task {r['per_task_seconds']}s)", flush=True)
        results.append(r)
    hardware = {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available()}
    payload = {"dataset": args.dataset, "train_rows": len(task.train), "preset": "cpu",
               "settings": preset.settings, "hardware": hardware, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "safm-duplicate.json").write_text(json.dumps(payload, indent=2))
    lines = [f"# SAFM on a duplicate task ({args.dataset}, {len(task.train)} rows, cpu preset)",
             "", f"`python benchmarks/safm_duplicate.py`; hardware {hardware}. The first task is "
             "per_task; the second is the same rows under a new name, trained with safm. "
             "Choices per layer (E empty, R reuse, N new, * forced); accuracy on each task's "
             "held-out split (15% of its rows).", "",
             "| decision | choices | reused (searched layers) | params added | one route | "
             "val acc first / second | safm s | per_task s |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        acc = r["val_accuracy"]
        choices = " ".join(c[0].upper() + ("*" if c.endswith("*") else "") for c in r["choices"])
        lines.append(
            f"| {r['mode']} | {choices} | {r['reused_searched']}/{r['searched']} | "
            f"{r['params_added']:,} | {r['one_route_params']:,} | {acc[args.dataset]:.3f} / "
            f"{acc[args.dataset + '-again']:.3f} | {r['safm_seconds']} | "
            f"{r['per_task_seconds']} |")
    (args.out / "safm-duplicate.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
