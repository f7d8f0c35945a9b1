"""Benchmark result files: the JSON of every number, a Markdown table and PNG plots."""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from worker.continual.metrics import average, average_se

# Fields that must match for results of separate runs to share one file.
COMPARABLE = ("sequence", "tasks", "preset", "seed", "base_model")
# Strategies that decide per layer; their decisions get a table.
SEARCHING = ("safm", "acm")


def stem(sequence: str, preset: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in sequence)[:80]
    return f"continual-{safe}-{preset}"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise read-merge-write of one result file across concurrent benchmark processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def differences(old: dict[str, Any] | None, payload: dict[str, Any]) -> list[str]:
    """Fields that keep ``payload``'s results from sharing a file with ``old``'s."""
    if old is None:
        return []

    def key(d: dict[str, Any], k: str) -> Any:  # noqa: ANN401 - any JSON value
        # A reworded preset description does not change what ran.
        v = d.get(k)
        return {n: x for n, x in v.items() if n != "description"} if k == "preset" else v

    return [k for k in COMPARABLE if key(old, k) != key(payload, k)]


def merge(path: Path, payload: dict[str, Any], replace: bool = False) -> dict[str, Any]:
    """Keep results of strategies not run now from an earlier, comparable run in ``path``."""
    old = read(path)
    if old is None or replace:
        return payload
    differ = differences(old, payload)
    if differ:
        raise ValueError(f"{path} holds results of another configuration ({', '.join(differ)})")
    results = dict(old.get("results", {}))
    results.update(payload["results"])
    return payload | {"results": results}


def _fmt(v: float | None, scale: float = 100.0, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v * scale:+.2f}" if signed else f"{v * scale:.2f}"


def _order(results: dict[str, Any], preferred: tuple[str, ...]) -> list[str]:
    """Preferred strategies first; a tagged variant (``safm@tag``) right after its strategy."""
    def key(name: str) -> tuple[int, str, str]:
        base, _, tag = name.partition("@")
        rank = preferred.index(base) if base in preferred else len(preferred)
        return rank, base, tag

    return sorted(results, key=key)


def markdown(payload: dict[str, Any], preferred: tuple[str, ...]) -> str:
    results = payload["results"]
    names = _order(results, preferred)
    per_task = results.get("per_task", {}).get("bank", {}).get("adapter_params")
    hw = payload["hardware"]
    lines = [
        f"# Continual learning: `{payload['sequence']}`, preset `{payload['preset']['name']}`",
        "",
        f"Order: {' → '.join(payload['tasks'])}. Base {payload['base_model']}, "
        f"{payload['preset']['settings'].get('max_length')} tokens, seed {payload['seed']}. "
        f"Hardware: {hw.get('cpu_model', '?')} ({hw.get('cpu_count')} cores, "
        f"{hw.get('threads')} torch threads), "
        f"{'CUDA ' + hw['cuda_device'] if hw.get('cuda_device') else 'no GPU'}; "
        f"torch {payload['versions'].get('torch')}. Written by: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(
            results[s].get("command") or payload.get("command", "?") for s in names)) + ".",
        "",
        "Average = mean test accuracy over all tasks after the last one; BWT = mean over earlier "
        "tasks of (final accuracy − accuracy right after learning it), in points. Adapter params "
        "= unique module parameters in the final bank (heads not included: every strategy has "
        "one linear head per task). Time = training wall seconds, all tasks. val = the same on "
        "the validation rows carved from each task's train data (the only split any choice of "
        "hyperparameters may look at). SE = binomial standard error of Average from the test-set "
        "sizes: gaps under about 2 SE are within noise.",
        "",
        "Test rows per task (majority-class accuracy): " + ", ".join(
            f"{name} {d['test_rows']} ({_fmt(d.get('test_majority'))})"
            for name, d in payload["datasets"].items()) + ".",
        "",
        "| strategy | Average | ± SE | BWT | adapter params (bank) | % of per_task | per task | "
        "heads | train s | s / task | val Average | val BWT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [payload["datasets"][t]["test_rows"] for t in payload["tasks"]]
    for s in names:
        r = results[s]
        bank = r["bank"].get("adapter_params", 0)
        share = f"{100 * bank / per_task:.0f}%" if per_task else "n/a"
        n = max(1, len(r["tasks"]))
        lines.append(
            f"| {s} | {_fmt(r['average'])} | {_fmt(average_se(r['matrix'], rows))} "
            f"| {_fmt(r['bwt'], signed=True)} | {bank:,} | {share} "
            f"| {bank // n:,} | {r['bank'].get('head_params', 0):,} | {r['train_seconds']:.0f} "
            f"| {r['train_seconds'] / n:.0f} | {_fmt(r.get('val_average'))} "
            f"| {_fmt(r.get('val_bwt'), signed=True)} |")
    lines += ["", "## Accuracy matrices (rows: after task i; columns: task j; test accuracy %)", ""]
    for s in names:
        r = results[s]
        lines += [f"**{s}**", "", "| after \\ on | " + " | ".join(r["tasks"]) + " |",
                  "|---|" + "---|" * len(r["tasks"])]
        for i, row in enumerate(r["matrix"]):
            cells = ["" if v is None else _fmt(v) for v in row]
            lines.append(f"| {r['tasks'][i]} | " + " | ".join(cells) + " |")
        lines.append("")
    searched = [s for s in names if s.partition("@")[0] in SEARCHING]
    if searched:
        lines += ["## Per-layer decisions", "",
                  "E empty, R reuse (of the module first trained by the named task), N new, "
                  "* forced layer.", ""]
        for s in searched:
            r = results[s]
            layers = len(r["steps"][0]["decisions"])
            lines += [f"**{s}**", "", "| task | " + " | ".join(f"L{i}" for i in range(layers))
                      + " | params added | replayed |", "|---|" + "---|" * (layers + 2)]
            for st in r["steps"]:
                cells = [d["choice"][0].upper() + ("*" if d["forced"] else "")
                         for d in st["decisions"]]
                lines.append(f"| {st['task']} | " + " | ".join(cells)
                             + f" | {st['params_added']:,} | {', '.join(st['replayed']) or '–'} |")
            lines.append("")
    notes = {name: d["notes"] for name, d in payload["datasets"].items() if d["notes"]}
    if notes:
        lines += ["## Data", ""]
        lines += [f"- {name}: " + "; ".join(n) for name, n in notes.items()]
        lines.append("")
    lines += ["## Preset", "", payload["preset"]["description"], ""]
    return "\n".join(lines)


