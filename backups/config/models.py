"""The config document, stored as one row."""

from __future__ import annotations

from django.db import models

from backups.config.document import default_document


class BackupConfig(models.Model):
    """The original service's config document, one row. Validated by `config.document.validate`."""

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
