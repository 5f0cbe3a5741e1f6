"""The status document, rendered from `status.documents.status()` for REST and WebSocket alike."""

from __future__ import annotations

from rest_framework import serializers

from backups.api.serializers.backups import BackupListSerializer
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
