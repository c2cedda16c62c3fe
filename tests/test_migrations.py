"""Migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import SQLModel

from storage.db import alembic_config, current_revision, ensure_schema, head_revision, upgrade


def test_migrated_schema_matches_models(db: DbEngine) -> None:
    assert current_revision(db) == head_revision()
    with db.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == []


def test_downgrade_to_nothing_and_up_again(db: DbEngine) -> None:
    cfg = alembic_config(db.url.render_as_string(hide_password=False))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert current_revision(db) is None
    upgrade(db)
    assert current_revision(db) == head_revision()
    ensure_schema(db, create_if_empty=False)  # at head: accepted
