"""deploy/: the production settings pass `check --deploy`; deploy.sh plans the right steps in a dry run
and, run for real with systemctl/nginx/curl/setfacl stubbed and every path in tmp_path, installs,
stops for the settings, is idempotent, rolls a refused nginx site back and waits for a running
backup; the units and the nginx site say what the service needs, and systemd-analyze and nginx
(with a stand-in upstream) accept and honour them where the machine has those tools."""

from __future__ import annotations

import configparser
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.conftest import PROJECT, free_port

DEPLOY = PROJECT / "deploy"
ENV_EXAMPLE = DEPLOY / "env.production.example"
DEPLOY_SH = DEPLOY / "deploy.sh"
WEB_UNIT = DEPLOY / "systemd" / "backup-web@.service"
WORKER_UNIT = DEPLOY / "systemd" / "backup-worker.service"
NGINX_SITE = DEPLOY / "nginx" / "backup-service.conf"
# nginx and systemd-analyze live in sbin directories, which a normal user's PATH often lacks.
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
SYSTEMD_ANALYZE = shutil.which("systemd-analyze", path=SBIN_PATH)


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, the subset systemd's EnvironmentFile= and python-dotenv read the same way."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"not KEY=value: {line!r}"
        values[key] = value
    return values


def parse_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def seconds(value: str) -> float:
    """systemd time spans as used here: `60`, `60s`, `2min`, `1min 30s`."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*([a-z]*)", value)
    assert parts, value
    return sum(int(number) * units[unit] for number, unit in parts)


def redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def run_deploy(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(DEPLOY_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


# --- the production settings ---------------------------------------------------------------------------


def test_check_deploy_is_clean_with_the_production_example(tmp_path: Path) -> None:
    values = parse_env_file(ENV_EXAMPLE)
    values.update(
        {
            # What an operator fills in; the rest is the example as shipped.
            "SECRET_KEY": secrets.token_urlsafe(50),
            "JWT_SECRET": secrets.token_hex(32),
            # No PostgreSQL here: SQLite in tmp_path; no writes to /var/log either.
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "SERVICE_LOG": str(tmp_path / "log" / "backup-service.log"),
        }
    )
    if not redis_answers():
        values.pop("REDIS_URL")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **values}

    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_production_example_sets_the_production_values() -> None:
    values = parse_env_file(ENV_EXAMPLE)

    assert values["DEBUG"] == "0"
    for flag in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "BEHIND_PROXY"):
        assert values[flag] == "1", flag
    assert int(values["SECURE_HSTS_SECONDS"]) >= 31536000
    assert values["DATABASE_URL"].startswith("postgres://")
    assert values["REDIS_URL"].startswith("redis://")
    assert values["BACKUP_SCRIPT"] == "/root/SCRIPTS/production-backup.sh"
    assert values["BACKUP_ROOT"] == "/root/BACKUPS/production"
    assert values["BACKUP_SCRIPT_LOG"] == "/var/log/beauty-backup.log"
    assert values["SERVICE_LOG"] == "/var/log/backup-service/backup-service.log"
    assert values["DOWNLOAD_ACCEL_PREFIX"] == "/_protected_backups"
    assert values["CSRF_TRUSTED_ORIGINS"].startswith("https://")
    assert values["CORS_ALLOWED_ORIGINS"].startswith("https://")
    for key in ("SECRET_KEY", "JWT_SECRET", "METRICS_TOKEN", "ALLOWED_HOSTS"):
        assert values[key], key
    # Placeholders where an operator must decide; deploy.sh refuses to go on while one is left.
    assert {key for key, value in values.items() if "CHANGE_ME" in value} == {
        "SECRET_KEY",
        "JWT_SECRET",
        "METRICS_TOKEN",
        "DATABASE_URL",
    }
    assert {key for key, value in values.items() if "example.com" in value} == {
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "CORS_ALLOWED_ORIGINS",
    }


def test_production_example_reads_the_same_for_systemd_and_dotenv() -> None:
    """systemd (the units) and python-dotenv (manage.py through the .env link) must agree: no quotes,
    no `$` expansions, no inline comments, no `export`."""
    values = parse_env_file(ENV_EXAMPLE)
    for key, value in values.items():
        assert value == value.strip() and not re.search(r"[\"'$`\\]| #", value), key

    assert dict(dotenv_values(ENV_EXAMPLE, interpolate=False)) == values


# --- deploy.sh -------------------------------------------------------------------------------------------


def test_deploy_script_has_valid_bash_syntax() -> None:
    done = subprocess.run(["bash", "-n", str(DEPLOY_SH)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert os.access(DEPLOY_SH, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_deploy_script_passes_shellcheck() -> None:
    done = subprocess.run(["shellcheck", str(DEPLOY_SH)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    env_file = tmp_path / "etc" / "env"

    done = run_deploy("--dry-run", APP_DIR=str(app_dir), ENV_FILE=str(env_file))

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in (
        "rsync",
        "python3 -m venv",
        "pip install",
        "migrate --noinput",
        "collectstatic --noinput",
        "check --deploy --fail-level WARNING",
        "systemctl daemon-reload",
        "systemctl restart backup-web@6027.service",
        "systemctl restart backup-worker.service",
        "nginx -t",
        "systemctl reload nginx",
        "/health",
        f"write {env_file}",
        "write /etc/systemd/system/backup-web@.service",
        "write /etc/systemd/system/backup-worker.service",
    ):
        assert expected in out, expected
    # The order that matters: the settings are checked before the database is migrated, and the
    # services restart only after both.
    assert out.index("check --deploy") < out.index("migrate") < out.index("systemctl restart")
    assert out.index("nginx -t") < out.index("systemctl reload nginx")
    assert not app_dir.exists() and not env_file.exists()


def test_unknown_option_is_refused() -> None:
    done = run_deploy("--bogus")
    assert done.returncode == 2
    assert "--dry-run" in done.stderr


def test_real_run_needs_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("runs as root here: a real run would change this machine")
    done = run_deploy(APP_DIR=str(tmp_path / "app"), ENV_FILE=str(tmp_path / "env"))
    assert done.returncode != 0
    assert "root" in done.stderr
    assert not (tmp_path / "app").exists()


def test_rendering_with_the_example_env_gives_the_templates_back(tmp_path: Path) -> None:
    """The templates are what deploy.sh installs for the example's values: they cannot drift apart."""
    env_file = tmp_path / "env"
    shutil.copy(ENV_EXAMPLE, env_file)
    out = tmp_path / "out"

    done = run_deploy(
        "--render-to",
        str(out),
        ENV_FILE=str(env_file),
        APP_DIR="/opt/backup-service",
        WEB_PORTS="6027",
        SERVICE_USER="backup",
    )

    assert done.returncode == 0, done.stderr
    for rendered, template in (("backup-web@.service", WEB_UNIT), ("backup-worker.service", WORKER_UNIT)):
        expected = template.read_text().replace(
            "EnvironmentFile=/etc/backup-service/env", f"EnvironmentFile={env_file}"
        )
        assert (out / rendered).read_text() == expected
    assert (out / "backup-service.conf").read_text() == NGINX_SITE.read_text()


