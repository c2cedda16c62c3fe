"""Telegram end to end: real Update JSON into the webhook, python-telegram-bot out to the fake.

Every test runs on SQLite and PostgreSQL. Replies are never inline: the webhook answers
at once and the sender delivers through ``sendMessage`` to the loopback FakeTelegram.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine as DbEngine

from bot.channels import telegram
from bot.channels.telegram import EDITED_NOTE, TelegramChannel
from bot.cli import main as cli_main
from bot.config import Config
from bot.engine import Engine
from bot.messages import Outbound, Raw
from bot.outbox import queue_messages
from bot.sender import Sender
from storage.db import session_scope
from tests.conftest import Clock, Demo
from tests.fakes import payloads
from tests.fakes.support import (
    SECRET,
    concurrently,
    drain,
    identity,
    inbound_count,
    link,
    make_app,
    post_update,
    rows,
    running_clock,
    say,
    use_telegram,
)
from tests.fakes.telegram_api import FakeTelegram

# Checks of logic that does not depend on the database run on SQLite only.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

NOT_TEXT = "I can only read text messages for now. Reply MENU to see what I can do."
CHAT = 5550001


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake
    assert fake.errors == []


@pytest.fixture
def tg_config(config: Config, tg: FakeTelegram) -> Config:
    return use_telegram(config, tg)


@pytest.fixture
def app(tg_config: Config, db: DbEngine, engine: Engine) -> Flask:
    return make_app(tg_config, db, engine)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def sender(db: DbEngine, tg_config: Config, clock: Clock) -> Iterator[Sender]:
    yield Sender(db, tg_config, {"telegram": TelegramChannel(tg_config)},
                 clock=running_clock(clock))
    telegram.shutdown()


@pytest.fixture
def family(make_family: Callable[..., Demo]) -> Demo:
    return make_family(link=False)


def _send_all(sender: Sender, db: DbEngine) -> None:
    drain(sender, lambda: not rows(db, status="queued") and not rows(db, status="sending"))


# --- inbound ------------------------------------------------------------------------


def test_start_code_links_the_chat_and_replies_through_send_message(
        client: FlaskClient, family: Demo, db: DbEngine, sender: Sender,
        tg: FakeTelegram) -> None:
    code = family.codes["Warsini"]
    answer = post_update(client, payloads.tg_start(101, CHAT, code))
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "processed"
    assert tg.sent == []  # nothing inline, nothing before the sender runs
    linked = identity(db, "telegram", str(CHAT))
    assert linked is not None and linked.member_id == family.ids["Warsini"]
    _send_all(sender, db)
    texts = tg.texts_for(CHAT)
    assert texts and "Warsini" in texts[0]
    assert all(r.status == "sent" and r.external_id for r in rows(db, channel="telegram"))

    post_update(client, payloads.tg_command(102, CHAT, "help"))
    post_update(client, payloads.tg_text(103, CHAT, "  menu "))
    _send_all(sender, db)
    later = tg.texts_for(CHAT)[len(texts):]
    assert len(later) == 2 and later[0] == later[1]  # /help and MENU: the same menu
    assert all(len(t) <= 4096 for t in tg.texts_for(CHAT))


@SQLITE_ONLY
def test_an_unknown_chat_is_told_how_to_link(client: FlaskClient, db: DbEngine,
                                             sender: Sender, tg: FakeTelegram) -> None:
    assert post_update(client, payloads.tg_text(7, 4242, "halo")).status_code == 200
    _send_all(sender, db)
    assert tg.texts_for(4242) == [say("Hello! This chat is not linked yet. Send DAFTAR and "
                                      "the invite code from your village coordinator, for "
                                      "example: DAFTAR AB12CD")]


@SQLITE_ONLY
@pytest.mark.parametrize("header", [None, "", "wrong", SECRET + "x", SECRET.upper()])
def test_a_wrong_or_missing_secret_is_refused_and_nothing_stored(
        client: FlaskClient, db: DbEngine, header: str | None) -> None:
    answer = post_update(client, payloads.tg_text(1, CHAT, "MENU"), secret=header)
    assert answer.status_code == 403
    assert "secret" in answer.get_json()["error"]
    assert inbound_count(db) == 0 and rows(db) == []


@SQLITE_ONLY
@pytest.mark.parametrize(("body", "content_type"), [
    (b"not json", "application/json"),
    (b"[1, 2]", "application/json"),
    (b'{"message": {"text": "hi"}}', "application/json"),
    (b'{"update_id": "7"}', "application/json"),
    (b'{"update_id": 8, "message": "x"}', "application/json"),
    (b'{"update_id": 9, "message": {"chat": 5}}', "application/json"),
    (b"update_id=7", "application/x-www-form-urlencoded"),
])
def test_malformed_bodies_get_a_short_4xx(client: FlaskClient, db: DbEngine, body: bytes,
                                          content_type: str) -> None:
    answer = client.post("/webhooks/telegram", data=body, content_type=content_type,
                         headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert answer.status_code == 400
    assert 0 < len(answer.get_json()["error"]) < 80
    assert rows(db) == []


NON_TEXT = [
    ("sticker", lambda u: payloads.tg_sticker(u, CHAT)),
    ("photo", lambda u: payloads.tg_photo(u, CHAT, "foto Dimas")),
    ("voice", lambda u: payloads.tg_voice(u, CHAT)),
    ("location", lambda u: payloads.tg_location(u, CHAT)),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("kind", "make"), NON_TEXT, ids=[k for k, _ in NON_TEXT])
def test_non_text_messages_get_the_text_only_answer(
        client: FlaskClient, family: Demo, db: DbEngine, sender: Sender, tg: FakeTelegram,
        kind: str, make: Callable[[int], dict[str, Any]]) -> None:
    link(db, family.ids["Rina"], "telegram", str(CHAT))
    assert post_update(client, make(200)).get_json()["outcome"] == "processed"
    _send_all(sender, db)
    assert tg.texts_for(CHAT)[-1] == say(NOT_TEXT)
    assert [r.kind for r in rows(db, member_id=family.ids["Rina"])][-1] == "reply"


def test_edits_are_answered_but_not_acted_on(client: FlaskClient, family: Demo, db: DbEngine,
                                             sender: Sender, tg: FakeTelegram) -> None:
    link(db, family.ids["Rina"], "telegram", str(CHAT))
    answer = post_update(client, payloads.tg_edited(300, CHAT, "BAHASA en"))
    assert answer.get_json()["outcome"] == "edited"
    assert post_update(client, payloads.tg_edited(300, CHAT, "BAHASA en")
                       ).get_json()["outcome"] == "duplicate"
    _send_all(sender, db)
    assert tg.texts_for(CHAT) == [say(EDITED_NOTE)]
    assert family.member("Rina").language == "id"  # the edited command did not run


@SQLITE_ONLY
@pytest.mark.parametrize("update", [
    payloads.tg_channel_post(400, -1001234567890, "pengumuman"),
    payloads.tg_callback_query(401, CHAT, "fund:yes"),
    {"update_id": 402, "message": {**payloads.tg_text(402, CHAT, "MENU")["message"],
                                   "chat": {"id": -100777, "type": "supergroup",
                                            "title": "Desa"}}},
    {"update_id": 403, "poll": {"id": "1", "question": "?", "options": [],
                                "total_voter_count": 0, "is_closed": False,
                                "is_anonymous": True, "type": "regular",
                                "allows_multiple_answers": False}},  # unreadable to PTB
    {"update_id": 404, "some_future_kind": {"id": 1}},
], ids=["channel-post", "callback", "group-message", "poll", "future-kind"])
def test_other_updates_are_acknowledged_only(client: FlaskClient, db: DbEngine,
                                             update: dict[str, Any]) -> None:
    answer = post_update(client, update)
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "ignored"
    assert rows(db) == [] and inbound_count(db) == 0


def test_blocking_marks_the_chat_unreachable_and_unblocking_releases(
        client: FlaskClient, family: Demo, db: DbEngine, tg_config: Config, clock: Clock,
        sender: Sender, tg: FakeTelegram) -> None:
    link(db, family.ids["Rina"], "telegram", str(CHAT), last_inbound_at=clock())
    with session_scope(db) as session:
        queue_messages(session, [Outbound([Raw("kabar dari rumah")], member_id=family.ids["Rina"],
                                          kind="relay")], now=clock(), config=tg_config)
    assert post_update(client, payloads.tg_my_chat_member_blocked(500, CHAT)
                       ).get_json()["outcome"] == "blocked"
    ident = identity(db, "telegram", str(CHAT))
    assert ident is not None and not ident.reachable
    assert [r.status for r in rows(db)] == ["held"]
    _send_all(sender, db)
    assert tg.sent == []  # nothing is tried towards a chat that blocked us
    assert post_update(client, payloads.tg_my_chat_member_blocked(500, CHAT)
                       ).get_json()["outcome"] == "duplicate"
    assert post_update(client, payloads.tg_my_chat_member_unblocked(501, CHAT)
                       ).get_json()["outcome"] == "unblocked"
    ident = identity(db, "telegram", str(CHAT))
    assert ident is not None and ident.reachable
    _send_all(sender, db)
    assert tg.texts_for(CHAT) == ["kabar dari rumah"]


def test_a_repeated_update_id_is_processed_once(client: FlaskClient, family: Demo,
                                                db: DbEngine) -> None:
    link(db, family.ids["Rina"], "telegram", str(CHAT))
    update = payloads.tg_text(600, CHAT, "MENU")
    outcomes = [post_update(client, update).get_json()["outcome"] for _ in range(3)]
    assert outcomes == ["processed", "duplicate", "duplicate"]
    assert inbound_count(db) == 1 and len(rows(db, kind="reply")) == 1


def test_two_workers_receiving_the_same_update_at_once_process_it_once(
        app: Flask, family: Demo, db: DbEngine) -> None:
    link(db, family.ids["Rina"], "telegram", str(CHAT))
    update = payloads.tg_text(700, CHAT, "MENU")
    for round_ in range(3):
        update = payloads.tg_text(700 + round_, CHAT, "MENU")
        answers = concurrently(4, lambda u=update: post_update(app.test_client(), u))
        assert [a.status_code for a in answers] == [200] * 4
        outcomes = sorted(a.get_json()["outcome"] for a in answers)
        assert outcomes == ["duplicate"] * 3 + ["processed"]
    assert inbound_count(db) == 3 and len(rows(db, kind="reply")) == 3


@SQLITE_ONLY
def test_logs_carry_neither_text_nor_chat_ids(client: FlaskClient, family: Demo, db: DbEngine,
                                              sender: Sender, caplog: pytest.LogCaptureFixture,
                                              tg: FakeTelegram) -> None:
    chat = 81234567890
    link(db, family.ids["Rina"], "telegram", str(chat))
    tg.block(chat)
    with caplog.at_level(logging.DEBUG, logger="bot"):
        post_update(client, payloads.tg_text(800, chat, "KABAR rahasia keluarga"))
        _send_all(sender, db)
    logged = caplog.text
    assert "telegram update 800" in logged and "failed for good" in logged
    assert str(chat) not in logged and "rahasia" not in logged


# --- outbound -----------------------------------------------------------------------


def _queue(db: DbEngine, config: Config, clock: Clock, member_id: int, *texts: str,
           kind: str = "relay") -> None:
    with session_scope(db) as session:
        queue_messages(session, [Outbound([Raw(t)], member_id=member_id, kind=kind)
                                 for t in texts], now=clock(), config=config)


def test_permanent_errors_fail_at_once_and_mark_the_chat(
        family: Demo, db: DbEngine, tg_config: Config, clock: Clock, sender: Sender,
        tg: FakeTelegram) -> None:
    link(db, family.ids["Rina"], "telegram", "601", last_inbound_at=clock())
    link(db, family.ids["Warsini"], "telegram", "602", last_inbound_at=clock())
    tg.block(601)
    tg.unknown_chat(602)
    _queue(db, tg_config, clock, family.ids["Rina"], "satu", "dua")
    _queue(db, tg_config, clock, family.ids["Warsini"], "tiga")
    _send_all(sender, db)
    by_text = {r.text: r for r in rows(db)}
    assert by_text["satu"].status == "failed" and "403" in (by_text["satu"].error or "")
    assert by_text["satu"].attempts == 1
    assert by_text["dua"].status == "held"  # waits for Rina to write from somewhere
    assert by_text["tiga"].status == "failed"
    assert "chat not found" in (by_text["tiga"].error or "").lower()
    for chat in ("601", "602"):
        ident = identity(db, "telegram", chat)
        assert ident is not None and not ident.reachable
    assert len(tg.attempts) == 2


def test_429_waits_its_retry_after_and_500_backs_off(
        family: Demo, db: DbEngine, tg_config: Config, clock: Clock, sender: Sender,
        tg: FakeTelegram) -> None:
    link(db, family.ids["Rina"], "telegram", "701", last_inbound_at=clock())
    tg.inject("429", retry_after=1)
    tg.inject("500")
    _queue(db, tg_config, clock, family.ids["Rina"], "pertama", "kedua")
    _send_all(sender, db)
    assert tg.texts_for(701) == ["pertama", "kedua"]
    attempts = tg.attempts
    assert [a["status"] for a in attempts] == [429, 500, 200, 200]
    assert attempts[1]["time"] >= attempts[0]["time"] + 1.0  # not a moment early
    assert [r.attempts for r in rows(db)] == [2, 1]  # the 429 does not count as a failure


@SQLITE_ONLY
def test_long_messages_are_split_at_word_boundaries(
        family: Demo, db: DbEngine, tg_config: Config, clock: Clock, sender: Sender,
        tg: FakeTelegram) -> None:
    link(db, family.ids["Rina"], "telegram", "901", last_inbound_at=clock())
    text = " ".join(f"kata{i:05d}" for i in range(1000))  # 9,999 characters
    _queue(db, tg_config, clock, family.ids["Rina"], text, "sesudahnya")
    assert len(rows(db)) == 4
    _send_all(sender, db)
    pieces = tg.texts_for(901)
    assert len(pieces) == 4 and all(len(p) <= 4096 for p in pieces[:3])
    assert " ".join(pieces[:3]) == text and pieces[3] == "sesudahnya"


@SQLITE_ONLY
def test_one_bot_and_one_loop_survive_a_keep_alive_server(
        family: Demo, db: DbEngine, tg_config: Config, clock: Clock) -> None:
    with FakeTelegram(keep_alive=True) as alive:
        use_telegram(tg_config, alive)
        sender = Sender(db, tg_config, {"telegram": TelegramChannel(tg_config)})
        link(db, family.ids["Rina"], "telegram", "1000", last_inbound_at=clock())
        link(db, family.ids["Warsini"], "telegram", "1001", last_inbound_at=clock())
        for round_ in range(4):  # several sender rounds, like the worker's loop
            _queue(db, tg_config, clock, family.ids["Rina"], f"r{round_}")
            _queue(db, tg_config, clock, family.ids["Warsini"], f"w{round_}")
            _send_all(sender, db)
        assert alive.texts_for(1000) == [f"r{i}" for i in range(4)]
        assert alive.texts_for(1001) == [f"w{i}" for i in range(4)]
        assert alive.errors == []
        assert alive.connections <= 8  # connections were reused
        telegram.shutdown()


# --- set-up: webhook registration and long polling ----------------------------------


def _config_file(tmp_path: Path, config: Config, **server: str) -> str:
    server_public = server.get("public_url", config.server.public_url)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[server]\npublic_url = "{server_public}"\n'
        f'[database]\nurl = "{config.database.url}"\n'
        f'[telegram]\ntoken = "{config.telegram.token}"\n'
        f'webhook_secret = "{config.telegram.webhook_secret}"\n'
        f'api_base_url = "{config.telegram.api_base_url}"\n', encoding="utf-8")
    return str(path)


@SQLITE_ONLY
def test_cli_sets_and_deletes_the_webhook(tg_config: Config, tg: FakeTelegram,
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    path = _config_file(tmp_path, tg_config)
    assert cli_main(["telegram", "set-webhook", "--config", path]) == 0
    assert tg.webhook is not None
    assert tg.webhook["url"] == "https://bot.example.org/webhooks/telegram"
    assert tg.webhook["secret_token"] == SECRET
    assert set(json.loads(tg.webhook["allowed_updates"])) >= {"message", "my_chat_member"}
    assert "https://bot.example.org/webhooks/telegram" in capsys.readouterr().out
    assert cli_main(["telegram", "webhook-info", "--config", path]) == 0
    assert "pending_update_count: 0" in capsys.readouterr().out
    assert cli_main(["telegram", "delete-webhook", "--config", path]) == 0
    assert tg.webhook is None
    http = _config_file(tmp_path, tg_config, public_url="http://127.0.0.1:8080")
    assert cli_main(["telegram", "set-webhook", "--config", http]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("desmigratif: [server] public_url") and "\n" not in err


@SQLITE_ONLY
def test_cli_reports_telegram_refusals_in_one_line(tg_config: Config, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tg_config.telegram.token = "999:WRONG"
    path = _config_file(tmp_path, tg_config)
    assert cli_main(["telegram", "set-webhook", "--config", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("desmigratif: Telegram said:") and "\n" not in err
    assert "999:WRONG" not in err
    telegram.shutdown()


def test_long_polling_feeds_the_engine_like_the_webhook(
        family: Demo, db: DbEngine, engine: Engine, tg_config: Config, sender: Sender,
        tg: FakeTelegram) -> None:
    tg.queue_update(payloads.tg_start(20, CHAT, family.codes["Rina"]))
    tg.queue_update(payloads.tg_sticker(21, CHAT))
    offset = telegram.poll_once(db, engine, tg_config, None, timeout=0)
    assert offset == 22
    ident = identity(db, "telegram", str(CHAT))
    assert ident is not None and ident.member_id == family.ids["Rina"]
    # Telegram keeps unconfirmed updates: asking again from an old offset changes nothing.
    assert telegram.poll_once(db, engine, tg_config, 21, timeout=0) == 22
    assert telegram.poll_once(db, engine, tg_config, 22, timeout=0) == 22
    assert inbound_count(db) == 2
    _send_all(sender, db)
    assert tg.texts_for(CHAT)[-1] == say(NOT_TEXT)
    assert "getUpdates" in [c["method"] for c in tg.calls]


@SQLITE_ONLY
def test_timestamps_follow_the_engine_clock(client: FlaskClient, family: Demo, db: DbEngine,
                                            clock: Clock) -> None:
    link(db, family.ids["Rina"], "telegram", str(CHAT))
    post_update(client, payloads.tg_text(900, CHAT, "MENU"))
    ident = identity(db, "telegram", str(CHAT))
    assert ident is not None and ident.last_inbound_at is not None
    assert abs(ident.last_inbound_at.replace(tzinfo=clock().tzinfo) - clock()) < timedelta(
        seconds=1)
