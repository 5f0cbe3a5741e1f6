"""Off-site copies: age-encrypted, content-addressed, incremental copies of backups in any
S3-compatible object store. Pure: no Django; the caller supplies listings, openers, settings and
callbacks.

- store.py    StoreSettings, Store (boto3 with checksums `when_required`), masked errors
- crypto.py   recipients and identities (age, via pyrage), streaming encryption
- layout.py   key names in the bucket, the manifest document, the README for humans
- upload.py   upload_backup(): incremental, multipart, bounded memory, resumable
- remote.py   reading copies back, delete_backup(), garbage_collect(), service documents, rebuild()
"""

from backups.offsite.crypto import (
    load_identities,
    parse_identities,
    parse_recipients,
    recipient_problems,
)
from backups.offsite.errors import (
    Cancelled,
    IdentityError,
    IntegrityError,
    OffsiteError,
    RecipientError,
    StoreError,
    StoreRefused,
)
from backups.offsite.layout import Manifest, ManifestFile
from backups.offsite.remote import (
    ExportMember,
    GcResult,
    Rebuild,
    RemoteBackup,
    RemoteNotFound,
    delete_backup,
    download_file,
    fetch_config,
    fetch_manifest,
    fetch_service_document,
    garbage_collect,
    iter_files,
    list_backups,
    open_remote_file,
    plan_export,
    rebuild,
    upload_audit_export,
    upload_config,
)
from backups.offsite.store import Store, StoreSettings, validate_settings
from backups.offsite.upload import UploadResult, discard_state, pending_uploads, upload_backup

__all__ = [
    "Cancelled",
    "ExportMember",
    "GcResult",
    "IdentityError",
    "IntegrityError",
    "Manifest",
    "ManifestFile",
    "OffsiteError",
    "Rebuild",
    "RecipientError",
    "RemoteBackup",
    "RemoteNotFound",
    "Store",
    "StoreError",
    "StoreRefused",
    "StoreSettings",
    "UploadResult",
    "delete_backup",
    "discard_state",
    "download_file",
    "fetch_config",
    "fetch_manifest",
    "fetch_service_document",
    "garbage_collect",
    "iter_files",
    "list_backups",
    "load_identities",
    "open_remote_file",
    "parse_identities",
    "parse_recipients",
    "pending_uploads",
    "plan_export",
    "rebuild",
    "recipient_problems",
    "upload_audit_export",
    "upload_backup",
    "upload_config",
    "validate_settings",
]
