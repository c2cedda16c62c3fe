"""The outbound queue under faults: nothing lost, nothing twice, order kept, limits obeyed.

The real sender loop and the real adapters (python-telegram-bot, twilio-python) against
loopback fakes that fail on a fixed plan. The fakes record every attempt with the
instant it was answered, so "none early after a retry_after" is checked on their clock.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import col, func, select

from bot.channels import telegram
from bot.channels.base import Channel
from bot.channels.telegram import TelegramChannel
from bot.channels.whatsapp import WhatsAppChannel
from bot.config import Config
from bot.sender import Sender
from storage.db import session_scope
from storage.models import Outbox
from tests.fakes.support import use_telegram, use_twilio
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

# Checks of logic that does not depend on the database run on SQLite only.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def _close_bots() -> Iterator[None]:
    yield
    telegram.shutdown()


def _queue(db: DbEngine, channel: str, plan: list[tuple[str, str]], now: datetime) -> None:
    with session_scope(db) as session:
        session.add_all([Outbox(channel=channel, address=address, text=text, kind="relay",
                                priority=2, next_attempt_at=now, created_at=now)
                         for address, text in plan])


def _unsent(db: DbEngine) -> int:
    with session_scope(db) as session:
        return int(session.exec(select(func.count()).select_from(Outbox)
                                 .where(col(Outbox.status) != "sent")).one())


def _run(db: DbEngine, config: Config, channels: dict[str, Channel], timeout: float) -> Sender:
    """Run the sender loop on a thread until the outbox is all sent (or time runs out)."""
    sender = Sender(db, config, channels)
    thread = threading.Thread(target=sender.run_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while _unsent(db) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        sender.stop()
        thread.join(timeout=10)
    return sender


def _plan(chats: list[str], total: int) -> list[tuple[str, str]]:
    return [(chats[i % len(chats)], f"{chats[i % len(chats)]}/{i // len(chats):03d}")
            for i in range(total)]


def _by_recipient(items: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        grouped[str(item[key])].append(item)
    return grouped


def test_a_thousand_telegram_messages_through_429s_and_500s(db: DbEngine,
                                                            config: Config) -> None:
    chats = [str(7_000_000 + i) for i in range(100)]
    plan = _plan(chats, 1000)
    with FakeTelegram(keep_alive=True) as fake:
        use_telegram(config, fake)
        config.telegram.rate_per_s = 5000.0  # the fake enforces no limit in this test
        fake.fault_every("429", 10, retry_after=1)  # requests 10, 20, 30...
        fake.fault_every("500", 20, offset=5)  # requests 15, 35, 55...: one in twenty
        _queue(db, "telegram", plan, datetime.now().astimezone())
        sender = _run(db, config, {"telegram": TelegramChannel(config)}, timeout=45)
        attempts, sent = fake.attempts, fake.sent
        assert fake.errors == []
    assert _unsent(db) == 0
    # Every message exactly once, and in order for each chat.
    assert sorted(m["text"] for m in sent) == sorted(text for _, text in plan)
    expected = _by_recipient([{"to": a, "text": t} for a, t in plan], "to")
    got = _by_recipient(sent, "chat_id")
    assert {c: [m["text"] for m in got[c]] for c in chats} == {
        c: [m["text"] for m in expected[c]] for c in chats}
    # The plan really bit: about one attempt in ten was a 429, one in twenty a 500.
    statuses = [a["status"] for a in attempts]
    assert statuses.count(429) >= 100 and statuses.count(500) >= 50
    assert len(attempts) == 1000 + statuses.count(429) + statuses.count(500)
    # None early: after a 429 for a chat, nothing reached that chat before retry_after.
    for chat_attempts in _by_recipient(attempts, "to").values():
        for i, attempt in enumerate(chat_attempts):
            if attempt["status"] == 429:
                for later in chat_attempts[i + 1:]:
                    assert later["time"] >= attempt["time"] + attempt["retry_after"]
    assert sender.stats.sent == 1000 and sender.stats.failed == 0


def test_whatsapp_messages_through_429s_and_500s(db: DbEngine, config: Config) -> None:
    numbers = [f"whatsapp:+62812000{i:05d}" for i in range(40)]
    plan = _plan(numbers, 300)
    with FakeTwilio(keep_alive=True) as fake:
        use_twilio(config, fake)
        config.twilio.rate_per_s = 5000.0
        config.twilio.status_callback = False
        fake.fault_every("429", 10)
        fake.fault_every("500", 20, offset=5)
        _queue(db, "whatsapp", plan, datetime.now().astimezone())
        channel = WhatsAppChannel(config)
        _run(db, config, {"whatsapp": channel}, timeout=30)
        channel.close()
        sent = fake.sent
        assert fake.errors == []
    assert _unsent(db) == 0
    assert sorted(m["body"] for m in sent) == sorted(text for _, text in plan)
    for number in numbers:
        assert fake.bodies_for(number) == [t for a, t in plan if a == number]
    assert all(m["status_callback"] is None for m in sent)
    assert fake.rejected["429"] >= 30 and fake.rejected["500"] >= 15


@SQLITE_ONLY
def test_a_fake_that_enforces_telegrams_limits_never_says_429(db: DbEngine,
                                                              config: Config) -> None:
    chats = [str(8_000_000 + i) for i in range(30)]
    plan = _plan(chats, 90)  # three messages a chat: the per-chat limit binds too
    with FakeTelegram(keep_alive=True, per_chat_per_s=1, overall_per_s=30) as fake:
        use_telegram(config, fake)
        config.telegram.rate_per_s = 30.0
        config.telegram.rate_per_chat_per_s = 1.0
        _queue(db, "telegram", plan, datetime.now().astimezone())
        started = time.monotonic()
        _run(db, config, {"telegram": TelegramChannel(config)}, timeout=30)
        elapsed = time.monotonic() - started
        assert fake.rejected == {}
        assert len(fake.sent) == 90
    assert _unsent(db) == 0
    assert 2.0 < elapsed < 8.0  # paced (90 at 30/s), yet not needlessly slow
