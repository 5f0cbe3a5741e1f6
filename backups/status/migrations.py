"""How many of this code's migrations the database lacks: `serve` and the worker refuse to start with
any, and /health reports them (a deploy that forgot `migrate` while the service kept running)."""

from __future__ import annotations

from typing import Any

from django.db.migrations.executor import MigrationExecutor


def pending_migrations(connection: Any) -> int:
    executor = MigrationExecutor(connection)
    return len(executor.migration_plan(executor.loader.graph.leaf_nodes()))
