from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from backups.auth import issue_token


class Command(BaseCommand):
    help = "Print a SUPER_ADMIN JWT for <user-id>, signed with JWT_SECRET (the token is the last line)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("user_id")
        parser.add_argument("--ttl", type=int, default=3600, help="seconds of validity (default 3600)")

    def handle(self, *args, user_id: str, ttl: int, **options) -> None:
        if not user_id.strip() or len(user_id) > 200:
            raise CommandError("user-id must be 1-200 characters")
        if not 1 <= ttl <= 365 * 86400:
            raise CommandError("--ttl must be between 1 second and 365 days")
        try:
            self.stdout.write(issue_token(user_id, ttl_seconds=ttl))
        except ValueError as error:
            raise CommandError(str(error)) from None
