"""The retention preview and what applying it deleted."""

from __future__ import annotations

from rest_framework import serializers

from backups.api.serializers.config import RetentionSerializer


class DecisionSerializer(serializers.Serializer):
    id = serializers.CharField()
    created_at = serializers.DateTimeField()
    keep = serializers.BooleanField()
    reasons = serializers.ListField(
        child=serializers.CharField(),
        help_text="every reason it is kept (`daily 2026-11-30`, `pinned`, `within 24 h` …), or the one "
        "reason it is deleted",
    )


class RetentionPreviewSerializer(serializers.Serializer):
    policy = RetentionSerializer()
    backups = DecisionSerializer(many=True)
    delete = serializers.ListField(child=serializers.CharField())


class RetentionCandidateSerializer(serializers.Serializer):
    retention = RetentionSerializer(partial=True, help_text="merged onto the current policy")


class DeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    reason = serializers.CharField()


class RetentionApplySerializer(serializers.Serializer):
    deleted = DeletedSerializer(many=True)
