"""The S3-compatible store: settings, a boto3 client that such stores accept, and calls whose errors
never carry a credential.

boto3 ≥ 1.36 adds CRC checksum headers (and expects them in answers) on every request that supports
them; many S3-compatible stores (SeaweedFS, older MinIO, B2, R2 at times) reject or mangle those, so
both settings are `when_required`. Non-AWS endpoints get path-style addressing unless told otherwise:
it is the one style every S3-compatible store answers, and virtual-host style needs a wildcard DNS
name per bucket.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.config
import botocore.exceptions

from backups.offsite.errors import StoreError, StoreRefused

ACCESS_KEY_ENV = "OFFSITE_ACCESS_KEY_ID"
SECRET_KEY_ENV = "OFFSITE_SECRET_ACCESS_KEY"

# S3 error codes that mean "this key may not do this": no retry will help.
_REFUSALS = {
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidBucketName",
    "NoSuchBucket",
    "403",
    "Forbidden",
    "QuotaExceeded",
}

# A HEAD has no body, so a missing key comes back as a bare 404.
_MISSING = {"404", "NoSuchKey", "NotFound"}

_T = TypeVar("_T")


@dataclass(frozen=True)
class StoreSettings:
    """Where the copies go. The two credentials are excluded from `repr` and masked in every error."""

    endpoint: str
    bucket: str
    prefix: str = ""
    region: str = ""
    storage_class: str = ""
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    # None: path style for any endpoint that is not AWS's own (see the module docstring).
    path_style: bool | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_attempts: int = 5

    @classmethod
    def from_config(
        cls, offsite: Mapping[str, Any], environ: Mapping[str, str], **overrides: Any
    ) -> StoreSettings:
        """From the config document's `offsite` section and the environment's two credentials."""
        path_style = offsite.get("pathStyle")
        return cls(
            endpoint=str(offsite.get("endpoint") or ""),
            bucket=str(offsite.get("bucket") or ""),
            prefix=str(offsite.get("prefix") or ""),
            region=str(offsite.get("region") or ""),
            storage_class=str(offsite.get("storageClass") or ""),
            access_key_id=environ.get(ACCESS_KEY_ENV, ""),
            secret_access_key=environ.get(SECRET_KEY_ENV, ""),
            path_style=None if path_style is None else bool(path_style),
            **overrides,
        )

    @property
    def root(self) -> str:
        """The prefix as a key fragment: "" or "some/prefix/"."""
        cleaned = "/".join(part for part in self.prefix.split("/") if part)
        return f"{cleaned}/" if cleaned else ""

    def key(self, rel: str) -> str:
        return self.root + rel

    def rel(self, key: str) -> str:
        return key[len(self.root) :] if key.startswith(self.root) else key

    @property
    def safe_endpoint(self) -> str:
        return mask_url(self.endpoint)

    def mask(self, text: str) -> str:
        """`text` with both credentials and any password in the endpoint replaced by ****."""
        for secret in (self.secret_access_key, self.access_key_id, _url_password(self.endpoint)):
            if secret and len(secret) >= 3:
                text = text.replace(secret, "****")
        return text.replace(self.endpoint, self.safe_endpoint) if self.endpoint else text


def mask_url(url: str) -> str:
    """`https://user:pass@host/` → `https://user:****@host/`; other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "****"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:****@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _url_password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def validate_settings(settings: StoreSettings) -> list[str]:
    """Problems that make every call fail, in words for the admin (empty when usable)."""
    problems = []
    if not settings.bucket:
        problems.append("offsite.bucket is empty")
    elif not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", settings.bucket):
        problems.append("offsite.bucket is not a valid bucket name (3-63 of a-z 0-9 . -)")
    if settings.endpoint:
        parts = urlsplit(settings.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append("offsite.endpoint must be an http(s) URL")
    if not settings.access_key_id or not settings.secret_access_key:
        problems.append(f"the credentials are not set ({ACCESS_KEY_ENV}, {SECRET_KEY_ENV})")
    return problems


class Store:
    """A boto3 S3 client bound to one bucket and prefix. Thread-safe (boto3 clients are); every call goes
    through `call`, which turns any failure into a masked StoreError."""

    def __init__(self, settings: StoreSettings, *, max_connections: int = 10) -> None:
        self.settings = settings
        endpoint = settings.endpoint or None
        is_aws = endpoint is None or (urlsplit(endpoint).hostname or "").endswith(".amazonaws.com")
        path_style = (not is_aws) if settings.path_style is None else settings.path_style
        config = botocore.config.Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path" if path_style else "virtual"},
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_pool_connections=max_connections,
        )
        try:
            self.client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint,
                region_name=settings.region or "us-east-1",
                aws_access_key_id=settings.access_key_id or None,
                aws_secret_access_key=settings.secret_access_key or None,
                config=config,
            )
        except (botocore.exceptions.BotoCoreError, ValueError) as error:
            text = settings.mask(f"cannot use the store: {error}")
            raise StoreError(text, code=type(error).__name__) from None

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    def call(self, operation: str, method: Callable[..., _T], /, **kwargs: Any) -> _T:
        try:
            return method(**kwargs)
        except botocore.exceptions.ClientError as error:
            raise self._client_error(operation, error, kwargs.get("Key", "")) from None
        except (botocore.exceptions.BotoCoreError, OSError) as error:
            where = self.settings.safe_endpoint or "AWS S3"
            text = self.settings.mask(f"{operation} failed: cannot reach the store at {where}: {error}")
            raise StoreError(text, code=type(error).__name__, operation=operation) from None

    def _client_error(self, operation: str, error: botocore.exceptions.ClientError, key: str) -> StoreError:
        details = error.response.get("Error", {}) if isinstance(error.response, dict) else {}
        code = str(details.get("Code") or "")
        message = str(details.get("Message") or "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        target = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        text = f"{operation} {target} refused by the store: {code or status}"
        if message and message != code:
            text += f" ({message})"
        text = self.settings.mask(text)
        refused = code in _REFUSALS or status == 403
        kind = StoreRefused if refused else StoreError
        return kind(text, code=code or str(status or ""), operation=operation)

    # --- the few calls the rest uses ----------------------------------------------------------------

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's head, or None when it does not exist (only a 404 means that: a 403 is an error)."""
        try:
            return self.call("HeadObject", self.client.head_object, Bucket=self.bucket, Key=key)
        except StoreError as error:
            if error.code in _MISSING:
                return None
            raise

    def put(
        self,
        key: str,
        body: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        storage_class: str = "",
        content_type: str = "application/octet-stream",
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"Metadata": dict(metadata or {}), "ContentType": content_type}
        if storage_class:
            extra["StorageClass"] = storage_class
        return self.call("PutObject", self.client.put_object, Bucket=self.bucket, Key=key, Body=body, **extra)

    def get(self, key: str) -> Any:
        """The object's streaming body (botocore StreamingBody: `read(n)`, `close()`)."""
        return self.call("GetObject", self.client.get_object, Bucket=self.bucket, Key=key)["Body"]

    def get_bytes(self, key: str, limit: int) -> bytes:
        body = self.get(key)
        try:
            data = body.read(limit + 1)
        except (botocore.exceptions.BotoCoreError, OSError) as error:
            raise StoreError(
                self.settings.mask(f"GetObject {key} failed: {error}"),
                code=type(error).__name__,
                operation="GetObject",
            ) from None
        finally:
            body.close()
        if len(data) > limit:
            raise StoreError(
                f"GetObject {key}: larger than {limit} bytes", code="TooLarge", operation="GetObject"
            )
        return data

    def list(self, rel_prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under `<prefix>/<rel_prefix>`, paginated ({"Key", "Size", "LastModified", ...})."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.settings.key(rel_prefix)}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("ListObjectsV2", self.client.list_objects_v2, **kwargs)
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                return

    def delete_many(self, keys: list[str]) -> int:
        """Deletes keys 1000 at a time (the S3 batch limit); returns how many the store confirmed."""
        deleted = 0
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            answer = self.call(
                "DeleteObjects",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    self.settings.mask(
                        f"DeleteObjects refused {len(errors)} of {len(batch)} keys: "
                        f"{first.get('Code')} ({first.get('Key')})"
                    ),
                    code=str(first.get("Code")),
                    operation="DeleteObjects",
                )
            deleted += len(batch)
        return deleted

    def delete(self, key: str) -> None:
        self.call("DeleteObject", self.client.delete_object, Bucket=self.bucket, Key=key)

    def multipart_uploads(self, rel_prefix: str = "") -> Iterator[dict[str, Any]]:
        """Unfinished multipart uploads under the prefix ({"Key", "UploadId", "Initiated"})."""
        key_marker = upload_marker = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.settings.key(rel_prefix)}
            if key_marker:
                kwargs["KeyMarker"] = key_marker
            if upload_marker:
                kwargs["UploadIdMarker"] = upload_marker
            page = self.call("ListMultipartUploads", self.client.list_multipart_uploads, **kwargs)
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            key_marker, upload_marker = page.get("NextKeyMarker"), page.get("NextUploadIdMarker")
            if not key_marker:
                return

    def parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]]:
        """The parts the store holds for an upload, by number ({"Size", "ETag"})."""
        found: dict[int, dict[str, Any]] = {}
        marker = 0
        while True:
            page = self.call(
                "ListParts",
                self.client.list_parts,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumberMarker=marker,
            )
            for part in page.get("Parts", []):
                found[int(part["PartNumber"])] = part
            if not page.get("IsTruncated"):
                return found
            next_marker = int(page.get("NextPartNumberMarker") or 0)
            if next_marker <= marker:
                return found
            marker = next_marker

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.call(
                "AbortMultipartUpload",
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except StoreError as error:
            if error.code not in _MISSING and error.code != "NoSuchUpload":
                raise


def initiated_before(upload: Mapping[str, Any], moment: datetime) -> bool:
    initiated = upload.get("Initiated")
    return isinstance(initiated, datetime) and initiated < moment
