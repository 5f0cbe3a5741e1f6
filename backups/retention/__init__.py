"""Retention: which backups a policy keeps, with the reasons (`policy`, pure)."""
