from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class AdminConfig(DjangoAdminConfig):
    """Django's admin with the service's site as the default one (superusers only)."""

    default_site = "backups.admin.site.BackupAdminSite"
