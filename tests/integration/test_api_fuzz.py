"""Property-based fuzzing of the OpenAPI schema (schemathesis, seeded and bounded) against the
real app on a real Redis: no 5xx but a JSON 503 saying what is missing, and a JSON error body
for every 4xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from adapters_store.registry import Registry
from adapters_store.settings import Settings
from service.app import create_app
from tests.integration.test_api import shared_manifest

# No inference worker and no trainer run here: predictions answer 503 no_worker and /readyz 503
# not_ready, uploads stay queued. Those are the only 5xx allowed.
UNAVAILABLE = {"no_worker", "not_ready"}


@pytest.fixture
def fuzzed_app(settings: Settings, registry: Registry) -> Iterator[object]:
    registry.publish(shared_manifest(), reason="fuzz")
    app = create_app(settings.model_copy(update={"request_timeout_s": 2.0}))
    with TestClient(app):  # runs the lifespan: Redis clients, registry, blob store
        yield app


def _check(case: schemathesis.Case, failures: list[str], seen: list[str]) -> None:
    response = case.call()
    seen.append(f"{case.method} {response.status_code}")
    status = response.status_code
    where = f"{case.method} {case.formatted_path} -> {status}: {response.text[:200]}"
    ctype = response.headers.get("content-type") or [""]  # schemathesis: a list per header
    if status >= 400 and not ctype[0].startswith("application/json"):
        failures.append("not JSON: " + where)
        return
    if status < 400:
        return
    error = response.json().get("error")
    if not (isinstance(error, dict) and error.get("code") and error.get("message")):
        failures.append("not an error body: " + where)
    elif status >= 500 and not (status == 503 and error["code"] in UNAVAILABLE):
        failures.append("server error: " + where)


@pytest.mark.slow
def test_no_server_errors_and_json_errors_only(fuzzed_app: object) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    failures: list[str] = []
    seen: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(operation.as_strategy())
        @settings(max_examples=12, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            _check(case, failures, seen)

        fuzz()
    assert operations >= 15 and len(seen) >= 5 * operations, (operations, len(seen))
    assert any(s.endswith((" 400", " 404", " 422")) for s in seen)  # it did send bad input
    assert not failures, "\n".join(sorted(set(failures))[:20])
