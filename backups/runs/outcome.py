"""How a run ended, from what the runner reports. Pure: no Django, no processes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from backups.runner import EndReason, RunResult


@dataclass
class RunEnd:
    status: str  # a RunStatus value
    exit_code: int | None
    error: str
    output: str = ""
    output_lines: int = 0


SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = "succeeded", "failed", "cancelled", "interrupted"


@dataclass(frozen=True)
class Circumstances:
    """What the follower of the run knew besides the runner's result."""

    error_lines: tuple[str, ...] = ()
    disk_full: bool = False
    lease_lost: bool = False
    timeout_seconds: int = 0
    script_dir: str = ""
    subject: str = "script"  # what ran: "script", or "job" for runs of the other kinds
    backup_root: str = ""
    cancelled_by: str = ""  # who asked for the cancel, when a person did


# An absolute path: a "/" at the start or after a space, a quote, a bracket, "=" or ","; it runs until a
# space, a quote, a closing bracket, ",", ";" or ":" (bash's "<path>: line 3: ..."). After a letter or a
# ":" a "/" is part of something else (a URL, a ratio), so it is left alone.
_ABSOLUTE_PATH = re.compile(r"""(?<![^\s'"`(\[<=,])/[^\s'"`)\]>,;:]*""")


def scrub_paths(text: str, backup_root: str = "") -> str:
    """The text with every absolute path outside the backup root cut to its last component
    (`/opt/app/scripts/production-backup.sh` -> `…/production-backup.sh`), and the root itself written
    `$BACKUP_ROOT`: a run's error and progress are shown to every client, and the machine's layout is
    not theirs to read."""
    root = backup_root.rstrip("/")

    def replace(match: re.Match[str]) -> str:
        path = match.group(0)
        if path == "/":
            return path
        if root and (path == root or path.startswith(root + "/")):
            return "$BACKUP_ROOT" + path[len(root) :]
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return f"…/{name}" if name else "…"

    return _ABSOLUTE_PATH.sub(replace, text)


def outcome(result: RunResult, facts: Circumstances, *, output: str, output_lines: int) -> RunEnd:
    """The run's final status and the error a person reads, for each way a run can end; no absolute
    path outside the backup root is left in the error."""
    end = _outcome(result, facts, output=output, output_lines=output_lines)
    end.error = scrub_paths(end.error, facts.backup_root)
    return end


def _outcome(result: RunResult, facts: Circumstances, *, output: str, output_lines: int) -> RunEnd:
    errors = "\n".join(facts.error_lines)
    if result.reason == EndReason.EXITED and result.exit_code == 0:
        return RunEnd(SUCCEEDED, 0, "", output, output_lines)
    if result.reason == EndReason.CANCELLED:
        # Who asked, not the script's own last words ("Interrupted by SIGTERM"): the group was ended on
        # that request.
        who = f" by {facts.cancelled_by}" if facts.cancelled_by else ""
        why = f"Cancelled{who}: the {facts.subject}'s processes were ended."
        return RunEnd(CANCELLED, result.exit_code, why, output, output_lines)
    if result.reason == EndReason.SHUTDOWN:
        # Only a worker that lost its lease ends a script this way; a stopping service leaves it running.
        why = (
            f"Interrupted: this worker stalled and lost its lease to another; its {facts.subject} was ended."
        )
        return RunEnd(INTERRUPTED, result.exit_code, why, output, output_lines)
    if result.reason == EndReason.TIMEOUT:
        why = (
            f"Timed out after {facts.timeout_seconds} s (BACKUP_RUN_TIMEOUT); "
            f"the {facts.subject}'s processes were ended." + (f"\n{errors}" if errors else "")
        )
        return RunEnd(FAILED, result.exit_code, why, output, output_lines)
    if result.reason == EndReason.SPAWN_FAILED:
        # The run's error is shown to clients: name the script, not where it lives.
        error = result.error
        if facts.script_dir:
            error = error.replace(facts.script_dir + "/", "").replace(facts.script_dir, "<script dir>")
        what = "backup script" if facts.subject == "script" else facts.subject
        return RunEnd(FAILED, None, f"The {what} could not be started: {error}", output, output_lines)
    headline = f"The {facts.subject} exited with code {result.exit_code}"
    if facts.disk_full:
        headline = (
            f"Disk full: the {facts.subject} exited with code {result.exit_code} (No space left on device)"
        )
    return RunEnd(
        FAILED, result.exit_code, headline + (f".\n{errors}" if errors else "."), output, output_lines
    )
