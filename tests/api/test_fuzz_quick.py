"""Quick schema fuzzing, in process: schemathesis generates requests from the service's own OpenAPI
document (valid and invalid ones, real ids and `latest` mixed in) for a handful of operations; they go
through DRF's test client against real folders in tmp_path. Every answer must be below 500, conform to
the document's response schema, and carry no stack trace and no filesystem path outside the backup root.
The examples are derandomized (the same on every run) and few, so the file stays well under 30 s.
The long version against a real server is `benchmarks/fuzz_schema.py`."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import Response
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from backups.config.document import default_document
from tests.conftest import PROJECT, body_of, make_backup

pytestmark = pytest.mark.django_db

OLD, NEW = "backup-20260101_030000", "backup-20260102_030000"
LINK_OUT = "backup-20250101_000000"  # a symlink inside the root, named like a backup, to a folder outside
EXAMPLES = 12  # generated cases per operation and mode (positive, negative)

OPERATIONS = [
    ("GET", "/api/backup/list"),
    ("GET", "/api/backup/{id}"),
    ("DELETE", "/api/backup/{id}"),
    ("GET", "/api/backup/{id}/download"),
    ("GET", "/api/backup/logs"),
    ("GET", "/api/backup/runs"),
    ("GET", "/api/backup/runs/{id}"),
    ("POST", "/api/backup/runs/{id}/cancel"),
    ("POST", "/api/backup/create"),
    ("PATCH", "/api/backup/config"),
    ("PUT", "/api/backup/config"),
    ("GET", "/api/backup/retention/preview"),
    ("POST", "/api/backup/retention/preview"),
    ("GET", "/api/backup/notifications/deliveries"),
    ("POST", "/api/backup/notifications/test"),
]

VALID_CONFIG = {**default_document(), "enabled": False}  # the schedule must not start runs meanwhile
# What a user sends, on top of the generated cases: (path parameters, query, body)
EXPLICIT: dict[tuple[str, str], list[tuple[dict, dict, Any]]] = {
    ("GET", "/api/backup/{id}/download"): [
        ({"id": OLD}, {"file": "configs/app.env"}, None),
        ({"id": OLD}, {"file": "../outside/secret.txt"}, None),
        ({"id": LINK_OUT}, {"file": "secret.txt"}, None),
    ],
    ("PUT", "/api/backup/config"): [({}, {}, VALID_CONFIG)],
    ("PATCH", "/api/backup/config"): [({}, {}, {"retention": {"daily": 0, "weekly": 0, "monthly": 0}})],
    ("GET", "/api/backup/logs"): [({}, {"source": one}, None) for one in ("script", "service", "audit")],
    ("POST", "/api/backup/retention/preview"): [({}, {}, {"retention": {"daily": 1, "keepWithinHours": 0}})],
}

_document: dict[str, Any] = {}


@pytest.fixture
def schema(api) -> Any:
    """The OpenAPI document as the service serves it (fetched once per session of this module)."""
    if not _document:
        response = api.get("/api/schema/", {"format": "json"})
        assert response.status_code == 200, response.content[:300]
        _document.update(json.loads(response.content))
    return schemathesis.openapi.from_dict(json.loads(json.dumps(_document)))


@pytest.fixture
def world(backup_root: Path, tmp_path: Path, api, settings) -> dict[str, Any]:
    """Two real backups, `latest`, a symlink escaping the root, and one queued run (no worker here)."""
    settings.RATE_LIMIT_COUNT = 10**9  # read when the client's first request loads the middleware
    make_backup(backup_root, OLD, {"db.sql": "a" * 10, "configs/app.env": "A=1\n"})
    make_backup(backup_root, NEW, {"db.sql": "b" * 20, "uploads/l\u00f6go file.png": b"\x89PNG"})
    (backup_root / "latest").symlink_to(NEW)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("never read, never deleted\n")
    (backup_root / LINK_OUT).symlink_to(outside)
    created = api.post("/api/backup/create", {"description": "fuzz"}, format="json")
    assert created.status_code == 202, created.content
    return {
        "backups": ["latest", OLD, NEW, LINK_OUT],
        "runs": [created.json()["run"]["id"]],
        "outside": outside,
    }


def strategy_for(operation: Any, world: dict[str, Any]) -> Any:
    positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
    negative = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
    if "{id}" not in operation.path:
        return st.one_of(positive, negative)
    real = world["runs"] if operation.path.startswith("/api/backup/runs") else world["backups"]
    on_real = st.sampled_from(real).flatmap(
        lambda one: operation.as_strategy(
            generation_mode=GenerationMode.POSITIVE, path_parameters={"id": one}
        )
    )
    return st.one_of(positive, negative, on_real)


def send(api, case: Any) -> tuple[Response, bytes]:
    """The case as schemathesis would send it over HTTP, through DRF's test client instead."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    prepared = requests.Request(
        method=kwargs["method"],
        url=kwargs["url"],
        params=kwargs.get("params"),
        headers=kwargs.get("headers"),
        json=kwargs.get("json"),
        data=kwargs.get("data"),
    ).prepare()
    path = prepared.path_url
    body = prepared.body or b""
    content_type = prepared.headers.get("Content-Type") or "application/octet-stream"
    response = api.generic(prepared.method, path, data=body, content_type=content_type)
    content = body_of(response)
    headers = {name.lower(): [value] for name, value in response.items()}
    wrapped = Response(
        status_code=response.status_code,
        headers=headers,
        content=content,
        request=prepared,
        elapsed=0.0,
        verify=False,
        message=http.client.responses.get(response.status_code, ""),
    )
    return wrapped, content


def leaks(content: bytes, tmp_path: Path, backup_root: Path) -> list[str]:
    text = content.decode(errors="replace")
    found = [needle for needle in ("Traceback (most recent call", str(PROJECT)) if needle in text]
    # tmp_path may appear only as the backup root itself (never the folder beside it, never the database)
    for match in re.finditer(re.escape(str(tmp_path)) + r"[^\s\"']*", text):
        if not match.group(0).startswith(str(backup_root)):
            found.append(match.group(0))
    return found


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_get_no_server_error_and_match_the_schema(
    method, path, api, schema, world, backup_root, tmp_path
):
    operation = schema[path][method]
    seen: dict[int, int] = {}
    problems: list[str] = []

    @settings(
        max_examples=EXAMPLES * 2,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy_for(operation, world))
    def fuzz(case: Any) -> None:
        response, content = send(api, case)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        reproduce = case.as_curl_command(base_url="http://testserver")
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except FailureGroup as group:
            titles = "; ".join(f"{failure.title}: {failure.message[:200]}" for failure in group.exceptions)
            problems.append(f"{response.status_code} {titles}\n  {reproduce}\n  {content[:300]!r}")
        leaked = leaks(content, tmp_path, backup_root)
        if leaked and not (path.endswith("/logs") and response.status_code == 200):
            problems.append(f"{response.status_code} leaks {leaked}\n  {reproduce}")

    for path_parameters, query, body in EXPLICIT.get((method, path), []):
        extra = {"body": body, "media_type": "application/json"} if body is not None else {}
        fuzz = example(case=operation.Case(path_parameters=path_parameters, query=query, **extra))(fuzz)
    fuzz()
    assert not problems, "\n".join(problems[:5])
    assert sum(seen.values()) >= EXAMPLES, seen
    assert (world["outside"] / "secret.txt").read_text() == "never read, never deleted\n"
    assert (backup_root / LINK_OUT).is_symlink()
