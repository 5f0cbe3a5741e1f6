"""What `make run` prints before serving: the URLs, an admin login and a SUPER_ADMIN token."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from backups.auth import issue_token


class Command(BaseCommand):
    help = "Create the local admin login on first use and print the URLs and a 24 h SUPER_ADMIN token."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=settings.PORT)

    def handle(self, *args, port: int, **options) -> None:
        password_file = settings.VAR_DIR / "admin-password"
        users = get_user_model().objects
        if not users.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            users.create_superuser("admin", "", password)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
        password = password_file.read_text().strip() if password_file.exists() else "(your own)"
        base = f"http://127.0.0.1:{port}"
        token = issue_token("local-admin", ttl_seconds=86400)
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  Dashboard   {base}/dashboard/   (login: admin / {password}; the password is kept in "
                    f"{password_file})",
                    f"  Admin       {base}/admin/",
                    f"  API docs    {base}/api/docs/",
                    f"  Health      {base}/health",
                    f"  WebSocket   ws://127.0.0.1:{port}/backup-ws",
                    f"  Backups in  {settings.BACKUP_ROOT}",
                    "",
                    "  A SUPER_ADMIN token (24 h), ready to paste:",
                    f"  export TOKEN={token}",
                    f'  curl -H "Authorization: Bearer $TOKEN" {base}/api/backup/status',
                    "",
                ]
            )
        )
