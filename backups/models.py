"""The catalogue of backups, the runs of the script, the config document and the audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone

from backups.config_document import default_document


class BackupStatus(models.TextChoices):
    COMPLETED = "completed"
    RUNNING = "running"
    FAILED = "failed"
    INCOMPLETE = "incomplete"


class BackupType(models.TextChoices):
    MANUAL = "manual"
    SCHEDULED = "scheduled"
    EXTERNAL = "external"


class Backup(models.Model):
    """One folder directly inside BACKUP_ROOT. Disk is the truth; this row is its catalogue entry."""

    id = models.CharField(primary_key=True, max_length=200)
    created_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=16, choices=BackupStatus.choices, default=BackupStatus.COMPLETED)
    type = models.CharField(max_length=16, choices=BackupType.choices, default=BackupType.EXTERNAL)
    description = models.CharField(max_length=500, blank=True, default="")
    triggered_by = models.CharField(max_length=200, blank=True, default="")
    size_bytes = models.BigIntegerField(default=0, db_index=True)
    file_count = models.IntegerField(default=0)
    files = models.JSONField(default=list, blank=True)  # [{"path", "size_bytes"}], sorted by path
    pinned = models.BooleanField(default=False)
    verified = models.BooleanField(default=False)
    is_latest = models.BooleanField(default=False)
    run = models.ForeignKey("Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Change signature of the folder at its last scan: equal signature -> no re-walk needed.
    signature = models.CharField(max_length=4000, blank=True, default="")
    synced_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.id


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


class Run(models.Model):
    """One execution of the backup script, from the request that queued it to its end."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(
        max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True
    )
    type = models.CharField(max_length=16, choices=RunType.choices, default=RunType.MANUAL)
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
    # Every run shares this lane; the partial unique constraint below lets at most one run of the lane
    # be queued or running, enforced by the database whatever the number of processes.
    lane = models.CharField(max_length=16, default="backup", editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["lane"], condition=Q(status__in=["queued", "running"]), name="one_active_run_per_lane"
            )
        ]

    def __str__(self) -> str:
        return f"{self.type} run {self.id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return round((end - self.started_at).total_seconds(), 3)


class BackupConfig(models.Model):
    """The original service's config document, one row. Validated by `config_document.validate`."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    document = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        verbose_name = "backup configuration"
        verbose_name_plural = "backup configuration"

    def __str__(self) -> str:
        return "Backup configuration"

    @classmethod
    def load(cls) -> BackupConfig:
        config, _ = cls.objects.get_or_create(id=1, defaults={"document": default_document()})
        return config


class AuditEvent(models.Model):
    """Append-only trail: every change, download and refused authentication."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200, blank=True, default="")
    action = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=300, blank=True, default="")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    outcome = models.CharField(max_length=16, default="ok")  # ok | refused | failed
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target} {self.outcome}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            raise ValueError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("audit events are append-only")


class WorkerLease(models.Model):
    """Who runs backups. One row: a worker holds it while it renews it; a second worker waits until
    the holder stops renewing (crashed), then takes over. No transaction is held meanwhile."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    holder = models.CharField(max_length=200, blank=True, default="")
    renewed_at = models.DateTimeField(default=timezone.now)
    acquired_at = models.DateTimeField(default=timezone.now)
    last_schedule_check = models.DateTimeField(null=True, blank=True)

    LEASE_SECONDS = 20

    def __str__(self) -> str:
        return f"worker lease held by {self.holder or 'nobody'}"

    @property
    def expires_at(self) -> datetime:
        return self.renewed_at + timedelta(seconds=self.LEASE_SECONDS)
