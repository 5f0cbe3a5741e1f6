"""`manage.py offsite_rebuild`: rebuild an empty catalogue from the off-site bucket alone, after the
server (its database, its backup root) was lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from backups.audit import Actor
from backups.catalogue.models import Backup
from backups.offsite import services
from backups.offsite.errors import OffsiteError
from backups.offsite.rebuild import rebuild_catalogue

ACTOR = Actor("offsite_rebuild")


class Command(BaseCommand):
    help = (
        "Rebuild the catalogue from the off-site store: a row for every complete copy (not local: it is "
        "downloaded and restored from the store), and the config document stored beside them. The store "
        "is the config's `offsite` section unless given here; the credentials come from "
        "OFFSITE_ACCESS_KEY_ID/OFFSITE_SECRET_ACCESS_KEY, the age identity from OFFSITE_IDENTITY_FILE."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--endpoint", help="the store's URL (default: the config's offsite.endpoint)")
        parser.add_argument("--bucket", help="default: the config's offsite.bucket")
        parser.add_argument("--prefix", help="default: the config's offsite.prefix")
        parser.add_argument("--region", help="default: the config's offsite.region")
        parser.add_argument("--identity", help="an age identity file (default: OFFSITE_IDENTITY_FILE)")
        parser.add_argument("--audit-to", help="also write the stored audit export (JSON lines) to this file")
        parser.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
        parser.add_argument(
            "--force",
            action="store_true",
            help="run on a catalogue that is not empty: rows that exist stay as they are, the others are "
            "added, and the stored config document replaces the current one",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        existing = Backup.objects.count()
        if existing and not options["force"]:
            raise CommandError(
                f"The catalogue holds {existing} backup(s): offsite_rebuild fills an empty one. "
                "Use --force to add the store's copies to it."
            )
        section = services.store_section()
        for key in ("endpoint", "bucket", "prefix", "region"):
            if options[key] is not None:
                section[key] = options[key]
        try:
            report = rebuild_catalogue(
                section=section,
                identity=Path(options["identity"]) if options["identity"] else None,
                actor=ACTOR,
                replace_config=options["force"] or not existing,
                audit_to=Path(options["audit_to"]) if options["audit_to"] else None,
                dry_run=options["dry_run"],
            )
        except OffsiteError as error:
            raise CommandError(error.message) from None
        prefix = "would add" if options["dry_run"] else "added"
        for line in report.lines(prefix):
            self.stdout.write(line)
