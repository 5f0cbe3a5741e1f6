"""age encryption (pyrage): recipients (public keys) from the config, identities (private keys) from a
file only the service can read, and streaming encryption in the standard age format, so that any copy
decrypts without this service: `age -d -i key.txt file.age > file`.

The service holds recipients only; an identity is needed only to read a copy back (download or
restore when the local folder is gone, rebuild after losing the server).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import pyrage
from pyrage import x25519

from backups.offsite.errors import IdentityError, RecipientError

_SECRET_PREFIX = "AGE-SECRET-KEY-"
_MAX_IDENTITY_FILE = 1 << 20


def recipient_problems(values: Sequence[object]) -> list[str]:
    """Why each entry of `encryptionRecipients` is unusable, in words for the admin (empty when all are
    good). A value is never echoed: a private key pasted by mistake must not end up in a 400 body."""
    problems = []
    for index, value in enumerate(values):
        where = f"encryptionRecipients[{index}]"
        if not isinstance(value, str):
            problems.append(f"{where} must be a string")
        elif value.strip().upper().startswith(_SECRET_PREFIX):
            problems.append(f"{where} is a private key (AGE-SECRET-KEY-…): give its public key (age1…), "
                            "and keep the private key off this server")
        elif not value.strip().startswith("age1"):
            problems.append(f"{where} is not an age public key (age1…)")
        else:
            try:
                x25519.Recipient.from_str(value.strip())
            except (pyrage.RecipientError, ValueError):
                problems.append(f"{where} is not a valid age public key (bad length or checksum)")
    return problems


def parse_recipients(values: Sequence[object]) -> list[x25519.Recipient]:
    """The recipients, or RecipientError naming every bad entry by position."""
    problems = recipient_problems(values)
    if problems:
        raise RecipientError("; ".join(problems))
    return [x25519.Recipient.from_str(str(value).strip()) for value in values]


def recipients_fingerprint(values: Iterable[str]) -> str:
    """A short stable name for a set of recipients, stored beside each object: an object encrypted for
    another set is uploaded again rather than reused (see upload.py)."""
    joined = "\n".join(sorted({value.strip() for value in values}))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def parse_identities(text: str) -> list[x25519.Identity]:
    """Identities from an age identity file's text (`age-keygen` output: comments and AGE-SECRET-KEY-1…
    lines). Errors say which line, never what it holds."""
    identities = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not stripped.upper().startswith(_SECRET_PREFIX):
            raise IdentityError(f"identity file line {number} is not an age private key (AGE-SECRET-KEY-1…)")
        try:
            identities.append(x25519.Identity.from_str(stripped))
        except (pyrage.IdentityError, ValueError):
            raise IdentityError(f"identity file line {number} is not a valid age private key") from None
    if not identities:
        raise IdentityError("the identity file holds no age private key")
    return identities


def load_identities(path: Path | str) -> list[x25519.Identity]:
    """Identities from the file named by OFFSITE_IDENTITY_FILE."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_IDENTITY_FILE + 1)
    except OSError as error:
        raise IdentityError(f"cannot read the identity file: {error.strerror or error}") from None
    if len(data) > _MAX_IDENTITY_FILE:
        raise IdentityError("the identity file is too large to be an age identity file")
    try:
        return parse_identities(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise IdentityError("the identity file is not text") from None


class _Guarded:
    """A reader or writer handed to pyrage that keeps the exception its callbacks raised: pyrage turns
    it into an EncryptError carrying only its text, and the caller needs the original (a Cancelled, an
    IntegrityError) back."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.failure: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            return self.inner.read(size)
        except BaseException as error:
            self.failure = error
            raise

    def write(self, data: bytes) -> int:
        try:
            written = self.inner.write(data)
        except BaseException as error:
            self.failure = error
            raise
        return len(data) if written is None else written

    def flush(self) -> None:
        flush = getattr(self.inner, "flush", None)
        if flush is not None:
            flush()


def encrypt_stream(source: BinaryIO, target: BinaryIO, recipients: Sequence[x25519.Recipient]) -> None:
    """Streams `source` into `target` as one age file (64 KiB chunks; memory stays flat). An exception
    raised by `source.read` or `target.write` comes out as itself."""
    reader, writer = _Guarded(source), _Guarded(target)
    try:
        pyrage.encrypt_io(reader, writer, list(recipients))
    except (pyrage.EncryptError, OSError) as error:
        failure = reader.failure or writer.failure
        if failure is not None:
            raise failure from None
        raise RecipientError(f"age encryption failed: {error}") from None


def decrypt_stream(source: BinaryIO, target: BinaryIO, identities: Sequence[x25519.Identity]) -> None:
    """Streams an age file from `source` into `target`; IdentityError when no identity opens it or the
    file is damaged or truncated (age authenticates every 64 KiB chunk and the end of the stream)."""
    reader, writer = _Guarded(source), _Guarded(target)
    try:
        pyrage.decrypt_io(reader, writer, list(identities))
    except (pyrage.DecryptError, OSError) as error:
        failure = reader.failure or writer.failure
        if failure is not None:
            raise failure from None
        if "No matching keys" in str(error):
            raise IdentityError("age decryption failed: no given identity opens this copy") from None
        raise IdentityError(f"age decryption failed (damaged or truncated object): {error}") from None


def encrypt_bytes(data: bytes, recipients: Sequence[x25519.Recipient]) -> bytes:
    target = io.BytesIO()
    encrypt_stream(io.BytesIO(data), target, recipients)
    return target.getvalue()


def decrypt_bytes(data: bytes, identities: Sequence[x25519.Identity]) -> bytes:
    target = io.BytesIO()
    decrypt_stream(io.BytesIO(data), target, identities)
    return target.getvalue()
