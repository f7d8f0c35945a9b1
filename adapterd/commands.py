"""The CLI's HTTP client commands and how they print; stdout/stderr writes only, no print."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from adapterd.client import Api, ApiError

TERMINAL_JOB_STATES = {"succeeded", "failed", "cancelled"}


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def err(line: str) -> None:
    sys.stderr.write(line + "\n")


# ---- output helpers ----------------------------------------------------------------------------
def dump(value: Any) -> None:
    out(json.dumps(value, indent=2, sort_keys=True))


def table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header, *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def short(module_id: str | None) -> str:
    return "empty" if module_id is None else module_id[:12]


def progress_line(job: dict) -> str:
    p = job.get("progress") or {}
    parts = [f"[{job['state']}]", p.get("stage", "")]
    if p.get("epochs"):
        parts.append(f"epoch {p.get('epoch', 0)}/{p['epochs']}")
    if p.get("total_steps"):
        parts.append(f"step {p.get('step', 0)}/{p['total_steps']}")
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4f}")
    if p.get("eta_s") is not None:
        parts.append(f"eta {p['eta_s']:.0f}s")
    return " ".join(x for x in parts if x)


# ---- commands ----------------------------------------------------------------------------------
def wait_for_job(api: Api, job_id: str, poll_s: float, timeout_s: float | None) -> dict:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = ""
    while True:
        job = api.call("GET", f"/v1/jobs/{job_id}")
        line = progress_line(job)
        if line != last:
            out(line)
            last = line
        if job["state"] in TERMINAL_JOB_STATES:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise ApiError("timeout", f"job {job_id} is still {job['state']} after {timeout_s}s")
        time.sleep(poll_s)


def cmd_upload(api: Api, args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise ApiError("invalid_input", f"no such file: {path}")
    ctype = "text/csv" if path.suffix.lower() == ".csv" else "application/x-ndjson"
    params = {"strategy": args.strategy} if args.strategy else {}
    for item in getattr(args, "param", []):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ApiError("invalid_input", f"--param wants NAME=VALUE, got {item!r}")
        params[name.strip()] = value.strip()
    with path.open("rb") as fh:
        body = api.call("POST", f"/v1/tasks/{args.task_id}/datasets", params=params,
                        files={"file": (path.name, fh, ctype)})
    if args.json and not args.wait:
        dump(body)
        return 0
    out(f"job {body['job_id']} queued for task {body['task_id']} (dataset {body['dataset_id']})")
    return follow_job(api, args, body["job_id"]) if args.wait else 0


def follow_job(api: Api, args: argparse.Namespace, job_id: str) -> int:
    """Wait for a job and print its result (versions, accuracy, decisions, old tasks)."""
    job = wait_for_job(api, job_id, args.poll, args.wait_timeout)
    if args.json:
        dump(job)
    if job["state"] == "failed":
        err(f"error job_failed: {job.get('error') or 'the job failed'}")
        return 1
    result = job.get("result") or {}
    if result and not args.json:
        if result["val_accuracy"] is None:
            out(f"published {result['version']}, params added {result['params_added']}")
        else:
            out(f"published {result['version']}: val_accuracy {result['val_accuracy']:.3f} "
                f"(majority {result['majority_baseline']:.3f}), params added "
                f"{result['params_added']}")
        choices = [d.get("choice", "?") for d in result.get("decisions", [])]
        if choices:
            out("layers: " + " ".join(choices) + (f"; replayed {', '.join(result['replayed'])}"
                                                 if result.get("replayed") else ""))
        gate = result.get("gate") or {}
        checks = gate.get("checks") or {}
        for task, acc in (result.get("old_tasks") or {}).items():
            check = checks.get(task)
            why = "" if check is None else (
                f" (proposed {check['after']:.3f}, allowed drop {check['tolerance']:.3f}: "
                f"{'held' if check['passed'] else 'failed'})")
            out(f"  {task}: held-out accuracy {acc['before']:.3f} -> {acc['after']:.3f}{why}")
        if checks:
            line = f"regression gate ({gate['mode']}): {gate['outcome']}"
            if gate.get("reverted_modules"):
                line += (f"; kept {len(gate['reverted_modules'])} shared module(s) as they were,"
                         f" new task unshared at layer(s) "
                         f"{', '.join(map(str, gate['unshared_layers'])) or '-'}")
            out(line)
    return 0


def show(args: argparse.Namespace, body: Any, line: str) -> int:
    """The response as JSON with --json, else one line for people."""
    if args.json:
        dump(body)
    else:
        out(line)
    return 0


def cmd_cancel(api: Api, args: argparse.Namespace) -> int:
    job = api.call("DELETE", f"/v1/jobs/{args.job_id}")
    state = "cancelled" if job["state"] == "cancelled" else "cancelling"
    return show(args, job, f"job {job['job_id']} {state} (task {job['task_id']})")


def cmd_delete(api: Api, args: argparse.Namespace) -> int:
    body = api.call("DELETE", f"/v1/tasks/{args.task_id}")
    cancelled = body["cancelled_jobs"]
    return show(args, body, f"deleted task {body['task_id']}: live "
                f"{body['version'] or 'unchanged'}"
                + (f"; cancelled {', '.join(cancelled)}" if cancelled else ""))


def cmd_merge(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"tasks": args.tasks, "method": args.method, "replace": args.replace,
                            "density": args.density}
    if args.name:
        body["name"] = args.name
    if args.tolerance is not None:
        body["tolerance"] = args.tolerance
    accepted = api.call("POST", "/v1/merges", json=body)
    if args.json and not args.wait:
        dump(accepted)
        return 0
    out(f"merge job {accepted['job_id']} queued ({args.method} of {', '.join(args.tasks)})")
    return follow_job(api, args, accepted["job_id"]) if args.wait else 0


def cmd_predict(api: Api, args: argparse.Namespace) -> int:
    pairs = args.pair or []
    if pairs and len(pairs) != len(args.text):
        raise ApiError("invalid_input", f"{len(args.text)} texts but {len(pairs)} --pair values")
    inputs: list[Any] = list(args.text)
    if pairs:
        inputs = [{"text": t, "text_pair": p} for t, p in zip(args.text, pairs, strict=True)]
    payload: dict[str, Any] = {"inputs": inputs}
    if args.version:
        payload["version"] = args.version
    body = api.call("POST", f"/v1/tasks/{args.task_id}/predict", json=payload)
    if args.json:
        dump(body)
        return 0
    for text, pred in zip(args.text, body["predictions"], strict=True):
        score = pred["scores"].get(pred["label"], max(pred["scores"].values(), default=0.0))
        out(f"{pred['label']}\t{score:.4f}\t{text}")
    out(f"version {body['version']}")
    return 0


def cmd_jobs(api: Api, args: argparse.Namespace) -> int:
    if args.job_id:
        job = api.call("GET", f"/v1/jobs/{args.job_id}")
        if args.json:
            dump(job)
            return 0
        out(f"{job['job_id']}  task {job['task_id']}  strategy {job['strategy']}")
        out(progress_line(job))
        if job.get("error"):
            out(f"error: {job['error']}")
        if job.get("result"):
            for key, value in job["result"].items():
                out(f"  {key}: {value}")
        return 0
    body = api.call("GET", "/v1/jobs", params={"limit": args.limit})
    if args.json:
        dump(body)
        return 0
    table([[j["job_id"], j["task_id"], j["state"], (j.get("progress") or {}).get("stage"),
            (j.get("result") or {}).get("version")] for j in body["jobs"]],
          ["JOB", "TASK", "STATE", "STAGE", "VERSION"])
    return 0


def cmd_tasks(api: Api, args: argparse.Namespace) -> int:
    if args.task_id:
        task = api.call("GET", f"/v1/tasks/{args.task_id}")
        if args.json:
            dump(task)
            return 0
        out(f"{task['task_id']}  {task['state']}  {task['input_kind']}  labels: "
            f"{', '.join(task['labels'])}")
        route = task.get("route")
        if route:
            out(f"route in {route['version']} (trained in {route['trained_in']}), "
                f"{route['params']} adapter params, head {route['head_params']}")
            table([[lay["layer"], short(lay["module"]), lay["kind"], lay["params"],
                    ", ".join(lay["shared_with"])] for lay in route["layers"]],
                  ["LAYER", "MODULE", "KIND", "PARAMS", "SHARED WITH"])
        for job in task["jobs"]:
            out(f"job {job['job_id']}  {job['state']}")
        return 0
    body = api.call("GET", "/v1/tasks")
    if args.json:
        dump(body)
        return 0
    table([[t["task_id"], t["state"], t["input_kind"], len(t["labels"]), t["params"],
            t["latest_job_id"]] for t in body["tasks"]],
          ["TASK", "STATE", "INPUT", "LABELS", "PARAMS", "LATEST JOB"])
    return 0


def cmd_adapters(api: Api, args: argparse.Namespace) -> int:
    bank = api.call("GET", "/v1/adapters")
    if args.json:
        dump(bank)
        return 0
    if bank["live_version"] is None:
        out("no live bank version yet")
        return 0
    out(f"live {bank['live_version']}  base {bank['base_model']['name']}  "
        f"strategy {bank['strategy']}")
    by_id = {m["id"]: m for m in bank["modules"]}
    rows = [[layer["layer"], short(mid), _kind(by_id[mid]), by_id[mid]["params"],
             ", ".join(by_id[mid]["users"])]
            for layer in bank["layers"] for mid in layer["modules"]]
    table(rows, ["LAYER", "MODULE", "KIND", "PARAMS", "USERS"])
    empty = [f"{layer['layer']}: {', '.join(layer['empty'])}" for layer in bank["layers"]
             if layer.get("empty")]
    if empty:
        out("no module (empty) at layer " + "; ".join(empty))
    out("")
    for key, value in bank["totals"].items():
        out(f"{key}: {value}")
    return 0


def _kind(module: dict) -> str:
    density = module.get("density")
    return module["kind"] if density is None else f"{module['kind']} {100 * density:.1f}%"


def cmd_versions(api: Api, args: argparse.Namespace) -> int:
    body = api.call("GET", "/v1/bank/versions")
    if args.json:
        dump(body)
        return 0
    out(f"live {body['live_version']}")
    table([[e["version"], e["reason"], e.get("previous"),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))]
           for e in body["history"]], ["VERSION", "REASON", "PREVIOUS", "AT"])
    return 0


def cmd_rollback(api: Api, args: argparse.Namespace) -> int:
    entry = api.call("POST", "/v1/bank/rollback", json={"version": args.version})
    return show(args, entry, f"live {entry['version']} (was {entry.get('previous')})")


CLIENT_COMMANDS = {
    "upload": cmd_upload, "predict": cmd_predict, "jobs": cmd_jobs, "tasks": cmd_tasks,
    "adapters": cmd_adapters, "versions": cmd_versions, "rollback": cmd_rollback,
    "merge": cmd_merge, "cancel": cmd_cancel, "delete": cmd_delete,
}
