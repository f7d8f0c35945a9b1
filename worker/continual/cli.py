"""`adapterd bench continual` / benchmarks/continual.py: parse options, run, write results."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.continual.presets import Value

ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path | None:
    for candidate in (ROOT.parent / "shared" / "datasets",
                      Path.cwd().parent / "shared" / "datasets"):
        if candidate.is_dir():
            return candidate
    return None


def build_parser() -> argparse.ArgumentParser:
    from worker.continual.presets import ALL_STRATEGIES, PRESETS
    from worker.continual.sequences import SEQUENCES

    p = argparse.ArgumentParser(
        prog="adapterd bench continual",
        description="Continual-learning benchmark: accuracy matrix, Average, BWT and parameters "
                    "for each strategy on a task sequence of real datasets.")
    p.add_argument("--sequence", default="olora1",
                   help=f"{', '.join(SEQUENCES)}, or dataset names joined by commas")
    p.add_argument("--strategies", default=",".join(ALL_STRATEGIES),
                   help="comma-separated (default: all)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset folders (default ../shared/datasets when present)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--base-model", default="all-MiniLM-L6-v2")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--train-cap", type=int, default=None, help="override the preset's")
    p.add_argument("--test-cap", type=int, default=None, help="override the preset's")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset setting (a Settings field), e.g. --set epochs=2")
    p.add_argument("--param", action="append", default=[], metavar="STRATEGY:NAME=VALUE",
                   help="a strategy hyperparameter, e.g. --param safm:search_learning_rate=0.01")
    p.add_argument("--tag", default=None, metavar="NAME",
                   help="store results as STRATEGY@NAME (a variant beside the default run)")
    p.add_argument("--replace", action="store_true",
                   help="overwrite a result file of another configuration instead of refusing")
    p.add_argument("--report-only", action="store_true",
                   help="re-write the Markdown and plots from the stored JSON; train nothing")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} {item!r}: expected NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def _params(items: list[str]) -> dict[str, dict[str, Value]]:
    out: dict[str, dict[str, Value]] = {}
    for item in items:
        strategy, sep, rest = item.partition(":")
        if not sep:
            raise SystemExit(f"--param {item!r}: expected STRATEGY:NAME=VALUE")
        for k, v in _pairs([rest], "--param").items():
            out.setdefault(strategy, {})[k] = [int(x) for x in v.split(",") if x] \
                if k == "forced_layers" else v
    return out


def tqdm_progress(total_tasks: int) -> Callable:
    from tqdm import tqdm

    def factory(strategy: str, index: int, task: str):  # noqa: ANN202
        bar = tqdm(total=1, unit="step", mininterval=1.0, dynamic_ncols=True, leave=False,
                   desc=f"{strategy} {index + 1}/{total_tasks} {task}")
        state = {"stage": None}

        def report(p: Any) -> None:
            if p.stage != state["stage"] or p.total_steps != bar.total:
                state["stage"] = p.stage
                bar.reset(total=max(1, p.total_steps))
                bar.set_description(f"{strategy} {index + 1}/{total_tasks} {task} {p.stage}")
            bar.update(max(0, p.step - bar.n))
            if p.loss is not None:
                bar.set_postfix(loss=f"{p.loss:.3f}", refresh=False)

        return report, bar.close

    return factory


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from adapters_store.settings import Settings
    from adapters_store.strategy_params import StrategyOverrides, resolve
    from worker.bench_env import hardware, versions
    from worker.continual.presets import ALL_STRATEGIES, PRESETS
    from worker.continual.report import differences, read, render, result_path, write
    from worker.continual.runner import RunConfig, quiet_progress, run_strategy
    from worker.continual.sequences import SequenceError, load_task, resolve_sequence
    from worker.runtime import build_model
    from worker.strategies import STRATEGIES

    if args.report_only:
        path = result_path(args.out, args.sequence, args.preset)
        try:
            files = render(path, ALL_STRATEGIES, with_plots=not args.no_plots)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("wrote " + ", ".join(map(str, files)))
        return 0
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        print(f"unknown strategies {unknown}; available: {sorted(STRATEGIES)}", file=sys.stderr)
        return 2
    data_dir = args.data_dir or default_data_dir()
    if data_dir is None or not data_dir.is_dir():
        print("no data dir: pass --data-dir (../shared/datasets is not there)", file=sys.stderr)
        return 2
    if args.tag is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_.=-]{0,40}", args.tag):
        print(f"--tag {args.tag!r}: use lower-case letters, digits and _.=-", file=sys.stderr)
        return 2
    preset = PRESETS[args.preset]
    overrides = _pairs(args.set, "--set")
    cli_params = _params(args.param)
    try:
        names = resolve_sequence(args.sequence)
        settings = Settings(**(preset.settings | overrides | {
            "base_model": args.base_model, "device": args.device, "seed": args.seed,
            "torch_threads": args.threads}))
    except (SequenceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train_cap = args.train_cap if args.train_cap is not None else preset.train_cap
    test_cap = args.test_cap if args.test_cap is not None else preset.test_cap
    try:
        tasks = [load_task(data_dir, n, train_cap, test_cap, args.seed) for n in names]
    except SequenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raw_params = {s: preset.params.get(s, {}) | cli_params.get(s, {})
                  for s in set(preset.params) | set(cli_params)}
    model, device = build_model(settings)
    try:  # a bad hyperparameter fails now, not after the strategies before it have run
        params = {s: StrategyOverrides.model_validate(v) for s, v in raw_params.items()}
        for strategy in strategies:
            resolve(strategy, params.get(strategy, StrategyOverrides()), settings,
                    model.num_layers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = RunConfig(settings=settings, params=params, device=device)
    progress = quiet_progress if args.no_progress else tqdm_progress(len(tasks))
    preset_info = {"name": preset.name, "train_cap": train_cap, "test_cap": test_cap,
                   "settings": preset.settings | overrides, "params": preset.params,
                   "description": preset.description}
    payload_base: dict[str, Any] = {
        "sequence": args.sequence, "tasks": names, "preset": preset_info, "seed": args.seed,
        "base_model": settings.base_model, "data_dir": str(data_dir),
        "datasets": {t.name: {"labels": t.labels, "input_kind": t.input_kind,
                              "source_rows": t.source_rows, "train_rows": len(t.train),
                              "test_rows": len(t.test), "test_majority": t.test_majority,
                              "notes": t.notes, "source_notes": t.source_notes}
                     for t in tasks},
        "settings": settings.model_dump(mode="json", exclude={"admin_api_keys",
                                                              "inference_api_keys"}),
        "hardware": hardware(device), "versions": versions(),
    }
    command = "adapterd bench continual " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = result_path(args.out, args.sequence, preset.name)
    differ = differences(read(path), payload_base)
    if differ and not args.replace:
        print(f"error: {path} holds results of "
              f"another configuration (differs in {', '.join(differ)}); pass --out elsewhere "
              "or --replace", file=sys.stderr)
        return 2
    replace = args.replace  # only the first write replaces the other configuration's file
    for strategy in strategies:
        key = f"{strategy}@{args.tag}" if args.tag else strategy
        started = time.monotonic()
        result = run_strategy(strategy, tasks, model, cfg, progress)
        result |= {"wall_seconds": round(time.monotonic() - started, 1),
                   "param_overrides": cli_params.get(strategy, {}), "command": command}
        bwt = "n/a" if result["bwt"] is None else f"{100 * result['bwt']:+.2f}"
        print(f"{key:10s} Average {100 * result['average']:6.2f}  BWT {bwt:>7s}  "
              f"adapter params {result['bank'].get('adapter_params', 0):>10,}  "
              f"train {result['train_seconds']:7.0f}s", flush=True)
        payload = payload_base | {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()),
                                  "results": {key: result}}
        merged = write(payload, args.out, ALL_STRATEGIES, with_plots=not args.no_plots,
                       replace=replace)
        replace = False
    print("wrote " + ", ".join(merged["files"]))
    return 0
