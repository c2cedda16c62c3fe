"""The sender's rules with an in-process channel: order, retries, leases, splitting."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import col, select

from bot.channels.base import SendResult
from bot.config import Config
from bot.sender import RateLimiter, Sender, split_text
from storage.db import session_scope
from storage.models import Outbox
from tests.conftest import Clock


@dataclass
class ScriptedChannel:
    """A channel whose answers are scripted per call; records what it delivered."""

    name: str = "simulator"
    rate_per_s: float = 10_000.0
    rate_per_address_per_s: float | None = None
    max_length: int = 50
    script: list[SendResult] = field(default_factory=list)
    delivered: list[tuple[str, str]] = field(default_factory=list)

    def send(self, row: Outbox) -> SendResult:
        result = self.script.pop(0) if self.script else SendResult(ok=True, external_id="x")
        if result.ok:
            self.delivered.append((row.address, row.text))
        return result


def _queue(db: DbEngine, now: datetime, *items: tuple[str, str, int]) -> None:
    with session_scope(db) as session:
        for address, text, priority in items:
            session.add(Outbox(channel="simulator", address=address, text=text, priority=priority,
                               next_attempt_at=now, created_at=now))


def _statuses(db: DbEngine) -> list[tuple[str, str]]:
    with session_scope(db) as session:
        return [(r.text, r.status) for r in
                session.exec(select(Outbox).order_by(col(Outbox.id))).all()]


def test_sends_in_order_per_recipient_with_replies_first(db: DbEngine, config: Config,
                                                         clock: Clock) -> None:
    ch = ScriptedChannel()
    _queue(db, clock(), ("a", "bulk1", 8), ("a", "bulk2", 8), ("b", "b1", 8), ("a", "reply", 0))
    sender = Sender(db, config, {"simulator": ch}, clock=clock)
    sender.drain()
    texts_a = [t for addr, t in ch.delivered if addr == "a"]
    assert texts_a == ["reply", "bulk1", "bulk2"]
    assert all(s == "sent" for _, s in _statuses(db))


def test_one_message_in_flight_per_chat(db: DbEngine, config: Config, clock: Clock) -> None:
    """A claim never hands out two rows of one chat: sent together they could swap."""
    _queue(db, clock(), ("a", "relay", 2), ("b", "b1", 2), ("a", "reply", 0))
    sender = Sender(db, config, {"simulator": ScriptedChannel()}, clock=clock)
    first = sender.claim(clock())
    assert sorted((r.address, r.text) for r in first) == [("a", "reply"), ("b", "b1")]
    # While the reply is being sent, the older relay to the same chat waits for it.
    assert sender.claim(clock()) == []
    with session_scope(db) as session:
        for row in session.exec(select(Outbox).where(col(Outbox.status) == "sending")).all():
            row.status = "sent"
            session.add(row)
    assert [(r.address, r.text) for r in sender.claim(clock())] == [("a", "relay")]


def test_retry_after_is_honoured_and_order_kept(db: DbEngine, config: Config,
                                                clock: Clock) -> None:
    ch = ScriptedChannel(script=[SendResult(ok=False, retry_after=5, error="429")])
    _queue(db, clock(), ("a", "first", 5), ("a", "second", 5))
    sender = Sender(db, config, {"simulator": ch}, clock=clock, sleep=lambda s: None)
    sender.run_once()
    assert ch.delivered == []  # "second" waits behind "first"
    clock.advance(seconds=4)
    sender.run_once()
    assert ch.delivered == []  # not early
    clock.advance(seconds=2)
    sender.drain()
    assert [t for _, t in ch.delivered] == ["first", "second"]


def test_transient_errors_back_off_then_fail_with_reason(db: DbEngine, config: Config,
                                                         clock: Clock) -> None:
    config.sender.max_attempts = 3
    ch = ScriptedChannel(script=[SendResult(ok=False, error="500 server")] * 3)
    _queue(db, clock(), ("a", "x", 5))
    sender = Sender(db, config, {"simulator": ch}, clock=clock)
    for _ in range(3):
        sender.run_once()
        clock.advance(seconds=config.sender.backoff_max_s + 1)
    with session_scope(db) as session:
        row = session.exec(select(Outbox)).one()
        assert row.status == "failed" and row.attempts == 3 and "500" in (row.error or "")


def test_permanent_error_fails_at_once(db: DbEngine, config: Config, clock: Clock) -> None:
    ch = ScriptedChannel(script=[SendResult(ok=False, permanent=True, error="blocked")])
    _queue(db, clock(), ("a", "x", 5))
    Sender(db, config, {"simulator": ch}, clock=clock).run_once()
    assert _statuses(db) == [("x", "failed")]


def test_a_dead_senders_rows_are_taken_over_after_the_lease(db: DbEngine, config: Config,
                                                            clock: Clock) -> None:
    _queue(db, clock(), ("a", "x", 5))
    dead = Sender(db, config, {"simulator": ScriptedChannel()}, clock=clock, worker_id="dead")
    assert len(dead.claim(clock())) == 1  # claimed, then the process "dies"
    alive_ch = ScriptedChannel()
    alive = Sender(db, config, {"simulator": alive_ch}, clock=clock, worker_id="alive")
    alive.run_once()
    assert alive_ch.delivered == []  # still leased
    clock.advance(seconds=config.sender.lease_s + 1)
    alive.run_once()
    assert [t for _, t in alive_ch.delivered] == ["x"]


def test_long_messages_are_split_at_words(db: DbEngine, config: Config, clock: Clock) -> None:
    ch = ScriptedChannel(max_length=50)
    text = " ".join(f"kata{i}" for i in range(40))
    _queue(db, clock(), ("a", text, 5))
    Sender(db, config, {"simulator": ch}, clock=clock).drain()
    pieces = [t for _, t in ch.delivered]
    assert len(pieces) > 1 and all(len(p) <= 50 for p in pieces)
    assert " ".join(pieces) == text


def test_split_text() -> None:
    assert split_text("abc", 10) == ["abc"]
    assert split_text("a" * 25, 10) == ["a" * 10, "a" * 10, "a" * 5]
    assert split_text("line one\nline two", 12) == ["line one", "line two"]


def test_rate_limiter_never_exceeds_its_rate() -> None:
    now = [0.0]
    lim = RateLimiter(30, clock=lambda: now[0])
    sent = 0
    while now[0] < 10:
        if lim.wait_time() == 0:
            lim.take()
            sent += 1
        else:
            now[0] += lim.wait_time()
    assert 300 <= sent <= 331  # 30/s for 10 s, plus the first second's burst
    lim.pause(5)
    assert lim.wait_time() >= 4.9


def test_sending_status_survives_cancel(db: DbEngine, config: Config, clock: Clock) -> None:
    _queue(db, clock(), ("a", "x", 5))
    ch = ScriptedChannel()
    sender = Sender(db, config, {"simulator": ch}, clock=clock)
    (row,) = sender.claim(clock())
    with session_scope(db) as session:
        r = session.get(Outbox, row.id)
        assert r is not None
        r.status = "cancelled"
        session.add(r)
    sender._settle(row, SendResult(ok=True), clock() + timedelta(seconds=1))
    assert _statuses(db) == [("x", "cancelled")]
