"""One transport per channel, each with `notify(message)`: a delivery result, or a TransportError that
says whether trying again can help (healthchecks' `hc/api/transports.py` shape).

`deliver(transport, message)` is the call for the worker: it times the attempt and turns a
TransportError into a failed DeliveryResult, so every attempt can be recorded the same way.

No Django here except the e-mail transport, which builds a Django e-mail and sends it through the
mail connection it is given (the service's configured backend).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import smtplib
import ssl
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from base64 import b64decode, b64encode
from binascii import Error as Base64Error
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from backups.notifications.backoff import parse_retry_after
from backups.notifications.masking import mask_text, mask_url
from backups.notifications.messages import (
    FAILURE,
    RUN_FAILED,
    RUN_STARTED,
    RUN_SUCCEEDED,
    Message,
)

DEFAULT_TIMEOUT = 10.0
USER_AGENT = "backup-service"
RESPONSE_SNIPPET = 300
PING_BODY_MAX = 100_000  # healthchecks keeps the first 100 kB of a ping's body


class TransportError(Exception):
    def __init__(
        self,
        detail: str,
        *,
        permanent: bool,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.permanent = permanent
        self.status_code = status_code
        self.retry_after = retry_after


@dataclass(frozen=True)
class DeliveryResult:
    channel: str
    target: str  # masked: safe to store and show
    ok: bool
    status_code: int | None = None
    detail: str = ""
    latency_ms: int = 0
    permanent: bool = False  # for a failure: trying again cannot help
    retry_after: float | None = None  # for a failure: seconds the receiver asked us to wait

    @property
    def retryable(self) -> bool:
        return not self.ok and not self.permanent


class Transport(ABC):
    channel: ClassVar[str]
    target: str

    def accepts(self, message: Message) -> bool:
        """Whether this channel is told of this event at all (only the ping hears run starts)."""
        return message.event != RUN_STARTED

    @abstractmethod
    def notify(self, message: Message) -> DeliveryResult:
        """Deliver once: a result with ok=True, or TransportError."""

    def _ok(self, status_code: int | None = None, detail: str = "") -> DeliveryResult:
        return DeliveryResult(
            channel=self.channel, target=self.target, ok=True, status_code=status_code, detail=detail
        )


def deliver(
    transport: Transport, message: Message, *, clock: Callable[[], float] = time.monotonic
) -> DeliveryResult:
    started = clock()
    try:
        result = transport.notify(message)
    except TransportError as error:
        result = DeliveryResult(
            channel=transport.channel,
            target=transport.target,
            ok=False,
            status_code=error.status_code,
            detail=error.detail,
            permanent=error.permanent,
            retry_after=error.retry_after,
        )
    return replace(result, latency_ms=max(0, round((clock() - started) * 1000)))


# --- HTTP ----------------------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A receiver that moved must be reconfigured: following a redirect would re-send a signed body
    # (and for POST, urllib would turn it into a GET) to wherever the Location points.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _snippet(raw: bytes) -> str:
    text = raw[:RESPONSE_SNIPPET].decode("utf-8", "replace").strip()
    return " ".join(text.split())


def _http(
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: Mapping[str, str],
    timeout: float,
    secrets: Sequence[str],
) -> tuple[int, str]:
    """(status, response snippet) for a 2xx; TransportError for everything else, classified:
    5xx, 408, 429 and network errors can be retried, other answers cannot."""
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        # urllib would also open file:// and ftp:// URLs, and put what it read into the detail.
        raise TransportError("only http and https URLs are called", permanent=True)
    try:
        request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
    except ValueError as error:
        raise TransportError(mask_text(f"not a valid URL: {error}", secrets), permanent=True) from None
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, _snippet(response.read(RESPONSE_SNIPPET))
    except urllib.error.HTTPError as error:
        status = error.code
        retry_after = parse_retry_after(error.headers.get("Retry-After"), now=datetime.now(UTC))
        snippet = ""
        with contextlib.suppress(OSError, http.client.HTTPException):
            snippet = _snippet(error.read(RESPONSE_SNIPPET))
        detail = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        if 300 <= status < 400:
            location = error.headers.get("Location", "")
            detail = f"HTTP {status}: redirects are not followed (Location: {location})"
            raise TransportError(mask_text(detail, secrets), permanent=True, status_code=status) from None
        retryable = status >= 500 or status in (408, 429)
        raise TransportError(
            mask_text(detail, secrets),
            permanent=not retryable,
            status_code=status,
            retry_after=retry_after if retryable else None,
        ) from None
    except TimeoutError:
        raise TransportError(f"timed out after {timeout:g} s", permanent=False) from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            raise TransportError(f"timed out after {timeout:g} s", permanent=False) from None
        detail = f"TLS error: {reason}" if isinstance(reason, ssl.SSLError) else f"network error: {reason}"
        raise TransportError(mask_text(detail, secrets), permanent=False) from None
    except (OSError, http.client.HTTPException) as error:
        detail = f"network error: {type(error).__name__}: {error}"
        raise TransportError(mask_text(detail, secrets), permanent=False) from None


# --- webhook (Standard Webhooks) -----------------------------------------------------------------


def webhook_key(secret: str | bytes) -> bytes:
    """The HMAC key of a `WEBHOOK_SECRET`.

    `whsec_<base64>` (the Standard Webhooks form, what receivers' libraries take) is decoded. Any
    other string is used as it is, its UTF-8 bytes being the key: the receiver then verifies with
    `whsec_` + base64 of those bytes (`standard_secret`). The `standardwebhooks` package would instead
    base64-decode a raw string: most fail, and the others, their characters outside the alphabet
    dropped, become a key no receiver would guess."""
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith("whsec_"):
        encoded = secret[len("whsec_") :]
        try:
            key = b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (Base64Error, ValueError):
            raise ValueError("WEBHOOK_SECRET starts with whsec_ but the rest is not base64") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise ValueError("WEBHOOK_SECRET is empty")
    return key


def standard_secret(secret: str | bytes) -> str:
    """The `whsec_...` form of a secret, for the receiver's configuration."""
    return "whsec_" + b64encode(webhook_key(secret)).decode("ascii")


def webhook_body(message: Message) -> str:
    return json.dumps(message.payload(), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


class WebhookTransport(Transport):
    """A JSON POST signed per the Standard Webhooks spec: `webhook-id` (the message's id, the same on
    every retry so the receiver can drop duplicates), `webhook-timestamp` (this attempt's, as the
    spec's receivers refuse one older than 5 minutes) and `webhook-signature: v1,<base64>` over
    `id.timestamp.body`."""

    channel = "webhook"

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        from standardwebhooks import Webhook

        self.url = url
        self.target = mask_url(url)
        self.timeout = timeout
        self._now = now
        self._signer = Webhook(webhook_key(secret))

    def notify(self, message: Message) -> DeliveryResult:
        body = webhook_body(message)
        # The library reads the datetime as UTC whatever its zone: hand it UTC.
        sent_at = self._now().astimezone(UTC)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": message.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(message.id, sent_at, body),
        }
        status, snippet = _http(
            "POST",
            self.url,
            body=body.encode("utf-8"),
            headers=headers,
            timeout=self.timeout,
            secrets=[self.url],
        )
        return self._ok(status, f"HTTP {status}")


# --- monitor ping (healthchecks.io, Uptime Kuma) -------------------------------------------------


def _is_uptime_kuma(url: str) -> bool:
    return "/api/push/" in urlsplit(url).path


def ping_request(url: str, message: Message) -> tuple[str, str, bytes | None] | None:
    """(method, URL, body) of the ping for this event, or None when the monitor has no such signal.

    healthchecks.io: `<url>/start`, `<url>`, `<url>/fail` (POST: the body lands in the check's log),
    with `rid` set to the run's id so the monitor pairs a start with its end and measures the run.
    Uptime Kuma push URLs (`/api/push/<token>`): `?status=up|down&msg=...`; Kuma has no start."""
    run = message.data.get("run", {}) if isinstance(message.data, dict) else {}
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if _is_uptime_kuma(url):
        if message.event not in (RUN_SUCCEEDED, RUN_FAILED):
            return None
        status = "up" if message.event == RUN_SUCCEEDED else "down"
        query = [(k, v) for k, v in query if k not in ("status", "msg")]
        query += [("status", status), ("msg", message.title[:200])]
        return "GET", urlunsplit(parts._replace(query=urlencode(query))), None
    suffix = {RUN_STARTED: "/start", RUN_SUCCEEDED: "", RUN_FAILED: "/fail"}.get(message.event)
    if suffix is None:
        return None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        query = [(k, v) for k, v in query if k != "rid"] + [("rid", str(uuid.UUID(str(run.get("id")))))]
    path = parts.path.rstrip("/") + suffix
    body = message.text.encode("utf-8")[:PING_BODY_MAX]
    return "POST", urlunsplit(parts._replace(path=path, query=urlencode(query))), body


class PingTransport(Transport):
    channel = "ping"

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self.target = mask_url(url)
        self.timeout = timeout

    def accepts(self, message: Message) -> bool:
        return ping_request(self.url, message) is not None

    def notify(self, message: Message) -> DeliveryResult:
        request = ping_request(self.url, message)
        if request is None:
            raise TransportError(f"the monitor has no signal for {message.event}", permanent=True)
        method, url, body = request
        headers = {"User-Agent": USER_AGENT, "Content-Type": "text/plain; charset=utf-8"}
        status, snippet = _http(
            method, url, body=body, headers=headers, timeout=self.timeout, secrets=[self.url]
        )
        return self._ok(status, f"HTTP {status}" + (f": {snippet}" if snippet else ""))


# --- e-mail --------------------------------------------------------------------------------------


def _smtp_code_error(code: int, text: str, what: str) -> TransportError:
    # 4xx: the server asks to try later (greylisting, full mailbox); 5xx: it will not take it.
    return TransportError(f"{what}: {code} {text}".strip(), permanent=not 400 <= code < 500, status_code=code)


def _smtp_text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


class EmailTransport(Transport):
    """Plain text and HTML in one message (multipart/alternative) to every recipient, through the
    Django mail connection given (an SMTP backend built from `EMAIL_URL`/`EMAIL_*`)."""

    channel = "email"

    def __init__(self, recipients: Sequence[str], *, connection: Any, from_email: str | None = None) -> None:
        self.recipients = list(recipients)
        self.target = ", ".join(self.recipients)
        self.connection = connection
        self.from_email = from_email

    def notify(self, message: Message) -> DeliveryResult:
        from django.core.mail import EmailMultiAlternatives

        if not self.recipients:
            raise TransportError("no recipients configured", permanent=True)
        email = EmailMultiAlternatives(
            subject=message.title,
            body=message.text,
            from_email=self.from_email,
            to=self.recipients,
            connection=self.connection,
            headers={"X-Backup-Event": message.event, "X-Backup-Message-Id": message.id},
        )
        email.attach_alternative(message.html, "text/html")
        try:
            sent = email.send(fail_silently=False)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            detail = "; ".join(
                f"{rcpt}: {code} {_smtp_text(text)}" for rcpt, (code, text) in error.recipients.items()
            )
            permanent = not all(400 <= code < 500 for code in codes)
            raise TransportError(f"recipients refused: {detail}", permanent=permanent) from None
        except smtplib.SMTPServerDisconnected as error:
            raise TransportError(f"SMTP server disconnected: {error}", permanent=False) from None
        except smtplib.SMTPResponseException as error:  # sender refused, data refused, auth, connect
            raise _smtp_code_error(error.smtp_code, _smtp_text(error.smtp_error), "SMTP error") from None
        except smtplib.SMTPNotSupportedError as error:
            raise TransportError(f"SMTP server lacks a needed extension: {error}", permanent=True) from None
        except TimeoutError:
            raise TransportError("SMTP server timed out", permanent=False) from None
        except (OSError, smtplib.SMTPException) as error:
            raise TransportError(f"SMTP error: {type(error).__name__}: {error}", permanent=False) from None
        if sent != 1:
            raise TransportError("the mail backend sent nothing", permanent=False)
        return self._ok(detail=f"sent to {len(self.recipients)} recipient(s)")


# --- Apprise (Slack, Telegram, Discord, ntfy, Matrix, Gotify, json:// ...) -----------------------

_HTTP_STATUS_IN_LOG = re.compile(r"error=(\d{3})\b")


class AppriseTransport(Transport):
    """One Apprise URL: one transport, so each URL's outcome is known and retried on its own."""

    channel = "apprise"

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, key: bytes = b"") -> None:
        self.url = url
        self.target = mask_url(url, key)
        self.timeout = timeout

    def notify(self, message: Message) -> DeliveryResult:
        import apprise  # ~150 plugins load on import: only where a URL is configured

        notifier = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
        if not notifier.add(self.url):
            raise TransportError(f"not a URL Apprise knows: {self.target}", permanent=True)
        notify_type = {"info": "info", "success": "success", "warning": "warning", FAILURE: "failure"}.get(
            message.severity, "info"
        )
        result = notifier.notify(
            body=message.text,
            title=message.title,
            notify_type=notify_type,
            body_format=apprise.NotifyFormat.TEXT,
            timeout=self.timeout,
        )
        if result:
            return self._ok(detail="sent")
        logs = [entry.message for entry in result.logs() if entry.level in ("WARNING", "ERROR")]
        detail = mask_text(" / ".join(logs[-3:]) or "Apprise reported a failure", [self.url])
        if result.status == apprise.AppriseResultStatus.TIMEOUT:
            raise TransportError(f"timed out after {self.timeout:g} s", permanent=False)
        # Apprise plugins log the receiver's HTTP status as `error=NNN`: a 4xx other than 408/429 is
        # a wrong token or chat and will not heal by itself; anything else may.
        codes = [int(code) for line in logs for code in _HTTP_STATUS_IN_LOG.findall(line)]
        status = codes[-1] if codes else None
        permanent = status is not None and 400 <= status < 500 and status not in (408, 429)
        raise TransportError(detail, permanent=permanent, status_code=status)
