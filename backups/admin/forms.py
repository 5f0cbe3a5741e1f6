"""Forms of the admin screens. They only shape input: the rules are the domain's (the config
document's `validate`, a run's `description_problem`), the same the API applies, so a browser and a
script are refused with the same words."""

from __future__ import annotations

import copy
from typing import Any

from django import forms

from backups.config import document as config_document
from backups.config.models import BackupConfig
from backups.config.selectors import config_public
from backups.config.services import config_with_stored_secrets
from backups.runs.description import MAX_LENGTH, description_problem

COMPONENT_LABELS = {
    "databases": "Databases",
    "applicationFiles": "Application files",
    "uploads": "Uploads",
    "configs": "Configuration files",
    "nginx": "nginx configuration",
    "ssl": "SSL certificates",
    "systemInfo": "System information",
}

# Where each form field lives in the document; `components` (a list of checked keys) is handled apart.
FIELD_PATHS: dict[str, tuple[str, ...]] = {
    "enabled": ("enabled",),
    "schedule": ("schedule",),
    "retries_count": ("scheduleRetries", "count"),
    "retries_delay": ("scheduleRetries", "delayMinutes"),
    "retention_daily": ("retention", "daily"),
    "retention_weekly": ("retention", "weekly"),
    "retention_monthly": ("retention", "monthly"),
    "retention_yearly": ("retention", "yearly"),
    "retention_last": ("retention", "last"),
    "retention_within": ("retention", "keepWithinHours"),
    "retention_manual": ("retention", "keepManual"),
    "retention_after_failure": ("retention", "afterFailure"),
    "retention_prune_incomplete": ("retention", "pruneIncomplete"),
    "compression": ("compression",),
    "encryption": ("encryption",),
    "notify_email": ("notifications", "email"),
    "email_recipients": ("notifications", "emailRecipients"),
    "webhook": ("notifications", "webhook"),
    "urls": ("notifications", "urls"),
    "healthcheck_url": ("notifications", "healthcheckUrl"),
    "stale_after_hours": ("notifications", "staleAfterHours"),
    "on_success": ("notifications", "onSuccess"),
}
FIELD_FOR_PATH = {path: name for name, path in FIELD_PATHS.items()}


def _retention_field(label: str, help_text: str = "") -> forms.IntegerField:
    # No min/max on the field itself: the document's validator owns the range and its wording.
    return forms.IntegerField(
        label=label,
        widget=forms.NumberInput(
            attrs={"min": 0, "max": config_document.RETENTION_MAX, "data-retention": "1"}
        ),
        help_text=help_text or f"0–{config_document.RETENTION_MAX}.",
    )


