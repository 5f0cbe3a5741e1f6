"""Process-group helpers, also used after a restart on groups this process did not start.

Zombies (dead processes nobody has reaped yet) are not counted as group members: they cannot run any more, and
in containers whose PID 1 does not reap orphans they would make a dead group look alive forever.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from backups.runner import supervisor

__all__ = ["KILL_WAIT_SECONDS", "find_group_members", "group_alive", "kill_group", "process_has_run_id"]

logger = logging.getLogger("backups.runner")

#: How long we wait for the group to disappear after SIGKILL before giving up (D-state processes, etc.).
KILL_WAIT_SECONDS = supervisor.KILL_WAIT_SECONDS
#: Polling interval for conditions no file descriptor can signal (group emptiness).
POLL_SECONDS = supervisor.POLL_SECONDS


def find_group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (field 5 of /proc/<pid>/stat), sorted.

    Zombies are left out: they have already exited and only wait for their parent (or init) to reap them, so
    they are not survivors. Returns [] if /proc is unavailable.
    """
    return sorted(supervisor.scan_group(pgid) or [])


def group_alive(pgid: int) -> bool:
    """True if process group ``pgid`` still has a running (non-zombie) member."""
    if pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, it just belongs to someone else
    members = supervisor.scan_group(pgid)
    # Without /proc, trust killpg (which also counts zombies: erring on "alive" is the safe side).
    return True if members is None else bool(members)


def reap_group_children(pgid: int) -> None:
    """Reap those of our own children that are in group ``pgid``.

    waitpid(-pgid) rather than waitpid(-1): we must not steal the exit status of unrelated children of this
    process (other subprocess.Popen objects would then report a wrong return code).
    """
    while True:
        try:
            pid, _status = os.waitpid(-pgid, os.WNOHANG)
        except OSError:
            return
        if pid == 0:
            return


def check_pgid(pgid: int) -> None:
    # killpg(0) would signal our own group, killpg(1) is meaningless for a run; killing our own group would
    # take down the service itself. These can only come from a bug or a corrupt record.
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to signal process group {pgid}")


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        reap_group_children(pgid)
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def kill_group(pgid: int, grace_seconds: float = 5.0) -> bool:
    """SIGTERM the group, wait up to ``grace_seconds`` for it to be empty, then SIGKILL it.

    Returns True if the group existed (had a member that is not a zombie). Works for groups whose leader is
    not our child (found after a restart): emptiness is polled with killpg(pgid, 0) and /proc rather than
    waited for. Our own children in the group are reaped.
    """
    check_pgid(pgid)
    reap_group_children(pgid)
    # A group of zombies only still answers killpg(pgid, 0); there is nothing left to kill in it.
    if not group_alive(pgid) or not signal_group(pgid, signal.SIGTERM):
        return False
    # A stopped (SIGSTOP'ed) process only acts on SIGTERM once continued.
    signal_group(pgid, signal.SIGCONT)
    if _wait_group_gone(pgid, grace_seconds):
        return True
    logger.warning("process group %d survived SIGTERM for %.1f s, sending SIGKILL", pgid, grace_seconds)
    signal_group(pgid, signal.SIGKILL)
    if not _wait_group_gone(pgid, KILL_WAIT_SECONDS):
        logger.error("process group %d still has members %s after SIGKILL", pgid, find_group_members(pgid))
    return True


def process_has_run_id(pid: int, run_id: str) -> bool:
    """True if /proc/<pid>/environ contains ``BACKUP_RUN_ID=<run_id>``; False on any error.

    Pids are reused, so after a restart a recorded pgid may belong to an unrelated process: this check is what
    makes it safe to kill it. The environ file shows the environment the process was exec'd with, which every
    member of our run inherits (the supervisor and the command both carry it).
    """
    return supervisor.environ_has(pid, supervisor.RUN_ID_VARIABLE, run_id)