def result_path(out: Path, sequence: str, preset: str) -> Path:
    return out / f"{stem(sequence, preset)}.json"


def plots(payload: dict[str, Any], out: Path, base: str, preferred: tuple[str, ...]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = payload["results"]
    names = _order(results, preferred)
    tasks = payload["tasks"]
    n = len(names)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1, 3.4), squeeze=False)
    for k, (ax, s) in enumerate(zip(axes[0], names, strict=True)):
        m = [[float("nan") if v is None else 100 * v for v in row] for row in results[s]["matrix"]]
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        ax.set_title(f"{s}\navg {_fmt(results[s]['average'])}, "
                     f"BWT {_fmt(results[s]['bwt'], signed=True)}", fontsize=9)
        ax.set_xticks(range(len(tasks)), tasks, rotation=60, fontsize=7)
        # Row labels once, on the left: the panels sit too close for their own.
        ax.set_yticks(range(len(tasks)), tasks if k == 0 else [], fontsize=7)
        if k == 0:
            ax.set_ylabel("after training task", fontsize=8)
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 60 else "black")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="test accuracy %")
    fig.suptitle(f"{payload['sequence']} ({payload['preset']['name']}): R[after i][task j]",
                 fontsize=10)
    matrices = out / f"{base}-matrices.png"
    fig.savefig(matrices, dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s in names:
        params = results[s]["bank"].get("adapter_params", 0)
        x = max(1, params)  # log axis: a bank without modules is drawn at 1
        ax.scatter(x, 100 * results[s]["average"], s=40)
        label = s if params else f"{s} (0 params)"
        ax.annotate(label, (x, 100 * results[s]["average"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters in the final bank (log)")
    ax.set_ylabel("Average test accuracy %")
    ax.set_title(f"{payload['sequence']} ({payload['preset']['name']}): accuracy vs parameters",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    scatter = out / f"{base}-params.png"
    fig.savefig(scatter, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [matrices, scatter, growth_plot(payload, out, base, names)]


def growth_plot(payload: dict[str, Any], out: Path, base: str, names: list[str]) -> Path:
    """Stored adapter parameters and Average over the tasks so far, after each task: whether a
    bank levels off while accuracy holds."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, s in enumerate(names):
        style = {"marker": "o", "ms": 3, "label": s, "ls": "-" if k < 10 else "--"}
        r = payload["results"][s]
        steps = r["steps"]
        xs = list(range(1, len(steps) + 1))
        left.plot(xs, [st["bank_adapter_params"] / 1e6 for st in steps], **style)
        # Average after task i is Average of the matrix's first i+1 rows and columns.
        avg = [100 * average([row[:i + 1] for row in r["matrix"][:i + 1]])
               for i in range(len(steps))]
        right.plot(xs, avg, **style)
    left.set_xlabel("tasks trained")
    left.set_ylabel("adapter parameters in the bank (millions)")
    right.set_xlabel("tasks trained")
    right.set_ylabel("Average test accuracy over the tasks so far %")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend(fontsize=8)
    fig.suptitle(f"{payload['sequence']} ({payload['preset']['name']}): growth", fontsize=10)
    path = out / f"{base}-growth.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def render(path: Path, preferred: tuple[str, ...], with_plots: bool = True) -> list[Path]:
    """Re-write the Markdown and PNGs of an existing result file (no training)."""
    with locked(path):
        payload = read(path)
        if payload is None:
            raise ValueError(f"no readable result file at {path}")
        base = path.stem
        (path.parent / f"{base}.md").write_text(markdown(payload, preferred))
        files = [path.parent / f"{base}.md"]
        if with_plots:
            files += plots(payload, path.parent, base, preferred)
    return files


def write(payload: dict[str, Any], out: Path, preferred: tuple[str, ...],
          with_plots: bool = True, replace: bool = False) -> dict[str, Any]:
    """Merge with a comparable earlier file, then write JSON, Markdown and PNGs."""
    base = stem(payload["sequence"], payload["preset"]["name"])
    path = result_path(out, payload["sequence"], payload["preset"]["name"])
    with locked(path):
        merged = merge(path, payload, replace)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged, indent=1, allow_nan=True))
        tmp.replace(path)
        (out / f"{base}.md").write_text(markdown(merged, preferred))
        files = [path, out / f"{base}.md"]
        if with_plots:
            files += plots(merged, out, base, preferred)
    merged["files"] = [str(f) for f in files]
    return merged
