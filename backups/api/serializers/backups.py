"""The backup document of the API: one backup folder, with or without its files."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from backups.catalogue.models import Backup


class BackupFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    size_bytes = serializers.IntegerField()


class BackupSerializer(serializers.ModelSerializer):
    files = serializers.SerializerMethodField()
    # What the last walk of the folder could not read; empty when it was read completely.
    problems = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Backup
        fields = [
            "id",
            "created_at",
            "status",
            "size_bytes",
            "is_latest",
            "type",
            "description",
            "pinned",
            "verified",
            "triggered_by",
            "file_count",
            "run_id",
            "problems",
            "files",
        ]
        read_only_fields = fields

    @extend_schema_field(BackupFileSerializer(many=True))
    def get_files(self, backup: Backup) -> list[dict[str, Any]]:
        return backup.files

    def to_representation(self, instance: Backup) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["run_id"] = str(instance.run_id) if instance.run_id else None
        if self.context.get("without_files"):
            data.pop("files", None)
        return data


class BackupListSerializer(BackupSerializer):
    """List rows leave `files` out: a page stays small whatever the backups hold."""

    class Meta(BackupSerializer.Meta):
        fields = [name for name in BackupSerializer.Meta.fields if name != "files"]
        read_only_fields = fields


class DownloadLinkSerializer(serializers.Serializer):
    url = serializers.CharField()
    expires_in = serializers.IntegerField()
