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


class OffsiteStatus(models.TextChoices):
    NONE = "none"  # no copy owed or made
    PENDING = "pending"  # owed: the off-site step uploads it when the lane is free
    UPLOADING = "uploading"
    OK = "ok"  # a complete copy is in the store
    FAILED = "failed"


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
    # False once the folder is gone from the root while a complete off-site copy is kept: the row stays
    # (it is downloaded and restored from the store) instead of vanishing with the folder.
    local = models.BooleanField(default=True, db_index=True)
    # The off-site copy: its state (pending is the durable "owed" the off-site step picks up), when it
    # completed, the plaintext bytes it holds, what its last upload sent, when a passing failure is
    # retried, and the details of the last attempt (error, manifest key, skipped and resumed bytes, ...).
    offsite_status = models.CharField(
        max_length=16, choices=OffsiteStatus.choices, default=OffsiteStatus.NONE, db_index=True
    )
    offsite_at = models.DateTimeField(null=True, blank=True)
    offsite_bytes = models.BigIntegerField(default=0)
    offsite_uploaded_bytes = models.BigIntegerField(default=0)
    offsite_retry_at = models.DateTimeField(null=True, blank=True)
    offsite = models.JSONField(default=dict, blank=True)
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
