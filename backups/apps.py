from django.apps import AppConfig


class BackupsConfig(AppConfig):
    name = "backups"
    verbose_name = "Backups"

    def ready(self) -> None:
        from backups.admin import audit, backups, config, notifications, runs  # noqa: F401  (registers the model admins)
        from backups.api import schema  # noqa: F401  (registers the OpenAPI auth extensions)
