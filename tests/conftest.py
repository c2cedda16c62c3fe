"""Shared fixtures: a real database (SQLite file, and PostgreSQL when a server answers),
a fixed clock, and factories for families that chat through the simulator channel.

Tests that take the ``db`` fixture run twice, once per database. PostgreSQL tests use a
database created for this run and dropped after it; they skip with the reason when no
server answers, except in CI (``DESMIGRATIF_REQUIRE_POSTGRES=1``) where that fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import SQLModel, col, select

import handlers  # noqa: F401
from bot.channels.simulator import address_for
from bot.config import Config, load_config
from bot.engine import Engine
from bot.messages import Inbound
from storage.db import make_engine, session_scope, upgrade
from storage.models import Member, Outbox
from storage.repo import FamilySpec, MemberSpec, create_coordinator, create_family, link_identity
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

os.environ.setdefault("PTB_TIMEDELTA", "1")
PG_URL = os.environ.get("DESMIGRATIF_TEST_POSTGRES_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NOW = datetime(2026, 3, 5, 1, 30, tzinfo=UTC)  # Thursday 08:30 in WIB


def _pg_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate one SQLite file once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Create a PostgreSQL database for this run, migrated, and drop it afterwards."""
    if not _pg_answers():
        if os.environ.get("DESMIGRATIF_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL required (DESMIGRATIF_REQUIRE_POSTGRES) but not answering")
        pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432")
    name = f"desmigratif_test_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_URL)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    admin = make_engine(PG_URL)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """Return a fresh, migrated database URL of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """Return a fresh SQLite database URL only (for tests about SQLite itself)."""
    path = tmp_path / "test.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def config(db_url: str) -> Config:
    """Return a configuration pointing at the test database."""
    cfg = load_config(env={})
    cfg.database.url = db_url
    # In-process tests post webhooks and look at what the engine did at once: inline.
    # The queue (the default) has its own tests (tests/test_inbox.py), and every test
    # that runs `serve` (crash, soak, metrics) runs it.
    cfg.server.inbound = "inline"
    return cfg


@pytest.fixture
def db(config: Config) -> Iterator[DbEngine]:
    """Return an engine for the test database."""
    engine = make_engine(config.database.url)
    yield engine
    engine.dispose()


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: Any) -> datetime:
        from datetime import timedelta

        self.now = self.now + timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    """Return a fixed clock at NOW."""
    return Clock()


@pytest.fixture
def engine(db: DbEngine, config: Config, clock: Clock) -> Engine:
    """Return the conversation engine on the test database with the fixed clock."""
    return Engine(db, config, clock=clock)


@dataclass
class Demo:
    """A registered family for tests: member ids by name, and a way to chat as them."""

    engine: Engine
    db: DbEngine
    clock: Clock
    ids: dict[str, int] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)
    coordinator_token: str = ""
    _n: int = 0

    def say(self, name: str, text: str, *, channel: str = "simulator",
            address: str | None = None) -> list[str]:
        """Send text as a member; return the texts queued back to that member."""
        self._n += 1
        member_id = self.ids.get(name)
        addr = address or (address_for(member_id) if member_id else f"sim-anon-{name}")
        result = self.engine.handle(Inbound(channel=channel, address=addr, text=text,
                                            external_id=f"t{self._n}-{uuid.uuid4().hex[:6]}",
                                            received_at=self.clock()))
        with session_scope(self.db) as session:
            rows = session.exec(select(Outbox).where(col(Outbox.id).in_(result.outbox_ids))
                                .order_by(col(Outbox.id))).all()
            return [r.text for r in rows if r.member_id == member_id or member_id is None]

    def inbox(self, name: str) -> list[Outbox]:
        """Return every outbox row addressed to a member, oldest first."""
        with session_scope(self.db) as session:
            return list(session.exec(select(Outbox).where(Outbox.member_id == self.ids[name])
                                     .order_by(col(Outbox.id))).all())

    def member(self, name: str) -> Member:
        """Return a member as stored now."""
        with session_scope(self.db) as session:
            m = session.get(Member, self.ids[name])
            assert m is not None
            return m


@pytest.fixture
def make_family(engine: Engine, db: DbEngine, config: Config, clock: Clock
                ) -> Callable[..., Demo]:
    """Return a factory registering the standard test family (and its coordinator)."""

    def factory(*, consent: bool = True, link: bool = True, village: str = "Kenanga",
                extra: list[MemberSpec] | None = None) -> Demo:
        spec = FamilySpec(
            village=village, district="Indramayu", region="indramayu", language="id",
            members=[
                MemberSpec(role="child", name="Dimas", birth_year=2012),
                MemberSpec(role="child", name="Sari", birth_year=2021),
                MemberSpec(role="carer", name="Warsini", birth_year=1958),
                MemberSpec(role="parent", name="Rina", timezone="Asia/Hong_Kong"),
                *(extra or []),
            ],
            consent_given_by="Warsini" if consent else None,
            consent_method="signed form" if consent else None,
        )
        demo = Demo(engine=engine, db=db, clock=clock)
        with session_scope(db) as session:
            _fam, members = create_family(session, spec, now=clock(),
                                          languages=config.bot.languages)
            coord, token = create_coordinator(session, name="Darto", village=village,
                                              now=clock())
            members.append(session.get(Member, coord.member_id))  # type: ignore[arg-type]
            for m in members:
                demo.ids[m.name] = m.id or 0
                demo.codes[m.name] = m.invite_code or ""
                if link and not (m.role == "child" and (m.birth_year or 0) > 2013):
                    link_identity(session, m, "simulator", address_for(m.id or 0), now=clock())
            demo.coordinator_token = token
        return demo

    return factory


# --- the platform fakes (modules that need stricter ones define their own) ------------


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    """Run a loopback Telegram Bot API for the test."""
    with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def tw() -> Iterator[FakeTwilio]:
    """Run a loopback Twilio REST API for the test."""
    with FakeTwilio() as fake:
        yield fake
