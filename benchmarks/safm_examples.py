"""SAFM vs ACM vs per_task on the examples/ task sequence with the real base model: per-layer
decisions, parameters, and held-out accuracy of every task before and after each upload.

Runs the trainer's own code in process (worker.sequence); writes
docs/benchmarks/safm-examples.json and .md.  Usage: python benchmarks/safm_examples.py
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

from adapters_store.datasets import detect_format, parse_dataset
from adapters_store.settings import Settings
from worker.evaluation import accuracy
from worker.runtime import build_model
from worker.sequence import Sequence

ROOT = Path(__file__).resolve().parents[1]
TASKS = [("sentiment", "sentiment.jsonl"), ("topic", "topic.csv"),
         ("paraphrase", "paraphrase.jsonl"), ("sentiment-b", "sentiment.jsonl")]


def load(name: str) -> list:
    path = ROOT / "examples" / name
    return parse_dataset(path.read_bytes(), detect_format(name, None), min_rows_per_label=1,
                         max_chars=10_000, max_rows=100_000).rows


def evaluate(seq: Sequence) -> dict[str, float]:
    loaded = seq.bank.sync(seq.live)
    out = {}
    for task_id, runtime in loaded.tasks.items():
        val = seq.data[task_id][1]
        out[task_id] = accuracy(seq.model, runtime.modules, runtime.head, val,
                                runtime.label_index)
    return out


def run(strategy: str, settings: Settings) -> dict:
    model, device = build_model(settings)
    steps = []
    with TemporaryDirectory() as tmp:
        seq = Sequence(model, Path(tmp), settings, device=device)
        for task_id, name in TASKS:
            started = time.monotonic()
            out = seq.add(task_id, load(name), strategy)
            manifest, job = out.manifest, out.result
            seconds = time.monotonic() - started
            acc = evaluate(seq)
            steps.append({
                "task": task_id, "version": manifest.version, "seconds": round(seconds, 1),
                "decisions": [d.model_dump(include={"layer", "choice", "forced", "weights"})
                              for d in job.decisions],
                "params_added": job.params_added,
                "bank_adapter_params": manifest.totals()["adapter_params"],
                "one_adapter_per_task_params": manifest.totals()["one_adapter_per_task_params"],
                "replayed": job.replayed,
                "old_tasks": {t: e.model_dump() for t, e in job.old_tasks.items()},
                "accuracy_after": acc,
            })
            print(f"{strategy:8s} {task_id:12s} {seconds:6.1f}s acc {acc[task_id]:.3f} "
                  f"choices {[d.choice for d in job.decisions]} replayed {job.replayed}",
                  flush=True)
    return {"strategy": strategy, "steps": steps}


def table(results: list[dict]) -> str:
    lines = ["| strategy | after task | new task acc | all tasks acc (held-out) | decisions "
             "per layer | params added | bank params | per-task cost | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for s in r["steps"]:
            accs = ", ".join(f"{t} {a:.3f}" for t, a in s["accuracy_after"].items())
            choices = " ".join(d["choice"][0].upper() + ("*" if d["forced"] else "")
                               for d in s["decisions"])
            lines.append(f"| {r['strategy']} | {s['task']} | {s['accuracy_after'][s['task']]:.3f}"
                         f" | {accs} | {choices} | {s['params_added']:,} | "
                         f"{s['bank_adapter_params']:,} | {s['one_adapter_per_task_params']:,} "
                         f"| {s['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategies", default="safm,acm,per_task")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings(device="auto")
    results = [run(s, settings) for s in args.strategies.split(",")]
    hardware = {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available()}
    payload = {"tasks": TASKS, "base_model": settings.base_model, "hardware": hardware,
               "settings": settings.model_dump(mode="json", exclude={"admin_api_keys",
                                                                     "inference_api_keys"}),
               "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "safm-examples.json").write_text(json.dumps(payload, indent=2))
    md = ["# SAFM / ACM / per_task on the examples/ sequence", "",
          f"Base {settings.base_model}; hardware {hardware}. Decisions: E empty, R reuse, "
          "N new, * forced. Accuracy on each task's seeded held-out split.", "", table(results)]
    (args.out / "safm-examples.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
