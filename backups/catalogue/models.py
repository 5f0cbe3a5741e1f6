"""The catalogue row of one backup folder. Disk is the truth; a row is what the last sync saw."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class BackupStatus(models.TextChoices):
    COMPLETED = "completed"
    RUNNING = "running"
    FAILED = "failed"
    INCOMPLETE = "incomplete"


class BackupType(models.TextChoices):
    MANUAL = "manual"
    SCHEDULED = "scheduled"
    EXTERNAL = "external"


class VerificationStatus(models.TextChoices):
    NEVER = "never"
    OK = "ok"
    FAILED = "failed"
    RUNNING = "running"


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
    # The last verification (`verified` is true only when it passed) and the one owed, if any: durable
    # state the verification step picks up ("quick" or "deep"; "" when none is owed).
    verification_status = models.CharField(
        max_length=16, choices=VerificationStatus.choices, default=VerificationStatus.NEVER
    )
    verification_level = models.CharField(max_length=8, blank=True, default="")
    verified_at = models.DateTimeField(null=True, blank=True, db_index=True)
    verification = models.JSONField(default=dict, blank=True)  # {"problems": [...], "databases": [...]}
    verification_due = models.CharField(max_length=8, blank=True, default="", db_index=True)
    run = models.ForeignKey("Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Change signature of the folder at its last scan: equal signature -> no re-walk needed.
    signature = models.CharField(max_length=4000, blank=True, default="")
    # What the last walk could not read (an unreadable subfolder, a tree nested too deep): the folder is
    # listed with the rest, and /health counts the folders with problems. Empty when read completely.
    problems = models.JSONField(default=list, blank=True)
    synced_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.id
