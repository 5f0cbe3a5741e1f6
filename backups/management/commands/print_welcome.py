"""What `make run` prints before serving: the URLs, an admin login and a SUPER_ADMIN token."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from backups.auth import issue_token


class Command(BaseCommand):
    help = "Create the local admin login on first use and print the URLs and a 24 h SUPER_ADMIN token."

    def handle(self, *args, **options) -> None:
        password_file = settings.VAR_DIR / "admin-password"
        users = get_user_model().objects
        if not users.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            users.create_superuser("admin", "", password)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
        password = password_file.read_text().strip() if password_file.exists() else "(your own)"
        base = f"http://127.0.0.1:{settings.PORT}"
        token = issue_token("local-admin", ttl_seconds=86400)
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  Dashboard   {base}/dashboard/   (login: admin / {password})",
                    f"  Admin       {base}/admin/",
                    f"  API docs    {base}/api/docs/",
                    f"  Health      {base}/health",
                    f"  WebSocket   ws://127.0.0.1:{settings.PORT}/backup-ws",
                    f"  Backups in  {settings.BACKUP_ROOT}",
                    "",
                    "  SUPER_ADMIN token (24 h):",
                    f"  {token}",
                    "",
                    f"  curl -H 'Authorization: Bearer {token[:16]}…' {base}/api/backup/status",
                    "",
                ]
            )
        )
