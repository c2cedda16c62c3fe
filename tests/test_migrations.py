"""Migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables)
from storage.db import (
    HEAD_REVISION,
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
    upgrade,
)


def test_the_head_revision_constant_is_alembics_head() -> None:
    # Start-up checks read the constant, not the migration scripts (no alembic import).
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert script.get_heads() == [HEAD_REVISION] == [head_revision()]


def test_current_revision_reads_what_alembic_reads(db: DbEngine) -> None:
    with db.connect() as conn:
        assert current_revision(db) == MigrationContext.configure(conn).get_current_revision()


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
