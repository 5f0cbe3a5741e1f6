"""The verify job as its process runs it: a real backup folder, the job's output protocol, the
manifest written at first sight beside (never inside) the folder, and nothing read outside the root."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

from backups.catalogue import sidecar
from backups.jobs import protocol
from backups.verification import job
from tests.servers import PROJECT


def run_job(root: Path, backup_id: str, level: str = "quick") -> dict:
    out = io.StringIO()
    assert job.run({"root": str(root), "backup_id": backup_id, "level": level}, protocol.Reporter(out)) == 0
    results = [protocol.parse(line) for line in out.getvalue().splitlines()]
    documents = [r.document for r in results if isinstance(r, protocol.Result)]
    assert len(documents) == 1
    return documents[0]


def make(root: Path, files: dict[str, bytes], manifest: bool = True) -> Path:
    folder = root / "backup-20260101_030000"
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    if manifest:
        lines = [f"{hashlib.sha256(data).hexdigest()}  {rel}" for rel, data in sorted(files.items())]
        (folder / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")
    return folder


def test_every_listed_file_is_checked_against_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    folder = make(root, {"db.sql": b"dump", "configs/app.env": b"A=1\n"})
    assert run_job(root, folder.name)["verification"]["status"] == "ok"
    (folder / "configs" / "app.env").write_bytes(b"A=2\n")
    problems = run_job(root, folder.name)["verification"]["problems"]
    assert any(p.startswith("configs/app.env: digest mismatch") for p in problems), problems
    (folder / "configs" / "app.env").unlink()
    problems = run_job(root, folder.name)["verification"]["problems"]
    assert any("configs/app.env" in p and "missing" in p for p in problems), problems


def test_a_backup_without_manifest_gets_one_at_first_sight_kept_outside_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    folder = make(root, {"db.sql": b"dump", "configs/app.env": b"A=1\n"}, manifest=False)
    before = sorted(p.name for p in folder.rglob("*"))
    first = run_job(root, folder.name)
    assert first["manifest_written"] is True and first["verification"]["status"] == "ok"
    assert sorted(p.name for p in folder.rglob("*")) == before  # the folder stays as the script left it
    assert "db.sql" in (sidecar.read_manifest(root, folder.name) or "")
    (folder / "db.sql").write_bytes(b"tampered")
    second = run_job(root, folder.name)
    assert second["manifest_written"] is False and second["manifest"] == "service"
    assert any(p.startswith("db.sql: digest mismatch") for p in second["verification"]["problems"])


def test_a_manifest_never_makes_the_job_read_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    folder = make(root, {"db.sql": b"dump"}, manifest=False)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside")
    digest = hashlib.sha256(b"outside").hexdigest()
    (folder / "link").symlink_to(secret)
    for listed in ("../../secret.txt", str(secret), "link"):
        (folder / "MANIFEST.sha256").write_text(f"{digest}  {listed}\n")
        document = run_job(root, folder.name)["verification"]
        assert document["status"] == "failed", listed
        assert any(listed in p for p in document["problems"]), document["problems"]
    (folder / "MANIFEST.sha256").write_text("not a manifest\n")
    assert run_job(root, folder.name)["verification"]["status"] == "failed"


def test_the_job_process_reports_progress_and_its_result_on_stdout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    folder = make(root, {"db.sql": b"dump" * 1000})
    params = json.dumps({"root": str(root), "backup_id": folder.name, "level": "deep", "demo_dumps_ok": True})
    done = subprocess.run(
        [sys.executable, "-m", "backups.jobs", "verify", params], cwd=PROJECT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    parsed = [protocol.parse(line) for line in done.stdout.splitlines()]
    assert any(isinstance(p, protocol.Progress) for p in parsed)
    result = [p for p in parsed if isinstance(p, protocol.Result)][-1].document
    assert result["verification"]["level"] == "deep"
    assert (
        subprocess.run([sys.executable, "-m", "backups.jobs", "nonsense", "{}"], cwd=PROJECT).returncode == 2
    )
