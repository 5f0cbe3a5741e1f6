"""EMAIL_URL and WEBHOOK_SECRET as settings.py reads them: every form a careful operator writes, and a
bad value refused at start-up naming the variable but never the password."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from backup_platform.settings import check_webhook_secret, parse_email_url


@pytest.mark.parametrize(
    "url, expected",
    [
        (
            "smtp://backups%40example.com:p%2Fss%3Aword@smtp.example.com:587?tls=1",
            {
                "EMAIL_HOST": "smtp.example.com",
                "EMAIL_PORT": 587,
                "EMAIL_HOST_USER": "backups@example.com",
                "EMAIL_HOST_PASSWORD": "p/ss:word",
                "EMAIL_USE_TLS": True,
                "EMAIL_USE_SSL": False,
            },
        ),
        (
            "smtp+ssl://u:p@mail.example.com",
            {
                "EMAIL_HOST": "mail.example.com",
                "EMAIL_PORT": 465,
                "EMAIL_USE_TLS": False,
                "EMAIL_USE_SSL": True,
            },
        ),
        ("smtps://mail.example.com:2465", {"EMAIL_PORT": 2465, "EMAIL_USE_SSL": True, "EMAIL_HOST_USER": ""}),
        ("smtp+tls://mail.example.com", {"EMAIL_PORT": 587, "EMAIL_USE_TLS": True}),
        ("smtp://127.0.0.1:2525", {"EMAIL_PORT": 2525, "EMAIL_USE_TLS": False, "EMAIL_USE_SSL": False}),
    ],
)
def test_email_urls_become_django_mail_settings(url, expected):
    settings = parse_email_url("EMAIL_URL", url)
    assert settings["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert {key: settings[key] for key in expected} == expected


def test_console_prints_the_mail():
    assert parse_email_url("EMAIL_URL", "console://") == {
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"
    }


@pytest.mark.parametrize(
    "url", ["http://u:hunter2@mail.example.com", "smtp://u:hunter2@:25", "smtp://u:hunter2@h:99999"]
)
def test_a_bad_email_url_names_the_variable_and_not_the_password(url):
    with pytest.raises(ImproperlyConfigured) as refused:
        parse_email_url("EMAIL_URL", url)
    assert "EMAIL_URL" in str(refused.value) and "hunter2" not in str(refused.value)


def test_a_webhook_secret_in_the_standard_form_must_decode():
    assert check_webhook_secret("WEBHOOK_SECRET", "whsec_dGhpcnR5LXR3byBieXRlcyBvZiB3ZWJob29rIGtleSE=")
    assert check_webhook_secret("WEBHOOK_SECRET", "any other string is its own key")
    with pytest.raises(ImproperlyConfigured, match="WEBHOOK_SECRET"):
        check_webhook_secret("WEBHOOK_SECRET", "whsec_not base64!")
