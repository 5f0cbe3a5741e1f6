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
from typing import Any, BinaryIO

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
            problems.append(
                f"{where} is a private key (AGE-SECRET-KEY-…): give its public key (age1…), "
                "and keep the private key off this server"
            )
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


_BUFFER = 1 << 20


class _GuardedReader(io.RawIOBase):
    """The raw side of the buffered reader handed to pyrage. pyrage reads 8 KiB at a time; behind a
    1 MiB BufferedReader a deep Python reader (botocore's StreamingBody, the hashing readers) runs once
    per MiB instead of 128 times. And pyrage turns an exception raised by a callback into an EncryptError
    carrying only its text: the original (a Cancelled, an IntegrityError) is kept here for the caller."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.failure: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.inner.read(len(buffer))
        except BaseException as error:
            self.failure = error
            raise
        count = len(data or b"")
        buffer[:count] = data or b""
        return count


class _GuardedWriter(io.RawIOBase):
    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.failure: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            self.inner.write(bytes(data))
        except BaseException as error:
            self.failure = error
            raise
        return len(data)


def _run(operation: Any, source: BinaryIO, target: BinaryIO, keys: list[Any], translate: Any) -> None:
    """pyrage's streaming call through 1 MiB buffers on both sides. A callback's own exception comes out
    as itself; pyrage's own errors go through `translate`."""
    raw_reader, raw_writer = _GuardedReader(source), _GuardedWriter(target)
    reader = io.BufferedReader(raw_reader, _BUFFER)
    writer = io.BufferedWriter(raw_writer, _BUFFER)
    try:
        operation(reader, writer, keys)
        writer.flush()
    except BaseException as error:
        failure = raw_reader.failure or raw_writer.failure
        if failure is not None:
            raise failure from None
        if isinstance(error, pyrage.EncryptError | pyrage.DecryptError | OSError):
            raise translate(error) from None
        raise


def encrypt_stream(source: BinaryIO, target: BinaryIO, recipients: Sequence[x25519.Recipient]) -> None:
    """Streams `source` into `target` as one age file (memory stays flat: 1 MiB buffers). An exception
    raised by `source.read` or `target.write` comes out as itself."""
    _run(
        pyrage.encrypt_io,
        source,
        target,
        list(recipients),
        lambda error: RecipientError(f"age encryption failed: {error}"),
    )


def decrypt_stream(source: BinaryIO, target: BinaryIO, identities: Sequence[x25519.Identity]) -> None:
    """Streams an age file from `source` into `target`; IdentityError when no identity opens it or the
    file is damaged or truncated (age authenticates every 64 KiB chunk and the end of the stream)."""

    def translate(error: BaseException) -> IdentityError:
        if "No matching keys" in str(error):
            return IdentityError("age decryption failed: no given identity opens this copy")
        return IdentityError(f"age decryption failed (damaged or truncated object): {error}")

    _run(pyrage.decrypt_io, source, target, list(identities), translate)


def encrypt_bytes(data: bytes, recipients: Sequence[x25519.Recipient]) -> bytes:
    target = io.BytesIO()
    encrypt_stream(io.BytesIO(data), target, recipients)
    return target.getvalue()


def decrypt_bytes(data: bytes, identities: Sequence[x25519.Identity]) -> bytes:
    target = io.BytesIO()
    decrypt_stream(io.BytesIO(data), target, identities)
    return target.getvalue()
