"""JWT verification shared by the REST API and the WebSocket consumer.

Tokens come from the platform's Auth Service: no database user, no `jti`, no token type; the user id
is in `sub`, `userId` or `id` and the role in `JWT_ROLE_CLAIM`, a string or a list of strings.
simplejwt verifies signature, `exp`, `nbf`, and `iss`/`aud` when configured, with only the configured
algorithm allowed (so `alg: none` and HS/RS confusion are refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import authentication
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTStatelessUserAuthentication
from rest_framework_simplejwt.backends import TokenBackend
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError
from rest_framework_simplejwt.tokens import UntypedToken

USER_ID_FALLBACK_CLAIMS = ("sub", "userId", "id")


class TokenRefused(Exception):
    """The token is missing, malformed, badly signed, expired or names no user."""


@dataclass
class PlatformUser:
    """The caller a valid token describes. Quacks enough like a Django user for DRF and the admin."""

    id: str
    roles: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict, repr=False)

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    @property
    def pk(self) -> str:
        return self.id

    @property
    def username(self) -> str:
        return self.id

    @property
    def is_super_admin(self) -> bool:
        return settings.SUPER_ADMIN_ROLE in self.roles

    def get_username(self) -> str:
        return self.id

    def __str__(self) -> str:
        return self.id


_backends: dict[tuple, TokenBackend] = {}


class PlatformToken(UntypedToken):
    """simplejwt's untyped token, verified by a backend built from the current SIMPLE_JWT settings
    (simplejwt's own is built once at import; ours follows the settings, e.g. in tests)."""

    def get_token_backend(self) -> TokenBackend:
        conf = settings.SIMPLE_JWT
        key = (
            conf["ALGORITHM"],
            conf["SIGNING_KEY"],
            conf.get("VERIFYING_KEY"),
            conf.get("AUDIENCE"),
            conf.get("ISSUER"),
            conf.get("JWK_URL"),
            conf.get("LEEWAY", 0),
        )
        backend = _backends.get(key)
        if backend is None:
            backend = _backends[key] = TokenBackend(*key)
        return backend


def _user_id(claims: dict[str, Any]) -> str | None:
    for claim in (settings.JWT_USER_ID_CLAIM, *USER_ID_FALLBACK_CLAIMS):
        value = claims.get(claim)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value)[:200]
    return None


def _roles(claims: dict[str, Any]) -> tuple[str, ...]:
    value = claims.get(settings.JWT_ROLE_CLAIM)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


TIME_CLAIMS = ("exp", "nbf", "iat")
# datetime's range ends in year 9999: a time claim beyond it cannot be a real moment.
_LAST_TIMESTAMP = 253402300799


def _valid_time(value: Any) -> bool:
    """A NumericDate (RFC 7519): a JSON number, not a string or a boolean, within datetime's range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value == value and 0 <= value <= _LAST_TIMESTAMP  # value == value: not NaN


def verify_token(raw: str | bytes) -> PlatformUser:
    """The user of a valid token, or TokenRefused with a short reason (never the token itself)."""
    if isinstance(raw, str):
        raw = raw.encode()
    if not raw or len(raw) > 16384:
        raise TokenRefused("Token is invalid")
    try:
        token = PlatformToken(raw)
    except TokenError as error:
        raise TokenRefused(str(error.args[0]) if error.args else "Token is invalid") from None
    except (TypeError, ValueError, OverflowError, OSError):
        # A correctly signed token whose `exp` is a numeric string or 1e30 gets past PyJWT and then
        # breaks simplejwt's datetime conversion. Whatever a signer put in a claim is a refusal here,
        # never an error: every caller (REST, the rate limiter, the WebSocket) relies on that.
        raise TokenRefused("Token has an invalid time claim") from None
    claims = dict(token.payload)
    for claim in TIME_CLAIMS:
        if claim in claims and not _valid_time(claims[claim]):
            raise TokenRefused("Token has an invalid time claim")
    user_id = _user_id(claims)
    if user_id is None:
        raise TokenRefused("Token contained no recognizable user identification")
    return PlatformUser(id=user_id, roles=_roles(claims), claims=claims)


def verify_token_of_request(request: Any, raw: str | bytes) -> PlatformUser:
    """`verify_token`, once per request and token: the rate limiter and the API's authentication both
    verify the caller's token, and the second gets the first's answer (the same token of the same
    request, so the same answer)."""
    if isinstance(raw, str):
        raw = raw.encode()
    answers: dict[bytes, PlatformUser | TokenRefused] = request.__dict__.setdefault("_verified_tokens", {})
    answer = answers.get(raw)
    if answer is None:
        try:
            answer = verify_token(raw)
        except TokenRefused as refused:
            answer = refused
        answers[raw] = answer
    if isinstance(answer, TokenRefused):
        raise TokenRefused(*answer.args)
    return answer


def user_from_authorization(header: str | None, request: Any = None) -> PlatformUser | None:
    """`Authorization: Bearer <jwt>` -> its user; None when absent; TokenRefused when invalid. With
    `request`, the answer is kept for the rest of that request."""
    if not header:
        return None
    scheme, _, raw = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    if request is not None:
        return verify_token_of_request(request, raw.strip())
    return verify_token(raw.strip())


def issue_token(user_id: str, *, ttl_seconds: int = 3600, role: str | None = None) -> str:
    """A token signed like the Auth Service's (HS* only: the service holds no private key)."""
    import jwt

    if not settings.JWT_ALGORITHM.startswith("HS"):
        raise ValueError("issuing tokens needs an HS* JWT_ALGORITHM; with RS/ES the Auth Service issues them")
    now = timezone.now()
    payload: dict[str, Any] = {
        "sub": user_id,
        "userId": user_id,
        settings.JWT_ROLE_CLAIM: role or settings.SUPER_ADMIN_ROLE,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl_seconds)).timestamp()),
    }
    if settings.JWT_ISSUER:
        payload["iss"] = settings.JWT_ISSUER
    if settings.JWT_AUDIENCE:
        payload["aud"] = settings.JWT_AUDIENCE
    return jwt.encode(payload, settings.JWT_SECRET, algorithm=settings.JWT_ALGORITHM)


class PlatformJWTAuthentication(JWTStatelessUserAuthentication):
    """DRF authentication: Bearer JWT -> PlatformUser, no database row."""

    www_authenticate_realm = "backup-service"

    def authenticate(self, request: Request):
        header = self.get_header(request)
        if header is None:
            return None
        raw = self.get_raw_token(header)
        if raw is None:
            return None
        try:
            user = verify_token_of_request(request._request, raw)
        except TokenRefused as error:
            raise InvalidToken({"detail": f"Invalid token: {error}", "code": "token_not_valid"}) from None
        return user, user.claims


class SuperuserSessionAuthentication(authentication.SessionAuthentication):
    """Django superusers logged in to the admin site may use the API from the browser (CSRF on)."""

    def authenticate(self, request: Request):
        result = super().authenticate(request)
        if result is None or not result[0].is_superuser:
            return None
        return result


def actor_of(user: Any) -> str:
    """How the audit trail and `triggered_by` name a caller."""
    if user is None or not getattr(user, "is_authenticated", False):
        return ""
    if isinstance(user, PlatformUser):
        return user.id
    return user.get_username()
