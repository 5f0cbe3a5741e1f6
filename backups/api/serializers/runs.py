"""The run document of the API, the create request, and the 409 that names the run in the way."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from backups.api.serializers.common import StrictSerializer
from backups.runs.description import MAX_LENGTH, description_problem
from backups.runs.models import Run, RunKind, RunType
from backups.runs.selectors import eta_seconds


class ProgressSerializer(serializers.Serializer):
    percent = serializers.IntegerField(min_value=0, max_value=100)
    stage = serializers.CharField(allow_blank=True)
    message = serializers.CharField(allow_blank=True)
    eta_seconds = serializers.FloatField(allow_null=True)


class RunSerializer(serializers.ModelSerializer):
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    progress = serializers.SerializerMethodField()
    backup_id = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id",
            "status",
            "kind",
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
            "automatic",
            "result",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_backup_id(self, run: Run) -> str | None:
        return run.backup_id or None

    @extend_schema_field(
        serializers.DictField(
            allow_null=True,
            help_text="a restore run's outcome: what it wrote, or for a dry run what it would write "
            "(null for the other kinds)",
        )
    )
    def get_result(self, run: Run) -> dict[str, Any] | None:
        return run.result if run.kind == RunKind.RESTORE else None

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, run: Run) -> dict[str, Any]:
        return {
            "percent": run.progress_percent,
            "stage": run.progress_stage,
            "message": run.progress_message,
            "eta_seconds": eta_seconds(run),
        }


class StrictCharField(serializers.CharField):
    """DRF's CharField turns 5 into "5"; a JSON number where text belongs is a client bug to report."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class CreateRunSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=[RunType.MANUAL], default=RunType.MANUAL, required=False)
    description = StrictCharField(
        max_length=MAX_LENGTH, required=False, allow_blank=True, default="", trim_whitespace=True
    )

    def validate_description(self, value: str) -> str:
        problem = description_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value


class RunEnvelopeSerializer(serializers.Serializer):
    run = RunSerializer()
    warnings = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="e.g. no worker is running to take the run"
    )


class ConflictSerializer(serializers.Serializer):
    detail = serializers.CharField()
    run = RunSerializer(
        allow_null=True,
        required=False,
        help_text="the run that holds the lane, when that is the conflict; absent for other refusals "
        "(e.g. off-site copies not configured, a backup whose folder is gone)",
    )
