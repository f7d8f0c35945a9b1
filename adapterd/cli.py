"""The adapterd command line: `serve` (the supervisor) and the HTTP client commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from adapterd.client import Api, ApiError
from adapterd.commands import CLIENT_COMMANDS, err
from adapters_store.merges import MERGE_METHODS
from adapters_store.strategy_params import STRATEGY_NAMES

DEFAULT_URL = "http://127.0.0.1:8000"


def cmd_bench(args: argparse.Namespace) -> int:
    # Late imports: torch lives in worker, and the client commands never need it.
    if args.benchmark == "serving":
        from worker.serving_bench.cli import main as serving_main

        return serving_main(args.bench_args)
    if args.benchmark == "merging":
        from worker.continual.merge_scaling import main as merging_main

        return merging_main(args.bench_args)
    from worker.continual.cli import main as continual_main

    return continual_main(args.bench_args)


def cmd_serve(args: argparse.Namespace) -> int:
    from adapterd.supervisor import serve_main  # late: the client commands never need it

    return serve_main(args)


# ---- argument parsing --------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # The same options work before or after the subcommand. Only the top parser sets defaults;
    # a subparser's SUPPRESS default keeps it from overwriting a value given before it.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--url", default=default(os.environ.get("ADAPTERD_URL", DEFAULT_URL)),
                        help="API base URL (env ADAPTERD_URL)")
    parser.add_argument("--api-key", default=default(os.environ.get("ADAPTERD_API_KEY")),
                        help="API key (env ADAPTERD_API_KEY)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print raw JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adapterd", description=__doc__)
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, top=False)
        return p

    serve = add("serve", "run Redis, the API, inference workers and the trainer on this machine")
    serve.add_argument("--host", default=None, help="API bind address (default: settings)")
    serve.add_argument("--port", type=int, default=None, help="API port (default: settings)")
    serve.add_argument("--data-dir", type=Path, default=None, help="blobs, Redis data, logs")
    serve.add_argument("--base-model", default=None, help="checkpoint path or hub id")
    serve.add_argument("--no-trainer", action="store_true", help="do not start the trainer")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="inference workers to start (default 1)")

    bench = add("bench", "run a benchmark in process (needs the worker extra)")
    bench.add_argument("benchmark", choices=("continual", "serving", "merging"))
    bench.add_argument("bench_args", nargs=argparse.REMAINDER,
                       help="the benchmark's own options (see: adapterd bench serving -h)")

    upload = add("upload", "upload a JSONL or CSV dataset for a task and enqueue training")
    upload.add_argument("task_id")
    upload.add_argument("file")
    upload.add_argument("--strategy", default=None, choices=STRATEGY_NAMES,
                        help="training strategy (default: the server's, safm)")
    upload.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="strategy hyperparameter, e.g. --param epochs=3 (repeatable)")
    upload.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    upload.add_argument("--poll", type=float, default=1.0, help="seconds between job polls")
    upload.add_argument("--wait-timeout", type=float, default=None, help="give up after S s")

    predict = add("predict", "classify texts with a task's live route")
    predict.add_argument("task_id")
    predict.add_argument("text", nargs="+")
    predict.add_argument("--pair", action="append", metavar="TEXT",
                         help="second text of a pair task; once per TEXT, in order")
    predict.add_argument("--version", default=None, help="pin a bank version")

    jobs = add("jobs", "list recent jobs, or show one")
    jobs.add_argument("job_id", nargs="?")
    jobs.add_argument("--limit", type=int, default=20)

    tasks = add("tasks", "list tasks, or show one with its route")
    tasks.add_argument("task_id", nargs="?")

    cancel = add("cancel", "cancel a queued or running job (it publishes nothing)")
    cancel.add_argument("job_id")
    delete = add("delete", "delete a task: a new version without its route, its jobs cancelled")
    delete.add_argument("task_id")

    merge = add("merge", "merge tasks' adapter modules into one set (a versioned bank job)")
    merge.add_argument("tasks", nargs="+", help="member task ids (two or more)")
    merge.add_argument("--method", default="uniform_sparse", choices=MERGE_METHODS)
    merge.add_argument("--name", default=None, help="a new task id served by the merged set")
    merge.add_argument("--replace", action="store_true",
                       help="move the members themselves to the merged set (shrinks the bank)")
    merge.add_argument("--density", type=float, default=0.2, help="ties: fraction kept")
    merge.add_argument("--tolerance", type=float, default=None,
                       help="replace: largest held-out accuracy drop allowed per member")
    merge.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    merge.add_argument("--poll", type=float, default=1.0, help="seconds between job polls")
    merge.add_argument("--wait-timeout", type=float, default=None, help="give up after S s")

    add("adapters", "show the live bank: modules per layer, users, parameter totals")
    add("versions", "show the bank version history")
    rollback = add("rollback", "point the live bank at an earlier version")
    rollback.add_argument("version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "bench":
        return cmd_bench(args)
    try:
        with Api(args.url, args.api_key) as api:
            return CLIENT_COMMANDS[args.command](api, args)
    except ApiError as exc:
        err(f"error {exc.code}: {exc.message}")
        if exc.details:
            # Whole and indented: a cut JSON document hides the part that names the problem.
            err("details: " + json.dumps(exc.details, indent=2, sort_keys=True))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `adapterd adapters | head`: the reader left; say nothing more, like other CLI tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
