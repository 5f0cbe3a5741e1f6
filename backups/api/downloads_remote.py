"""Downloads of a backup whose folder is gone, from its off-site copy.

With the age identity (OFFSITE_IDENTITY_FILE), or for a copy stored without encryption, the answer is
the same as for a local folder: an uncompressed tar with members under `<id>/`, each file decrypted and
checked against its sha256 as it streams. Without the identity, the copy is served as the store holds
it (its encrypted objects and manifest) plus a README saying how to decrypt it with `age`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import quote

from django.http import HttpResponse
from rest_framework.request import Request

from backups.api.downloads import CHUNK, READ_FAILURES, audit_download, generator_source, streaming_response
from backups.catalogue.models import Backup
from backups.errors import Conflict, NotFound, ServiceError
from backups.offsite import remote
from backups.offsite import services as offsite
from backups.offsite.errors import IdentityError, OffsiteError
from backups.offsite.export import Member, iter_tar_chunks, plan_tar
from backups.offsite.layout import ManifestFile
from backups.offsite.store import Store

logger = logging.getLogger(__name__)


#: A copy that fails its sha256, or a store that stops answering, mid-transfer: the transfer breaks.
STREAM_FAILURES = (*READ_FAILURES, OffsiteError)


class OffsiteUnavailable(ServiceError):
    status_code = 503


def download_remote(request: Request, backup: Backup, rel_path: str | None) -> HttpResponse:
    try:
        return _download(request, backup, rel_path)
    except remote.RemoteNotFound:
        raise NotFound("The off-site copy of this backup is gone from the store.") from None
    except OffsiteError as error:
        logger.warning("off-site download of %s failed: %s", backup.id, error.message)
        raise OffsiteUnavailable(f"The off-site copy cannot be read now: {error.message}") from None


def _download(request: Request, backup: Backup, rel_path: str | None) -> HttpResponse:
    try:
        identities = offsite.identities()
    except IdentityError as error:
        raise OffsiteUnavailable(f"OFFSITE_IDENTITY_FILE cannot be used: {error.message}") from None
    client = Store(offsite.store_settings())
    try:
        manifest = remote.fetch_manifest(client, backup.id, identities)
    except IdentityError:
        if identities is not None:
            raise
        manifest = None  # encrypted, and the service holds no identity: the copy as it is stored
    if rel_path is not None:
        if manifest is None:
            raise Conflict(
                "This copy is encrypted and the service holds no age identity: download the whole "
                "backup (its encrypted objects, with a README on decrypting them with age)."
            )
        item = next((entry for entry in manifest.files if entry.path == rel_path), None)
        if item is None:
            raise NotFound("File not found in this backup.")
        return _file_response(request, backup, client, item, identities, manifest.encrypted)
    if manifest is not None:
        members = [
            Member(item.path, item.size, _opener(client, item, identities, manifest.encrypted))
            for item in manifest.files
        ]
        encrypted_export = False
    else:
        members = [Member(item.name, item.size, item.open) for item in remote.plan_export(client, backup.id)]
        encrypted_export = True
    plan = plan_tar(backup.id, members, mtime=int(backup.created_at.timestamp()))
    ended = audit_download(
        request,
        backup,
        {"kind": "tar", "source": "offsite", "encrypted": encrypted_export, "bytes": plan.content_length},
    )
    response = streaming_response(
        generator_source(iter_tar_chunks(plan, CHUNK)),
        backup.id,
        STREAM_FAILURES,
        ended,
        content_type="application/x-tar",
    )
    response["Content-Length"] = str(plan.content_length)
    response["Content-Disposition"] = f'attachment; filename="{backup.id}.tar"'
    response["Cache-Control"] = "no-store"
    response["X-Backup-Source"] = "offsite"
    response["X-Backup-Encrypted"] = "true" if encrypted_export else "false"
    return response


def _opener(
    client: Store, item: ManifestFile, identities: list | None, encrypted: bool
) -> Callable[[], BinaryIO]:
    return lambda: remote.open_remote_file(client, item, identities, encrypted=encrypted)


def _file_response(
    request: Request,
    backup: Backup,
    client: Store,
    item: ManifestFile,
    identities: list | None,
    encrypted: bool,
) -> HttpResponse:
    """One file, whole (no ranges: a decrypting stream cannot seek)."""
    opener = _opener(client, item, identities, encrypted)

    def chunks():
        # One chunk held back: the stream checks the sha256 when read to its end, and a file that fails
        # the check must not arrive whole.
        stream = opener()
        try:
            held = stream.read(CHUNK)
            while held:
                following = stream.read(CHUNK)
                yield held
                held = following
        finally:
            stream.close()

    ended = audit_download(
        request, backup, {"kind": "file", "source": "offsite", "path": item.path, "bytes": item.size}
    )
    response = streaming_response(
        generator_source(chunks()),
        f"{backup.id}/{item.path}",
        STREAM_FAILURES,
        ended,
        content_type="application/octet-stream",
    )
    response["Content-Length"] = str(item.size)
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(item.path.rsplit('/', 1)[-1])}"
    response["Accept-Ranges"] = "none"
    response["Cache-Control"] = "private, no-cache"
    response["X-Backup-Source"] = "offsite"
    return response
