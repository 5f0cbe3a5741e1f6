"""Short-lived signed download links, for browsers that cannot send an Authorization header.

A link is bound to one backup id (and one file, when given) and to the user who asked for it; it
expires after DOWNLOAD_LINK_TTL seconds. Signed with SECRET_KEY (Django's signing, salted)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.urls import reverse
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from backups.auth import PlatformUser

SALT = "backups.download-link"


def make_link_token(*, backup_id: str, user_id: str, file: str | None = None) -> str:
    return signing.dumps({"b": backup_id, "u": user_id, "f": file or ""}, salt=SALT, compress=True)


def signed_download_url(backup_id: str, user: Any, file: str | None = None) -> str:
    """The path a browser follows to download this backup (or one file of it) without a header."""
    from backups.auth import actor_of

    query = {"sig": make_link_token(backup_id=backup_id, user_id=actor_of(user), file=file)}
    if file:
        query["file"] = file
    return f"{reverse('backup-download', kwargs={'pk': backup_id})}?{urlencode(query)}"


def read_link_token(token: str, *, backup_id: str, file: str | None) -> str:
    """The user id the link was made for, or AuthenticationFailed."""
    try:
        data: dict[str, Any] = signing.loads(token, salt=SALT, max_age=settings.DOWNLOAD_LINK_TTL)
    except signing.SignatureExpired:
        raise AuthenticationFailed("This download link has expired.") from None
    except signing.BadSignature:
        raise AuthenticationFailed("This download link is not valid.") from None
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
