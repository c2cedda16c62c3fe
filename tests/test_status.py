"""`desmigratif status`: the outbox, deliveries, alerts and scheduler, from the database."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine as DbEngine

from bot.metrics import DatabaseUnavailable, format_status, reader_for, status_snapshot
from storage.db import make_engine, session_scope
from storage.models import Alert, InboundLog, JobRun, Outbox, SchedulerLease
from tests.conftest import NOW, Demo


def _out(channel: str, status: str, *, due: datetime, sent: datetime | None = None) -> Outbox:
    return Outbox(channel=channel, address=f"{channel}-1", text="x", status=status,
                  next_attempt_at=due, sent_at=sent, created_at=due - timedelta(minutes=1))


def _fill(db: DbEngine, village_id: int, now: datetime) -> None:
    ago = lambda **kw: now - timedelta(**kw)  # noqa: E731
    with session_scope(db) as session:
        session.add_all([
            _out("telegram", "queued", due=ago(seconds=75)),
            _out("telegram", "queued", due=ago(seconds=10)),
            _out("telegram", "queued", due=now + timedelta(hours=1)),
            _out("telegram", "sending", due=ago(seconds=3)),
            _out("whatsapp", "held", due=ago(days=3)),
            _out("telegram", "sent", due=ago(minutes=31), sent=ago(minutes=30)),
            _out("telegram", "sent", due=ago(hours=3), sent=ago(hours=3)),
            _out("telegram", "failed", due=ago(minutes=20), sent=ago(minutes=10)),
            _out("whatsapp", "sent", due=ago(days=2), sent=ago(days=2)),
            _out("whatsapp", "failed", due=ago(hours=23), sent=ago(hours=23)),
            *[InboundLog(channel=ch, external_id=f"{ch}{n}", received_at=at) for n, (ch, at) in
              enumerate([("telegram", ago(minutes=5)), ("telegram", ago(minutes=59)),
                         ("telegram", ago(hours=2)), ("whatsapp", ago(minutes=1))])],
            Alert(village_id=village_id, kind="sos", created_at=ago(hours=2), escalated=True),
            Alert(village_id=village_id, kind="sos", created_at=ago(minutes=10)),
            Alert(village_id=village_id, kind="sos", created_at=ago(days=1),
                  status="acknowledged"),
            JobRun(kind="outbox_retention", last_run_at=ago(minutes=3)),
            JobRun(kind="broadcasts", last_run_at=ago(seconds=30)),
            SchedulerLease(name="scheduler", holder="vm:123:ab", expires_at=now + timedelta(
                seconds=60)),
        ])


def test_snapshot_counts_exactly(db: DbEngine, make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _fill(db, demo.member("Rina").village_id, NOW)
    reader = reader_for(db.url)
    try:
        snap = status_snapshot(reader, NOW)
    finally:
        reader.dispose()
    assert snap["at"] == "2026-03-05T01:30:00Z" and snap["database"] == db.dialect.name
    assert snap["outbox"] == {
        "telegram": {"queued": 3, "due": 2, "sending": 1, "held": 0},
        "whatsapp": {"queued": 0, "due": 0, "sending": 0, "held": 1}}
    assert snap["oldest_due_age_s"] == 75
    assert snap["delivered"] == {
        "telegram": {"sent_1h": 1, "failed_1h": 1, "sent_24h": 2, "failed_24h": 1},
        "whatsapp": {"sent_1h": 0, "failed_1h": 0, "sent_24h": 0, "failed_24h": 1}}
    assert snap["inbound_last_hour"] == {"telegram": 2, "whatsapp": 1}
    assert snap["alerts"] == {"open": 2, "escalated": 1, "oldest_open_age_s": 7200}
    assert snap["scheduler"] == {
        "lease": {"holder": "vm:123:ab", "expires_at": "2026-03-05T01:31:00Z", "live": True},
        "jobs": [{"kind": "broadcasts", "last_run_at": "2026-03-05T01:29:30Z", "age_s": 30},
                 {"kind": "outbox_retention", "last_run_at": "2026-03-05T01:27:00Z",
                  "age_s": 180}]}
    json.dumps(snap)  # `--json` prints it as it is

    text = format_status(snap)
    assert re.search(r"^  telegram +3 +2 +1 +0$", text, re.M)
    assert re.search(r"^  whatsapp +0 +0 +0 +1$", text, re.M)
    assert "oldest due message waiting: 75 s" in text
    assert re.search(r"^  telegram +1 +1 +2 +1$", text, re.M)
    assert "Safety alerts open: 2 (1 escalated), oldest 2 h 00 min" in text
    assert "Scheduler lease: held by vm:123:ab until 2026-03-05T01:31:00Z" in text
    assert re.search(r"^  outbox_retention +2026-03-05T01:27:00Z +3 min$", text, re.M)


def test_an_empty_database_says_so(db: DbEngine) -> None:
    snap = status_snapshot(db, NOW)
    assert snap["outbox"] == {} and snap["oldest_due_age_s"] is None
    assert snap["alerts"] == {"open": 0, "escalated": 0, "oldest_open_age_s": None}
    text = format_status(snap)
    assert "Safety alerts open: 0\n" in text
    assert "Scheduler lease: never taken" in text and text.count("(none)") == 4


def test_a_dead_database_raises_with_a_one_line_reason() -> None:
    dead = reader_for("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(DatabaseUnavailable) as exc:
        status_snapshot(dead, NOW)
    assert "\n" not in str(exc.value) and str(exc.value)


# --- the command, as an operator runs it -----------------------------------------------------


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESMIGRATIF_")}
    return subprocess.run([sys.executable, "-m", "bot", "status", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def live_db(tmp_path: Path, sqlite_template: Path) -> tuple[Path, Path]:
    """A SQLite file with a queued message due an hour ago, and its config."""
    path = tmp_path / "live.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        session.add(_out("telegram", "queued", due=now - timedelta(hours=1)))
    engine.dispose()
    conf = tmp_path / "c.toml"
    conf.write_text(f'[database]\nurl = "sqlite:///{path}"\n')
    return path, conf


def test_cli_text_and_json(live_db: tuple[Path, Path], tmp_path: Path) -> None:
    _path, conf = live_db
    text = run("--config", str(conf), cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^  telegram +1 +1 +0 +0$", text.stdout, re.M)
    assert re.search(r"oldest due message waiting: 1 h 0\d min", text.stdout)
    as_json = run("--json", "--config", str(conf), cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    (line,) = as_json.stdout.splitlines()
    snap: dict[str, Any] = json.loads(line)
    assert snap["outbox"]["telegram"]["queued"] == 1 and snap["alerts"]["open"] == 0


def test_cli_answers_while_a_writer_holds_the_database(live_db: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """A running serve takes SQLite's write lock all the time: status only reads."""
    path, conf = live_db
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE outbox SET attempts = attempts + 1")
        res = run("--json", "--config", str(conf), cwd=tmp_path)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["outbox"]["telegram"]["due"] == 1


@pytest.mark.parametrize("url", ["sqlite:///var/missing.db",
                                 "postgresql+psycopg://nobody@127.0.0.1:1/none"])
def test_cli_exits_1_with_one_line_when_the_database_does_not_answer(
        url: str, tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[database]\nurl = "{url}"\n')
    res = run("--config", str(conf), cwd=tmp_path)
    assert res.returncode == 1 and res.stdout == ""
    (reason,) = res.stderr.splitlines()
    assert reason.startswith("desmigratif: the database does not answer: ")
    assert not (tmp_path / "var" / "missing.db").exists()  # and no empty file was made
