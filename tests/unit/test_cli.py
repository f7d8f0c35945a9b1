"""The CLI's argument parsing and error printing (no server: nothing listens on the URL used)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from adapterd.cli import DEFAULT_URL, build_parser, main


def closed_port_url() -> str:
    # Bind and close: nothing listens there afterwards, so a request is refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_global_options_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--url", "http://x:1", "--api-key", "k", "--json", "tasks"])
    after = parser.parse_args(["tasks", "--url", "http://x:1", "--api-key", "k", "--json"])
    for args in (before, after):
        assert (args.url, args.api_key, args.json, args.command) == ("http://x:1", "k", True,
                                                                     "tasks")


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADAPTERD_URL", raising=False)
    monkeypatch.delenv("ADAPTERD_API_KEY", raising=False)
    args = build_parser().parse_args(["versions"])
    assert (args.url, args.api_key, args.json) == (DEFAULT_URL, None, False)
    monkeypatch.setenv("ADAPTERD_URL", "http://env:9")
    monkeypatch.setenv("ADAPTERD_API_KEY", "env-key")
    args = build_parser().parse_args(["versions"])
    assert (args.url, args.api_key) == ("http://env:9", "env-key")


def test_subcommand_arguments() -> None:
    parser = build_parser()
    up = parser.parse_args(["upload", "sent", "d.jsonl", "--strategy", "per_task", "--wait"])
    assert (up.task_id, up.file, up.strategy, up.wait) == ("sent", "d.jsonl", "per_task", True)
    pr = parser.parse_args(["predict", "nli", "a", "b", "--pair", "x", "--pair", "y"])
    assert (pr.text, pr.pair, pr.version) == (["a", "b"], ["x", "y"], None)
    assert parser.parse_args(["jobs"]).job_id is None
    assert parser.parse_args(["jobs", "job_0123456789abcdef"]).job_id == "job_0123456789abcdef"
    assert parser.parse_args(["rollback", "v3"]).version == "v3"
    serve = parser.parse_args(["serve", "--port", "9000", "--data-dir", "/tmp/d", "--no-trainer",
                               "--workers", "2", "--base-model", "m", "--host", "0.0.0.0"])
    assert (serve.port, serve.data_dir, serve.no_trainer, serve.workers, serve.base_model,
            serve.host) == (9000, Path("/tmp/d"), True, 2, "m", "0.0.0.0")
    defaults = parser.parse_args(["serve"])
    assert (defaults.workers, defaults.no_trainer, defaults.port) == (1, False, None)


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", "task-only"])
    assert exc.value.code == 2


def test_unreachable_api_prints_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", closed_port_url(), "tasks"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error connection: cannot reach http://127.0.0.1:")


def test_local_input_errors_print_like_api_errors(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    url = closed_port_url()
    assert main(["--url", url, "predict", "t", "a", "b", "--pair", "x"]) == 1
    assert capsys.readouterr().err == "error invalid_input: 2 texts but 1 --pair values\n"
    assert main(["--url", url, "upload", "t", str(tmp_path / "missing.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("error invalid_input: no such file")


def test_cli_does_not_import_the_api_or_torch() -> None:
    import subprocess

    code = ("import sys, adapterd.cli; "
            "bad = [m for m in ('torch', 'service', 'fastapi') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
