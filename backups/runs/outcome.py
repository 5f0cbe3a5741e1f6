"""How a run ended, from what the runner reports. Pure: no Django, no processes."""

from __future__ import annotations

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


def outcome(result: RunResult, facts: Circumstances, *, output: str, output_lines: int) -> RunEnd:
    """The run's final status and the error a person reads, for each way a run can end."""
    errors = "\n".join(facts.error_lines)
    if result.reason == EndReason.EXITED and result.exit_code == 0:
        return RunEnd(SUCCEEDED, 0, "", output, output_lines)
    if result.reason == EndReason.CANCELLED:
        why = f"Cancelled: the {facts.subject}'s processes were ended."
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
