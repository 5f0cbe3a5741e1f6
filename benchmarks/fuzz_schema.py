"""Schema fuzzing: schemathesis against /api/schema/ of a real `manage.py serve` (embedded SQLite, worker
inside, rate limit out of the way), every operation of the document.

1. With a valid SUPER_ADMIN token: for each operation, hand-made cases on real data (`latest`, real backup
   and run ids, a real `?file=`, a valid config document), then up to MAX_POSITIVE schema-valid and up to
   MAX_NEGATIVE schema-invalid generated cases (hypothesis, no shrinking). Checks: `not_a_server_error`,
   `response_schema_conformance`, plus: no stack trace, no secret, no path outside the backup root in an
   error response.
2. With invalid credentials (garbage, wrong key, `alg: none`, expired, wrong scheme, none at all): up to
   MAX_INVALID cases per operation, every answer must be 401 with `WWW-Authenticate: Bearer`.

Backups are seeded in the temporary root before every operation (DELETE and retention remove them);
a sentinel folder beside the root, and a symlink to it inside the root, must be untouched at the end.
The whole run is bounded by TIME_BUDGET seconds.

Run: .venv/bin/python benchmarks/fuzz_schema.py [--seed N] [--max-examples N]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import random
import sys
import time
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests
import schemathesis
from _common import PROJECT, Report, Server, admin_token, bench_tmpdir, migrate, running, server_env
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

sys.path.insert(0, str(PROJECT))
from backups.config.document import default_document  # noqa: E402  (the project's root is on the path now)

TIME_BUDGET = 270.0  # seconds for both phases together (the brief: < 5 min)
MAX_POSITIVE = 50
MAX_NEGATIVE = 25
MAX_INVALID = 20
REQUEST_TIMEOUT = 30

SCRIPT = """#!/usr/bin/env bash
# Fuzzing's backup script: one small folder, two progress steps, `latest` re-pointed at the end.
set -euo pipefail
sleep 1
name="backup-$(date +%Y%m%d_%H%M%S)"
mkdir -p "$BACKUP_ROOT/$name/configs"
echo "[1/2] dumping into $name"
printf -- '-- dump\\n' > "$BACKUP_ROOT/$name/database.sql"
sleep 0.3
echo "[2/2] configs"
printf 'A=1\\n' > "$BACKUP_ROOT/$name/configs/app.env"
ln -sfn -- "$name" "$BACKUP_ROOT/.latest.tmp.$$"
mv -Tf -- "$BACKUP_ROOT/.latest.tmp.$$" "$BACKUP_ROOT/latest"
echo "done"
"""

SEEDS: dict[str, dict[str, bytes]] = {
    f"backup-2025010{day}_030000": {
        "database.sql": b"-- PostgreSQL dump\nCREATE TABLE t (id int);\n" * (day * 10),
        "configs/app.env": b"APP_ENV=prod\n",
        "uploads/images/logo file.png": b"\x89PNG fake " * day,
        "data/\u00fcn\u00efcode.txt": "h\u00e9llo\n".encode(),
    }
    for day in range(1, 5)
}
OUTSIDE_LINK = "backup-20240101_000000"  # a symlink inside the root, named like a backup, to the sentinel

# The default document, with the schedule off (no run of its own meanwhile) and retention keeping all.
VALID_CONFIG = {**default_document(), "enabled": False, "retention": {"daily": 0, "weekly": 0, "monthly": 0}}


# The OpenAPI document types these answers as a bare object, so schema conformance cannot see a missing
# key: the keys the README promises are checked here.
STATUS_KEYS = {
    "running": None,
    "current_run": None,
    "last_backup": None,
    "last_successful_run": None,
    "next_scheduled_at": None,
    "backups": {"count", "total_size_bytes"},
    "disk": {"total_bytes", "free_bytes"},
    "script": {"available"},
    "config": {"enabled", "schedule"},
}
CONFIG_KEYS = {
    "enabled": None,
    "schedule": None,
    "retention": {"daily", "weekly", "monthly"},
    "compression": None,
    "encryption": None,
    "notifications": {"email", "webhook"},
    "components": set(VALID_CONFIG["components"]),
}
PROGRESS_KEYS = {"percent", "stage", "message"}


def contract_problems(label: str, status: int, body: Any) -> list[str]:
    """Keys the README promises, missing from a 2xx answer the document leaves untyped."""
    method, path = label.split(" ", 1)
    wanted: dict[str, set[str] | None] | None = None
    if path == "/api/backup/status" and status == 200:
        wanted = STATUS_KEYS
    elif path == "/api/backup/config" and status == 200:
        wanted = CONFIG_KEYS
    problems: list[str] = []
    if wanted is not None:
        if not isinstance(body, dict):
            return [f"answer is {type(body).__name__}, not an object"]
        for key, inner in wanted.items():
            if key not in body:
                problems.append(f"missing `{key}`")
            elif inner and (not isinstance(body[key], dict) or not inner <= set(body[key])):
                problems.append(f"`{key}` lacks {sorted(inner - set(body[key] or {}))}")
    runs: list[Any] = []
    if path == "/api/backup/runs/{id}" and status == 200:
        runs = [body]
    elif path == "/api/backup/runs" and status == 200 and isinstance(body, dict):
        runs = body.get("results") or []
    elif path == "/api/backup/create" and status == 202 and isinstance(body, dict):
        runs = [body.get("run")]
    for run in runs:
        progress = run.get("progress") if isinstance(run, dict) else None
        if not isinstance(progress, dict) or not set(progress) >= PROGRESS_KEYS:
            problems.append(f"run progress {progress!r} lacks {sorted(PROGRESS_KEYS)}")
    return problems


class OutOfTime(Exception):
    pass


# --- the data on disk -------------------------------------------------------------------------------------


def seed_root(root: Path) -> int:
    """(Re)create every seed backup that is missing and point `latest` at the newest; returns how many
    were made."""
    made = 0
    for name, files in SEEDS.items():
        folder = root / name
        if folder.exists():
            continue
        for rel, content in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        made += 1
    link = root / "latest"
    if not link.exists():
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(max(SEEDS))
    return made


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


# --- credentials --------------------------------------------------------------------------------------------


def invalid_credentials(secret: str) -> list[tuple[str, dict[str, str]]]:
    now = int(time.time())
    claims = {"sub": "fuzz", "role": "SUPER_ADMIN", "iat": now, "exp": now + 600}
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return [
        ("garbage", {"Authorization": "Bearer not-a-jwt"}),
        ("wrong key", {"Authorization": "Bearer " + jwt.encode(claims, "x" * 48, algorithm="HS256")}),
        ("alg none", {"Authorization": f"Bearer {header}.{body}."}),
        (
            "expired",
            {
                "Authorization": "Bearer "
                + jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, secret, algorithm="HS256")
            },
        ),
        ("HS512 (other alg)", {"Authorization": "Bearer " + jwt.encode(claims, secret, algorithm="HS512")}),
        ("Basic scheme", {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}),
        ("no header", {}),
    ]


# --- results ------------------------------------------------------------------------------------------------


@dataclass
class OpResult:
    label: str
    valid_calls: int = 0
    valid_codes: Counter = field(default_factory=Counter)
    invalid_calls: int = 0
    invalid_codes: Counter = field(default_factory=Counter)
    unrouted: Counter = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # distinct key -> reproduction
    out_of_time: bool = False

    def fail(self, key: str, text: str) -> None:
        self.failures.setdefault(key, text)


def curl(case: Any, headers: dict[str, str], base: str) -> str:
    try:
        command = case.as_curl_command(headers=headers, base_url=base)
    except Exception as exc:  # a malformed generated case must not hide the finding
        command = f"<no curl: {exc}> {case!r}"
    for name, value in headers.items():
        if name.lower() == "authorization" and value:
            command = command.replace(value, "Bearer $TOKEN" if value.startswith("Bearer ") else "$AUTH")
    return command


class Fuzzer:
    def __init__(
        self, base: str, token: str, secret: str, tmp: Path, root: Path, deadline: float, rng_seed: int
    ) -> None:
        self.base = base
        self.token = token
        self.secret = secret
        self.tmp = tmp
        self.root = root
        self.deadline = deadline
        self.seed = rng_seed
        self.session = requests.Session()
        self.forbidden_text = [
            secret,
            os.environ.get("SECRET_KEY", "\0never"),
            "Traceback (most recent call",
            str(PROJECT),
            str(tmp / "db.sqlite3"),
            str(tmp / "outside"),
        ]
        self.reseeded = 0

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def api_json(self, path: str) -> Any:
        reply = self.session.get(self.base + path, headers=self.auth, timeout=REQUEST_TIMEOUT)
        reply.raise_for_status()
        return reply.json()

    def ids(self) -> tuple[list[str], list[str]]:
        backups = [row["id"] for row in self.api_json("/api/backup/list?page_size=500")["results"]]
        runs = [row["id"] for row in self.api_json("/api/backup/runs?page_size=50")["results"]]
        return backups, runs

    def check_leaks(self, result: OpResult, case: Any, response: Any, headers: dict[str, str]) -> None:
        if response.status_code < 400:
            return
        text = response.content.decode(errors="replace")
        for needle in self.forbidden_text:
            if needle and needle in text:
                shown = "<secret>" if needle == self.secret else needle
                result.fail(
                    f"leak {shown} in {response.status_code}",
                    f"error response {response.status_code} contains {shown!r}: {text[:300]}\n"
                    f"    {curl(case, headers, self.base)}",
                )

    def call(
        self, result: OpResult, case: Any, *, valid: bool, headers: dict[str, str] | None = None
    ) -> None:
        if time.monotonic() > self.deadline:
            result.out_of_time = True
            raise OutOfTime
        sent = dict(self.auth if valid else headers or {})
        try:
            response = case.call(
                base_url=self.base, session=self.session, headers=sent, timeout=REQUEST_TIMEOUT
            )
        except requests.RequestException as exc:
            result.fail(
                f"transport {type(exc).__name__}",
                f"{type(exc).__name__}: {exc}\n    {curl(case, sent, self.base)}",
            )
            return
        status = response.status_code
        if valid:
            result.valid_calls += 1
            result.valid_codes[status] += 1
            try:
                case.validate_response(
                    response, checks=[not_a_server_error, response_schema_conformance], headers=sent
                )
            except FailureGroup as group:
                for failure in group.exceptions:
                    self.record_failure(result, case, sent, response, failure)
            except Failure as failure:
                self.record_failure(result, case, sent, response, failure)
            self.check_leaks(result, case, response, sent)
            if 200 <= status < 300 and "json" in " ".join(response.headers.get("content-type", [])):
                try:
                    body = json.loads(response.content)
                except ValueError:
                    body = None
                for problem in contract_problems(result.label, status, body):
                    result.fail(
                        f"contract: {problem}",
                        f"{status} answer: {problem}\n    {curl(case, sent, self.base)}",
                    )
        else:
            result.invalid_calls += 1
            www = " ".join(response.headers.get("www-authenticate", []))
            routed = urllib.parse.urlsplit(response.request.url).path.startswith("/api/backup/")
            if not routed:
                # The client normalised the generated path out of the API (`..` → /api/): Django's 404
                # for an unknown URL, before any view; not an authentication answer.
                result.unrouted[status] += 1
            else:
                result.invalid_codes[status] += 1
            if routed and status != 401:
                body = response.content[:200].decode(errors="replace")
                result.fail(
                    f"invalid credentials -> {status}",
                    f"invalid credentials answered {status} (expected 401): {body!r}\n"
                    f"    {curl(case, sent, self.base)}",
                )
            elif routed and not www.lower().startswith("bearer"):
                result.fail(
                    "401 without WWW-Authenticate: Bearer",
                    f"401 with WWW-Authenticate {www!r}\n    {curl(case, sent, self.base)}",
                )
            self.check_leaks(result, case, response, sent)

    def record_failure(
        self, result: OpResult, case: Any, sent: dict[str, str], response: Any, failure: Failure
    ) -> None:
        key = f"{failure.title} [{response.status_code}]"
        message = " ".join(str(failure.message).split())[:600]
        body = response.content[:300].decode(errors="replace")
        result.fail(
            key,
            f"{failure.title}: {message}\n    response {response.status_code}: {body!r}\n"
            f"    {curl(case, sent, self.base)}",
        )

    def explicit_cases(self, operation: Any, backups: list[str], runs: list[str]) -> list[Any]:
        """Hand-made cases on real data, the way a user calls each operation."""
        path = operation.path
        method = operation.method.upper()
        cases: list[dict[str, Any]] = []
        if "{id}" in path and path.startswith("/api/backup/runs"):
            cases += [{"path_parameters": {"id": run}} for run in runs[:3]]
            cases.append({"path_parameters": {"id": "00000000-0000-0000-0000-000000000000"}})
        elif "{id}" in path:
            ids = ["latest", *backups[:2], OUTSIDE_LINK, "..", "%2e%2e", "backup-does-not-exist"]
            if method == "DELETE":  # keep one seed for the operations after this one
                ids = ["latest", OUTSIDE_LINK, "..", "backup-does-not-exist", *backups[-1:]]
            cases += [{"path_parameters": {"id": one}} for one in ids]
            if path.endswith("/download"):
                target = backups[0] if backups else "latest"
                for rel in (
                    "configs/app.env",
                    "data/\u00fcn\u00efcode.txt",
                    "../outside/secret.txt",
                    "/etc/passwd",
                    "configs",
                    "nope.txt",
                ):
                    cases.append({"path_parameters": {"id": target}, "query": {"file": rel}})
        elif path.endswith("/config") and method == "PUT":
            cases += [{"body": VALID_CONFIG}, {"body": {**VALID_CONFIG, "unknown": 1}}]
        elif path.endswith("/config") and method == "PATCH":
            cases += [
                {"body": {"schedule": "30 2 * * *"}},
                {"body": {"schedule": "61 * * * *"}},
                {"body": {"notifications": {"webhook": "ftp://x"}}},
            ]
        elif path.endswith("/create"):
            cases += [
                {"body": {"type": "manual", "description": "fuzz"}},
                {"body": {}},
                {"body": {"type": "scheduled"}},
                {"body": {"description": "x" * 501}},
            ]
        elif path.endswith("/logs"):
            cases += [{"query": {"source": source}} for source in ("script", "service", "audit")]
            cases += [{"query": {"source": "run", "run": run}} for run in runs[:1]]
            cases += [{"query": {"lines": 0}}, {"query": {"lines": 5001}}]
        elif path.endswith("/list"):
            cases += [
                {"query": {"page_size": 1, "page": 2, "ordering": "-size_bytes", "status": "completed"}},
                {"query": {"page_size": 501}},
                {"query": {"page": 999}},
            ]
        made = []
        for spec in cases:
            with contextlib.suppress(Exception):
                media = {"media_type": "application/json"} if "body" in spec else {}
                made.append(operation.Case(**spec, **media))
        return made

    def fuzz(self, result: OpResult, strategy: Any, examples: int, one: Callable[[Any], None]) -> None:
        @seed(self.seed)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=False,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            one(case)

        try:
            run()
        except OutOfTime:
            result.out_of_time = True
        except Unsatisfiable:
            pass  # nothing to generate: e.g. no invalid request exists for an operation without inputs

    def operation_strategy(
        self, operation: Any, mode: GenerationMode, backups: list[str], runs: list[str]
    ) -> Any:
        plain = operation.as_strategy(generation_mode=mode)
        if "{id}" not in operation.path or mode is GenerationMode.NEGATIVE:
            return plain
        real = runs if operation.path.startswith("/api/backup/runs") else ["latest", *backups]
        if not real:
            return plain
        # Half the cases on a real id: generated ids are almost always 404 and reach nothing.
        chosen = st.sampled_from(real).flatmap(
            lambda one: operation.as_strategy(generation_mode=mode, path_parameters={"id": one})
        )
        return st.one_of(plain, chosen)

    def run_valid(self, operation: Any, result: OpResult, max_positive: int, max_negative: int) -> None:
        self.reseeded += seed_root(self.root)
        backups, runs = self.ids()
        for case in self.explicit_cases(operation, backups, runs):
            try:
                self.call(result, case, valid=True)
            except OutOfTime:
                return
        for mode, count in ((GenerationMode.POSITIVE, max_positive), (GenerationMode.NEGATIVE, max_negative)):
            strategy = self.operation_strategy(operation, mode, backups, runs)
            self.fuzz(result, strategy, count, lambda case: self.call(result, case, valid=True))
            if result.out_of_time:
                return

    def run_invalid(self, operation: Any, result: OpResult, examples: int) -> None:
        credentials = invalid_credentials(self.secret)
        counter = iter(range(10**6))
        backups, runs = self.ids()

        def one(case: Any) -> None:
            _, headers = credentials[next(counter) % len(credentials)]
            self.call(result, case, valid=False, headers=headers)

        for case in self.explicit_cases(operation, backups, runs)[:3]:
            for _, headers in credentials:
                try:
                    self.call(result, case, valid=False, headers=headers)
                except OutOfTime:
                    return
        self.fuzz(
            result, self.operation_strategy(operation, GenerationMode.POSITIVE, backups, runs), examples, one
        )


def load_schema(base: str, token: str) -> tuple[dict[str, Any], Any]:
    request = urllib.request.Request(
        base + "/api/schema/?format=json",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        document = json.loads(reply.read())
    return document, schemathesis.openapi.from_dict(document)


def operations(schema: Any) -> Iterator[Any]:
    for result in schema.get_all_operations():
        if isinstance(result, Ok):
            yield result.ok()
        else:
            print(f"schemathesis could not load an operation: {result.err()}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    parser.add_argument("--max-examples", type=int, default=MAX_POSITIVE, help="positive cases per operation")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="The HMAC key is")  # the HS512 wrong-algorithm token
    rng_seed = args.seed if args.seed is not None else random.randrange(2**32)
    started = time.monotonic()
    deadline = started + TIME_BUDGET
    report = Report("Schema fuzzing (schemathesis) against a real `manage.py serve`")
    results: dict[str, OpResult] = {}
    ok = True
    with bench_tmpdir("fuzz-schema-") as tmp:
        set_hypothesis_home_dir(tmp / "hypothesis")  # its caches stay out of the work tree
        root = tmp / "backups"
        root.mkdir()
        outside = tmp / "outside"
        (outside / "sub").mkdir(parents=True)
        (outside / "secret.txt").write_text("must never be read or deleted\n")
        (outside / "sub" / "data.bin").write_bytes(os.urandom(2048))
        (root / OUTSIDE_LINK).symlink_to(outside)
        outside_before = tree_digest(outside)
        seed_root(root)
        script = tmp / "fuzz-backup.sh"
        script.write_text(SCRIPT)
        script.chmod(0o755)
        env = server_env(
            tmp,
            BACKUP_ROOT=str(root),
            BACKUP_SCRIPT=str(script),
            RATE_LIMIT="100000000/1m",
            BACKUP_RUN_TIMEOUT="60",
        )
        os.environ["SECRET_KEY"] = env["SECRET_KEY"]  # only to look for it in answers
        migrate(env)
        token = admin_token(env)
        with running(Server(tmp, env)) as server:
            server.start()
            document, schema = load_schema(server.base, token)
            fuzzer = Fuzzer(server.base, token, env["JWT_SECRET"], tmp, root, deadline, rng_seed)
            ops = list(operations(schema))
            listed = sum(len(methods) for methods in document["paths"].values())
            for operation in ops:
                results[operation.label] = OpResult(operation.label)
            phase1_end = started + TIME_BUDGET * 0.75
            for index, operation in enumerate(ops):
                fuzzer.deadline = min(
                    phase1_end, time.monotonic() + (phase1_end - time.monotonic()) / (len(ops) - index)
                )
                fuzzer.run_valid(operation, results[operation.label], args.max_examples, MAX_NEGATIVE)
            for index, operation in enumerate(ops):
                fuzzer.deadline = time.monotonic() + (deadline - time.monotonic()) / (len(ops) - index)
                fuzzer.run_invalid(operation, results[operation.label], MAX_INVALID)
            # The server must still answer, and nothing outside the root may have changed.
            health = requests.get(server.base + "/health", timeout=10).status_code
            server_log = server.log()
        outside_after = tree_digest(outside) if outside.exists() else "gone"
        link_kept = (root / OUTSIDE_LINK).is_symlink()
    elapsed = time.monotonic() - started

    lines = [
        "| operation | valid-token calls | status codes | invalid-credential calls | status codes | "
        "findings |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    findings: list[str] = []
    for label, result in results.items():
        codes = ", ".join(f"{code}×{n}" for code, n in sorted(result.valid_codes.items()))
        bad = ", ".join(f"{code}×{n}" for code, n in sorted(result.invalid_codes.items()))
        if result.unrouted:
            bad += (
                " (+ outside /api/backup/ after URL normalisation: "
                + ", ".join(f"{code}×{n}" for code, n in sorted(result.unrouted.items()))
                + ")"
            )
        mark = str(len(result.failures)) if result.failures else "0"
        if result.out_of_time:
            mark += " (time budget hit)"
        lines.append(
            f"| `{label}` | {result.valid_calls} | {codes} | {result.invalid_calls} | {bad} | {mark} |"
        )
        for key, text in result.failures.items():
            findings.append(f"- **{label}** — {key}:\n\n  ```\n  {text}\n  ```")
    total_valid = sum(r.valid_calls for r in results.values())
    total_invalid = sum(r.invalid_calls for r in results.values())
    total_5xx = sum(n for r in results.values() for code, n in r.valid_codes.items() if code >= 500)
    total_5xx += sum(n for r in results.values() for code, n in r.invalid_codes.items() if code >= 500)
    total_5xx += sum(n for r in results.values() for code, n in r.unrouted.items() if code >= 500)
    non_401 = sum(n for r in results.values() for code, n in r.invalid_codes.items() if code != 401)
    schema_fail = sum(1 for r in results.values() for key in r.failures if "schema" in key.lower())
    contract_fail = sum(1 for r in results.values() for key in r.failures if key.startswith("contract"))
    untyped = [
        f"{method.upper()} {path}"
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
        if any(
            media.get("schema") == {"type": "object", "additionalProperties": {}}
            for code, answer in spec.get("responses", {}).items()
            if code.startswith("2")
            for media in answer.get("content", {}).values()
        )
    ]

    report.add("operations in the document / fuzzed", f"{listed} / {len(ops)}", "all", listed == len(ops))
    report.add("valid-token requests", str(total_valid))
    report.add("5xx answers", str(total_5xx), "0", total_5xx == 0)
    report.add("response-schema mismatches (distinct)", str(schema_fail), "0", schema_fail == 0)
    report.add(
        "contract keys missing in status/config/run answers (distinct)",
        str(contract_fail),
        "0",
        contract_fail == 0,
    )
    report.add(
        "invalid-credential requests / not 401", f"{total_invalid} / {non_401}", "0 not 401", non_401 == 0
    )
    report.add(
        "distinct findings",
        str(sum(len(r.failures) for r in results.values())),
        "0",
        not any(r.failures for r in results.values()),
    )
    report.add(
        "folder outside the root (and the symlink to it) untouched",
        f"{'same digest' if outside_after == outside_before else 'CHANGED'}, link "
        f"{'kept' if link_kept else 'removed'}",
        "untouched",
        outside_after == outside_before,
    )
    report.add("/health after fuzzing", str(health), "200", health == 200)
    report.add("wall time", f"{elapsed:.0f} s", f"< {TIME_BUDGET + 30:.0f} s", elapsed < TIME_BUDGET + 30)
    report.note(
        f"hypothesis seed {rng_seed} (re-run with `--seed {rng_seed}`); schemathesis "
        f"{schemathesis.__version__}; per operation: hand-made cases on real ids, up to "
        f"{args.max_examples} positive and {MAX_NEGATIVE} negative generated cases with the token, "
        f"up to {MAX_INVALID} generated cases plus the hand-made ones × 7 kinds of bad credentials "
        "without it"
    )
    if untyped:
        report.note(
            "2xx answers typed only as a bare object in the OpenAPI document (conformance cannot "
            "fail there; checked against the README's keys instead): " + ", ".join(untyped)
        )
    report.note(f"seed backups re-created {fuzzer.reseeded} times between operations (DELETE/retention)")
    ok = all(met != "**NO**" for *_, met in report.rows)
    print("\n".join(lines))
    print()
    print(report.render())
    if findings:
        print("\n#### Findings (first reproduction of each distinct failure)\n")
        print("\n".join(findings))
    if not ok and "Traceback" in server_log:
        print("\n#### Server log tail\n\n```\n" + server_log[-3000:] + "\n```")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