def test_rendering_follows_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    text = ENV_EXAMPLE.read_text()
    changes = {
        "BACKUP_ROOT=/root/BACKUPS/production": "BACKUP_ROOT=/srv/backups/production",
        "SERVICE_LOG=/var/log/backup-service/backup-service.log": "SERVICE_LOG=/srv/log/service.log",
        "SECURE_HSTS_SECONDS=31536000": "SECURE_HSTS_SECONDS=0",
        "# NGINX_SERVER_NAME=backup.example.com": "NGINX_SERVER_NAME=backups.corp.test",
        "DOWNLOAD_ACCEL_PREFIX=/_protected_backups": "DOWNLOAD_ACCEL_PREFIX=/_files/",
    }
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    env_file.write_text(text)
    out = tmp_path / "out"

    done = run_deploy(
        "--render-to", str(out), ENV_FILE=str(env_file), APP_DIR="/srv/app", WEB_PORTS="6027,6028"
    )

    assert done.returncode == 0, done.stderr
    worker = parse_unit(out / "backup-worker.service")["Service"]
    assert worker["ReadWritePaths"].split() == [
        "/srv/backups/production",
        "/srv/app/var",
        "/var/log",
        "/srv/log",
    ]
    assert worker["EnvironmentFile"] == str(env_file)
    assert worker["ExecStart"] == "/srv/app/.venv/bin/python manage.py backup_worker"
    site = (out / "backup-service.conf").read_text()
    assert "server_name backups.corp.test;" in site and "backup.example.com;" not in site
    assert "/etc/letsencrypt/live/backups.corp.test/fullchain.pem;" in site
    assert "server 127.0.0.1:6027;" in site and "server 127.0.0.1:6028;" in site
    assert "location /_files/ {" in site and "alias /srv/backups/production/;" in site
    assert "alias /srv/app/staticfiles/;" in site
    assert "add_header Strict-Transport-Security" not in site


