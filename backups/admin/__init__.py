"""The Django admin site, one module per model admin. Importing this package registers them."""

from backups.admin import audit, backups, config, notifications, runs, site  # noqa: F401  (registration side effects)
