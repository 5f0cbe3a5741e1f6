#!/usr/bin/env python
"""Django's command line, with configuration and database problems said in one line, not a traceback."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backup_platform.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line
    from django.db.utils import OperationalError

    try:
        from django.conf import settings

        settings.INSTALLED_APPS  # noqa: B018  (reads the settings: a bad variable fails here, in one line)
    except ImproperlyConfigured as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)
    try:
        execute_from_command_line(sys.argv)
    except OperationalError as error:
        from django.db import connection

        from backup_platform.settings import masked_url

        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = masked_url(settings.DATABASE_URL)
        try:
            connection.ensure_connection()
        except OperationalError:
            sys.stderr.write(f"error: the database cannot be reached (DATABASE_URL={where}): {reason}\n")
        else:  # reachable, so the error is about its content: most often tables not made yet
            advice = "if its tables are missing, run `python manage.py migrate`"
            sys.stderr.write(f"error: database error ({reason}); {advice}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
