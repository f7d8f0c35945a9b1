"""Serving benchmark results: one JSON with every number, a Markdown table, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONTENDERS = ("adapterd", "per_group", "peft_mixed", "peft_naive")


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:,}" if isinstance(value, int) else str(value)


def engine_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| shape | tasks | distinct in batch | bare ms | " + " | ".join(
        f"{c} ×bare" for c in CONTENDERS) + " | adapterd ÷ peft_mixed | adapterd ÷ naive |",
        "|---|---|---|---|" + "---|" * len(CONTENDERS) + "---|---|"]
    for r in rows:
        ratio = r["ratio_to_bare"]
        ms = r["median_ms"]
        vs_peft = round(ms["peft_mixed"] / ms["adapterd"], 2) if "peft_mixed" in ms else None
        vs_naive = round(ms["peft_naive"] / ms["adapterd"], 2) if "peft_naive" in ms else None
        lines.append(f"| {r['shape']} | {r['tasks']} | {r['distinct_in_batch']} | "
                     f"{ms['bare']} | " + " | ".join(_fmt(ratio.get(c)) for c in CONTENDERS)
                     + f" | {_fmt(vs_peft)} | {_fmt(vs_naive)} |")
    return lines


def http_table(rows: list[dict[str, Any]]) -> list[str]:
    keys = ("concurrency", "requests", "failed", "rows_per_s", "p50_ms", "p95_ms", "p99_ms",
            "compute_p50_ms", "overhead_p50_ms", "mean_batch_rows")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return lines


def memory_table(rows: list[dict[str, Any]]) -> list[str]:
    keys = ("shape", "dtype", "tasks", "modules", "adapter_params", "rss_over_base_mib",
            "cold_load_s", "prepare_one_more_task_s", "median_forward_ms_while_preparing",
            "median_forward_ms_idle", "longest_forward_ms_while_preparing",
            "longest_forward_ms_idle")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return lines


def render(payload: dict[str, Any]) -> str:
    hw = payload["hardware"]
    out = [
        "# Serving benchmark", "",
        f"Base {payload['base_model']}; {hw['cpu_model']} ({hw['cpu_count']} cores, "
        f"{hw['threads']} torch threads), device {hw['device']}"
        + (f" ({hw['cuda_device']})" if hw.get("cuda_device") else "")
        + f"; torch {payload['versions']['torch']}. Commands: "
        + "; ".join(f"`{c}`" for c in payload.get("commands", [payload["command"]])) + ".", "",
        "Ratios are measured side by side in one run: every contender runs the same batch in "
        "turn, rep after rep, so drift of this shared machine hits all of them alike; ×bare = "
        "rows/s ÷ the bare base model's rows/s on the same batch (1.0 = no adapter cost).", "",
    ]
    if payload.get("engine"):
        e = payload["engine_config"]
        out += ["## Engine (in process)", "",
                f"Batches of {e['batch_rows']} rows of ~{e['words']} words, rows assigned to "
                f"tasks at random; median of {e['reps']} interleaved reps. Shapes: bottleneck "
                "(48) and LoRA (r 8, q and v) at every layer per task; sparse = 5% of q, k and v "
                "at every layer per task; safm = one bottleneck at the forced middle layer, "
                "empty elsewhere. adapterd = the worker's forward (rows sorted by route into "
                "segments; weights in per-site pools, each row's gathered by one index_select "
                "for batched matmuls, applied in place; sparse rows in one block-diagonal CSR "
                "product per site, or folded into the base weight when every row takes the same "
                "module); per_group = the first forward (index_select / index_add per module "
                "group, modules as nn.Modules, sparse ones one CSR product each); peft_mixed = "
                "peft LoRA with `adapter_names`; naive = peft `set_adapter` and one forward per "
                f"task in the batch (LoRA only, up to {payload['peft_max_tasks']} tasks). Every "
                "contender's embeddings equal per_group's (max abs diff in the JSON).", ""]
        out += engine_table(payload["engine"]) + [""]
    if payload.get("heap"):
        h = payload["heap"]
        glibc, kept = h["glibc_default"], h["kept"]
        out += ["## Host heap (the bare forward)", "",
                f"The bare base forward on {h['rows']} rows of ~{h['words']} words in two "
                "processes stepped in turn, one forward each, median of "
                f"{h['reps']}: glibc's default heap returns a forward's freed activations to the "
                "kernel, so the next forward page-faults them in again; the torch processes "
                f"keep up to {h['keep_mb']} MiB of freed heap (`ADAPTERD_MALLOC_KEEP_MB`, "
                "worker/host_memory.py). Every ratio above is over the bare forward under the "
                "workers' policy.", "",
                "| heap | median ms | page faults per forward |", "|---|---|---|",
                f"| glibc default | {glibc['median_ms']} | {_fmt(glibc['faults_per_forward'])} |",
                f"| kept (applied: {h['applied']}) | {kept['median_ms']} | "
                f"{_fmt(kept['faults_per_forward'])} |", "",
                f"The kept heap's forward is **{h['speedup']}×** as fast.", ""]
    if payload.get("http"):
        h = payload["http_config"]
        out += ["## End to end over HTTP", "",
                f"`adapterd serve` (API + {h['workers']} inference worker, own Redis) on "
                f"loopback, {h['tasks']} live {h['shape']} tasks, closed-loop clients sending "
                f"one row each for {h['duration_s']} s per level. compute = the worker's forward "
                "of the batch (Server-Timing); overhead = latency − compute (HTTP, API, Redis, "
                "queueing, the batch window).", ""]
        out += http_table(payload["http"]) + [""]
    if payload.get("http_overhead"):
        out += ["### Where the overhead goes at concurrency 1", "",
                "One client at a time, httpx and a bare keep-alive HTTP/1.1 client taking turns "
                "request by request. Server-Timing splits each predict into queue (enqueue to "
                "the worker's batch start), compute (the forward), transit (the reply back to "
                "the API), route_rest (the rest of the predict route) and outside_route (the "
                "client, HTTP parsing, middlewares, body validation); healthz = a GET /healthz "
                "round trip.", ""]
        keys = ("client", "requests", "failed", "healthz_p50_ms", "latency_p50_ms",
                "compute_p50_ms", "overhead_p50_ms", "queue_p50_ms", "transit_p50_ms",
                "route_rest_p50_ms", "outside_route_p50_ms")
        out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |"
                for r in payload["http_overhead"]] + [""]
        floors = payload.get("http_floors")
        raw = next((r for r in payload["http_overhead"] if r["client"] == "raw"), None)
        if floors and raw:
            floor = floors["bare_asgi_rtt_p50_ms"] + floors["redis_round_trip_p50_ms"]
            out += [f"Floors on this host, measured in the same loop ({floors['samples']} "
                    "samples each): the bare client's round trip to a bare ASGI app under the "
                    f"same HTTP server (uvicorn + httptools) took {floors['bare_asgi_rtt_p50_ms']}"
                    " ms, and a Redis round trip between two processes (XADD, a blocked XREAD "
                    "wakes in the other process, which XADDs back to a stream this one is "
                    f"blocked on) {floors['redis_round_trip_p50_ms']} ms. A predict needs one of "
                    f"each, so {floor:.2f} ms of the bare client's {raw['overhead_p50_ms']} ms "
                    "overhead is the host's; the rest "
                    f"({raw['overhead_p50_ms'] - floor:.2f} ms) is ours: FastAPI, middlewares, "
                    "validation, JSON, and the worker's and API's work around the forward.", ""]
    if payload.get("swap"):
        s = payload["swap"]
        base = s["baseline"]
        out += ["## Hot swap under load", "",
                f"{s['versions_published']} versions published (one more task each) during "
                f"{s['duration_s']} s at concurrency {s['concurrency']} over "
                f"{s.get('tasks', '?')} live tasks. Each publish is staged first: the worker "
                "loads the version on its prefetch thread while serving the old one (prepare), "
                "then the live pointer moves and the next batch swaps by reference.", "",
                "| failed | stale replies | prepare p50 s | prepare max s | publish → first "
                "reply p50 s | max s | rows/s during swaps | rows/s without | max latency ms "
                "during swaps | without |", "|---|---|---|---|---|---|---|---|---|---|",
                f"| {s['summary']['failed']} | {s['stale_replies']} | "
                f"{_fmt(s.get('prepare_s', {}).get('p50'))} | "
                f"{_fmt(s.get('prepare_s', {}).get('max'))} | "
                f"{_fmt(s['publish_to_first_reply_s']['p50'])} | "
                f"{_fmt(s['publish_to_first_reply_s']['max'])} | "
                f"{s['summary']['rows_per_s']} | {base['rows_per_s']} | "
                f"{_fmt(s['summary'].get('max_ms'))} | {_fmt(base.get('max_ms'))} |", ""]
    if payload.get("memory"):
        out += ["## Memory and swap time against live tasks", "",
                "Per row a fresh process loads the base model and the version with that many "
                "tasks (cold load; resident memory is the RSS growth over the loaded base), then "
                "prepares the version with one more task on a second thread, as the inference "
                "worker's prefetcher does (parse the manifest, load only the new modules), while "
                "the first thread keeps running one-row forwards back to back (marked as the "
                "worker marks its forwards, so the loader pauses for them): their median and "
                "longest meanwhile, against as many seconds of forwards with nothing loading "
                "(on a shared machine the longest of many forwards grows with their number), "
                "show whether preparing stalls serving. The swap itself is a reference change "
                "between batches.", ""]
        out += memory_table(payload["memory"]) + [""]
    if payload.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in payload["notes"]] + [""]
    return "\n".join(out)


def plots(payload: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(out / name)

    if payload.get("engine"):
        shapes = sorted({r["shape"] for r in payload["engine"]})
        fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
        for ax, shape in zip(axes[0], shapes, strict=True):
            rows = [r for r in payload["engine"] if r["shape"] == shape]
            for c in CONTENDERS:
                pts = [(r["tasks"], r["ratio_to_bare"][c]) for r in rows if c in r["ratio_to_bare"]]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=c)
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_title(f"{shape}: rows/s ÷ bare")
            ax.set_xlabel("live tasks")
            ax.legend(fontsize=8)
        save(fig, "serving-engine.png")
    if payload.get("http"):
        fig, ax = plt.subplots(figsize=(6, 4))
        rows = payload["http"]
        for key in ("p50_ms", "p99_ms", "compute_p50_ms"):
            ax.plot([r["concurrency"] for r in rows], [r[key] for r in rows], marker="o",
                    label=key)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("ms")
        ax.legend()
        save(fig, "serving-http.png")
    if payload.get("memory"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for shape in sorted({r["shape"] for r in payload["memory"]}):
            rows = [r for r in payload["memory"] if r["shape"] == shape]
            ax.plot([r["tasks"] for r in rows], [r["rss_over_base_mib"] for r in rows],
                    marker="o", label=shape)
        ax.axhline(1024, color="grey", lw=0.8, ls="--", label="1 GiB")
        ax.set_xscale("log")
        ax.set_xlabel("live tasks")
        ax.set_ylabel("RSS over base (MiB)")
        ax.legend()
        save(fig, "serving-memory.png")
    return files


PART_KEYS = ("engine", "engine_config", "heap", "http", "http_config", "http_overhead",
             "http_floors", "swap", "memory")


def merge(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """A run of some parts keeps the other parts of an earlier run on the same base model. The
    commands listed are those whose parts the file still holds, each once."""
    fresh = {k: payload["command"] for k in PART_KEYS if k in payload}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("base_model") != payload["base_model"]:
        old = {}
    kept = {k: old[k] for k in PART_KEYS if k in old and k not in payload}
    # Files from before part_commands: their parts are credited to their last command.
    earlier = old.get("part_commands") or dict.fromkeys(
        PART_KEYS, (old.get("commands") or [old.get("command", "")])[-1])
    by_part = {k: earlier[k] for k in kept if earlier.get(k)} | fresh
    commands = list(dict.fromkeys(by_part.values()))
    old_notes = old.get("notes_by_command") or (
        {old["command"]: old.get("notes", [])} if "command" in old else {})
    notes = {c: old_notes.get(c, []) for c in commands} | {
        payload["command"]: list(payload.get("notes", []))}
    notes = {c: n for c, n in notes.items() if n}
    return payload | kept | {"part_commands": by_part, "commands": commands,
                             "notes_by_command": notes,
                             "notes": [n for c in commands for n in notes.get(c, [])]}


def write(payload: dict[str, Any], out: Path, with_plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "serving.json"
    payload = merge(payload, json_path)
    json_path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    md_path = out / "serving.md"
    files = [json_path, md_path]
    if with_plots:
        files += plots(payload, out)
        md = render(payload) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in files[2:])
    else:
        md = render(payload)
    md_path.write_text(md + "\n")
    return files
