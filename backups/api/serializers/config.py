"""The config document, described for the OpenAPI schema (its validation lives in `config.document`).
The keys of the original service are required in a PUT; the keys added since may be left out."""

from __future__ import annotations

from rest_framework import serializers

OPTIONAL = {"required": False}


class RetentionSerializer(serializers.Serializer):
    daily = serializers.IntegerField(min_value=0, max_value=1000)
    weekly = serializers.IntegerField(min_value=0, max_value=1000)
    monthly = serializers.IntegerField(min_value=0, max_value=1000)
    yearly = serializers.IntegerField(min_value=0, max_value=1000, **OPTIONAL)
    last = serializers.IntegerField(min_value=0, max_value=1000, **OPTIONAL)
    keepWithinHours = serializers.IntegerField(min_value=0, max_value=87600, **OPTIONAL)  # noqa: N815
    keepManual = serializers.BooleanField(**OPTIONAL)  # noqa: N815
    afterFailure = serializers.BooleanField(**OPTIONAL)  # noqa: N815
    pruneIncomplete = serializers.BooleanField(**OPTIONAL)  # noqa: N815


class ScheduleRetriesSerializer(serializers.Serializer):
    count = serializers.IntegerField(min_value=0, max_value=10)
    delayMinutes = serializers.IntegerField(min_value=1, max_value=1440)  # noqa: N815


class NotificationsSerializer(serializers.Serializer):
    email = serializers.BooleanField()
    webhook = serializers.CharField(allow_blank=True, help_text="empty, or an http(s) URL")
    emailRecipients = serializers.ListField(child=serializers.EmailField(), max_length=20, **OPTIONAL)  # noqa: N815
    urls = serializers.ListField(
        child=serializers.CharField(),
        max_length=20,
        help_text="Apprise URLs; answered masked (`tgram://****/…#ab12`), and a masked one sent back keeps "
        "the stored secret",
        **OPTIONAL,
    )
    healthcheckUrl = serializers.CharField(allow_blank=True, help_text="empty, or an http(s) URL", **OPTIONAL)  # noqa: N815
    staleAfterHours = serializers.IntegerField(min_value=0, max_value=8760, **OPTIONAL)  # noqa: N815
    onSuccess = serializers.BooleanField(**OPTIONAL)  # noqa: N815


class VerificationConfigSerializer(serializers.Serializer):
    deep = serializers.BooleanField()


class OffsiteSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    endpoint = serializers.CharField(allow_blank=True, help_text="empty (AWS), or the store's http(s) URL")
    bucket = serializers.CharField(allow_blank=True)
    prefix = serializers.CharField(allow_blank=True)
    region = serializers.CharField(allow_blank=True)
    storageClass = serializers.CharField(allow_blank=True)  # noqa: N815


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
    scheduleRetries = ScheduleRetriesSerializer(**OPTIONAL)  # noqa: N815
    compression = serializers.BooleanField()
    compressionLevel = serializers.IntegerField(min_value=1, max_value=19, **OPTIONAL)  # noqa: N815
    encryption = serializers.BooleanField()
    encryptionRecipients = serializers.ListField(child=serializers.CharField(), max_length=20, **OPTIONAL)  # noqa: N815
    encryptLocal = serializers.BooleanField(**OPTIONAL)  # noqa: N815
    notifications = NotificationsSerializer()
    verification = VerificationConfigSerializer(**OPTIONAL)
    offsite = OffsiteSerializer(**OPTIONAL)
    components = ComponentsSerializer()
    warnings = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="answered by PUT/PATCH when the document is accepted but deserves a word (schedule off, "
        "every component off); sent back, it is ignored",
    )
