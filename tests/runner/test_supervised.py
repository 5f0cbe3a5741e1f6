"""The supervised run: spawn, follow, inspect, attach and cleanup with real processes in tmp_path."""

from __future__ import annotations

import gc
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backups import runner
from backups.runner import (
    SERVICE_SECRETS,
    Alive,
    EndReason,
    Exited,
    Gone,
    OutputBuffer,
    attach,
    build_env,
    cleanup,
    find_group_members,
    follow,
    group_alive,
    inspect,
    kill_group,
    recorded_runs,
    spawn,
    supervisor,
)

PY = sys.executable
PROJECT = Path(__file__).resolve().parents[2]
ENV = build_env(os.environ, {})


def make_script(tmp_path: Path, body: str, *, name: str = "script.sh", shebang: str = "#!/bin/bash") -> Path:
    path = tmp_path / name
    path.write_text(f"{shebang}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def pid_running(pid: int) -> bool:
    """True if pid exists and is not a zombie (this sandbox's PID 1 may never reap orphans)."""
    fields = supervisor.read_stat(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def wait_not_alive(state: Path, run_id: str, timeout: float = 15.0) -> Exited | Gone:
    assert wait_for(lambda: not isinstance(inspect(state, run_id), Alive), timeout)
    result = inspect(state, run_id)
    assert not isinstance(result, Alive)
    return result


def lines_of(buffer: OutputBuffer, stream: str = "out") -> list[str]:
    return [line for s, line in buffer.lines() if s == stream]


@pytest.fixture
def state(tmp_path: Path):
    folder = tmp_path / "state"
    yield folder
    # Whatever a failing test left running: end it, never leave a script behind.
    for run_id in recorded_runs(folder):
        found = inspect(folder, run_id)
        pgid = found.handle.pgid if isinstance(found, Alive) else None
        if isinstance(found, Gone) and found.leftover_pids:
            pgid = found.pgid
        if pgid:
            kill_group(pgid, grace_seconds=0.2)


def stop_when(flag: list[bool], reason: EndReason):
    return lambda: reason if flag else None


# ---------------------------------------------------------------------------------------------------------
# Surviving the follower
# ---------------------------------------------------------------------------------------------------------


def test_follower_dropped_mid_run_then_attach_follows_to_the_end(tmp_path: Path, state: Path) -> None:
    go_on = tmp_path / "go-on"
    script = make_script(
        tmp_path,
        f"""
        echo "[1/3] before"
        while [ ! -e {go_on} ]; do sleep 0.02; done
        for i in $(seq 1 200); do echo "gap $i"; done
        echo "[2/3] during the gap" >&2
        while [ ! -e {go_on}-2 ]; do sleep 0.02; done
        echo "[3/3] after"
        exit 7
        """,
    )
    env = build_env(os.environ, {"BACKUP_RUN_ID": "run-1"})
    handle = spawn([script], env=env, state_dir=state, run_id="run-1")
    pgid = handle.pgid
    seen: list[str] = []
    first = follow(
        handle,
        tick_seconds=0.05,
        on_lines=lambda batch: seen.extend(line for _, line in batch),
        should_stop=lambda: EndReason.DETACHED if seen else None,
    )
    assert first.reason is EndReason.DETACHED and first.exit_code is None
    assert seen == ["[1/3] before"]
    # The service is gone: no follower, no handle, no reference to the supervisor process.
    del handle
    gc.collect()
    go_on.touch()
    assert wait_for(lambda: len(written_lines(state, "run-1")) == 202)  # written while nobody followed

    found = inspect(state, "run-1")
    assert isinstance(found, Alive) and found.handle.pgid == pgid
    output = OutputBuffer()
    result = attach(
        state, "run-1", output=output, tick_seconds=0.05, on_tick=lambda _: Path(f"{go_on}-2").touch()
    )
    assert not isinstance(result, Gone)
    assert result.reason is EndReason.EXITED
    assert result.exit_code == 7 and result.error == "exited with code 7"
    assert result.pid == pgid  # the same group all along: nothing was started twice
    assert lines_of(output) == ["[1/3] before", *(f"gap {i}" for i in range(1, 201)), "[3/3] after"]
    assert lines_of(output, "err") == ["[2/3] during the gap"]
    assert find_group_members(pgid) == []
    final = inspect(state, "run-1")
    assert isinstance(final, Exited) and final.exit_code == 7


def written_lines(state: Path, run_id: str) -> list[str]:
    """Lines written so far by a run, read with a fresh reader (as a restarted service would)."""
    reader = runner.OutputReader(state / "runs" / run_id)
    batch: list[tuple[str, str]] = []
    while reader.read(batch):
        pass
    reader.close()
    return [line for _, line in batch]


def test_script_finishing_while_nobody_follows_is_exited_with_complete_output(
    tmp_path: Path, state: Path
) -> None:
    script = make_script(
        tmp_path, 'for i in $(seq 1 5000); do echo "line $i"; done\necho oops >&2\nsleep 0.2'
    )
    handle = spawn([script], env=ENV, state_dir=state, run_id="quiet")
    del handle
    found = wait_not_alive(state, "quiet")
    assert isinstance(found, Exited)
    assert found.exit_code == 0 and found.error == "" and found.leftover_pids == []
    output = OutputBuffer(head_lines=10, tail_lines=10_000)
    result = attach(state, "quiet", output=output)
    assert not isinstance(result, Gone)
    assert result.reason is EndReason.EXITED and result.exit_code == 0
    assert lines_of(output) == [f"line {i}" for i in range(1, 5001)]
    assert lines_of(output, "err") == ["oops"]
    assert result.duration_seconds >= 0.2  # counted from the recorded start, not from the attach


def test_the_spawning_process_can_die_and_the_script_still_completes(tmp_path: Path, state: Path) -> None:
    # The "service" is a Python process that spawns the run and is then ended in each of the ways a service
    # ends: it exits, it gets SIGTERM, it gets SIGKILL, each sent to its whole process group.
    script = make_script(tmp_path, 'sleep 0.5\necho "[1/1] done"\nexit 0')
    service_code = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(PROJECT)!r})
        from backups.runner import build_env, spawn
        how, run_id = sys.argv[1], sys.argv[2]
        env = build_env(os.environ, {{}})
        handle = spawn([{str(script)!r}], env=env, state_dir={str(state)!r}, run_id=run_id)
        print(handle.pgid, flush=True)
        if how == "exit":
            os._exit(0)
        time.sleep(300)
        """
    )
    for how in ("exit", "SIGTERM", "SIGKILL"):
        run_id = f"svc-{how.lower()}"
        service = subprocess.Popen(
            [PY, "-c", service_code, how, run_id], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert service.stdout is not None
        pgid = int(service.stdout.readline())
        if how != "exit":
            os.killpg(service.pid, getattr(signal, how))
        assert service.wait(10) in (0, -signal.SIGTERM, -signal.SIGKILL)
        assert isinstance(inspect(state, run_id), Alive), how  # the service is gone, the run is not
        found = wait_not_alive(state, run_id)
        assert isinstance(found, Exited) and found.exit_code == 0, how
        output = OutputBuffer()
        result = attach(state, run_id, output=output)
        assert not isinstance(result, Gone) and result.exit_code == 0 and result.pid == pgid
        assert lines_of(output) == ["[1/1] done"]
        assert not group_alive(pgid)


# ---------------------------------------------------------------------------------------------------------
# Losing the supervisor, strangers
# ---------------------------------------------------------------------------------------------------------


def test_sigkilled_supervisor_is_gone_and_its_leftovers_are_recognised(tmp_path: Path, state: Path) -> None:
    script = make_script(tmp_path, 'echo "started $$"\nsleep 300')
    handle = spawn([script], env=build_env(os.environ, {}), state_dir=state, run_id="killed")
    assert handle.process is not None
    # Kill it once the script has printed (and sleeps): a write after its reader died would end it by
    # SIGPIPE, leaving no leftover to find.
    deadline = time.monotonic() + 10
    while not any(b"started" in segment.read_bytes() for segment in handle.run_dir.glob("output.*")):
        assert time.monotonic() < deadline, "the script never started"
        time.sleep(0.01)
    os.kill(handle.supervisor_pid, signal.SIGKILL)
    handle.process.wait()
    found = inspect(state, "killed")
    assert isinstance(found, Gone)
    assert found.pgid == handle.pgid
    assert handle.command_pid in found.leftover_pids  # nobody watches it any more: the caller must end it
    assert kill_group(found.pgid, grace_seconds=1.0)
    assert not pid_running(handle.command_pid)
    after = inspect(state, "killed")
    assert isinstance(after, Gone) and after.leftover_pids == []
    assert isinstance(attach(state, "killed"), Gone)


def test_follower_ends_the_group_when_its_supervisor_is_killed(tmp_path: Path, state: Path) -> None:
    script = make_script(tmp_path, 'sleep 300 &\necho "bg $!"\nsleep 300')
    handle = spawn([script], env=ENV, state_dir=state, run_id="orphaned")
    output = OutputBuffer()

    killed: list[bool] = []

    def kill_supervisor_once_started(batch: list[tuple[str, str]]) -> None:
        if not killed:
            os.kill(handle.supervisor_pid, signal.SIGKILL)
            killed.append(True)

    result = follow(handle, on_lines=kill_supervisor_once_started, kill_grace_seconds=0.5, output=output)
    assert result.reason is EndReason.EXITED
    assert result.exit_code is None
    assert result.error == "exit status unknown: the script's supervisor ended before recording it"
    (bg,) = [int(line.split()[1]) for line in lines_of(output) if line.startswith("bg ")]
    assert not pid_running(bg) and not pid_running(handle.command_pid)
    assert find_group_members(handle.pgid) == []


def forge_run(state: Path, run_id: str, pid: int, *, start: int | None) -> None:
    folder = state / "runs" / run_id
    folder.mkdir(parents=True)
    record = {
        "run_id": run_id,
        "boot_id": supervisor.boot_id(),
        "pgid": pid,
        "supervisor_pid": pid,
        "supervisor_start": start,
        "command_pid": pid,
        "command_start": start,
        "started_at": time.time(),
    }
    (folder / "pids").write_text(json.dumps(record))


def test_a_recorded_pid_reused_by_a_stranger_is_never_taken_for_ours(tmp_path: Path, state: Path) -> None:
    # Two strangers in their own groups: one whose start time differs from the record (the pid was reused),
    # one whose start time matches but which lacks the run's BACKUP_RUN_ID (not one of ours).
    reused = subprocess.Popen(["sleep", "300"], start_new_session=True)
    unmarked = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        start = supervisor.start_ticks(reused.pid)
        assert start is not None
        forge_run(state, "reused", reused.pid, start=start - 100)
        forge_run(state, "unmarked", unmarked.pid, start=supervisor.start_ticks(unmarked.pid))
        for run_id in ("reused", "unmarked"):
            found = inspect(state, run_id)
            assert isinstance(found, Gone) and found.leftover_pids == [], run_id
            assert isinstance(attach(state, run_id, kill_grace_seconds=0.1), Gone)
            assert cleanup(state, run_id) is True
        # Even a Handle naming a stranger directly never gets it signalled or waited for.
        handle = runner.Handle(
            run_id="forged",
            run_dir=tmp_path / "nowhere",
            pgid=unmarked.pid,
            supervisor_pid=unmarked.pid,
            command_pid=unmarked.pid,
            started_at=time.time(),
            supervisor_start=supervisor.start_ticks(unmarked.pid),
            boot_id=supervisor.boot_id(),
        )
        started = time.monotonic()
        result = follow(handle, kill_grace_seconds=0.1, timeout=0)
        assert result.exit_code is None and time.monotonic() - started < 2
        assert pid_running(reused.pid) and pid_running(unmarked.pid)
    finally:
        for proc in (reused, unmarked):
            proc.kill()
            proc.wait()


def test_inspect_of_an_unknown_run_is_gone_and_bad_run_ids_are_refused(state: Path) -> None:
    found = inspect(state, "never-ran")
    assert isinstance(found, Gone) and found.pgid is None and found.leftover_pids == []
    assert cleanup(state, "never-ran") is False
    for bad in ("", "..", "a/b", ".hidden", "x" * 200):
        with pytest.raises(ValueError):
            inspect(state, bad)


# ---------------------------------------------------------------------------------------------------------
# Ending the group
# ---------------------------------------------------------------------------------------------------------

TRAPPING_SCRIPT = """
sleep 300 &
echo "bg $!"
( sleep 300; echo never ) &
echo "sub $!"
trap 'echo "term received" >&2; exit 42' TERM
echo ready
while true; do sleep 0.05; done
"""


def test_cancel_ends_the_scripts_children_and_records_its_exit_status(tmp_path: Path, state: Path) -> None:
    script = make_script(tmp_path, TRAPPING_SCRIPT)
    handle = spawn([script], env=ENV, state_dir=state, run_id="cancelled")
    output = OutputBuffer()
    ready: list[bool] = []
    result = follow(
        handle,
        output=output,
        tick_seconds=0.05,
        kill_grace_seconds=3.0,
        on_lines=lambda batch: ready.extend(True for _, line in batch if line == "ready"),
        should_stop=stop_when(ready, EndReason.CANCELLED),
    )
    assert result.reason is EndReason.CANCELLED and result.error == "cancelled"
    # The script's own exit status, recorded by the supervisor that outlived the SIGTERM.
    assert result.exit_code == 42
    assert "term received" in lines_of(output, "err")
    children = [int(line.split()[1]) for line in lines_of(output) if line.split()[0] in ("bg", "sub")]
    assert len(children) == 2 and not any(pid_running(pid) for pid in children)
    assert find_group_members(handle.pgid) == []
    assert result.duration_seconds < 3  # nobody needed the SIGKILL
    recorded = json.loads((state / "runs/cancelled/exit").read_text())
    assert recorded["returncode"] == 42 and recorded["stop_signal_received"] == signal.SIGTERM


def test_sigterm_to_the_group_while_nobody_follows_is_recorded(tmp_path: Path, state: Path) -> None:
    script = make_script(tmp_path, TRAPPING_SCRIPT)
    handle = spawn([script], env=ENV, state_dir=state, run_id="terminated")
    pgid = handle.pgid
    del handle
    assert wait_for(lambda: "ready" in written_lines(state, "terminated"))  # its trap is set
    assert kill_group(pgid, grace_seconds=3.0)
    found = inspect(state, "terminated")
    assert isinstance(found, Exited) and found.exit_code == 42 and found.leftover_pids == []
    output = OutputBuffer()
    result = attach(state, "terminated", output=output)
    assert not isinstance(result, Gone) and result.exit_code == 42
    assert "ready" in lines_of(output) and "term received" in lines_of(output, "err")


def test_timeout_after_attach_counts_from_the_recorded_start(tmp_path: Path, state: Path) -> None:
    script = make_script(tmp_path, "sleep 300")
    handle = spawn([script], env=ENV, state_dir=state, run_id="slow")
    del handle
    time.sleep(1.0)
    attached_at = time.monotonic()
    result = attach(state, "slow", timeout=1.5, tick_seconds=0.05, kill_grace_seconds=0.5)
    assert not isinstance(result, Gone)
    assert result.reason is EndReason.TIMEOUT and result.exit_code == -signal.SIGTERM
    assert 1.4 <= result.duration_seconds < 3
    assert time.monotonic() - attached_at < 1.2


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------


def test_a_million_fast_lines_on_both_streams_arrive_complete_and_in_order(
    tmp_path: Path, state: Path
) -> None:
    # A Python job process (not a shell script): the supervisor runs any command.
    code = (
        "import sys\n"
        "out, err = sys.stdout.write, sys.stderr.write\n"
        "for i in range(1_000_000):\n"
        "    out(f'{i}\\n')\n"
        "    if i % 10 == 0:\n"
        "        err(f'e{i}\\n')\n"
    )
    handle = spawn([PY, "-c", code], env=ENV, state_dir=state, run_id="loud")
    received: dict[str, list[str]] = {"out": [], "err": []}
    calls = 0

    def on_lines(batch: list[tuple[str, str]]) -> None:
        nonlocal calls
        calls += 1
        for stream, line in batch:
            received[stream].append(line)

    started = time.monotonic()
    result = follow(handle, on_lines=on_lines, output=OutputBuffer(10, 10))
    assert result.exit_code == 0
    assert received["out"] == [str(i) for i in range(1_000_000)]
    assert received["err"] == [f"e{i}" for i in range(0, 1_000_000, 10)]
    assert result.output.total_lines == 1_100_000
    assert calls < 5_000  # batched per read of the file, not per line
    assert time.monotonic() - started < 30


def test_output_beyond_the_kept_segments_is_rotated_away_keeping_head_and_tail(
    tmp_path: Path, state: Path
) -> None:
    handle = spawn(
        ["seq", "1000000"],
        env=ENV,
        state_dir=state,
        run_id="rotated",
        segment_bytes=256 * 1024,
        keep_segments=2,
    )
    del handle
    assert isinstance(wait_not_alive(state, "rotated"), Exited)
    folder = state / "runs/rotated"
    segments = sorted(name for name in os.listdir(folder) if name.startswith("output."))
    assert len(segments) == 3 and segments[0] == "output.000000"  # the first, and the newest two
    assert sum((folder / name).stat().st_size for name in segments) <= 3 * 256 * 1024
    last = supervisor.segment_index(segments[-1])
    assert last is not None and last > 20
    output = OutputBuffer(head_lines=1000, tail_lines=1000)
    result = attach(state, "rotated", output=output)
    assert not isinstance(result, Gone) and result.exit_code == 0
    assert result.output_segments_skipped == last - 2
    lines = [int(line) for line in lines_of(output)]
    assert lines[:1000] == list(range(1, 1001))  # the start of the log is kept
    assert lines[-1000:] == list(range(999_001, 1_000_001))  # and so is its end
    assert lines == sorted(lines) and len(set(lines)) == len(lines)  # nothing glued or repeated across gaps


def test_a_failed_write_loses_that_record_only_and_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    out = supervisor._Output(str(folder), segment_bytes=1 << 20, keep_segments=2)
    out.write(supervisor.STDOUT, b"first\n")
    assert out.fd is not None
    os.close(out.fd)
    out.fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC, as on a full disk
    out.write(supervisor.STDOUT, b"lost\n")
    out.write(supervisor.STDERR, b"second\n")
    out.end()
    reader = runner.OutputReader(folder)
    batch: list[tuple[str, str]] = []
    while reader.read(batch):
        pass
    reader.finish(batch)
    assert batch == [("out", "first"), ("err", "second")]
    assert reader.ended and reader.lost_bytes == len(b"lost\n")


# ---------------------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------------------

SECRETS = {
    "SECRET_KEY": "django-signing-key-value",
    "JWT_SECRET": "jwt-secret-value",
    "DATABASE_URL": "postgres://svc:db-password-value@127.0.0.1/backups",
    "REDIS_URL": "redis://:redis-password-value@127.0.0.1:6379/0",
    "METRICS_TOKEN": "metrics-token-value",
    "WEBHOOK_SECRET": "webhook-secret-value",
    "EMAIL_URL": "smtp://mailer:email-password-value@mail.example",
    "EMAIL_HOST_PASSWORD": "email-host-password-value",
    "OFFSITE_SECRET_ACCESS_KEY": "offsite-secret-value",
    "OFFSITE_IDENTITY_FILE": "/etc/backup/offsite-identity-value",
    "RESTORE_TEST_DATABASE_URL": "postgres://restore:restore-password-value@127.0.0.1/scratch",
    "RESTORE_TARGETS": "restore-targets-value",
}
KEPT = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/home/backup",
    "EMAIL": "not-a-prefix-match",  # EMAIL_* means the underscore too
    "SECRET_KEY_FILE": "kept: only the exact name is listed",
    "MY_DATABASE_URL": "kept: names are matched from the start",
    "email_url": "kept: names are case-sensitive",
    "BACKUP_ROOT": "/srv/backups",
    "PGPASSFILE": "/etc/backup/pgpass",
}


def test_build_env_drops_exactly_the_documented_names() -> None:
    assert SERVICE_SECRETS == (
        "SECRET_KEY",
        "JWT_SECRET",
        "DATABASE_URL",
        "REDIS_URL",
        "METRICS_TOKEN",
        "WEBHOOK_SECRET",
        "EMAIL_*",
        "OFFSITE_*",
        "RESTORE_*",
    )
    env = build_env({**SECRETS, **KEPT}, {"BACKUP_RUN_ID": "r1", "BACKUP_TYPE": "manual"})
    assert env == {**KEPT, "BACKUP_RUN_ID": "r1", "BACKUP_TYPE": "manual", "PYTHONUNBUFFERED": "1"}
    # What the caller names explicitly is passed: a job process that needs one credential asks for it.
    assert build_env(SECRETS, {"OFFSITE_SECRET_ACCESS_KEY": "given"})["OFFSITE_SECRET_ACCESS_KEY"] == "given"
    with pytest.raises(TypeError) as raised:
        build_env({}, {"SECRET_KEY": b"bytes-secret"})  # type: ignore[dict-item]
    assert "bytes-secret" not in str(raised.value)


def test_the_service_secrets_are_not_in_the_running_scripts_environ(tmp_path: Path) -> None:
    script = make_script(tmp_path, 'echo "pid $$"\nsleep 300')
    env = build_env({**os.environ, **SECRETS}, {"BACKUP_RUN_ID": "env-run"})
    environs: dict[str, bytes] = {}

    def on_lines(batch: list[tuple[str, str]]) -> None:
        for _, line in batch:
            if line.startswith("pid "):
                environs["script"] = Path(f"/proc/{line.split()[1]}/environ").read_bytes()

    def on_start(pgid: int) -> None:
        environs["supervisor"] = Path(f"/proc/{pgid}/environ").read_bytes()

    result = runner.run_script(
        script,
        env=env,
        on_start=on_start,
        on_lines=on_lines,
        tick_seconds=0.05,
        kill_grace_seconds=0.5,
        should_stop=lambda: EndReason.CANCELLED if "script" in environs else None,
    )
    assert result.reason is EndReason.CANCELLED
    assert set(environs) == {"script", "supervisor"}
    script_vars = dict(item.split(b"=", 1) for item in environs["script"].split(b"\0") if b"=" in item)
    assert script_vars[b"BACKUP_RUN_ID"] == b"env-run" and script_vars[b"PYTHONUNBUFFERED"] == b"1"
    for where, environ in environs.items():
        for name, value in SECRETS.items():
            assert name.encode() + b"=" not in environ, (where, name)
            assert value.encode() not in environ, (where, name)
    assert environs["supervisor"].split(b"\0")[0] == b"BACKUP_RUN_ID=env-run"


# ---------------------------------------------------------------------------------------------------------
# Spawning and cleaning up
# ---------------------------------------------------------------------------------------------------------


def test_a_run_folder_is_made_once_and_cleanup_waits_for_the_end(tmp_path: Path, state: Path) -> None:
    go_on = tmp_path / "go-on"
    script = make_script(tmp_path, f"while [ ! -e {go_on} ]; do sleep 0.02; done")
    handle = spawn([script], env=ENV, state_dir=state, run_id="once")
    with pytest.raises(FileExistsError):
        spawn([script], env=ENV, state_dir=state, run_id="once")
    with pytest.raises(ValueError):
        spawn([script], env={**ENV, "BACKUP_RUN_ID": "other"}, state_dir=state, run_id="twice")
    assert recorded_runs(state) == ["once"]
    with pytest.raises(RuntimeError):
        cleanup(state, "once")
    go_on.touch()
    assert follow(handle).exit_code == 0
    assert set(os.listdir(state / "runs/once")) == {"pids", "exit", "output.000000", "supervisor.log"}
    assert cleanup(state, "once") is True
    assert recorded_runs(state) == [] and not (state / "runs/once").exists()


def test_a_command_that_cannot_start_is_recorded_as_such(tmp_path: Path, state: Path) -> None:
    missing = tmp_path / "missing.sh"
    with pytest.raises(runner.SpawnFailed) as raised:
        spawn([missing], env=ENV, state_dir=state, run_id="nope")
    assert str(raised.value) == f"script not found: {missing}"
    found = inspect(state, "nope")
    assert (
        isinstance(found, Exited) and found.handle is None and found.error == f"script not found: {missing}"
    )
    result = attach(state, "nope")
    assert not isinstance(result, Gone) and result.reason is EndReason.SPAWN_FAILED
    assert result.error == f"script not found: {missing}" and result.pid is None
    assert recorded_runs(state) == ["nope"]  # kept until the caller has recorded the failure


def test_a_corrupt_segment_is_skipped_from_the_bad_record_on(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    header = supervisor.RECORD_HEADER
    (folder / supervisor.segment_name(0)).write_bytes(
        header.pack(supervisor.STDOUT, 6) + b"first\n" + b"garbage that is no record" + b"x" * 100
    )
    (folder / supervisor.segment_name(1)).write_bytes(
        header.pack(supervisor.STDERR, 7) + b"second\n" + header.pack(supervisor.END, 2) + b"{}"
    )
    reader = runner.OutputReader(folder)
    batch: list[tuple[str, str]] = []
    while reader.read(batch):
        pass
    reader.finish(batch)
    assert batch == [("out", "first"), ("err", "second")]
    assert reader.ended and reader.skipped_segments == 1
