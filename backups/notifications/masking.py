"""Channel URLs without their secrets. Pure.

Apprise URLs put secrets anywhere: `tgram://<bot token>/<chat>`, `slack://<tokenA>/<tokenB>/...`,
`mailto://user:password@host`, `json://host/path?token=...`. No rule per service is kept here, so the
mask keeps only what is certainly no secret: the scheme, and the host when it looks like a host
name (it has a dot, or is `localhost` or an IP address; a bot token is none of these). Path, query,
user name and password are always hidden. A short fingerprint (`#3f9c`, keyed with the caller's
key) tells two masked URLs of one scheme apart, so that a client that sends a masked value back
(GET, edit, PUT) keeps the right stored URL.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence

MASK = "****"
ELLIPSIS = "…"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://(.*)$", re.DOTALL)
_HOST_NAME = re.compile(r"^(?:localhost|(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z0-9-]{1,63}|\[[0-9A-Fa-f:.]+\])$")
_PORT = re.compile(r"^[0-9]{1,5}$")
# user:password@ in any URL-looking text (an error message, a line of a script's output).
_USERINFO_PASSWORD = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@]*):[^\s@/]+@")


class UnknownMaskedValue(ValueError):
    """A masked value came back that matches no stored URL: the full URL must be sent."""

    def __init__(self, index: int) -> None:
        super().__init__(
            f"item {index} is a masked value that matches no stored URL; send the full URL instead"
        )
        self.index = index


def fingerprint(url: str, key: bytes = b"") -> str:
    return hmac.new(key, url.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:4]


def _visible_host(host_port: str) -> str | None:
    if host_port.startswith("["):
        host, bracket, port = host_port.partition("]")
        host += bracket
        if port and not port.startswith(":"):
            return None
        port = port[1:]
    else:
        host, _, port = host_port.partition(":")
    if port and not _PORT.match(port):
        return None
    if not _HOST_NAME.match(host):
        return None
    return host_port


def mask_url(url: str, key: bytes = b"") -> str:
    """`tgram://****/…#3f9c`, `mailto://****@smtp.example.com#1a2b`, `json://127.0.0.1:8080/…#77e0`."""
    match = _SCHEME.match(url.strip())
    if not match:
        return f"{MASK}#{fingerprint(url, key)}"
    scheme, rest = match.groups()
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    userinfo, at, host_port = authority.rpartition("@")
    shown = _visible_host(host_port) or MASK
    prefix = f"{MASK}@" if at and userinfo else ""
    suffix = f"/{ELLIPSIS}" if tail.strip("/") else ""
    return f"{scheme.lower()}://{prefix}{shown}{suffix}#{fingerprint(url, key)}"


def looks_masked(value: str) -> bool:
    return MASK in value or ELLIPSIS in value


def merge_masked(submitted: Sequence[str], stored: Sequence[str], *, key: bytes = b"") -> list[str]:
    """The URL list to store from a client's list: a masked value that a stored URL masks to is that
    stored URL (its secret kept), any other value is taken as given (a new URL), and a stored URL
    the client left out is dropped. Raises UnknownMaskedValue for a masked value matching nothing."""
    by_mask = {mask_url(url, key): url for url in stored}
    merged = []
    for index, value in enumerate(submitted):
        if value in by_mask:
            merged.append(by_mask[value])
        elif looks_masked(value):
            raise UnknownMaskedValue(index)
        else:
            merged.append(value)
    return merged


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with passwords of URLs replaced (`postgres://user:****@host/db`), and every given
    secret (and each long part of a given URL: tokens sit in paths) replaced by `****`."""
    masked = _USERINFO_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    parts: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        parts.add(secret)
        match = _SCHEME.match(secret)
        if match:
            # Pieces of 6 characters and more: tokens, passwords, chat ids; not "json" or "www".
            parts.update(p for p in re.split(r"[/:@?&=#,]+", match.group(2)) if len(p) >= 6)
    for part in sorted(parts, key=len, reverse=True):
        masked = masked.replace(part, MASK)
    return masked
