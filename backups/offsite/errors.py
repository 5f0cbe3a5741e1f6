"""What can go wrong with an off-site copy, as exceptions whose text is safe to show and to log.

Every message is built here or masked by the store (credentials never appear); the cause of a store
error is dropped (`raise ... from None`) so that a traceback cannot carry a request's signed headers.
"""

from __future__ import annotations


class OffsiteError(Exception):
    """Any failure of an off-site operation. `str(error)` is safe to record as the off-site `failed`
    reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RecipientError(OffsiteError):
    """An `encryptionRecipients` entry is not an age public key, or encryption was asked without one."""


class IdentityError(OffsiteError):
    """The age identity (private key) is missing, unreadable, or does not decrypt this copy."""


class StoreError(OffsiteError):
    """The object store answered with an error or could not be reached. `code` is the S3 error code
    (`AccessDenied`, `NoSuchBucket`, ...) or the connection failure's class name; `operation` the S3
    call."""

    def __init__(self, message: str, *, code: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.operation = operation


class StoreRefused(StoreError):
    """The store refused the credentials or the operation (a read-only key, a wrong secret, a bucket
    policy): retrying will not help until someone changes the store or the credentials."""


class IntegrityError(OffsiteError):
    """Content does not match what it claims: a local file changed while it was uploaded, a remote
    object does not hash to its name, a manifest is malformed."""


class Cancelled(OffsiteError):
    """`should_stop()` answered true. What was uploaded stays in the store and in the state folder, so
    the next attempt resumes from there."""
