"""Tests for backups.runner with real processes and real scripts in tmp_path (no Django needed)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backups.runner import (
    DRAIN_SECONDS,
    MAX_LINE_BYTES,
    TRUNCATED_SUFFIX,
    EndReason,
    OutputBuffer,
    RunResult,
    _LineSplitter,
    build_env,
    find_group_members,
    group_alive,
    kill_group,
    process_has_run_id,
    run_script,
)

ENV = build_env(os.environ, {})
PY = sys.executable


def make_script(tmp_path: Path, body: str, *, name: str = "script.sh", shebang: str = "#!/bin/bash") -> Path:
    path = tmp_path / name
    path.write_text(f"{shebang}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def pid_running(pid: int) -> bool:
    """True if pid exists and is not a zombie (this sandbox's PID 1 may never reap orphans)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return data[data.rfind(b")") + 1 :].split()[0] not in (b"Z", b"X")


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def out_lines(result: RunResult, stream: str = "out") -> list[str]:
    return [line for s, line in result.output.lines() if s == stream]


def pids_from(result: RunResult, prefix: str) -> list[int]:
    return [int(line.split()[1]) for line in out_lines(result) if line.startswith(prefix + " ")]


# ---------------------------------------------------------------------------------------------------------
# OutputBuffer / build_env / splitter
# ---------------------------------------------------------------------------------------------------------


def test_output_buffer_keeps_head_and_tail() -> None:
    buf = OutputBuffer(head_lines=2, tail_lines=3)
    for i in range(10):
        buf.append("out" if i % 2 == 0 else "err", f"l{i}")
    assert buf.total_lines == 10
    assert buf.dropped_lines == 5
    assert buf.lines() == [("out", "l0"), ("err", "l1"), ("err", "l7"), ("out", "l8"), ("err", "l9")]
    assert buf.text() == "l0\nl1\n… 5 lines omitted …\nl7\nl8\nl9"


def test_output_buffer_small_output_has_no_marker_and_extend_matches_append() -> None:
    buf = OutputBuffer(head_lines=2, tail_lines=3)
    buf.extend([("out", "a"), ("out", "b"), ("err", "c")])
    assert buf.dropped_lines == 0
    assert buf.text() == "a\nb\nc"
    buf.extend([("out", str(i)) for i in range(5)])
    assert buf.total_lines == 8
    assert buf.dropped_lines == 3
    assert buf.lines() == [("out", "a"), ("out", "b"), ("out", "2"), ("out", "3"), ("out", "4")]


def test_build_env_adds_unbuffered_and_rejects_non_str() -> None:
    env = build_env({"PATH": "/bin", "A": "1"}, {"A": "2", "BACKUP_RUN_ID": "r1"})
    assert env == {"PATH": "/bin", "A": "2", "BACKUP_RUN_ID": "r1", "PYTHONUNBUFFERED": "1"}
    with pytest.raises(TypeError, match="KEY"):
        build_env({}, {"KEY": 5})  # type: ignore[dict-item]


def test_splitter_handles_multibyte_chars_split_across_chunks() -> None:
    data = "zażółć gęślą jaźń\n€uro\nend".encode()
    out: list[tuple[str, str]] = []
    splitter = _LineSplitter("out")
    for i in range(len(data)):  # worst case: one byte per read
        splitter.feed(data[i : i + 1], out)
    splitter.flush(out)
    assert out == [("out", "zażółć gęślą jaźń"), ("out", "€uro"), ("out", "end")]


def test_splitter_truncates_endless_line_fed_in_pieces() -> None:
    out: list[tuple[str, str]] = []
    splitter = _LineSplitter("err")
    for _ in range(40):
        splitter.feed(b"x" * 10_000, out)
    splitter.feed(b"tail-of-long\nnext\n", out)
    assert out == [("err", "x" * MAX_LINE_BYTES + TRUNCATED_SUFFIX), ("err", "next")]


# ---------------------------------------------------------------------------------------------------------
# Output streaming
# ---------------------------------------------------------------------------------------------------------


def test_lines_arrive_while_script_is_running(tmp_path: Path) -> None:
    # A Python script without explicit flushes: only PYTHONUNBUFFERED makes "first" arrive early.
    script = make_script(
        tmp_path,
        'import time\nprint("first")\ntime.sleep(1)\nprint("second")',
        name="live.py",
        shebang=f"#!{PY}",
    )
    arrivals: list[tuple[float, str]] = []
    start = time.monotonic()

    def on_lines(batch: list[tuple[str, str]]) -> None:
        arrivals.extend((time.monotonic() - start, line) for _, line in batch)

    result = run_script(script, env=ENV, on_lines=on_lines)
    assert result.reason is EndReason.EXITED and result.exit_code == 0 and result.error == ""
    assert [line for _, line in arrivals] == ["first", "second"]
    assert arrivals[0][0] < result.duration_seconds - 0.5  # delivered well before the script ended
    assert result.duration_seconds >= 1.0


def test_stdout_and_stderr_captured_with_stream(tmp_path: Path) -> None:
    script = make_script(tmp_path, "echo out1\necho err1 >&2\necho out2\necho err2 >&2")
    batches: list[list[tuple[str, str]]] = []
    result = run_script(script, env=ENV, on_lines=batches.append)
    assert out_lines(result, "out") == ["out1", "out2"]
    assert out_lines(result, "err") == ["err1", "err2"]
    delivered = [pair for batch in batches for pair in batch]
    assert sorted(delivered) == sorted(result.output.lines())


def test_nonzero_exit_code(tmp_path: Path) -> None:
    script = make_script(tmp_path, "echo failing >&2\nexit 3")
    result = run_script(script, env=ENV, timeout=30)
    assert result.reason is EndReason.EXITED
    assert result.exit_code == 3
    assert result.error == "exited with code 3"
    assert result.pid is not None
    assert out_lines(result, "err") == ["failing"]


def test_huge_output_no_stall_and_bounded_buffer(tmp_path: Path) -> None:
    script = make_script(tmp_path, "seq 500000")
    calls = 0
    received: list[str] = []

    def on_lines(batch: list[tuple[str, str]]) -> None:
        nonlocal calls
        calls += 1
        received.extend(line for _, line in batch)

    buf = OutputBuffer(head_lines=10, tail_lines=20)
    result = run_script(script, env=ENV, on_lines=on_lines, output=buf, timeout=60)
    assert result.reason is EndReason.EXITED and result.exit_code == 0
    assert result.output is buf
    assert received == [str(i) for i in range(1, 500_001)]  # all lines, in order, none split or merged
    assert calls < 500_000 // 10  # batched per chunk, not one call per line
    assert buf.total_lines == 500_000
    assert buf.dropped_lines == 500_000 - 30
    assert [line for _, line in buf.lines()] == [str(i) for i in range(1, 11)] + [
        str(i) for i in range(499_981, 500_001)
    ]
    assert "… 499970 lines omitted …" in buf.text()
    assert result.duration_seconds < 20


def test_both_pipes_flooded_at_once_do_not_deadlock(tmp_path: Path) -> None:
    body = (
        "import sys\n"
        "for i in range(100000):\n"
        "    sys.stdout.write(f'o{i}\\n')\n"
        "    sys.stderr.write(f'e{i}\\n')\n"
    )
    script = make_script(tmp_path, body, name="flood.py", shebang=f"#!{PY}")
    counts = {"out": 0, "err": 0}

    def on_lines(batch: list[tuple[str, str]]) -> None:
        for stream, _line in batch:
            counts[stream] += 1

    result = run_script(script, env=ENV, on_lines=on_lines, timeout=60, output=OutputBuffer(5, 5))
    assert result.exit_code == 0
    assert counts == {"out": 100_000, "err": 100_000}


def test_one_mebibyte_line_without_newline_is_truncated(tmp_path: Path) -> None:
    body = "import sys\nsys.stdout.write('x' * (1 << 20))\nsys.stderr.write('y' * (1 << 20) + '\\nafter\\n')"
    script = make_script(tmp_path, body, name="long.py", shebang=f"#!{PY}")
    result = run_script(script, env=ENV, timeout=30)
    assert result.exit_code == 0
    assert out_lines(result, "out") == ["x" * MAX_LINE_BYTES + TRUNCATED_SUFFIX]
    assert out_lines(result, "err") == ["y" * MAX_LINE_BYTES + TRUNCATED_SUFFIX, "after"]


def test_line_limit_boundaries_and_utf8_safe_cut(tmp_path: Path) -> None:
    # Exactly 64 KiB stays intact; a multi-byte line is cut on a character boundary (no U+FFFD at the end).
    body = (
        "import sys\n"
        f"sys.stdout.write('a' * {MAX_LINE_BYTES} + '\\n')\n"
        "sys.stdout.write('€' * 30000 + '\\n')\n"
        "sys.stdout.write('done\\n')\n"
    )
    script = make_script(tmp_path, body, name="limits.py", shebang=f"#!{PY}")
    result = run_script(script, env=ENV, timeout=30)
    lines = out_lines(result)
    assert lines[0] == "a" * MAX_LINE_BYTES
    assert lines[1] == "€" * (MAX_LINE_BYTES // 3) + TRUNCATED_SUFFIX
    assert lines[2] == "done"
    assert len(lines) == 3


def test_partial_last_line_is_flushed(tmp_path: Path) -> None:
    script = make_script(tmp_path, "printf 'a\\nb'\nprintf 'e1\\ne2' >&2")
    result = run_script(script, env=ENV)
    assert out_lines(result, "out") == ["a", "b"]
    assert out_lines(result, "err") == ["e1", "e2"]


def test_non_utf8_bytes_are_replaced(tmp_path: Path) -> None:
    body = "import sys\nsys.stdout.buffer.write(b'caf\\xc3\\xa9 \\xff\\xfe end\\n\\xe2\\x82\\n')"
    script = make_script(tmp_path, body, name="bytes.py", shebang=f"#!{PY}")
    result = run_script(script, env=ENV)
    assert out_lines(result) == ["café \ufffd\ufffd end", "\ufffd"]


def test_env_is_passed_to_script(tmp_path: Path) -> None:
    script = make_script(tmp_path, 'echo "$BACKUP_RUN_ID $PYTHONUNBUFFERED $EXTRA"\npwd')
    env = build_env(os.environ, {"BACKUP_RUN_ID": "run-42", "EXTRA": "x y"})
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_script(script, env=env, cwd=workdir)
    assert out_lines(result) == ["run-42 1 x y", str(workdir)]


# ---------------------------------------------------------------------------------------------------------
# Spawn failures
# ---------------------------------------------------------------------------------------------------------


def test_missing_script_is_spawn_failed(tmp_path: Path) -> None:
    missing = tmp_path / "production-backup.sh"
    result = run_script(missing, env=ENV, on_start=lambda pid: pytest.fail("must not start"))
    assert result.reason is EndReason.SPAWN_FAILED
    assert result.exit_code is None and result.pid is None
    assert result.error == f"script not found: {missing}"


def test_non_executable_script_is_spawn_failed_not_run_through_bash(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = make_script(tmp_path, f"touch {marker}")
    script.chmod(0o644)
    result = run_script(script, env=ENV)
    assert result.reason is EndReason.SPAWN_FAILED
    assert result.exit_code is None and result.pid is None
    assert result.error == f"script is not executable (chmod +x it): {script}"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("echo no shebang\n", "exec format error (missing #! line?)"),
        ("#!/nonexistent/interpreter\necho hi\n", "interpreter of script not found (check its #! line)"),
    ],
)
def test_unrunnable_script_is_spawn_failed(tmp_path: Path, content: str, expected: str) -> None:
    script = tmp_path / "bad.sh"
    script.write_text(content)
    script.chmod(0o755)
    result = run_script(script, env=ENV)
    assert result.reason is EndReason.SPAWN_FAILED
    assert result.exit_code is None
    assert result.error == f"{expected}: {script}"


def test_missing_cwd_is_spawn_failed(tmp_path: Path) -> None:
    script = make_script(tmp_path, "echo hi")
    result = run_script(script, env=ENV, cwd=tmp_path / "nope")
    assert result.reason is EndReason.SPAWN_FAILED
    assert result.error.startswith("working directory not usable:")


# ---------------------------------------------------------------------------------------------------------
# Killing
# ---------------------------------------------------------------------------------------------------------

STUBBORN_GROUP = """
sleep 300 &
echo "bg $!"
( trap '' TERM; echo "stubborn $BASHPID"; while true; do sleep 0.1; done ) &
echo ready
wait
"""


def test_timeout_kills_whole_group_including_stubborn_grandchild(tmp_path: Path) -> None:
    script = make_script(tmp_path, STUBBORN_GROUP)
    pgids: list[int] = []
    members_seen: set[int] = set()
    result = run_script(
        script,
        env=ENV,
        timeout=1.0,
        kill_grace_seconds=0.5,
        tick_seconds=0.1,
        on_start=pgids.append,
        on_tick=lambda _elapsed: members_seen.update(find_group_members(pgids[0])),
    )
    assert result.reason is EndReason.TIMEOUT
    assert result.error == "timed out after 1 s"
    assert result.exit_code == -signal.SIGTERM  # the bash leader dies on SIGTERM
    assert result.pid == pgids[0]
    bg = pids_from(result, "bg") + pids_from(result, "stubborn")
    assert len(bg) == 2
    assert set(bg) <= members_seen  # the grandchildren really were in the group while it ran
    assert find_group_members(result.pid) == []
    assert not group_alive(result.pid)
    assert not any(pid_running(pid) for pid in bg)
    assert 1.4 <= result.duration_seconds < 5  # the stubborn child needed the SIGKILL after the grace


@pytest.mark.parametrize(
    ("reason", "error"), [(EndReason.CANCELLED, "cancelled"), (EndReason.SHUTDOWN, "killed on shutdown")]
)
def test_should_stop_ends_the_group(tmp_path: Path, reason: EndReason, error: str) -> None:
    script = make_script(tmp_path, 'sleep 300 &\necho "bg $!"\nsleep 300')
    seen_output: list[str] = []
    polls = 0

    def should_stop() -> EndReason | None:
        nonlocal polls
        polls += 1
        # Ignored values first, then stop once the script has printed.
        if not seen_output:
            return None
        return EndReason.EXITED if polls == 1 else reason

    result = run_script(
        script,
        env=ENV,
        tick_seconds=0.05,
        kill_grace_seconds=0.5,
        should_stop=should_stop,
        on_lines=lambda batch: seen_output.extend(line for _, line in batch),
    )
    assert result.reason is reason
    assert result.error == error
    assert result.exit_code == -signal.SIGTERM
    assert find_group_members(result.pid) == []
    assert not any(pid_running(pid) for pid in pids_from(result, "bg"))
    assert result.duration_seconds < 3


def test_background_child_holding_stdout_is_killed_after_drain(tmp_path: Path) -> None:
    script = make_script(tmp_path, 'sleep 300 &\necho "bg $!"\necho main done\nexit 0')
    result = run_script(script, env=ENV, kill_grace_seconds=0.5)
    assert result.reason is EndReason.EXITED
    assert result.exit_code == 0 and result.error == ""
    (bg,) = pids_from(result, "bg")
    assert not pid_running(bg)
    assert find_group_members(result.pid) == []
    assert DRAIN_SECONDS <= result.duration_seconds < DRAIN_SECONDS + 3


def test_background_child_printing_after_exit_is_drained(tmp_path: Path) -> None:
    script = make_script(tmp_path, "( sleep 0.4; echo late ) &\necho early\nexit 0")
    result = run_script(script, env=ENV)
    assert out_lines(result) == ["early", "late"]
    assert result.exit_code == 0
    assert result.duration_seconds < DRAIN_SECONDS  # it finished by itself, nothing to wait for


def test_daemon_with_closed_stdio_is_not_left_behind(tmp_path: Path) -> None:
    script = make_script(tmp_path, 'sleep 300 >/dev/null 2>&1 &\necho "bg $!"')
    result = run_script(script, env=ENV, kill_grace_seconds=0.5)
    assert result.exit_code == 0
    (bg,) = pids_from(result, "bg")
    assert not pid_running(bg)
    assert find_group_members(result.pid) == []


def test_script_closing_its_pipes_early_is_still_waited_for(tmp_path: Path) -> None:
    script = make_script(tmp_path, "echo bye\nexec >&- 2>&-\nsleep 0.5\nexit 4")
    result = run_script(script, env=ENV)
    assert out_lines(result) == ["bye"]
    assert result.exit_code == 4
    assert result.duration_seconds >= 0.5


def test_on_tick_called_while_script_is_silent(tmp_path: Path) -> None:
    script = make_script(tmp_path, "sleep 1")
    ticks: list[float] = []
    lines: list[tuple[str, str]] = []
    result = run_script(script, env=ENV, tick_seconds=0.1, on_tick=ticks.append, on_lines=lines.extend)
    assert result.exit_code == 0
    assert lines == []
    assert len(ticks) >= 6
    assert ticks == sorted(ticks)
    assert 0.05 < ticks[0] < 0.5


@pytest.mark.parametrize("callback", ["on_start", "on_lines", "on_tick", "should_stop"])
def test_raising_callback_kills_group_and_propagates(tmp_path: Path, callback: str) -> None:
    script = make_script(tmp_path, STUBBORN_GROUP)
    pids: list[int] = []

    def boom(*_args: object) -> None:
        raise RuntimeError(f"boom from {callback}")

    def record(pid: int) -> None:
        pids.append(pid)
        time.sleep(0.3)  # let the script start its children before we fail
        if callback == "on_start":
            boom()

    kwargs = {} if callback == "on_start" else {callback: boom}
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=f"boom from {callback}"):
        run_script(script, env=ENV, tick_seconds=0.05, kill_grace_seconds=0.3, on_start=record, **kwargs)
    (pgid,) = pids
    assert find_group_members(pgid) == []
    assert not group_alive(pgid)
    assert time.monotonic() - start < 5


