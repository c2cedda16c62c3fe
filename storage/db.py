"""Database engine and sessions: SQLite set up for concurrent writers, or PostgreSQL.

SQLite is made safe for several threads and processes the way TECH_NOTES measured:
WAL, a busy timeout, foreign keys on every connection, and ``BEGIN IMMEDIATE`` so a
read-modify-write transaction takes the write lock up front instead of failing with
"database is locked" half-way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlmodel import Session

# The newest migration (storage/migrations/versions); tests/test_migrations.py checks it
# against alembic's own view. A constant, so that starting a process checks its schema
# without loading alembic (with mako and pygments, about 10 MB in every process).
HEAD_REVISION = "0003"

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class SchemaError(RuntimeError):
    """The database schema is not at the version this code expects."""


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine for a database URL, with our SQLite settings where it applies."""
    if url.startswith("sqlite"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
        )
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # pysqlite's own BEGIN is deferred; take the write lock at the start instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def dialect_insert(bind: Session | Engine, table: Any) -> Any:
    """Return an INSERT that can say ON CONFLICT, for the session's (or engine's) database."""
    engine = bind if isinstance(bind, Engine) else bind.get_bind()
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def is_postgres(engine: Engine) -> bool:
    """Tell whether the engine talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """Open a session that commits on success and rolls back on error."""
    from sqlmodel import Session

    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str) -> AlembicConfig:
    """Build an alembic configuration for our migrations and this URL."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """Return the newest migration's revision id."""
    return HEAD_REVISION


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at, None for an empty database."""
    with engine.connect() as conn:
        # alembic's own table, read the way its MigrationContext reads it.
        if not engine.dialect.has_table(conn, "alembic_version"):
            return None
        found = list(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
    if len(found) > 1:
        raise SchemaError(f"the database is at several revisions: {', '.join(found)}")
    return found[0] if found else None


def upgrade(engine: Engine) -> None:
    """Apply every pending migration."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def has_tables(engine: Engine) -> bool:
    """Tell whether any of our tables exist."""
    from sqlmodel import SQLModel

    from storage import models  # noqa: F401  (registers the tables)

    with engine.connect() as conn:
        names = engine.dialect.get_table_names(conn)
    return bool(set(names) & set(SQLModel.metadata.tables))


def ensure_schema(engine: Engine, *, create_if_empty: bool) -> None:
    """Refuse an out-of-date schema; create a brand-new database at the current one."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None and not has_tables(engine) and create_if_empty:
        upgrade(engine)
        return
    raise SchemaError(
        f"database schema is at {current or 'nothing'}, this code needs {head}: "
        "run `desmigratif db upgrade`"
    )


def ping(engine: Engine) -> bool:
    """Tell whether the database answers."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
