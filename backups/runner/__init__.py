"""Run a command (the backup script, later job processes) as a supervised process group that outlives the
service, and stream its output.

Pure Python on purpose (no Django, no ORM): the worker calls in with callbacks, and this package only deals
with processes, files and signals, so it is tested with real processes and no database.

* ``supervisor.py`` — the small program that sits in the command's process group, writes its output and exit
  status to files under the caller's state folder, and outlives the service (its own session: neither the
  service's signals nor its death reach it). Its docstring documents the file formats.
* ``supervised.py`` — ``spawn``, ``follow``, ``inspect``, ``attach``, ``cleanup``: start a run, follow its
  output file, and find it again after a restart. Its docstring documents the state folder layout.
* ``script.py`` — ``run_script``: spawn + follow in one blocking call, with a temporary state folder.
* ``groups.py`` — process-group helpers (``kill_group``, ``group_alive``, ``find_group_members``,
  ``process_has_run_id``), usable on groups found after a restart.
* ``output.py`` — ``OutputBuffer`` (head + tail of the output, bounded), the line splitter, the file reader.
* ``env.py`` — ``build_env`` and ``SERVICE_SECRETS``: the command's environment without the service's secrets.

Design notes (the "why"):

* The command is exec'd directly (never ``shell=True``) in the supervisor's session and group, so one
  ``os.killpg(pgid, ...)`` reaches every helper it started, including background grandchildren, and the
  supervisor (which catches SIGTERM to record how the command ended).
* The supervisor reads both pipes continuously, so the command never stalls on a full pipe whether or not
  anybody follows; a follower reads the output file in 64 KiB chunks and hands lines over in batches (a
  million-line run costs a few hundred callback calls, not millions).
* After the command exits, background children may still hold the pipes open: the supervisor drains for at
  most ``DRAIN_SECONDS`` and then ends what is left, so a run never hangs and never leaves an orphan behind.
"""

from backups.runner.env import SERVICE_SECRETS, build_env, is_service_secret
from backups.runner.groups import (
    KILL_WAIT_SECONDS,
    find_group_members,
    group_alive,
    kill_group,
    process_has_run_id,
)
from backups.runner.output import MAX_LINE_BYTES, TRUNCATED_SUFFIX, OutputBuffer, OutputReader, _LineSplitter
from backups.runner.script import run_script
from backups.runner.supervised import (
    DRAIN_SECONDS,
    Alive,
    EndReason,
    Exited,
    Gone,
    Handle,
    RunResult,
    SpawnFailed,
    attach,
    cleanup,
    follow,
    inspect,
    recorded_runs,
    run_dir,
    spawn,
)
from backups.runner.supervisor import READ_CHUNK_BYTES

__all__ = [
    "DRAIN_SECONDS",
    "KILL_WAIT_SECONDS",
    "MAX_LINE_BYTES",
    "READ_CHUNK_BYTES",
    "SERVICE_SECRETS",
    "TRUNCATED_SUFFIX",
    "Alive",
    "EndReason",
    "Exited",
    "Gone",
    "Handle",
    "OutputBuffer",
    "OutputReader",
    "RunResult",
    "SpawnFailed",
    "_LineSplitter",
    "attach",
    "build_env",
    "cleanup",
    "find_group_members",
    "follow",
    "group_alive",
    "inspect",
    "is_service_secret",
    "kill_group",
    "process_has_run_id",
    "recorded_runs",
    "run_dir",
    "run_script",
    "spawn",
]
