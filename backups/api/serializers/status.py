"""The status document, rendered from `status.documents.status()` for REST and WebSocket alike."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import serializers

from backups.api.serializers.backups import BackupListSerializer, _iso
from backups.api.serializers.runs import RunSerializer


class CountSizeSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    total_size_bytes = serializers.IntegerField()


class DiskSerializer(serializers.Serializer):
    total_bytes = serializers.IntegerField()
    free_bytes = serializers.IntegerField()


class ScriptStateSerializer(serializers.Serializer):
    available = serializers.BooleanField()


class ScheduleStateSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    schedule = serializers.CharField()


class NoticeSerializer(serializers.Serializer):
    level = serializers.ChoiceField(choices=["error", "warning"])
    message = serializers.CharField()
    action = serializers.CharField()


class OffsiteCountsSerializer(serializers.Serializer):
    none = serializers.IntegerField()
    pending = serializers.IntegerField()
    uploading = serializers.IntegerField()
    ok = serializers.IntegerField()
    failed = serializers.IntegerField()


class OffsiteStateSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    backups = OffsiteCountsSerializer(help_text="backups by the state of their off-site copy")
    last_copy_at = serializers.DateTimeField(allow_null=True)


class StatusSerializer(serializers.Serializer):
    """The document is written directly rather than field by field (building and walking the nested
    fields was a fifth of a status request's time); `tests/api/test_request_cost.py` checks it equals
    the field-by-field document. The fields below stay its schema."""

    running = serializers.BooleanField()
    current_run = RunSerializer(allow_null=True)
    last_backup = BackupListSerializer(allow_null=True)
    last_successful_run = RunSerializer(allow_null=True)
    next_scheduled_at = serializers.DateTimeField(allow_null=True)
    backups = CountSizeSerializer()
    disk = DiskSerializer()
    script = ScriptStateSerializer()
    config = ScheduleStateSerializer()
    notices = NoticeSerializer(
        many=True, help_text="what is wrong right now, worst first, each with what to do"
    )
    offsite = OffsiteStateSerializer()

    def to_representation(self, instance: dict[str, Any]) -> dict[str, Any]:
        zone = timezone.get_current_timezone()
        offsite = instance["offsite"]
        return {
            "running": bool(instance["running"]),
            "current_run": _run(instance["current_run"]),
            "last_backup": _backup(instance["last_backup"]),
            "last_successful_run": _run(instance["last_successful_run"]),
            "next_scheduled_at": _iso(instance["next_scheduled_at"], zone),
            "backups": {
                "count": int(instance["backups"]["count"]),
                "total_size_bytes": int(instance["backups"]["total_size_bytes"]),
            },
            "disk": {
                "total_bytes": int(instance["disk"]["total_bytes"]),
                "free_bytes": int(instance["disk"]["free_bytes"]),
            },
            "script": {"available": bool(instance["script"]["available"])},
            "config": {
                "enabled": bool(instance["config"]["enabled"]),
                "schedule": str(instance["config"]["schedule"]),
            },
            "notices": [
                {"level": notice["level"], "message": str(notice["message"]), "action": str(notice["action"])}
                for notice in instance["notices"]
            ],
            "offsite": {
                "enabled": bool(offsite["enabled"]),
                "backups": {name: int(offsite["backups"][name]) for name in OFFSITE_COUNTS},
                "last_copy_at": _iso(offsite["last_copy_at"], zone),
            },
        }

    def field_by_field(self, instance: dict[str, Any]) -> dict[str, Any]:
        """The document as DRF's fields write it (what `to_representation` must equal)."""
        return super().to_representation(instance)


OFFSITE_COUNTS = tuple(OffsiteCountsSerializer._declared_fields)


def _run(run: Any) -> dict[str, Any] | None:
    return None if run is None else RunSerializer(run).data


def _backup(backup: Any) -> dict[str, Any] | None:
    return None if backup is None else BackupListSerializer(backup).data
