"""What an operator sees when the service cannot start: one line naming what is wrong, no traceback,
a non-zero exit — before any banner or token is printed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.servers import free_port, manage, server_env

COMMANDS = [("serve", "--port", "0"), ("backup_worker",), ("run_backup",), ("migrate", "--noinput")]


def one_line_error(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("RATE_LIMIT", "abc", COMMANDS[0]),
        ("DATABASE_URL", "garbage", COMMANDS[1]),
        ("PORT", "abc", COMMANDS[2]),
        ("JWT_ALGORITHM", "none", COMMANDS[3]),
    ],
    ids=["rate-limit/serve", "database-url/backup_worker", "port/run_backup", "jwt-algorithm/migrate"],
)
def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path, variable, value, command):
    env = server_env(tmp_path, **{variable: value})
    line = one_line_error(manage(env, *command, timeout=60))
    assert line.startswith("error: ") and variable in line


@pytest.mark.parametrize(
    "command", [("serve", "--port", "0"), ("backup_worker",), ("run_backup",)], ids=lambda c: c[0]
)
def test_unapplied_migrations_are_refused_with_what_to_run(tmp_path, command):
    env = server_env(tmp_path)
    line = one_line_error(manage(env, *command, timeout=60))
    assert "manage.py migrate" in line


def test_an_unreachable_database_is_one_line_with_its_password_masked(tmp_path):
    env = server_env(tmp_path, DATABASE_URL="postgres://backup:s3cretpw@127.0.0.1:1/backups")
    line = one_line_error(manage(env, "serve", "--port", "0", timeout=60))
    assert "DATABASE_URL=postgres://backup:****@127.0.0.1:1/backups" in line and "s3cretpw" not in line


def test_a_port_in_use_is_said_before_any_banner_or_token(tmp_path):
    env = server_env(tmp_path)
    assert manage(env, "migrate", "--noinput").returncode == 0
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = manage(env, "serve", "--host", "127.0.0.1", "--port", str(port), "--welcome", timeout=60)
    line = one_line_error(done)
    assert f"port {port} is already in use" in line and f"PORT={port + 1}" in line
    assert "TOKEN" not in done.stdout and "Dashboard" not in done.stdout


def test_a_sqlite_file_in_a_missing_folder_outside_var_is_not_created(tmp_path):
    missing = tmp_path / "nowhere" / "db.sqlite3"
    env = server_env(tmp_path, DATABASE_URL=f"sqlite:///{missing}")
    line = one_line_error(manage(env, "migrate", "--noinput", timeout=60))
    assert "DATABASE_URL" in line and not missing.parent.exists()


def test_logs_are_json_lines_for_files_and_readable_lines_for_a_terminal(tmp_path):
    env = server_env(tmp_path)
    as_json = manage(env, "migrate", "--noinput", timeout=60)
    env["LOG_FORMAT"] = "console"
    readable = manage(
        env, "shell", "-c", "import logging; logging.getLogger('x').warning('hello')", timeout=60
    )
    assert readable.stderr.strip().endswith("WARNING x: hello"), readable.stderr
    env["LOG_FORMAT"] = "json"
    as_json = manage(
        env, "shell", "-c", "import logging; logging.getLogger('x').warning('hello')", timeout=60
    )
    assert '"message": "hello"' in as_json.stderr and "color_message" not in as_json.stderr
    assert Path(env["SERVICE_LOG"]).read_text().count('"message": "hello"') == 2  # the file: always JSON
