"""The JSON shapes of CONTRACT §3: backup, run, create request, logs query."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from backups.models import Backup, Run, RunType


class BackupFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    size_bytes = serializers.IntegerField()


class BackupSerializer(serializers.ModelSerializer):
    files = serializers.SerializerMethodField()

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
    """List rows leave `files` out (CONTRACT allows it): a page stays small whatever the backups hold."""

    class Meta(BackupSerializer.Meta):
        fields = [name for name in BackupSerializer.Meta.fields if name != "files"]
        read_only_fields = fields


class ProgressSerializer(serializers.Serializer):
    percent = serializers.IntegerField(min_value=0, max_value=100)
    stage = serializers.CharField(allow_blank=True)
    message = serializers.CharField(allow_blank=True)
    eta_seconds = serializers.FloatField(allow_null=True)


class RunSerializer(serializers.ModelSerializer):
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    progress = serializers.SerializerMethodField()
    backup_id = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id",
            "status",
            "type",
            "description",
            "triggered_by",
            "created_at",
            "started_at",
            "finished_at",
            "duration_seconds",
            "exit_code",
            "backup_id",
            "error",
            "progress",
            "cancel_requested",
            "output_lines",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_backup_id(self, run: Run) -> str | None:
        return run.backup_id or None

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, run: Run) -> dict[str, Any]:
        return {
            "percent": run.progress_percent,
            "stage": run.progress_stage,
            "message": run.progress_message,
            "eta_seconds": _eta(run),
        }


def _eta(run: Run) -> float | None:
    if run.status != "running" or not run.started_at:
        return None
    from backups.selectors import expected_duration

    elapsed = run.duration_seconds or 0.0
    expected = expected_duration()
    if expected:
        return round(max(0.0, expected - elapsed), 1)
    if run.progress_percent >= 5:
        return round(elapsed * (100 - run.progress_percent) / run.progress_percent, 1)
    return None


class StrictCharField(serializers.CharField):
    """DRF's CharField turns 5 into "5"; a JSON number where text belongs is a client bug to report."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class CreateRunSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=[RunType.MANUAL], default=RunType.MANUAL, required=False)
    description = StrictCharField(
        max_length=500, required=False, allow_blank=True, default="", trim_whitespace=True
    )

    def validate_description(self, value: str) -> str:
        if any(ord(ch) < 32 and ch not in "\t" for ch in value):
            raise serializers.ValidationError("Must not contain control characters.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - set(self.fields) if isinstance(self.initial_data, dict) else set()
        if unknown:
            raise serializers.ValidationError({key: ["Unknown field."] for key in sorted(unknown)})
        return attrs


class LogsQuerySerializer(serializers.Serializer):
    source = serializers.ChoiceField(
        choices=["script", "service", "audit", "run"], default="script", required=False
    )
    lines = serializers.IntegerField(min_value=1, max_value=5000, default=200, required=False)
    run = serializers.UUIDField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("source") == "run" and not attrs.get("run"):
            raise serializers.ValidationError({"run": ["Required with source=run."]})
        return attrs


class RunEnvelopeSerializer(serializers.Serializer):
    run = RunSerializer()


class ConflictSerializer(serializers.Serializer):
    detail = serializers.CharField()
    run = RunSerializer(allow_null=True)


class LogEntrySerializer(serializers.Serializer):
    timestamp = serializers.CharField(allow_null=True)
    level = serializers.CharField()
    message = serializers.CharField()


class LogsSerializer(serializers.Serializer):
    source = serializers.CharField()
    entries = LogEntrySerializer(many=True)


class CheckSerializer(serializers.Serializer):
    name = serializers.CharField()
    ok = serializers.BooleanField()
    detail = serializers.CharField()


class TestScriptSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    checks = CheckSerializer(many=True)


class DownloadLinkSerializer(serializers.Serializer):
    url = serializers.CharField()
    expires_in = serializers.IntegerField()


# --- documents described for the OpenAPI schema (validation lives in config_document) ---------------


class RetentionSerializer(serializers.Serializer):
    daily = serializers.IntegerField(min_value=0, max_value=1000)
    weekly = serializers.IntegerField(min_value=0, max_value=1000)
    monthly = serializers.IntegerField(min_value=0, max_value=1000)


class NotificationsSerializer(serializers.Serializer):
    email = serializers.BooleanField()
    webhook = serializers.CharField(allow_blank=True, help_text="empty, or an http(s) URL")


class ComponentsSerializer(serializers.Serializer):
    databases = serializers.BooleanField()
    applicationFiles = serializers.BooleanField()  # noqa: N815 - the original document's key
    uploads = serializers.BooleanField()
    configs = serializers.BooleanField()
    nginx = serializers.BooleanField()
    ssl = serializers.BooleanField()
    systemInfo = serializers.BooleanField()  # noqa: N815 - the original document's key


class ConfigDocumentSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    schedule = serializers.CharField(help_text="5-field cron expression, server time zone")
    retention = RetentionSerializer()
    compression = serializers.BooleanField()
    encryption = serializers.BooleanField()
    notifications = NotificationsSerializer()
    components = ComponentsSerializer()


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
