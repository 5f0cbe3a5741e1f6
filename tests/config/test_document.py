"""The config document, pure: its default, PUT and PATCH validation, upgrades, diffs, the schedule."""

from __future__ import annotations

import copy
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pyrage import x25519

from backups.config.document import (
    DEFAULT_CONFIG,
    ConfigInvalid,
    default_document,
    diff,
    enabled_components,
    next_fire_time,
    upgrade,
    validate,
)

NOT_A_URL = "Must be an http(s) URL."


def errors_of(document, **kwargs) -> dict:
    with pytest.raises(ConfigInvalid) as caught:
        validate(document, **kwargs)
    return caught.value.errors


def test_the_default_document_is_valid_and_a_fresh_copy_each_time():
    document = default_document()
    assert validate(document) == document
    document["retention"]["daily"] = 1
    assert default_document()["retention"]["daily"] == DEFAULT_CONFIG["retention"]["daily"] == 7


def test_put_needs_every_key_and_names_the_missing_ones():
    document = default_document()
    del document["schedule"]
    del document["components"]["ssl"]
    assert errors_of(document) == {
        "schedule": ["This field is required."],
        "components": {"ssl": ["This field is required."]},
    }


def test_unknown_keys_are_refused_at_every_level():
    document = default_document()
    document["colour"] = "blue"
    document["retention"]["hourly"] = 3
    assert errors_of(document) == {"colour": ["Unknown field."], "retention": {"hourly": ["Unknown field."]}}


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"enabled": "yes"}, {"enabled": ["Must be true or false."]}),
        ({"retention": {"daily": True}}, {"retention": {"daily": ["Must be an integer."]}}),
        ({"retention": {"weekly": 1001}}, {"retention": {"weekly": ["Must be between 0 and 1000."]}}),
        ({"retention": {"monthly": -1}}, {"retention": {"monthly": ["Must be between 0 and 1000."]}}),
        ({"schedule": 5}, {"schedule": ["Must be a string with a 5-field cron expression."]}),
        ({"notifications": {"webhook": "ftp://x"}}, {"notifications": {"webhook": [NOT_A_URL]}}),
        ({"notifications": {"webhook": "https://a b"}}, {"notifications": {"webhook": [NOT_A_URL]}}),
        ({"components": []}, {"components": {"non_field_errors": ["Must be a JSON object."]}}),
    ],
)
def test_bad_values_are_refused_with_the_field_named(patch, expected):
    assert errors_of(patch, current=default_document()) == expected


@pytest.mark.parametrize("schedule", ["0 3 * *", "61 3 * * *", "0 3 * * * *", "every night", "0 25 * * *"])
def test_a_schedule_is_valid_only_when_its_next_run_can_be_computed(schedule):
    assert "schedule" in errors_of({"schedule": schedule}, current=default_document())


def test_patch_merges_nested_keys_and_leaves_the_current_document_untouched():
    current = default_document()
    before = copy.deepcopy(current)
    merged = validate({"retention": {"daily": 3}, "components": {"ssl": False}}, current=current)
    assert (merged["retention"]["daily"], merged["retention"]["weekly"], merged["retention"]["monthly"]) == (
        3,
        4,
        12,
    )
    assert merged["components"]["ssl"] is False and merged["components"]["nginx"] is True
    assert current == before


def test_an_invalid_patch_changes_nothing():
    current = default_document()
    errors_of({"retention": {"daily": 3, "weekly": "four"}}, current=current)
    assert current == default_document()


def test_a_stored_document_is_completed_with_keys_added_since():
    stored = {"enabled": False, "retention": {"daily": 2}}
    upgraded = upgrade(stored)
    assert upgraded["enabled"] is False and upgraded["retention"]["daily"] == 2
    assert upgraded["retention"]["weekly"] == 4 and upgraded["schedule"] == "0 3 * * *"
    assert upgrade("garbage") == default_document()  # type: ignore[arg-type]


def test_diff_names_every_changed_leaf_with_before_and_after():
    old = default_document()
    new = validate({"schedule": "30 2 * * *", "retention": {"daily": 3}}, current=old)
    assert diff(old, new) == {"retention.daily": [7, 3], "schedule": ["0 3 * * *", "30 2 * * *"]}
    assert diff(old, old) == {}


def test_enabled_components_keep_the_document_order():
    document = validate({"components": {"uploads": False, "ssl": False}}, current=default_document())
    assert enabled_components(document) == ["databases", "applicationFiles", "configs", "nginx", "systemInfo"]


