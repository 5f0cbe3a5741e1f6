"""Tests for the bundled reference backup script ``scripts/production-backup.sh``.

Plain pytest, no Django: the script is run as a real process and everything it
writes (backup root, log, sources) lives under ``tmp_path``.

    .venv/bin/python -m pytest -p no:django -p no:cacheprovider --noconftest \
        tests/test_reference_script.py -q
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "production-backup.sh"

STEP_TEXTS = [
    "Preparing backup directory",
    "Dumping PostgreSQL databases",
    "Archiving application files",
    "Archiving uploads",
    "Archiving nginx and SSL configuration",
    "Collecting system information",
    "Finalizing",
]
FULL_ARTIFACTS = {
    "beauty-platform.tar.gz",
    "beauty_platform_new.sql",
    "beauty_audit.sql",
    "nginx-configs.tar.gz",
    "ssl-certs.tar.gz",
    "images-uploads.tar.gz",
    "configs",
    "system-info",
    "MANIFEST.sha256",
}
SYSTEM_INFO_FILES = {"uname.txt", "disk.txt", "packages.txt", "date.txt"}
STEP_RE = re.compile(r"^\[(\d)/7\] (.*)$")
LOG_RE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] (INFO|WARN|ERROR) .*$")
FOLDER_RE = re.compile(r"^backup-\d{8}_\d{6}$")
DEMO_LABEL = "-- DEMO DUMP: PostgreSQL not reachable or database {db} missing; this is not real data"
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}


# --------------------------------------------------------------------------- helpers


def write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    """Small source trees for every archived component."""
    base = tmp_path / "src"
    app = base / "beauty-platform"
    write(app / "package.json", '{"name": "beauty-platform"}\n')
    write(app / "src" / "server.js", "console.log('hi')\n")
    write(app / "src" / "lib" / "util.js", "module.exports = {}\n")
    uploads = base / "uploads"
    write(uploads / "images" / "logo.png", b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    write(uploads / "images" / "salon photo (1).jpg", os.urandom(200))
    nginx = base / "nginx"
    write(nginx / "nginx.conf", "events {}\n")
    write(nginx / "sites-available" / "beauty.conf", "server { listen 80; }\n")
    ssl = base / "ssl"
    write(ssl / "README", "demo certs\n")
    write(ssl / "live" / "example" / "cert.pem", "-----BEGIN CERTIFICATE-----\n")
    configs = base / "configs"
    write(configs / "app.env", "NODE_ENV=production\n")
    write(configs / "pm2" / "ecosystem.yml", "apps: []\n")
    return {"app": app, "uploads": uploads, "nginx": nginx, "ssl": ssl, "configs": configs}


@pytest.fixture
def env(tmp_path: Path, sources: dict[str, Path]) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_") and k != "NO_COLOR"}
    e.update(
        BACKUP_ROOT=str(tmp_path / "backups" / "production"),
        BACKUP_SCRIPT_LOG=str(tmp_path / "log" / "beauty-backup.log"),
        BACKUP_APP_DIR=str(sources["app"]),
        BACKUP_UPLOADS_DIR=str(sources["uploads"]),
        BACKUP_NGINX_DIR=str(sources["nginx"]),
        BACKUP_SSL_DIR=str(sources["ssl"]),
        BACKUP_CONFIGS_DIR=str(sources["configs"]),
        # Unreachable PostgreSQL by default: labelled demo dumps, deterministic.
        BACKUP_PG_PORT="1",
        BACKUP_STEP_DELAY="0",
    )
    return e


def run(env: dict[str, str], script: Path = SCRIPT, timeout: float = 60, **extra: str):
    e = dict(env)
    e.update(extra)
    return subprocess.run(
        ["bash", str(script)], env=e, capture_output=True, text=True, timeout=timeout, cwd="/"
    )


def backup_root(env: dict[str, str]) -> Path:
    return Path(env["BACKUP_ROOT"])


def backup_folders(env: dict[str, str]) -> list[Path]:
    root = backup_root(env)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if FOLDER_RE.match(p.name) and not p.is_symlink())


def backup_dir_from_stdout(stdout: str) -> Path:
    m = re.search(r"^Backup directory: (.+)$", stdout, re.M)
    assert m, stdout
    return Path(m.group(1))


def step_lines(stdout: str) -> list[tuple[int, str]]:
    return [(int(m.group(1)), m.group(2)) for m in map(STEP_RE.match, stdout.splitlines()) if m]


def tree_files(src: Path) -> dict[str, bytes]:
    """Files of a source tree, keyed like tar members (``<basename>/<relpath>``)."""
    return {
        f"{src.name}/{p.relative_to(src).as_posix()}": p.read_bytes() for p in src.rglob("*") if p.is_file()
    }


def tar_files(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


def pg_available() -> bool:
    if not (shutil.which("psql") and shutil.which("pg_dump")):
        return False
    try:
        r = subprocess.run(
            [
                "psql",
                "-X",
                "-w",
                "-h",
                PG["host"],
                "-p",
                PG["port"],
                "-U",
                PG["user"],
                "-d",
                "postgres",
                "-tAc",
                "select 1",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.strip() == "1"


needs_pg = pytest.mark.skipif(
    not pg_available(), reason="PostgreSQL on 127.0.0.1:5432 (psql/pg_dump) unavailable"
)


def psql(sql: str, db: str = "postgres") -> str:
    r = subprocess.run(
        [
            "psql",
            "-X",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            PG["host"],
            "-p",
            PG["port"],
            "-U",
            PG["user"],
            "-d",
            db,
            "-tAc",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


# --------------------------------------------------------------------------- static checks


def test_script_is_executable_and_bash_n_passes():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shellcheck_clean():
    r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- full run


def test_full_run_creates_expected_artifacts(env, sources):
    started = time.monotonic()
    r = run(env, BACKUP_RUN_ID="42", BACKUP_TYPE="manual", BACKUP_DESCRIPTION="before\nrelease")
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stdout + r.stderr
    assert elapsed < 5, f"took {elapsed:.2f}s"

    folders = backup_folders(env)
    assert len(folders) == 1
    folder = folders[0]
    assert backup_dir_from_stdout(r.stdout) == folder
    assert {p.name for p in folder.iterdir()} == FULL_ARTIFACTS
    assert {p.name for p in (folder / "system-info").iterdir()} == SYSTEM_INFO_FILES
    assert "Linux" in (folder / "system-info" / "uname.txt").read_text()
    assert not list(folder.rglob("*.part"))

    # latest: relative symlink to the new folder, no temp link left behind
    latest = backup_root(env) / "latest"
    assert latest.is_symlink()
    assert os.readlink(latest) == folder.name
    assert latest.resolve() == folder.resolve()
    assert sorted(p.name for p in backup_root(env).iterdir()) == sorted([folder.name, "latest"])

    # archives are valid and hold exactly the sources
    for name, src in [
        ("beauty-platform.tar.gz", sources["app"]),
        ("images-uploads.tar.gz", sources["uploads"]),
        ("nginx-configs.tar.gz", sources["nginx"]),
        ("ssl-certs.tar.gz", sources["ssl"]),
    ]:
        assert tar_files(folder / name) == tree_files(src), name
    # configs/ is a copy of the configs folder's content
    copied = {
        p.relative_to(folder / "configs").as_posix(): p.read_bytes()
        for p in (folder / "configs").rglob("*")
        if p.is_file()
    }
    assert copied == {
        p.relative_to(sources["configs"]).as_posix(): p.read_bytes()
        for p in sources["configs"].rglob("*")
        if p.is_file()
    }

    # PostgreSQL unreachable (port 1): labelled demo dumps
    for db in ("beauty_platform_new", "beauty_audit"):
        assert (folder / f"{db}.sql").read_text().splitlines()[0] == DEMO_LABEL.format(db=db)

    # MANIFEST covers every file with a relative path and checks out
    manifest = (folder / "MANIFEST.sha256").read_text().splitlines()
    listed = {line.split("  ", 1)[1] for line in manifest}
    every = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"MANIFEST.sha256"}
    assert listed == every
    for line in manifest:
        digest, rel = line.split("  ", 1)
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == digest
    check = subprocess.run(
        ["sha256sum", "-c", "--strict", "MANIFEST.sha256"], cwd=folder, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # stdout: seven step lines in order, with emoji, no colour when not a TTY
    steps = step_lines(r.stdout)
    assert [n for n, _ in steps] == list(range(1, 8))
    for (_, text), expected in zip(steps, STEP_TEXTS, strict=True):
        emoji, _, rest = text.partition(" ")
        assert rest == expected and emoji and not emoji.isascii()
    assert "\x1b[" not in r.stdout
    assert re.search(rf"^Backup completed: {folder.name} \(\S+\)$", r.stdout, re.M)
    assert r.stdout.rstrip().splitlines()[-1].startswith("✅")
    assert "WARN" in r.stdout  # demo dumps are announced

    # log: timestamped lines with levels, run metadata on one line
    log_lines = Path(env["BACKUP_SCRIPT_LOG"]).read_text().splitlines()
    assert log_lines and all(LOG_RE.match(line) for line in log_lines), log_lines
    log_text = "\n".join(log_lines)
    for n, text in enumerate(STEP_TEXTS, 1):
        assert f"INFO [{n}/7] " in log_text and text in log_text
    assert "Run ID: 42 | Type: manual | Description: before release" in log_text
    assert " WARN " in log_text and " ERROR " not in log_text


def test_colour_codes_when_forced(env):
    r = run(env, BACKUP_FORCE_COLOR="1", BACKUP_COMPONENTS="systemInfo")
    assert r.returncode == 0, r.stderr
    assert "\x1b[" in r.stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)
    assert [n for n, _ in step_lines(plain)] == list(range(1, 8))
    assert "\x1b" not in Path(env["BACKUP_SCRIPT_LOG"]).read_text()


def test_component_subset_creates_only_those(env, sources):
    r = run(env, BACKUP_COMPONENTS="uploads, configs")
    assert r.returncode == 0, r.stdout + r.stderr
    (folder,) = backup_folders(env)
    assert {p.name for p in folder.iterdir()} == {"images-uploads.tar.gz", "configs", "MANIFEST.sha256"}
    assert tar_files(folder / "images-uploads.tar.gz") == tree_files(sources["uploads"])
    steps = dict(step_lines(r.stdout))
    assert sorted(steps) == list(range(1, 8))
    for n in (2, 3, 6):
        assert steps[n].endswith(" skipped (component disabled)"), steps[n]
    for n in (1, 4, 5, 7):
        assert "skipped" not in steps[n]
    check = subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=folder, capture_output=True)
    assert check.returncode == 0


def test_unknown_component_fails_before_creating_anything(env):
    r = run(env, BACKUP_COMPONENTS="databases,everything")
    assert r.returncode != 0
    assert "❌ ERROR: unknown component 'everything'" in r.stderr
    assert backup_folders(env) == []


def test_missing_configured_source_fails_before_creating_anything(env, tmp_path):
    r = run(env, BACKUP_UPLOADS_DIR=str(tmp_path / "does-not-exist"))
    assert r.returncode != 0
    assert "❌ ERROR:" in r.stderr and "does-not-exist" in r.stderr
    assert backup_folders(env) == []


# --------------------------------------------------------------------------- failures


def test_fail_at_step_3_keeps_latest(env):
    first = run(env)
    assert first.returncode == 0, first.stderr
    (previous,) = backup_folders(env)
    latest = backup_root(env) / "latest"
    assert os.readlink(latest) == previous.name

    r = run(env, BACKUP_FAIL_AT_STEP="3")
    assert r.returncode != 0
    assert re.search(r"^❌ ERROR: .*step 3.* \(line \d+\)$", r.stderr, re.M), r.stderr
    assert os.readlink(latest) == previous.name
    assert [n for n, _ in step_lines(r.stdout)] == [1, 2, 3]
    assert "Backup completed" not in r.stdout

    # the partial folder is left in place (the service marks it incomplete)
    partial = backup_dir_from_stdout(r.stdout)
    assert partial != previous and partial.is_dir()
    assert {p.name for p in partial.iterdir()} == {"beauty_platform_new.sql", "beauty_audit.sql"}
    log_text = Path(env["BACKUP_SCRIPT_LOG"]).read_text()
    assert re.search(r"^\[[^]]+\] ERROR .*step 3", log_text, re.M)


def test_unexpected_command_failure_goes_through_err_trap(env, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    r = run(env, BACKUP_ROOT=str(blocker / "production"))
    assert r.returncode != 0
    assert re.search(r"^❌ ERROR: .+ \(line \d+\)$", r.stderr, re.M), r.stderr
    assert "ERROR" in Path(env["BACKUP_SCRIPT_LOG"]).read_text()


def test_disk_full_is_reported(env, tmp_path, sources):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount tmpfs here")
    try:
        write(sources["uploads"] / "big.bin", os.urandom(1_000_000))  # incompressible
        r = run(env, BACKUP_ROOT=str(small / "production"))
        assert r.returncode != 0
        assert "No space left on device" in r.stderr
        assert re.search(r"^❌ ERROR: .*No space left on device.* \(line \d+\)$", r.stderr, re.M), r.stderr
        assert not (small / "production" / "latest").exists()
        assert not list((small / "production").rglob("*.part"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_sigterm_aborts_without_touching_latest(env):
    first = run(env, BACKUP_COMPONENTS="systemInfo")
    assert first.returncode == 0
    latest = backup_root(env) / "latest"
    before = os.readlink(latest)

    e = dict(env, BACKUP_STEP_DELAY="0.5", BACKUP_COMPONENTS="systemInfo")
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("[2/7]"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "❌ ERROR: Interrupted by SIGTERM" in err
    assert os.readlink(latest) == before


# --------------------------------------------------------------------------- PostgreSQL


@needs_pg
def test_real_pg_dump(env):
    db = f"test_refscript_{uuid.uuid4().hex[:12]}"
    psql(f"CREATE DATABASE {db}")
    try:
        psql(
            "CREATE TABLE salon_clients (id integer PRIMARY KEY, name text);"
            "INSERT INTO salon_clients VALUES (7, 'Unique Client Zoë');",
            db=db,
        )
        r = run(
            env,
            BACKUP_COMPONENTS="databases",
            BACKUP_PG_DATABASES=db,
            BACKUP_PG_PORT=PG["port"],
            BACKUP_PG_HOST=PG["host"],
            BACKUP_PG_USER=PG["user"],
        )
        assert r.returncode == 0, r.stdout + r.stderr
        (folder,) = backup_folders(env)
        assert {p.name for p in folder.iterdir()} == {f"{db}.sql", "MANIFEST.sha256"}
        dump = (folder / f"{db}.sql").read_text()
        assert "DEMO DUMP" not in dump
        assert "PostgreSQL database dump" in dump
        assert "CREATE TABLE public.salon_clients" in dump
        assert "7\tUnique Client Zoë" in dump
        assert "OWNER TO" not in dump  # --no-owner
        assert "WARN" not in r.stdout
    finally:
        psql(f"DROP DATABASE IF EXISTS {db}")


@needs_pg
def test_missing_database_on_reachable_server_gives_labelled_demo_dump(env):
    db = f"test_refscript_missing_{uuid.uuid4().hex[:12]}"
    r = run(env, BACKUP_COMPONENTS="databases", BACKUP_PG_DATABASES=f"{db},", BACKUP_PG_PORT=PG["port"])
    assert r.returncode == 0, r.stderr
    (folder,) = backup_folders(env)
    dump = (folder / f"{db}.sql").read_text()
    assert dump.splitlines()[0] == DEMO_LABEL.format(db=db)
    assert "does not exist" in r.stdout


def test_unreachable_port_gives_labelled_demo_dump(env):
    r = run(env, BACKUP_COMPONENTS="databases", BACKUP_PG_PORT="1", BACKUP_PG_DATABASES="alpha beta,gamma")
    assert r.returncode == 0, r.stderr
    (folder,) = backup_folders(env)
    for db in ("alpha", "beta", "gamma"):
        text = (folder / f"{db}.sql").read_text()
        assert text.splitlines()[0] == DEMO_LABEL.format(db=db)
        assert "CREATE TABLE" in text and "INSERT INTO" in text
    assert len(re.findall(r"WARN: PostgreSQL dump of \w+ not possible", r.stdout)) == 3
    assert len(re.findall(r"\] WARN .*not reachable", Path(env["BACKUP_SCRIPT_LOG"]).read_text())) == 3


def test_invalid_database_name_is_rejected(env):
    r = run(env, BACKUP_COMPONENTS="databases", BACKUP_PG_DATABASES="../etc/passwd")
    assert r.returncode != 0
    assert "invalid database name" in r.stderr
    assert backup_folders(env) == []


# --------------------------------------------------------------------------- naming


def test_two_concurrent_runs_get_distinct_folders(env):
    e = dict(env, BACKUP_COMPONENTS="configs")
    procs = [
        subprocess.Popen(
            ["bash", str(SCRIPT)], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    dirs = {backup_dir_from_stdout(out) for out, _ in results}
    assert len(dirs) == 2
    assert set(backup_folders(env)) == dirs
    assert (backup_root(env) / "latest").resolve() in {d.resolve() for d in dirs}
    for d in dirs:
        assert {p.name for p in d.iterdir()} == {"configs", "MANIFEST.sha256"}


def test_never_writes_into_an_existing_folder(env):
    root = backup_root(env)
    now = time.time()
    taken = []
    for offset in range(3):  # the current second and the next two are taken
        name = time.strftime("backup-%Y%m%d_%H%M%S", time.localtime(now + offset))
        write(root / name / "marker", "other run")
        taken.append(root / name)
    r = run(env, BACKUP_COMPONENTS="configs")
    assert r.returncode == 0, r.stderr
    new = backup_dir_from_stdout(r.stdout)
    assert new not in taken and new.is_dir()
    for t in taken:
        assert [p.name for p in t.iterdir()] == ["marker"]


# --------------------------------------------------------------------------- options


def gzip_xfl(path: Path) -> int:
    return path.read_bytes()[8]  # 2 = slowest/best (level 9), 4 = fastest (level 1), 0 otherwise


@pytest.mark.parametrize(
    ("extra", "xfl", "warns"),
    [
        ({}, 0, False),
        ({"BACKUP_COMPRESSION": "0"}, 4, False),
        ({"BACKUP_COMPRESSION_LEVEL": "9"}, 2, False),
        ({"BACKUP_COMPRESSION_LEVEL": "12"}, 0, True),
    ],
)
def test_compression_settings(env, sources, extra, xfl, warns):
    r = run(env, BACKUP_COMPONENTS="applicationFiles", **extra)
    assert r.returncode == 0, r.stderr
    (folder,) = backup_folders(env)
    archive = folder / "beauty-platform.tar.gz"
    assert gzip_xfl(archive) == xfl
    assert tar_files(archive) == tree_files(sources["app"])
    assert ("invalid BACKUP_COMPRESSION_LEVEL" in r.stdout) is warns


def test_step_delay_slows_the_run(env):
    started = time.monotonic()
    r = run(env, BACKUP_COMPONENTS="configs", BACKUP_STEP_DELAY="0.15")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started >= 6 * 0.15


def test_defaults_create_demo_content_next_to_the_script(tmp_path):
    """A fresh clone: no BACKUP_* settings, everything under <repo>/var."""
    repo = tmp_path / "clone"
    (repo / "scripts").mkdir(parents=True)
    script = repo / "scripts" / "production-backup.sh"
    shutil.copy2(SCRIPT, script)
    e = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    e["BACKUP_PG_PORT"] = "1"
    r = run(e, script=script)
    assert r.returncode == 0, r.stdout + r.stderr

    demo = repo / "var" / "demo"
    assert (demo / "app" / "package.json").is_file()
    assert (demo / "app" / "src" / "server.js").is_file()
    assert (demo / "uploads" / "images" / "logo.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "NODE_ENV" in (demo / "configs" / "app.env").read_text()
    assert (demo / "ssl" / "README").is_file()
    nginx_src = Path("/etc/nginx") if Path("/etc/nginx").is_dir() else demo / "nginx"
    assert nginx_src.is_dir()
    assert (repo / "var" / "log" / "beauty-backup.log").read_text().strip()

    root = repo / "var" / "backups" / "production"
    folder = root / os.readlink(root / "latest")
    assert {p.name for p in folder.iterdir()} == FULL_ARTIFACTS
    assert tar_files(folder / "beauty-platform.tar.gz") == tree_files(demo / "app")
    assert tar_files(folder / "images-uploads.tar.gz") == tree_files(demo / "uploads")
    assert (folder / "configs" / "app.env").read_bytes() == (demo / "configs" / "app.env").read_bytes()

    # Second run reuses the demo content untouched.
    before = tree_files(demo / "app")
    r2 = run(e, script=script)
    assert r2.returncode == 0, r2.stderr
    assert "created demo content" not in r2.stdout
    assert tree_files(demo / "app") == before
    assert {p.name for p in tmp_path.iterdir()} == {"clone"}
    assert sorted(p.name for p in (repo / "var").iterdir()) == ["backups", "demo", "log"]
    assert r2.stderr == ""
