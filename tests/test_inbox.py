"""The inbound queue (``[server] inbound = "queue"``, the default): webhooks store, the
worker processes.

Every test runs on SQLite and PostgreSQL, through the real webhooks (Flask test client)
and the real worker-side ``InboxWorker`` with the real engine; two workers are two
``InboxWorker`` objects on the same database, as two ``desmigratif worker`` processes are.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.engine import Engine as DbEngine

from bot import inbox
from bot.config import Config, ConfigError, load_config
from bot.engine import Engine, HandleResult
from bot.inbox import QUEUE, InboxWorker
from bot.metrics import format_status, render, status_snapshot
from tests.conftest import Clock, Demo
from tests.fakes import payloads
from tests.fakes.support import (
    inbound_count,
    link,
    make_app,
    post_twilio,
    post_update,
    rows,
    use_telegram,
    use_twilio,
)
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

CHAT, OTHER_CHAT = 6660001, 6660002
WA_PARENT = "+85291234567"


@pytest.fixture
def queue_config(config: Config, tg: FakeTelegram, tw: FakeTwilio) -> Config:
    config.server.inbound = "queue"
    return use_twilio(use_telegram(config, tg), tw)


@pytest.fixture
def client(queue_config: Config, db: DbEngine, engine: Engine) -> FlaskClient:
    return make_app(queue_config, db, engine).test_client()


@pytest.fixture
def family(make_family: Callable[..., Demo], db: DbEngine) -> Demo:
    demo = make_family(link=False)
    link(db, demo.ids["Warsini"], "telegram", str(CHAT))
    link(db, demo.ids["Dimas"], "telegram", str(OTHER_CHAT))
    link(db, demo.ids["Rina"], "whatsapp", f"whatsapp:{WA_PARENT}")
    return demo


def worker(engine: Engine, **kw: Any) -> InboxWorker:
    return InboxWorker(engine, **kw)


def waiting(db: DbEngine) -> list[Any]:
    with inbox.queue_db(db).connect() as conn:
        return list(conn.execute(select(QUEUE).order_by(QUEUE.c.id)).all())


def replies_to(db: DbEngine, member_id: int) -> list[str]:
    return [r.text for r in rows(db, member_id=member_id, kind="reply")]


# --- the web side ------------------------------------------------------------------------


def test_a_telegram_update_is_stored_and_answered_before_any_processing(
        client: FlaskClient, family: Demo, db: DbEngine, engine: Engine) -> None:
    answer = post_update(client, payloads.tg_text(1, CHAT, "MENU"))
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "queued"
    stored = waiting(db)
    assert [(r.channel, r.external_id, r.chat_key) for r in stored] == [
        ("telegram", "1", f"telegram:{CHAT}")]
    assert json.loads(stored[0].payload)["message"]["text"] == "MENU"
    assert inbound_count(db) == 0 and rows(db) == []  # nothing processed yet

    assert worker(engine).drain() == 1
    assert waiting(db) == []  # deleted once handled: the text is not kept
    assert inbound_count(db) == 1
    assert len(replies_to(db, family.ids["Warsini"])) == 1


def test_a_whatsapp_message_is_stored_parsed_and_processed_by_the_worker(
        client: FlaskClient, family: Demo, db: DbEngine, engine: Engine) -> None:
    form = payloads.twilio_inbound("MENU", from_=f"whatsapp:{WA_PARENT}", profile_name="Rina")
    answer = post_twilio(client, form)
    assert answer.status_code == 200 and b"<Response" in answer.data
    (row,) = waiting(db)
    assert row.chat_key == f"whatsapp:{WA_PARENT}"
    # The parsed message, not Twilio's whole form (no account sid, no WaId).
    assert json.loads(row.payload) == {"address": f"whatsapp:{WA_PARENT}", "text": "MENU",
                                       "kind": "text", "profile_name": "Rina"}
    assert worker(engine).drain() == 1
    assert len(replies_to(db, family.ids["Rina"])) == 1 and waiting(db) == []


def test_redeliveries_are_acknowledged_and_processed_once(
        client: FlaskClient, family: Demo, db: DbEngine, engine: Engine) -> None:
    update_ = payloads.tg_text(5, CHAT, "MENU")
    outcomes = [post_update(client, update_).get_json()["outcome"] for _ in range(3)]
    assert outcomes == ["queued", "duplicate", "duplicate"] and len(waiting(db)) == 1
    worker(engine).drain()
    # After it was processed, a redelivery is stored again and recognised by the engine.
    assert post_update(client, update_).get_json()["outcome"] == "queued"
    assert worker(engine).drain() == 1
    assert inbound_count(db) == 1 and len(replies_to(db, family.ids["Warsini"])) == 1
    form = payloads.twilio_inbound("TIPS", from_=f"whatsapp:{WA_PARENT}",
                                   message_sid="SM" + "a" * 32)
    assert [post_twilio(client, form).status_code for _ in range(2)] == [200, 200]
    assert len(waiting(db)) == 1


@pytest.mark.parametrize("body, reason", [
    ({"update_id": "x"}, "update_id"),
    ({"update_id": 9, "message": {"message_id": 1, "chat": {"id": "nope", "type": "private"},
                                  "date": 1}}, "chat.id"),
])
def test_a_malformed_update_is_refused_and_nothing_is_stored(
        client: FlaskClient, family: Demo, db: DbEngine, body: dict[str, Any],
        reason: str) -> None:
    answer = post_update(client, body)
    assert answer.status_code == 400 and reason in answer.get_json()["error"]
    assert waiting(db) == []
    assert post_update(client, payloads.tg_text(9, CHAT, "x"), secret="wrong").status_code == 403
    assert waiting(db) == []


def test_a_forged_or_malformed_twilio_form_stores_nothing(
        client: FlaskClient, family: Demo, db: DbEngine) -> None:
    form = payloads.twilio_inbound("MENU", from_=f"whatsapp:{WA_PARENT}")
    assert post_twilio(client, form, signature="forged").status_code == 403
    assert post_twilio(client, {**form, "From": "whatsapp:<b>"}).status_code == 400
    assert waiting(db) == []


# --- order, leases, crashes ---------------------------------------------------------------


def test_a_chat_is_processed_in_order_one_message_at_a_time_across_workers(
        client: FlaskClient, family: Demo, db: DbEngine, engine: Engine, clock: Clock) -> None:
    for n, text in enumerate(["KABAR", "satu", "dua"], start=10):
        post_update(client, payloads.tg_text(n, CHAT, text))
    post_update(client, payloads.tg_text(20, OTHER_CHAT, "MENU"))
    first, second = worker(engine), worker(engine)
    claimed = first.claim(clock())
    # Only the oldest row of each chat: the carer's first message and the child's.
    assert [r.external_id for r in claimed] == ["10", "20"]
    # While the first worker holds them, the second finds nothing of either chat.
    assert second.claim(clock()) == []
    for row in claimed:
        assert first._process(row)
    with inbox.queue_db(db).begin() as conn:
        conn.execute(QUEUE.delete().where(QUEUE.c.id.in_([r.id for r in claimed])))
    assert [r.external_id for r in second.claim(clock())] == ["11"]


def test_a_killed_workers_messages_are_processed_after_its_lease_once(
        client: FlaskClient, family: Demo, db: DbEngine, engine: Engine, clock: Clock) -> None:
    post_update(client, payloads.tg_text(30, CHAT, "MENU"))
    killed = worker(engine)
    (row,) = killed.claim(clock())
    # The killed worker had run the engine (committed) but not deleted the row.
    assert killed._process(row)
    assert len(replies_to(db, family.ids["Warsini"])) == 1
    survivor = worker(engine)
    assert survivor.run_once() == 0  # leased: not before the lease runs out
    clock.advance(seconds=inbox.LEASE_S + 1)
    assert survivor.run_once() == 1
    assert waiting(db) == [] and inbound_count(db) == 1
    assert len(replies_to(db, family.ids["Warsini"])) == 1  # not answered twice


def test_a_failing_message_is_retried_later_then_given_up_and_its_chat_waits(
        client: FlaskClient, family: Demo, db: DbEngine, engine: Engine, clock: Clock,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    post_update(client, payloads.tg_text(40, CHAT, "MENU"))
    post_update(client, payloads.tg_text(41, CHAT, "TIPS"))
    calls: list[str] = []

    def broken(inbound: Any, *, now: Any = None) -> HandleResult:
        calls.append(inbound.external_id)
        raise RuntimeError("database went away")

    monkeypatch.setattr(engine, "handle", broken)
    w = worker(engine)
    assert w.run_once() == 0 and calls == ["40"]
    (first, second) = waiting(db)
    assert (first.attempts, second.attempts) == (1, 0)
    assert w.run_once() == 0 and calls == ["40"]  # not before its retry time; 41 waits
    for _ in range(inbox.MAX_ATTEMPTS - 1):
        clock.advance(seconds=301)
        w.run_once()
    assert calls == ["40"] * inbox.MAX_ATTEMPTS and w.stats.given_up == 1
    assert [r.external_id for r in waiting(db)] == ["41"]
    assert "given up after" in caplog.text and "MENU" not in caplog.text
    monkeypatch.undo()
    assert w.run_once() == 1 and waiting(db) == []


# --- operators ----------------------------------------------------------------------------


def test_metrics_and_status_show_what_waits(
        client: FlaskClient, family: Demo, db: DbEngine, engine: Engine, clock: Clock) -> None:
    for n in range(3):
        post_update(client, payloads.tg_text(50 + n, CHAT, "MENU"))
    clock.advance(seconds=42)
    text = render(db, clock)[0].decode()
    assert "desmigratif_inbound_queue_messages 3.0" in text
    assert "desmigratif_inbound_queue_oldest_age_seconds 42.0" in text
    snap = status_snapshot(db, clock())
    assert snap["inbound_queue"] == {"waiting": 3, "oldest_age_s": 42.0}
    assert "accepted, not processed yet: 3, oldest 42 s" in format_status(snap)
    worker(engine).drain()
    assert waiting(db) == []
    assert "desmigratif_inbound_queue_messages 0.0" in render(db, clock)[0].decode()


def test_inline_mode_processes_before_answering(
        queue_config: Config, db: DbEngine, engine: Engine, family: Demo) -> None:
    queue_config.server.inbound = "inline"
    client = make_app(queue_config, db, engine).test_client()
    answer = post_update(client, payloads.tg_text(60, CHAT, "MENU"))
    assert answer.get_json()["outcome"] == "processed" and waiting(db) == []
    assert len(replies_to(db, family.ids["Warsini"])) == 1


def test_on_sqlite_the_queue_is_a_file_of_its_own_and_on_postgresql_a_table(
        client: FlaskClient, family: Demo, db: DbEngine) -> None:
    post_update(client, payloads.tg_text(80, CHAT, "MENU"))
    side = inbox.queue_file(db.url)
    if db.dialect.name == "sqlite":
        assert side is not None and side.name.endswith("-inbox.db") and side.exists()
        assert inbox.queue_db(db) is inbox.queue_db(db) and inbox.queue_db(db) is not db
    else:
        assert side is None and inbox.queue_db(db) is db
    assert len(waiting(db)) == 1


def test_the_mode_is_checked_in_the_configuration() -> None:
    assert load_config(env={}).server.inbound == "queue"
    with pytest.raises(ConfigError, match=r"\[server\] inbound"):
        load_config(env={"DESMIGRATIF_SERVER_INBOUND": "later"})


def test_a_row_leased_in_the_future_is_not_claimed(
        client: FlaskClient, family: Demo, db: DbEngine, engine: Engine, clock: Clock) -> None:
    post_update(client, payloads.tg_text(70, CHAT, "MENU"))
    with inbox.queue_db(db).begin() as conn:
        conn.execute(update(QUEUE).values(available_at=clock() + timedelta(minutes=5)))
    assert worker(engine).claim(clock()) == []
    assert len(worker(engine).claim(clock() + timedelta(minutes=6))) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("micro", [0, 123456])
def test_the_sqlite_spool_writes_times_the_worker_reads_back(
        db: DbEngine, engine: Engine, clock: Clock, micro: int) -> None:
    # The web side writes the queue file with sqlite3 itself; the worker compares and
    # reads those times through SQLAlchemy: the same instant, claimable at that instant.
    at = clock().replace(microsecond=micro)
    assert inbox.accept(db, channel="telegram", external_id=f"t{micro}", chat_key="telegram:1",
                        payload={"update_id": 1}, now=at)
    (row,) = waiting(db)
    assert row.received_at == at and row.available_at == at
    assert worker(engine).claim(at - timedelta(microseconds=1)) == []
    assert [r.external_id for r in worker(engine).claim(at)] == [f"t{micro}"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_makes_the_queue_before_it_forks(db: DbEngine) -> None:
    side = inbox.queue_file(db.url)
    assert side is not None and not side.exists()
    inbox.prepare(db)  # what serve does, so that no web process has to
    with sqlite3.connect(side) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'inboundqueue'"
                            ).fetchall() == [("inboundqueue",)]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_queue_file_without_its_table_yet_is_completed_by_the_webhook(
        client: FlaskClient, family: Demo, db: DbEngine) -> None:
    side = inbox.queue_file(db.url)
    assert side is not None
    side.touch()  # another process has just made the file, not yet its table
    assert post_update(client, payloads.tg_text(90, CHAT, "MENU")).status_code == 200
    assert [r.external_id for r in waiting(db)] == ["90"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_queue_that_cannot_be_written_is_a_500_for_the_platform_to_retry(
        client: FlaskClient, family: Demo, db: DbEngine) -> None:
    side = inbox.queue_file(db.url)
    assert side is not None
    side.mkdir()  # not a database file: nothing can be stored
    answer = post_update(client, payloads.tg_text(91, CHAT, "MENU"))
    assert answer.status_code == 500 and answer.get_json() == {"error": "internal error"}
    side.rmdir()