class LinesField(forms.CharField):
    """A list of strings edited one per line (e-mail addresses, Apprise URLs)."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 80, "spellcheck": "false"})

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [line.strip() for line in text.splitlines() if line.strip()]


class BackupConfigForm(forms.ModelForm):
    """The config document as a form. `clean()` runs the same validation as `PUT /api/backup/config`;
    the admin then stores `self.document` through `config_update`."""

    enabled = forms.BooleanField(
        required=False,
        label="Scheduled backups enabled",
        help_text="When off, the schedule stops; manual backups stay possible.",
    )
    schedule = forms.CharField(
        max_length=200,
        help_text="A 5-field cron expression (minute hour day month weekday) in the server's time zone, "
        "e.g. <code>0 3 * * *</code> for 03:00 every day.",
    )
    retries_count = forms.IntegerField(
        label="Retries of a failed scheduled run", help_text="0 (no retry) to 10."
    )
    retries_delay = forms.IntegerField(label="Minutes before each retry", help_text="1–1440.")
    retention_daily = _retention_field(
        "Keep daily backups", "The newest backup of each of the last N days that have one."
    )
    retention_weekly = _retention_field(
        "Keep weekly backups", "… of each of the last N ISO weeks that have one."
    )
    retention_monthly = _retention_field(
        "Keep monthly backups", "… of each of the last N months that have one."
    )
    retention_yearly = _retention_field("Keep yearly backups", "… of each of the last N years that have one.")
    retention_last = _retention_field("Keep the last N backups")
    retention_within = forms.IntegerField(
        label="Keep everything younger than (hours)",
        widget=forms.NumberInput(attrs={"min": 0, "data-retention": "1"}),
        help_text="0 switches this floor off.",
    )
    retention_manual = forms.BooleanField(
        required=False,
        label="Keep manual backups",
        widget=forms.CheckboxInput(attrs={"data-retention": "1"}),
        help_text="Backups an admin started are never pruned.",
    )
    retention_after_failure = forms.BooleanField(
        required=False,
        label="Also apply retention after a failed run",
        help_text="Off: a run of failures never thins out the backups that are left.",
    )
    retention_prune_incomplete = forms.BooleanField(
        required=False,
        label="Delete failed and incomplete folders older than 7 days",
        widget=forms.CheckboxInput(attrs={"data-retention": "1"}),
    )
    compression = forms.BooleanField(required=False, help_text="Off: fastest gzip level instead.")
    encryption = forms.BooleanField(required=False)
    notify_email = forms.BooleanField(required=False, label="E-mail notifications")
    email_recipients = LinesField(
        required=False,
        label="E-mail recipients",
        help_text="One address per line. Sent through <code>EMAIL_URL</code> (environment).",
    )
    webhook = forms.CharField(
        required=False,
        label="Webhook URL",
        widget=forms.URLInput(attrs={"placeholder": "https://…"}),
        help_text="Empty, or an http(s) URL. Signed per Standard Webhooks with <code>WEBHOOK_SECRET</code> "
        "(environment); not called without it.",
    )
    urls = LinesField(
        required=False,
        label="Chat and push (Apprise URLs)",
        help_text="One per line: <code>tgram://token/chat</code>, <code>slack://…</code>, "
        "<code>ntfy://topic</code> … Shown masked; leave a masked line as it is to keep that URL.",
    )
    healthcheck_url = forms.CharField(
        required=False,
        label="Monitor ping URL",
        widget=forms.URLInput(attrs={"placeholder": "https://hc-ping.com/…"}),
        help_text="healthchecks.io or Uptime Kuma push URL: <code>/start</code> when a run starts, the URL "
        "on success, <code>/fail</code> on failure.",
    )
    stale_after_hours = forms.IntegerField(
        label="Alert when no backup succeeded for (hours)", help_text="0 switches the alert off."
    )
    on_success = forms.BooleanField(
        required=False,
        label="Also tell of successful runs",
        help_text="Failures, retention deletions and failed verifications are always told; the monitor "
        "ping always hears successes.",
    )
    components = forms.MultipleChoiceField(
        required=False,
        choices=[(key, COMPONENT_LABELS.get(key, key)) for key in config_document.COMPONENT_KEYS],
        widget=forms.CheckboxSelectMultiple,
        help_text="What the script backs up.",
    )

    class Meta:
        model = BackupConfig
        fields: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.current = config_document.upgrade(self.instance.document if self.instance.pk else {})
        shown = config_public(self.current)  # Apprise URLs masked, as the API shows them
        for name, path in FIELD_PATHS.items():
            self.initial.setdefault(name, _get(shown, path))
        self.initial.setdefault("components", config_document.enabled_components(self.current))
        self.document: dict[str, Any] | None = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned  # a field did not even parse (e.g. "abc" for a count); nothing to validate
        # Start from the stored document so that keys this form does not show are kept as they are.
        document = copy.deepcopy(self.current)
        for name, path in FIELD_PATHS.items():
            _set(document, path, cleaned[name])
        checked = set(cleaned["components"])
        document["components"] = {key: key in checked for key in document["components"]}
        try:
            self.document = config_document.validate(config_with_stored_secrets(document, self.current))
        except config_document.ConfigInvalid as invalid:
            self._add_document_errors(invalid.errors, ())
        return cleaned

    def _add_document_errors(self, errors: dict[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in errors.items():
            path = (*prefix, key)
            if isinstance(value, dict):
                self._add_document_errors(value, path)
                continue
            if path[0] == "components":
                field: str | None = "components"
            else:
                field = FIELD_FOR_PATH.get(path)
            messages = value if field else [f"{'.'.join(path)}: {message}" for message in value]
            for message in messages:
                self.add_error(field, message)


def _get(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def _set(document: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


class StartBackupForm(forms.Form):
    """The admin's "Start a backup": the body of `POST /api/backup/create`, checked by its serializer."""

    description = forms.CharField(
        required=False,
        max_length=MAX_LENGTH,
        widget=forms.TextInput(attrs={"size": 60}),
        help_text="Optional; shown in the list of backups and in the audit trail.",
    )

    def clean_description(self) -> str:
        value = self.cleaned_data["description"].strip()
        problem = description_problem(value)
        if problem:
            raise forms.ValidationError(problem)
        return value
