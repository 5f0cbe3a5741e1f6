"""Restore documents of the API: a backup's contents, an archive's members, the named targets, and
the restore request."""

from __future__ import annotations

import re
from typing import Any

from rest_framework import serializers

from backups.api.serializers.common import StrictSerializer
from backups.api.serializers.runs import StrictCharField
from backups.restore.targets import KINDS, MEMBER_TYPES

TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class DumpSerializer(serializers.Serializer):
    path = serializers.CharField()
    size_bytes = serializers.IntegerField()
    format = serializers.ChoiceField(choices=["plain", "custom", "unknown"])
    database = serializers.CharField(help_text="the database it holds (from its header or its name)")
    demo = serializers.BooleanField(help_text="a labelled demo dump, not a real database")


class ArchiveSerializer(serializers.Serializer):
    path = serializers.CharField()
    size_bytes = serializers.IntegerField()


class ContentsSerializer(serializers.Serializer):
    dumps = DumpSerializer(many=True)
    archives = ArchiveSerializer(many=True)


class MemberSerializer(serializers.Serializer):
    path = serializers.CharField()
    size_bytes = serializers.IntegerField()
    type = serializers.ChoiceField(choices=list(MEMBER_TYPES))
    link_target = serializers.CharField(required=False, help_text="for a symlink or a hard link")


class MembersPageSerializer(serializers.Serializer):
    archive = serializers.CharField()
    count = serializers.IntegerField(
        allow_null=True, help_text="the number of members, known once the last page was read"
    )
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    members = MemberSerializer(many=True)
    error = serializers.CharField(allow_null=True, help_text="the archive is damaged at or before this page")


class TargetSerializer(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=list(KINDS))


class TargetsSerializer(serializers.Serializer):
    targets = TargetSerializer(many=True)


class RestoreRequestSerializer(StrictSerializer):
    component = serializers.ChoiceField(choices=list(KINDS))
    dump = StrictCharField(required=False, max_length=1000, help_text="for a database: a dump of /contents")
    archive = StrictCharField(required=False, max_length=1000, help_text="for files: an archive of /contents")
    target = StrictCharField(max_length=64, help_text="a name of GET /api/backup/restore/targets")
    dryRun = serializers.BooleanField(required=False, default=False)  # noqa: N815 - the contract's key
    confirm = StrictCharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=200,
        help_text="the backup id: needed to restore into a database that is not empty",
    )
    paths = serializers.ListField(
        child=StrictCharField(max_length=1000),
        required=False,
        default=list,
        max_length=100,
        help_text="files only: restore only members under these prefixes",
    )

    def validate_target(self, value: str) -> str:
        # A name, never a URL or a path (and what was sent is not echoed: it may hold a password).
        if not TARGET_NAME.fullmatch(value):
            raise serializers.ValidationError(
                "A target name (letters, digits, _ and -), not a URL or a path."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if attrs["component"] == "database":
            if "dump" not in attrs:
                raise serializers.ValidationError({"dump": ["A database restore names its dump."]})
            for key in ("archive", "paths"):
                if key in self.initial_data:
                    raise serializers.ValidationError({key: ["Only for a files restore."]})
        else:
            if "archive" not in attrs:
                raise serializers.ValidationError({"archive": ["A files restore names its archive."]})
            if "dump" in self.initial_data:
                raise serializers.ValidationError({"dump": ["Only for a database restore."]})
        return attrs
