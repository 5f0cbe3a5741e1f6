"""Every model of the app, defined in its package and imported here: one app, one migration history."""

from backups.audit import AuditEvent
from backups.catalogue.models import Backup, BackupStatus, BackupType
from backups.checkpoints import Checkpoint
from backups.config.models import BackupConfig
from backups.notifications.models import Delivery, DeliveryStatus, Notification
from backups.offsite.models import RemoteDeletion
from backups.runs.models import ACTIVE_RUN_STATUSES, Duty, Run, RunStatus, RunType
from backups.worker.lease import WorkerLease

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "AuditEvent",
    "Backup",
    "BackupConfig",
    "BackupStatus",
    "BackupType",
    "Checkpoint",
    "Delivery",
    "DeliveryStatus",
    "Duty",
    "Notification",
    "RemoteDeletion",
    "Run",
    "RunStatus",
    "RunType",
    "WorkerLease",
]