# --- a real run, with the system tools stubbed ------------------------------------------------------

STUB = """#!/bin/sh
echo "$(basename "$0") $*" >>"$STUB_LOG"
"""
STUBS = {
    "systemctl": STUB,
    "setfacl": STUB,
    "useradd": STUB,
    "curl": STUB + 'echo \'{"status": "ok"}\'\n',
    "nginx": STUB + '[ "$1" = -t ] && exit "${STUB_NGINX_T_EXIT:-0}"\nexit 0\n',
    # manage.py as the service user; the busy check reads the last line of `shell -c`.
    "runuser": STUB + 'case "$*" in *" shell -c "*)\n'
    '  if [ -n "$STUB_BUSY" ]; then echo busy; else echo idle; fi ;;\nesac\n',
}


@pytest.fixture
def stubbed_host(tmp_path: Path) -> dict[str, str]:
    """deploy.sh for real, but systemctl, nginx, curl, setfacl, runuser and the venv are stubs that
    record their arguments, and every path it writes is in tmp_path."""
    if os.geteuid() != 0:
        pytest.skip("a real run needs root (it chowns to the service user)")
    if subprocess.run(["id", "-u", "backup"], capture_output=True).returncode != 0:
        pytest.skip("no `backup` user on this machine")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
    # python3 -m venv makes a fake venv (no pip download); everything else is the real interpreter.
    (bin_dir / "python3").write_text(
        STUB + 'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"\n'
        'printf \'#!/bin/sh\\nexit 0\\n\' >"$3/bin/python"; cp "$3/bin/python" "$3/bin/pip"\n'
        'chmod +x "$3/bin/python" "$3/bin/pip"; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    (tmp_path / "nginx" / "sites-available").mkdir(parents=True)
    (tmp_path / "nginx" / "sites-enabled").mkdir()
    (tmp_path / "units").mkdir()
    for name in ("script.sh", "script.log", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("")
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHON": str(bin_dir / "python3"),
        "STUB_LOG": str(tmp_path / "calls.log"),
        "APP_DIR": str(tmp_path / "app"),
        "ENV_FILE": str(tmp_path / "etc" / "env"),
        "UNIT_DIR": str(tmp_path / "units"),
        "NGINX_DIR": str(tmp_path / "nginx"),
        "SERVICE_USER": "backup",
    }


def fill_in(env_file: Path, tmp_path: Path) -> None:
    """What the operator does between the first and the second run."""
    text = env_file.read_text()
    for old, new in {
        "=backup.example.com": "=backups.corp.test",
        "=https://backup.example.com": "=https://backups.corp.test",
        "=https://admin.example.com": "=https://admin.corp.test",
        "JWT_SECRET=CHANGE_ME_copy_the_auth_service_secret_here": f"JWT_SECRET={secrets.token_hex(32)}",
        "backup_service:CHANGE_ME@": "backup_service:pw@",
        "BACKUP_ROOT=/root/BACKUPS/production": f"BACKUP_ROOT={tmp_path}/backups",
        "BACKUP_SCRIPT=/root/SCRIPTS/production-backup.sh": f"BACKUP_SCRIPT={tmp_path}/script.sh",
        "BACKUP_SCRIPT_LOG=/var/log/beauty-backup.log": f"BACKUP_SCRIPT_LOG={tmp_path}/script.log",
        "SERVICE_LOG=/var/log/backup-service/backup-service.log": f"SERVICE_LOG={tmp_path}/log/service.log",
        "# TLS_CERTIFICATE=/etc/ssl/certs/backup.example.com.pem": f"TLS_CERTIFICATE={tmp_path}/cert.pem",
        "# TLS_CERTIFICATE_KEY=/etc/ssl/private/backup.example.com.key": (
            f"TLS_CERTIFICATE_KEY={tmp_path}/key.pem"
        ),
    }.items():
        assert old in text, old
        text = text.replace(old, new)
    env_file.write_text(text)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_real_run_installs_stops_for_the_settings_and_is_idempotent(
    tmp_path: Path, stubbed_host: dict[str, str]
) -> None:
    env_file, app = Path(stubbed_host["ENV_FILE"]), Path(stubbed_host["APP_DIR"])

    # First run: code installed, settings created with fresh secrets, then a stop for the placeholders.
    first = run_deploy(**stubbed_host)
    assert first.returncode == 3, first.stdout + first.stderr
    assert "JWT_SECRET=CHANGE_ME" in first.stderr and "ALLOWED_HOSTS=backup.example.com" in first.stderr
    created = parse_env_file(env_file)
    assert len(created["SECRET_KEY"]) >= 50 and "CHANGE_ME" not in created["SECRET_KEY"]
    assert len(created["METRICS_TOKEN"]) >= 32 and "CHANGE_ME" not in created["METRICS_TOKEN"]
    assert oct(env_file.stat().st_mode & 0o777) == "0o640"
    assert (app / "manage.py").is_file() and (app / "deploy" / "deploy.sh").is_file()
    assert not (app / ".git").exists() and not (app / ".venv").exists()
    assert not (app / "var" / "django-secret").exists()  # the repository's own state stays behind
    assert (app / ".env").resolve() == env_file
    assert not any(line.startswith("systemctl") for line in calls(tmp_path))

    fill_in(env_file, tmp_path)
    settings_after_edit = env_file.read_text()

    second = run_deploy(**stubbed_host)
    assert second.returncode == 0, second.stdout + second.stderr
    log = calls(tmp_path)
    manage = [line.split("manage.py ", 1)[1] for line in log if "manage.py" in line]
    assert manage == [
        "check --deploy --fail-level WARNING",
        "migrate --noinput",
        "collectstatic --noinput --verbosity 0",
    ]
    systemctl = [line for line in log if line.startswith("systemctl")]
    assert systemctl == [
        "systemctl daemon-reload",
        "systemctl enable backup-web@6027.service backup-worker.service",
        "systemctl restart backup-web@6027.service",
        "systemctl restart backup-worker.service",
        "systemctl reload nginx",
    ]
    assert "nginx -t" in log and sum(line.startswith("curl") for line in log) == 2
    worker = parse_unit(tmp_path / "units" / "backup-worker.service")["Service"]
    assert worker["EnvironmentFile"] == str(env_file)
    assert worker["ReadWritePaths"].split() == [
        f"{tmp_path}/backups",
        f"{app}/var",
        str(tmp_path),
        f"{tmp_path}/log",
    ]
    site = tmp_path / "nginx" / "sites-available" / "backup-service.conf"
    assert f"alias {tmp_path}/backups/;" in site.read_text()
    assert "server_name backups.corp.test;" in site.read_text()
    assert any(line.startswith("curl") and "Host: backups.corp.test" in line for line in log)
    assert (tmp_path / "nginx" / "sites-enabled" / "backup-service.conf").resolve() == site
    assert (tmp_path / "backups").is_dir() and (tmp_path / "log").is_dir()

    # Once more: nothing to write, the settings untouched, the same steps.
    third = run_deploy(**stubbed_host)
    assert third.returncode == 0, third.stdout + third.stderr
    assert third.stdout.count("unchanged:") == 3 and "wrote:" not in third.stdout
    assert env_file.read_text() == settings_after_edit
    assert "systemctl reload nginx" in calls(tmp_path)


def test_real_run_restores_the_nginx_site_when_nginx_refuses_it(
    tmp_path: Path, stubbed_host: dict[str, str]
) -> None:
    run_deploy(**stubbed_host)
    fill_in(Path(stubbed_host["ENV_FILE"]), tmp_path)
    assert run_deploy(**stubbed_host).returncode == 0
    site = tmp_path / "nginx" / "sites-available" / "backup-service.conf"
    before = site.read_text()
    calls(tmp_path)

    refused = run_deploy(**stubbed_host, WEB_PORTS="6027,6028", STUB_NGINX_T_EXIT="1")

    assert refused.returncode == 1
    assert "nginx -t failed" in refused.stderr
    assert site.read_text() == before
    assert "systemctl reload nginx" not in calls(tmp_path)


def test_real_run_waits_for_a_running_backup(tmp_path: Path, stubbed_host: dict[str, str]) -> None:
    run_deploy(**stubbed_host)
    fill_in(Path(stubbed_host["ENV_FILE"]), tmp_path)
    assert run_deploy(**stubbed_host).returncode == 0
    calls(tmp_path)

    busy = run_deploy(**stubbed_host, STUB_BUSY="1")
    assert busy.returncode == 4 and "--force" in busy.stderr
    assert not [line for line in calls(tmp_path) if line.startswith(("systemctl", "nginx", "setfacl"))]

    forced = run_deploy("--force", **stubbed_host, STUB_BUSY="1")
    assert forced.returncode == 0, forced.stderr
    assert "systemctl restart backup-worker.service" in calls(tmp_path)


# --- systemd units -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [WEB_UNIT, WORKER_UNIT], ids=lambda path: path.name)
def test_units_restart_limit_memory_and_outlast_the_shutdown_grace(unit: Path) -> None:
    service = parse_unit(unit)["Service"]
    example = parse_env_file(ENV_EXAMPLE)
    grace = int(example["SHUTDOWN_GRACE_SECONDS"]) + int(example["BACKUP_KILL_GRACE_SECONDS"])

    assert service["Restart"] == "on-failure"
    assert service["MemoryMax"] == "1G"
    assert seconds(service["TimeoutStopSec"]) > grace == 40
    assert service["KillMode"] == "process"  # a restart leaves a running backup's supervisor alone
    assert service["User"] == service["Group"] == "backup"
    assert service["EnvironmentFile"] == "/etc/backup-service/env"
    assert service["WorkingDirectory"] == "/opt/backup-service"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "read-only"
    writable = service["ReadWritePaths"].split()
    assert example["BACKUP_ROOT"] in writable
    assert os.path.dirname(example["BACKUP_SCRIPT_LOG"]) in writable
    assert service["LogsDirectory"] == "backup-service"  # SERVICE_LOG's directory
    assert parse_unit(unit)["Install"]["WantedBy"] == "multi-user.target"


def test_web_unit_serves_on_loopback_without_the_worker() -> None:
    exec_start = parse_unit(WEB_UNIT)["Service"]["ExecStart"]
    assert exec_start == (
        "/opt/backup-service/.venv/bin/python manage.py serve --no-worker --host 127.0.0.1 --port %i"
    )


def test_worker_unit_runs_the_worker() -> None:
    exec_start = parse_unit(WORKER_UNIT)["Service"]["ExecStart"]
    assert exec_start == "/opt/backup-service/.venv/bin/python manage.py backup_worker"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    # verify wants the ExecStart binary to exist: point it at this interpreter. The web template is
    # checked as the instance nginx proxies to.
    for source, name in ((WEB_UNIT, "backup-web@6027.service"), (WORKER_UNIT, "backup-worker.service")):
        text = source.read_text().replace("/opt/backup-service/.venv/bin/python", sys.executable)
        (tmp_path / name).write_text(text)

    units = [str(tmp_path / "backup-web@6027.service"), str(tmp_path / "backup-worker.service")]
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", *units], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )

    ours = [line for line in (done.stdout + done.stderr).splitlines() if "backup-" in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


# --- nginx ---------------------------------------------------------------------------------------------


@pytest.fixture
def nginx_binary() -> str:
    binary = os.environ.get("NGINX_BINARY") or shutil.which("nginx", path=SBIN_PATH)
    if not binary:
        pytest.skip("nginx is not installed (NGINX_BINARY may point at one)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed for a self-signed certificate")
    return binary


def nginx_config(tmp_path: Path, site: str) -> Path:
    """A minimal nginx.conf around the site, with every file nginx writes inside tmp_path."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if not cert.exists():
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=backup.example.com",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    site = (
        site.replace("/etc/letsencrypt/live/backup.example.com/fullchain.pem", str(cert))
        .replace("/etc/letsencrypt/live/backup.example.com/privkey.pem", str(key))
        .replace("/var/log/nginx/", f"{tmp_path}/")
    )
    (tmp_path / "site.conf").write_text(site)
    temp = "".join(
        f"{kind}_temp_path {tmp_path}/{kind}_temp; "
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would otherwise switch to `nobody`, who cannot enter tmp_path (0700).
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"{user}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  {temp}\n  access_log {tmp_path}/access.log;\n"
        f"  include {tmp_path}/site.conf;\n}}\n"
    )
    return conf


def test_nginx_accepts_the_site(tmp_path: Path, nginx_binary: str) -> None:
    conf = nginx_config(tmp_path, NGINX_SITE.read_text())

    done = subprocess.run(
        [nginx_binary, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "[warn]" not in done.stderr and "[emerg]" not in done.stderr, done.stderr


def test_nginx_site_text_has_what_the_service_needs() -> None:
    site = NGINX_SITE.read_text()
    assert "proxy_pass http://backup_service;" in site and "server 127.0.0.1:6027;" in site
    assert "client_max_body_size 1m;" in site
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in site
    assert "Strict-Transport-Security" in site
    websocket = site[site.index("location /backup-ws") :]
    websocket = websocket[: websocket.index("}")]
    assert "proxy_set_header Upgrade $http_upgrade;" in websocket and "proxy_read_timeout 1h;" in websocket
    download = site[site.index("location ~ ^/api/backup/[^/]+/download") :]
    download = download[: download.index("}")]
    assert "proxy_buffering off;" in download and "proxy_read_timeout 1h;" in download
    protected = site[site.index("location /_protected_backups/ {") :]
    protected = protected[: protected.index("}")]
    assert "internal;" in protected and "alias /root/BACKUPS/production/;" in protected


class FakeService(BaseHTTPRequestHandler):
    """Stands in for the web process: echoes the proxy headers and answers downloads the way the
    service does when DOWNLOAD_ACCEL_PREFIX is set."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path.endswith("/download"):
            member = urllib.parse.parse_qs(url.query)["file"][0]
            self.send_response(200)
            self.send_header("X-Accel-Redirect", "/_protected_backups/backup-1/" + urllib.parse.quote(member))
            self.send_header("Strict-Transport-Security", "max-age=1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = "\n".join(f"{name}: {value}" for name, value in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("Strict-Transport-Security", "max-age=1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def nginx_in_front(tmp_path: Path, nginx_binary: str) -> Iterator[tuple[int, Path]]:
    """The site on free ports in front of FakeService, with a backup root in tmp_path."""
    root = tmp_path / "backups"
    (root / "backup-1" / "configs").mkdir(parents=True)
    (root / "backup-1" / "configs" / "app env.txt").write_text("hello\n")
    (tmp_path / "outside.txt").write_text("secret\n")
    (root / "backup-1" / "escape").symlink_to(tmp_path / "outside.txt")

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    https_port, http_port = free_port(), free_port()
    site = (
        NGINX_SITE.read_text()
        .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
        .replace("listen [::]:443 ssl http2;", "")
        .replace("listen 80;", f"listen 127.0.0.1:{http_port};")
        .replace("listen [::]:80;", "")
        .replace("server 127.0.0.1:6027;", f"server 127.0.0.1:{upstream.server_address[1]};")
        .replace("/root/BACKUPS/production/", f"{root}/")
    )
    conf = nginx_config(tmp_path, site)
    process = subprocess.Popen(
        [
            nginx_binary,
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(conf),
            "-g",
            "daemon off;",
        ],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", https_port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield https_port, tmp_path
    finally:
        process.terminate()
        process.wait(10)
        upstream.shutdown()


def fetch(port: int, path: str, **headers: str) -> tuple[int, dict[str, list[str]], bytes]:
    """HTTPS to 127.0.0.1 as backup.example.com, certificate not checked (it is self-signed)."""
    import http.client
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": "backup.example.com", **headers})
        response = connection.getresponse()
        collected: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            collected.setdefault(name.lower(), []).append(value)
        return response.status, collected, response.read()
    finally:
        connection.close()


def test_nginx_proxies_with_trusted_headers_and_one_hsts(nginx_in_front: tuple[int, Path]) -> None:
    port, _ = nginx_in_front

    status, headers, body = fetch(port, "/api/backup/status", **{"X-Forwarded-For": "6.6.6.6"})

    assert status == 200
    echoed = dict(line.split(": ", 1) for line in body.decode().splitlines())
    # The client cannot choose its address (rate-limit bucket, audit trail): nginx sets the peer's.
    assert echoed["X-Forwarded-For"] == "127.0.0.1"
    assert echoed["X-Forwarded-Proto"] == "https"
    assert echoed["Host"] == "backup.example.com"
    assert headers["strict-transport-security"] == ["max-age=31536000; includeSubDomains; preload"]


def test_nginx_sends_accel_redirected_files_but_never_directly(nginx_in_front: tuple[int, Path]) -> None:
    port, _ = nginx_in_front

    status, headers, body = fetch(port, "/api/backup/backup-1/download?file=configs/app%20env.txt")
    assert (status, body) == (200, b"hello\n")
    assert len(headers["strict-transport-security"]) == 1

    status, _, body = fetch(
        port, "/api/backup/backup-1/download?file=configs/app%20env.txt", Range="bytes=1-2"
    )
    assert (status, body) == (206, b"el")

    # The symlink leads out of the backup root: nginx does not follow it either.
    status, _, body = fetch(port, "/api/backup/backup-1/download?file=escape")
    assert status == 403 and b"secret" not in body

    # `internal`: only an X-Accel-Redirect of the service reaches the files.
    status, _, body = fetch(port, "/_protected_backups/backup-1/configs/app%20env.txt")
    assert status == 404 and b"hello" not in body
