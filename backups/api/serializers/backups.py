"""The backup document of the API: one backup folder, with or without its files."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from backups.api.serializers.common import StrictSerializer
from backups.catalogue.models import Backup, OffsiteStatus, VerificationStatus


class BackupFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    size_bytes = serializers.IntegerField()


class RestoreTestSerializer(serializers.Serializer):
    dump = serializers.CharField()
    ok = serializers.BooleanField()
    tables = serializers.IntegerField()
    rows = serializers.IntegerField()
    seconds = serializers.FloatField()
    error = serializers.CharField(required=False)


class VerificationSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=VerificationStatus.values)
    level = serializers.CharField(allow_null=True)
    at = serializers.DateTimeField(allow_null=True)
    problems = serializers.ListField(child=serializers.CharField())
    databases = RestoreTestSerializer(many=True)
    due = serializers.CharField(allow_null=True, help_text="the level of a verification owed, if any")


class OffsiteCopySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=OffsiteStatus.values)
    at = serializers.DateTimeField(allow_null=True, help_text="when the last complete copy was made")
    bytes = serializers.IntegerField(help_text="plaintext bytes the copy holds")
    uploaded_bytes = serializers.IntegerField(help_text="bytes its last upload sent")
    error = serializers.CharField(
        allow_null=True, help_text="why the last attempt failed, if it did (an earlier copy may be kept: ok)"
    )


class BackupSerializer(serializers.ModelSerializer):
    files = serializers.SerializerMethodField()
    verification = serializers.SerializerMethodField()
    # What the last walk of the folder could not read; empty when it was read completely.
    problems = serializers.ListField(child=serializers.CharField(), read_only=True)
    offsite = serializers.SerializerMethodField()

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
            "verification",
            "local",
            "offsite",
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

    @extend_schema_field(VerificationSerializer)
    def get_verification(self, backup: Backup) -> dict[str, Any]:
        """`verified` stays the boolean of the original API: true only when the last one passed."""
        details = backup.verification or {}
        return {
            "status": backup.verification_status,
            "level": backup.verification_level or None,
            "at": backup.verified_at.isoformat() if backup.verified_at else None,
            "problems": list(details.get("problems", [])),
            "databases": list(details.get("databases", [])),
            "due": backup.verification_due or None,
        }

    @extend_schema_field(OffsiteCopySerializer)
    def get_offsite(self, backup: Backup) -> dict[str, Any]:
        """Where the backup lives besides its folder (`local`): its off-site copy."""
        details = backup.offsite or {}
        return {
            "status": backup.offsite_status,
            "at": backup.offsite_at.isoformat() if backup.offsite_at else None,
            "bytes": backup.offsite_bytes,
            "uploaded_bytes": backup.offsite_uploaded_bytes,
            "error": details.get("error"),
        }

    def to_representation(self, instance: Backup) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["run_id"] = str(instance.run_id) if instance.run_id else None
        if self.context.get("without_files"):
            data.pop("files", None)
        return data


class BackupListSerializer(BackupSerializer):
    """List rows leave `files` out: a page stays small whatever the backups hold.

    A row is written directly from its columns rather than field by field (DRF's per-field work was a
    fifth of a list request's time), and the list reads those columns, not model objects;
    `tests/api/test_request_cost.py` checks both equal the field-by-field document."""

    class Meta(BackupSerializer.Meta):
        fields = [name for name in BackupSerializer.Meta.fields if name != "files"]
        read_only_fields = fields

    #: The columns a row is written from: the list reads just these (`.values(*ROW_FIELDS)`), no model
    #: objects.
    ROW_FIELDS = (
        "id",
        "created_at",
        "status",
        "size_bytes",
        "is_latest",
        "type",
        "description",
        "pinned",
        "verified",
        "verification_status",
        "verification_level",
        "verified_at",
        "verification",
        "verification_due",
        "local",
        "offsite_status",
        "offsite_at",
        "offsite_bytes",
        "offsite_uploaded_bytes",
        "offsite",
        "triggered_by",
        "file_count",
        "run_id",
        "problems",
    )

    def to_representation(self, instance: Backup | dict[str, Any]) -> dict[str, Any]:
        if not isinstance(instance, dict):
            instance = {name: getattr(instance, name) for name in self.ROW_FIELDS}
        return self.row(instance, timezone.get_current_timezone())

    @staticmethod
    def row(values: dict[str, Any], zone: tzinfo) -> dict[str, Any]:
        """The document of one backup from its columns (`ROW_FIELDS`)."""
        verification = values["verification"] or {}
        verified_at = values["verified_at"]
        offsite_at = values["offsite_at"]
        run_id = values["run_id"]
        return {
            "id": values["id"],
            "created_at": _iso(values["created_at"], zone),
            "status": values["status"],
            "size_bytes": values["size_bytes"],
            "is_latest": values["is_latest"],
            "type": values["type"],
            "description": values["description"],
            "pinned": values["pinned"],
            "verified": values["verified"],
            # As `get_verification` and `get_offsite` write them.
            "verification": {
                "status": values["verification_status"],
                "level": values["verification_level"] or None,
                "at": verified_at.isoformat() if verified_at else None,
                "problems": list(verification.get("problems", [])),
                "databases": list(verification.get("databases", [])),
                "due": values["verification_due"] or None,
            },
            "local": values["local"],
            "offsite": {
                "status": values["offsite_status"],
                "at": offsite_at.isoformat() if offsite_at else None,
                "bytes": values["offsite_bytes"],
                "uploaded_bytes": values["offsite_uploaded_bytes"],
                "error": (values["offsite"] or {}).get("error"),
            },
            "triggered_by": values["triggered_by"],
            "file_count": values["file_count"],
            "run_id": str(run_id) if run_id else None,
            "problems": [str(problem) for problem in values["problems"]],
        }

    def field_by_field(self, instance: Backup) -> dict[str, Any]:
        """The document as DRF's fields write it (what `to_representation` must equal)."""
        return super().to_representation(instance)


def _iso(value: datetime | None, zone: tzinfo) -> str | None:
    """As DRF's DateTimeField writes it: in the current time zone, ISO 8601, UTC as `Z`."""
    if value is None:
        return None
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class DownloadLinkSerializer(serializers.Serializer):
    url = serializers.CharField()
    expires_in = serializers.IntegerField()


class VerifyRequestSerializer(StrictSerializer):
    level = serializers.ChoiceField(choices=["quick", "deep"], default="deep", required=False)
