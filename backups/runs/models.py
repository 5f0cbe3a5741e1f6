"""Runs of the script, and the duties a run's end leaves for the worker."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class RunType(models.TextChoices):
    MANUAL = "manual"
    SCHEDULED = "scheduled"


class RunKind(models.TextChoices):
    """What a run does. Every kind shares the one-at-a-time lane, the runs table, progress, cancel and
    the supervisor that lets it outlive a restart; only `backup` runs the script."""

    BACKUP = "backup"
    VERIFY = "verify"
    RESTORE = "restore"
    OFFSITE = "offsite"


class Run(models.Model):
    """One execution of the backup script, from the request that queued it to its end."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(
        max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True
    )
    type = models.CharField(max_length=16, choices=RunType.choices, default=RunType.MANUAL)
    kind = models.CharField(max_length=16, choices=RunKind.choices, default=RunKind.BACKUP, db_index=True)
    # Started by the service itself (a verification after a run, an off-site copy): a backup request
    # cancels it rather than wait for it, and it is tried again later.
    automatic = models.BooleanField(default=False)
    params = models.JSONField(default=dict, blank=True)  # what the job works on (no secrets)
    result = models.JSONField(default=dict, blank=True)  # what a job found or did
    description = models.CharField(max_length=500, blank=True, default="")
    triggered_by = models.CharField(max_length=200)  # user id, "schedule" or "cli"
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    backup_id = models.CharField(max_length=200, blank=True, default="")
    error = models.TextField(blank=True, default="")
    output = models.TextField(blank=True, default="")  # head and tail of the script's output
    output_lines = models.BigIntegerField(default=0)
    progress_percent = models.PositiveSmallIntegerField(default=0)
    progress_stage = models.CharField(max_length=100, blank=True, default="queued")
    progress_message = models.CharField(max_length=500, blank=True, default="")
    cancel_requested = models.BooleanField(default=False)
    pgid = models.IntegerField(null=True, blank=True)  # the script's process group, to end it after a crash
    worker = models.CharField(max_length=200, blank=True, default="")
    # A scheduled run that failed is re-run `scheduleRetries.count` times; each retry points at the run
    # it retries, so the count survives restarts.
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    # The column the partial unique index below hangs on. Every run carries the same value, so the
    # database itself lets at most one run be queued or running, whatever the number of processes.
    lane = models.CharField(max_length=16, default="backup", editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["lane"], condition=Q(status__in=["queued", "running"]), name="one_active_run_per_lane"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} run {self.id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return round((end - self.started_at).total_seconds(), 3)


class Duty(models.Model):
    """Work a run's end leaves owed (check the new backup, apply retention, …), written in the same
    transaction as the run's final status. A worker step picks its own duties up and deletes each row
    once done, so a crash between two duties loses neither: the next worker finds the row still there."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="duties")
    name = models.CharField(max_length=32, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="one_duty_per_run_and_name")]

    def __str__(self) -> str:
        return f"{self.name} after run {self.run_id}"
