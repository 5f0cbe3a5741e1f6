"""The Django admin site, one module per model admin.

The model admins register when the app is ready (`BackupsConfig.ready`), not when this package is
imported: Django imports `backups.admin.site` to build the default site itself, and a registration
running in the middle of that would land on a site object that is then replaced."""
