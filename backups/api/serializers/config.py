"""The config document, described for the OpenAPI schema (its validation lives in `config.document`)."""

from __future__ import annotations

from rest_framework import serializers


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