def test_the_schedule_is_read_in_the_time_zone_of_the_moment_given():
    berlin = ZoneInfo("Europe/Berlin")
    after = datetime(2026, 3, 28, 12, 0, tzinfo=berlin)
    first = next_fire_time("0 3 * * *", after)
    assert first == datetime(2026, 3, 29, 3, 0, tzinfo=berlin)  # the night clocks go forward
    assert first.utcoffset().total_seconds() == 7200
    assert next_fire_time("0 3 * * *", first) == datetime(2026, 3, 30, 3, 0, tzinfo=berlin)


def test_a_put_of_the_original_document_is_accepted_and_the_new_keys_take_their_defaults():
    original = {
        "enabled": True,
        "schedule": "0 3 * * *",
        "retention": {"daily": 7, "weekly": 4, "monthly": 12},
        "compression": True,
        "encryption": False,
        "notifications": {"email": False, "webhook": ""},
        "components": {key: True for key in DEFAULT_CONFIG["components"]},
    }
    stored = validate(original)
    assert stored["retention"]["keepManual"] is True and stored["scheduleRetries"] == {
        "count": 0,
        "delayMinutes": 10,
    }
    assert stored["notifications"]["staleAfterHours"] == 26 and stored["offsite"]["enabled"] is False


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"retention": {"yearly": -1}}, ("retention", "yearly")),
        ({"retention": {"keepWithinHours": 87601}}, ("retention", "keepWithinHours")),
        ({"scheduleRetries": {"count": 11}}, ("scheduleRetries", "count")),
        ({"scheduleRetries": {"delayMinutes": 0}}, ("scheduleRetries", "delayMinutes")),
        ({"compressionLevel": 20}, ("compressionLevel",)),
        ({"notifications": {"emailRecipients": ["not an address"]}}, ("notifications", "emailRecipients")),
        ({"notifications": {"urls": ["no scheme here"]}}, ("notifications", "urls")),
        ({"notifications": {"urls": ["ntfy://a", "ntfy://a"]}}, ("notifications", "urls")),
        ({"notifications": {"healthcheckUrl": "hc-ping.com/x"}}, ("notifications", "healthcheckUrl")),
        ({"encryptionRecipients": ["age1short"]}, ("encryptionRecipients",)),
        ({"encryptionRecipients": ["age1" + "q" * 58]}, ("encryptionRecipients",)),
        ({"offsite": {"endpoint": "https://key:secret@s3.example.com"}}, ("offsite", "endpoint")),
        ({"offsite": {"bucket": "UPPER"}}, ("offsite", "bucket")),
        ({"offsite": {"prefix": "../escape"}}, ("offsite", "prefix")),
        ({"offsite": {"storageClass": "COLD"}}, ("offsite", "storageClass")),
        ({"encryption": True}, ("encryption",)),
        ({"offsite": {"enabled": True}}, ("offsite", "bucket")),
        ({"notifications": {"email": True}}, ("notifications", "emailRecipients")),
    ],
)
def test_the_new_keys_are_validated_and_a_bad_value_names_its_field(patch, where):
    errors = errors_of(patch, current=default_document())
    for key in where:
        errors = errors[key]
    assert isinstance(errors, list) and errors


def test_encryption_with_a_recipient_is_accepted():
    recipient = str(x25519.Identity.generate().to_public())
    document = validate({"encryption": True, "encryptionRecipients": [recipient]}, current=default_document())
    assert document["encryption"] is True and document["encryptionRecipients"] == [recipient]


def test_encrypting_the_local_folders_is_refused_even_with_a_recipient():
    """The folders stay as the script wrote them; `encryptLocal: false` (the default) is accepted."""
    recipient = str(x25519.Identity.generate().to_public())
    patch = {"encryptLocal": True, "encryptionRecipients": [recipient]}
    errors = errors_of(patch, current=default_document())
    assert "not supported" in errors["encryptLocal"][0]
    assert validate({"encryptLocal": False}, current=default_document())["encryptLocal"] is False


def test_a_private_key_given_as_recipient_is_refused_without_being_echoed():
    secret = str(x25519.Identity.generate())
    errors = errors_of({"encryptionRecipients": [secret]}, current=default_document())
    message = errors["encryptionRecipients"][0]
    assert "private key" in message and secret not in message and secret[15:] not in message
