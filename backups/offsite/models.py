"""Durable off-site work that no Backup row can carry: removing the copy of a backup that is gone."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models
from django.utils import timezone


class RemoteDeletion(models.Model):
    """The copy of a deleted backup still to be removed from the store's list. Written in the transaction
    that deletes the backup's row (no network call there); the off-site step removes the copy in a job of
    its own and deletes this row once the store confirmed it."""

    backup_id = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"remove the off-site copy of {self.backup_id}"

    @classmethod
    def owe(cls, backup_ids: Iterable[str]) -> None:
        """Owe these removals (idempotent: a removal already owed stays as it is)."""
        rows = [cls(backup_id=backup_id) for backup_id in backup_ids if backup_id]
        if rows:
            cls.objects.bulk_create(rows, ignore_conflicts=True)