def test_kill_group_on_group_started_elsewhere(tmp_path: Path) -> None:
    # The leader and children ignore SIGTERM, so this also exercises the SIGKILL step.
    proc = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: len(find_group_members(proc.pid)) == 3)
        assert group_alive(proc.pid)
        start = time.monotonic()
        assert kill_group(proc.pid, grace_seconds=0.3) is True
        assert 0.3 <= time.monotonic() - start < 3
        assert find_group_members(proc.pid) == []
        assert not group_alive(proc.pid)
        assert kill_group(proc.pid, grace_seconds=0.3) is False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


ORPHAN_LAUNCHER = """
import subprocess
child = subprocess.Popen(
    ["sleep", "300"],
    start_new_session=True,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,  # must not hold our pipe open, or subprocess.run would wait for it
    stderr=subprocess.DEVNULL,
)
print(child.pid)
"""


def test_kill_group_on_orphaned_group_not_our_child() -> None:
    # As after a service restart: the group's leader is not a child of this process.
    launcher = subprocess.run(
        [PY, "-c", ORPHAN_LAUNCHER],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    pgid = int(launcher.stdout)
    assert group_alive(pgid)
    assert kill_group(pgid, grace_seconds=1.0) is True
    assert not group_alive(pgid)
    assert not pid_running(pgid)


def test_kill_group_refuses_own_group() -> None:
    with pytest.raises(ValueError):
        kill_group(os.getpgrp())
    with pytest.raises(ValueError):
        kill_group(0)
    assert group_alive(0) is False


def test_process_has_run_id() -> None:
    env = build_env(os.environ, {"BACKUP_RUN_ID": "run-123"})
    proc = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    try:
        assert wait_for(lambda: process_has_run_id(proc.pid, "run-123"), timeout=2)
        assert not process_has_run_id(proc.pid, "run-12")
        assert not process_has_run_id(proc.pid, "run-1234")
        assert not process_has_run_id(proc.pid, "")
        assert not process_has_run_id(os.getpid(), "run-123")
    finally:
        proc.kill()
        proc.wait()
    assert not process_has_run_id(proc.pid, "run-123")
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert not process_has_run_id(pid_max + 1, "run-123")
