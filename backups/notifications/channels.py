"""Which channels the config document names, which of them hear an event, and the transport of each:
the webhook (signed with WEBHOOK_SECRET), e-mail (through EMAIL_URL), one Apprise URL each, and the
monitor ping. Channel URLs carry secrets: only their masked form and an HMAC leave this module."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.mail import get_connection

from backups.config.selectors import url_mask_key
from backups.notifications import messages, transports
from backups.notifications.masking import mask_url
from backups.notifications.transports import Transport, TransportError

WEBHOOK, EMAIL, APPRISE, PING = "webhook", "email", "apprise", "ping"
CHANNELS = (WEBHOOK, EMAIL, APPRISE, PING)


def target_ref(value: str) -> str:
    """Finds a channel's URL again in the config without keeping the URL (its secret) anywhere else."""
    return hmac.new(url_mask_key(), value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Channel:
    name: str
    target: str  # masked: safe to store, log and show
    ref: str
    value: str  # the URL (or the recipients): never stored with a delivery, never logged
    accepts: Callable[[messages.Message], bool]

    def transport(self) -> Transport:
        return build_transport(self.name, self.value)


def _not_on_start(message: messages.Message) -> bool:
    return message.event != messages.RUN_STARTED


def _webhook_event(message: messages.Message) -> bool:
    return message.event in messages.WEBHOOK_EVENTS


def configured(document: dict[str, Any]) -> list[Channel]:
    """Every channel the document names, in a fixed order."""
    notifications = document["notifications"]
    key = url_mask_key()
    found: list[Channel] = []
    if notifications["webhook"]:
        url = notifications["webhook"]
        found.append(Channel(WEBHOOK, mask_url(url, key), target_ref(url), url, _webhook_event))
    if notifications["email"] and notifications["emailRecipients"]:
        recipients = ", ".join(notifications["emailRecipients"])
        found.append(Channel(EMAIL, recipients, target_ref(recipients), recipients, _not_on_start))
    for url in notifications["urls"]:
        found.append(Channel(APPRISE, mask_url(url, key), target_ref(url), url, _not_on_start))
    if notifications["healthcheckUrl"]:
        url = notifications["healthcheckUrl"]
        found.append(
            Channel(
                PING,
                mask_url(url, key),
                target_ref(url),
                url,
                lambda message, url=url: transports.ping_request(url, message) is not None,
            )
        )
    return found


def for_message(message: messages.Message, document: dict[str, Any]) -> list[Channel]:
    """The channels that must hear this event. A success reaches the people's channels only with
    `onSuccess` (a nightly "all fine" soon goes unread); the monitor ping hears every start and end,
    which is how the monitor notices a night without any."""
    run = message.data.get("run") if isinstance(message.data, dict) else None
    # The monitor watches backups: a verification or restore run starting must not read as one.
    backup_run = not isinstance(run, dict) or run.get("kind", "backup") == "backup"
    chosen = []
    for channel in configured(document):
        if not channel.accepts(message) or (channel.name == PING and not backup_run):
            continue
        if (
            message.event == messages.RUN_SUCCEEDED
            and channel.name != PING
            and not document["notifications"]["onSuccess"]
        ):
            continue
        chosen.append(channel)
    return chosen


def resolve(channel: str, ref: str, document: dict[str, Any]) -> Channel:
    """The configured channel a delivery was made for, or a permanent TransportError: a URL removed
    (or changed) since the event is not called any more."""
    for candidate in configured(document):
        if candidate.name == channel and hmac.compare_digest(candidate.ref, ref):
            return candidate
    raise TransportError(f"not sent: this {channel} is no longer in the configuration", permanent=True)


def build_transport(channel: str, value: str) -> Transport:
    """The transport of one channel. What the environment lacks is a permanent failure that says which
    variable to set, never a silent skip."""
    if channel == WEBHOOK:
        if not settings.WEBHOOK_SECRET:
            raise TransportError(
                "not sent: WEBHOOK_SECRET is not set, and the webhook is only called signed", permanent=True
            )
        return transports.WebhookTransport(value, settings.WEBHOOK_SECRET)
    if channel == EMAIL:
        if not settings.EMAIL_URL:
            raise TransportError(
                "not sent: EMAIL_URL is not set (e.g. smtp://user:password@host:587?tls=1)", permanent=True
            )
        connection = get_connection(fail_silently=False, timeout=settings.EMAIL_TIMEOUT)
        return transports.EmailTransport(
            value.split(", "), connection=connection, from_email=settings.DEFAULT_FROM_EMAIL
        )
    if channel == APPRISE:
        return transports.AppriseTransport(value, key=url_mask_key())
    if channel == PING:
        return transports.PingTransport(value)
    raise TransportError(f"unknown channel {channel!r}", permanent=True)
