"""Short-lived download links, for browsers that cannot send an Authorization header.

A link is a bearer secret: whoever holds the URL may download what it names (one backup, or one file
of it) until it expires, DOWNLOAD_LINK_TTL seconds after it was made, as the user who asked for it. So
it is only handed to that user, never logged by the service, and its payload is opaque: encrypted and
authenticated (Fernet: AES-128-CBC and HMAC-SHA256, with a key derived from SECRET_KEY), so the URL
reveals neither the user id nor anything else, and cannot be altered. Rotating SECRET_KEY revokes every
link at once."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlencode

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.urls import reverse
from django.utils.crypto import salted_hmac
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from backups.auth import PlatformUser

SALT = "backups.download-link"
_MAX_TOKEN = 4096


def _fernet() -> Fernet:
    key = salted_hmac(SALT, "fernet key", secret=settings.SECRET_KEY, algorithm="sha256").digest()
    return Fernet(base64.urlsafe_b64encode(key))


def make_link_token(
    *, backup_id: str, user_id: str, file: str | None = None, now: float | None = None
) -> str:
    payload = json.dumps({"b": backup_id, "u": user_id, "f": file or ""}, separators=(",", ":")).encode()
    issued = int(time.time() if now is None else now)
    return _fernet().encrypt_at_time(payload, issued).decode("ascii")


def signed_download_url(
    backup_id: str, user: Any, file: str | None = None, *, now: float | None = None
) -> str:
    """The path a browser follows to download this backup (or one file of it) without a header."""
    from backups.auth import actor_of

    query = {"sig": make_link_token(backup_id=backup_id, user_id=actor_of(user), file=file, now=now)}
    if file:
        query["file"] = file
    return f"{reverse('backup-download', kwargs={'pk': backup_id})}?{urlencode(query)}"


def read_link_token(token: str, *, backup_id: str, file: str | None) -> str:
    """The user id the link was made for, or AuthenticationFailed."""
    fernet = _fernet()
    try:
        raw = token.encode("ascii")
        if len(raw) > _MAX_TOKEN:
            raise ValueError("too long")
        issued = fernet.extract_timestamp(raw)  # verifies the HMAC first
        if time.time() - issued > settings.DOWNLOAD_LINK_TTL:
            raise AuthenticationFailed("This download link has expired.")
        data = json.loads(fernet.decrypt(raw))
    except AuthenticationFailed:
        raise
    except (InvalidToken, ValueError, TypeError):
        raise AuthenticationFailed("This download link is not valid.") from None
    if not isinstance(data, dict):
        raise AuthenticationFailed("This download link is not valid.")
    if data.get("b") != backup_id or (data.get("f") or "") != (file or ""):
        raise AuthenticationFailed("This download link is for another backup.")
    return str(data.get("u", ""))


class SignedLinkAuthentication(BaseAuthentication):
    """Authenticates a download request carrying `?sig=`; the view checks the backup id again."""

    def authenticate(self, request):
        token = request.query_params.get("sig")
        if not token:
            return None
        view_kwargs = request.parser_context.get("kwargs", {}) if request.parser_context else {}
        backup_id = view_kwargs.get("pk", "")
        if backup_id == "latest":
            raise AuthenticationFailed("Signed links name a backup by its real id.")
        user_id = read_link_token(token, backup_id=backup_id, file=request.query_params.get("file"))
        return PlatformUser(id=user_id, roles=(settings.SUPER_ADMIN_ROLE,)), {"signed_link": True}

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="backup-service"'
