"""Channel URLs shown without secrets and merged back after a GET-then-PUT; the retry schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backups.notifications.backoff import (
    GIVE_UP_AFTER,
    next_attempt_at,
    parse_retry_after,
    retry_delay,
    schedule,
)
from backups.notifications.masking import UnknownMaskedValue, mask_text, mask_url, merge_masked

KEY = b"server key"
TELEGRAM = "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/12315544"
TELEGRAM_2 = "tgram://987654321:BBHdqTcvCH1vGWJxfSeofSAs0K5PALDzzz/99999"
SLACK = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general"
MAIL = "mailtos://alice:app-password-123@smtp.example.com?to=ops@example.com"
NTFY = "ntfys://bob:pw4ntfy@ntfy.sh/backups-topic-x9"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (TELEGRAM, "tgram://****/…"),
        (SLACK, "slack://****/…"),
        (MAIL, "mailtos://****@smtp.example.com/…"),
        (NTFY, "ntfys://****@ntfy.sh/…"),
        ("ntfy://my-private-topic", "ntfy://****"),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://****/…"),
        ("gotify://gotify.example.com/AbCdEfToken", "gotify://gotify.example.com/…"),
        ("json://127.0.0.1:8080/hook?token=abc", "json://127.0.0.1:8080/…"),
        ("json://[::1]:8080/hook", "json://[::1]:8080/…"),
        ("pover://userkey@apptoken", "pover://****@****"),
        ("no scheme at all", "****"),
    ],
)
def test_a_masked_url_keeps_the_scheme_and_a_real_host_and_nothing_secret(url, shown):
    masked = mask_url(url, KEY)
    assert masked.rsplit("#", 1)[0] == shown
    assert len(masked.rsplit("#", 1)[1]) == 4
    for secret in ("AAHdq", "TIiajk", "app-password", "pw4ntfy", "backups-topic", "JHMHI8", "AbCdEf", "abc"):
        assert secret not in masked


def test_the_fingerprint_depends_on_the_key():
    assert mask_url(TELEGRAM, b"one") != mask_url(TELEGRAM, b"two")
    assert mask_url(TELEGRAM, KEY) != mask_url(TELEGRAM_2, KEY)


def test_a_get_then_put_round_trip_keeps_every_stored_secret():
    stored = [TELEGRAM, SLACK, MAIL]
    shown = [mask_url(u, KEY) for u in stored]
    assert merge_masked(shown, stored, key=KEY) == stored


def test_a_put_adds_new_urls_drops_removed_ones_and_keeps_the_order_given():
    stored = [TELEGRAM, SLACK, MAIL]
    shown = [mask_url(u, KEY) for u in stored]
    submitted = [shown[2], "ntfy://new-topic", shown[0]]
    assert merge_masked(submitted, stored, key=KEY) == [MAIL, "ntfy://new-topic", TELEGRAM]


def test_removing_the_first_of_two_urls_of_one_service_keeps_the_second_ones_secret():
    stored = [TELEGRAM, TELEGRAM_2]
    shown = [mask_url(u, KEY) for u in stored]
    assert merge_masked([shown[1]], stored, key=KEY) == [TELEGRAM_2]


def test_a_masked_value_that_matches_nothing_is_refused():
    stored = [TELEGRAM]
    with pytest.raises(UnknownMaskedValue) as caught:
        merge_masked(["ntfy://new", "tgram://****/…#0000"], stored, key=KEY)
    assert caught.value.index == 1
    edited = mask_url(TELEGRAM, KEY).replace("tgram://", "tgram://x")
    with pytest.raises(UnknownMaskedValue):
        merge_masked([edited], stored, key=KEY)


def test_a_url_changed_in_full_replaces_the_stored_one():
    assert merge_masked([TELEGRAM_2], [TELEGRAM], key=KEY) == [TELEGRAM_2]


def test_mask_text_hides_url_passwords_and_given_secrets():
    token = "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    text = f"POST failed for {TELEGRAM}; db postgres://app:hunter2@db/app; token {token}"
    masked = mask_text(text, [TELEGRAM])
    assert "hunter2" not in masked and "AAHdq" not in masked and "12315544" not in masked
    assert "postgres://app:****@db/app" in masked


def test_the_retry_delay_doubles_from_30_seconds_up_to_an_hour():
    assert [retry_delay(n) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert retry_delay(10_000) == 3600
    with pytest.raises(ValueError):
        retry_delay(0)


def test_retry_after_is_honoured_but_not_beyond_six_hours():
    assert retry_delay(1, retry_after=7) == 30
    assert retry_delay(1, retry_after=900) == 900
    assert retry_delay(8, retry_after=10**9) == 6 * 3600


def test_delivery_gives_up_after_24_hours():
    first = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    assert next_attempt_at(first_attempt_at=first, failed_attempts=1, now=first) == first + timedelta(
        seconds=30
    )
    late = first + timedelta(hours=23, minutes=30)
    assert next_attempt_at(first_attempt_at=first, failed_attempts=20, now=late) is None
    assert (
        next_attempt_at(
            first_attempt_at=first, failed_attempts=3, now=first + timedelta(hours=20), retry_after=5 * 3600
        )
        is None
    )
    plan = schedule()
    assert plan[:3] == [30, 90, 210] and plan[-1] <= GIVE_UP_AFTER.total_seconds()
    assert len(plan) == 7 + int((GIVE_UP_AFTER.total_seconds() - 3810) // 3600)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Tue, 01 Dec 2026 03:02:00 GMT", 120.0),
        ("Tuesday, 01-Dec-26 03:02:00 GMT", 120.0),
        ("Tue Dec  1 03:02:00 2026", 120.0),
        ("Tue, 01 Dec 2026 02:00:00 GMT", 0.0),
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header, seconds):
    assert parse_retry_after(header, now=datetime(2026, 12, 1, 3, 0, tzinfo=UTC)) == seconds
