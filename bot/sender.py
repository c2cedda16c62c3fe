"""The outbound sender: claims due outbox rows, delivers them, records the outcome.

Rows are claimed in a short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
SQLite's ``BEGIN IMMEDIATE`` serialises claimers), sent outside any transaction, and
settled one by one. A claimer that dies leaves its rows "sending" until their lease ends;
then another sender takes them again, so at most the in-flight messages of a killed
process are repeated. A row waits while an older row for the same person at the same or
higher priority is unfinished: order is kept per recipient, and replies still overtake
bulk messages.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, update
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from bot.channels.base import Channel, SendResult
from bot.config import Config
from bot.privacy import mask_phone
from storage.db import is_postgres, session_scope
from storage.models import ChannelIdentity, Member, Outbox

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    """Return the current instant in UTC."""
    return datetime.now(UTC)


class RateLimiter:
    """A token bucket: at most `rate` per second, with a burst of about one second."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, burst if burst is not None else rate)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self.paused_until = 0.0
        self.lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_time(self) -> float:
        """Return seconds until a token is available (0 when one is)."""
        with self.lock:
            now = self.clock()
            if now < self.paused_until:
                return self.paused_until - now
            self._refill(now)
            # The epsilon keeps float rounding from asking for a wait of 1e-13 s forever.
            return 0.0 if self.tokens >= 1 - 1e-9 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        """Spend one token (call after wait_time() returned 0)."""
        with self.lock:
            self._refill(self.clock())
            self.tokens -= 1

    def pause(self, seconds: float) -> None:
        """Stop handing out tokens for a while (the platform said 429)."""
        with self.lock:
            self.paused_until = max(self.paused_until, self.clock() + seconds)
            self.tokens = 0


def split_text(text: str, limit: int) -> list[str]:
    """Split a long message at word (or line) boundaries into pieces of at most limit."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = rest.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit  # one enormous word: cut it
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


@dataclass
class SenderStats:
    """Counts since the sender started."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)


class Sender:
    """Delivers the outbox through the configured channels."""

    def __init__(self, db: DbEngine, config: Config, channels: dict[str, Channel], *,
                 clock: Callable[[], datetime] = utcnow, worker_id: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.db = db
        self.config = config
        self.channels = channels
        self.clock = clock
        self.sleep = sleep
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        # Limiters read the sender's clock, so a test's fixed clock drives them too.
        self._ticks = lambda: self.clock().timestamp()
        self.limiters = {name: RateLimiter(ch.rate_per_s, clock=self._ticks)
                         for name, ch in channels.items()}
        self.address_limiters: dict[tuple[str, str], RateLimiter] = {}
        self.stats = SenderStats()
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()

    # --- claiming ---------------------------------------------------------------------

    def reap(self, now: datetime) -> int:
        """Put rows whose sender died (lease over) back in the queue."""
        with session_scope(self.db) as session:
            result = session.exec(  # type: ignore[call-overload]
                update(Outbox)
                .where(col(Outbox.status) == "sending", col(Outbox.claimed_until) < now)
                .values(status="queued", claimed_by=None, claimed_until=None)
            )
            return int(result.rowcount or 0)

    def claim(self, now: datetime, limit: int | None = None) -> list[Outbox]:
        """Claim due rows for this sender, oldest first within priority."""
        limit = limit or self.config.sender.batch_size
        older = aliased(Outbox)
        blocked = exists().where(and_(
            col(older.channel) == col(Outbox.channel), col(older.address) == col(Outbox.address),
            col(older.status).in_(("queued", "sending")), col(older.id) < col(Outbox.id),
            col(older.priority) <= col(Outbox.priority),
        ))
        query = (
            select(Outbox)
            .where(Outbox.status == "queued", col(Outbox.next_attempt_at) <= now,
                   Outbox.channel != "", col(Outbox.channel).in_(list(self.channels)), ~blocked)
            .order_by(col(Outbox.priority), col(Outbox.id))
            .limit(limit)
        )
        with session_scope(self.db) as session:
            if is_postgres(self.db):
                query = query.with_for_update(skip_locked=True, of=Outbox)  # type: ignore[arg-type]
            rows = list(session.exec(query).all())
            until = now + timedelta(seconds=self.config.sender.lease_s)
            for row in rows:
                row.status, row.claimed_by, row.claimed_until = "sending", self.worker_id, until
                session.add(row)
            return rows

    # --- sending ----------------------------------------------------------------------

    def _address_limiter(self, channel: Channel, address: str) -> RateLimiter | None:
        if channel.rate_per_address_per_s is None:
            return None
        key = (channel.name, address)
        lim = self.address_limiters.get(key)
        if lim is None:
            if len(self.address_limiters) > 50_000:
                self.address_limiters.clear()  # bounded memory; losing history is harmless
            lim = RateLimiter(channel.rate_per_address_per_s, burst=1.0, clock=self._ticks)
            self.address_limiters[key] = lim
        return lim

    def run_once(self, now: datetime | None = None) -> int:
        """Claim and deliver one batch; return how many rows were settled."""
        now = now or self.clock()
        self.reap(now)
        rows = self.claim(now)
        done = 0
        for row in rows:
            if self.stop_event.is_set():
                self._release(row, self.clock())
                continue
            channel = self.channels[row.channel]
            per_address = self._address_limiter(channel, row.address)
            if per_address is not None and per_address.wait_time() > 0:
                # This chat had a message a moment ago: come back to it, don't block others.
                self._release(row, self.clock() + timedelta(seconds=per_address.wait_time()))
                continue
            limiter = self.limiters[row.channel]
            wait = limiter.wait_time()
            if wait > 1.0:
                # Paused by a 429: put the row back for later instead of holding the batch.
                self._release(row, self.clock() + timedelta(seconds=wait))
                continue
            while wait > 0 and not self.stop_event.is_set():
                self.sleep(min(wait, 0.5))
                wait = limiter.wait_time()
            limiter.take()
            if per_address is not None:
                per_address.take()
            result = self._deliver(channel, row)
            if result.retry_after:
                limiter.pause(result.retry_after)
                if per_address is not None:
                    per_address.pause(result.retry_after)
            self._settle(row, result, self.clock())
            done += 1
        return done

    def _deliver(self, channel: Channel, row: Outbox) -> SendResult:
        pieces = split_text(row.text, channel.max_length) if not row.template else [row.text]
        if len(pieces) == 1:
            try:
                return channel.send(row)
            except Exception as exc:  # an adapter bug must not kill the sender loop
                log.exception("channel %s failed unexpectedly", channel.name)
                return SendResult(ok=False, error=f"internal: {type(exc).__name__}")
        # A long message goes as several; a retry resends only what did not go yet.
        start = int((row.error or "").split("part ")[-1]) if (row.error or "").startswith(
            "sent part ") else 0
        ids: list[str] = []
        for i, piece in enumerate(pieces[start:], start):
            part_row = Outbox(**{**row.model_dump(), "text": piece})
            try:
                result = channel.send(part_row)
            except Exception as exc:
                log.exception("channel %s failed unexpectedly", channel.name)
                result = SendResult(ok=False, error=f"internal: {type(exc).__name__}")
            if not result.ok:
                if i > start:
                    return SendResult(ok=False, retry_after=result.retry_after,
                                      permanent=result.permanent, unreachable=result.unreachable,
                                      error=f"sent part {i}")
                return result
            if result.external_id:
                ids.append(result.external_id)
        return SendResult(ok=True, external_id=",".join(ids)[:64] or None)

    def _release(self, row: Outbox, when: datetime) -> None:
        with session_scope(self.db) as session:
            session.exec(  # type: ignore[call-overload]
                update(Outbox).where(col(Outbox.id) == row.id, col(Outbox.status) == "sending")
                .values(status="queued", claimed_by=None, claimed_until=None,
                        next_attempt_at=when)
            )

    def backoff(self, attempts: int) -> float:
        """Return the delay before attempt number `attempts + 1` (exponential, jittered)."""
        base = self.config.sender.backoff_base_s * (2 ** max(0, attempts - 1))
        return min(self.config.sender.backoff_max_s, base) * random.uniform(0.5, 1.0)

    def _settle(self, row: Outbox, result: SendResult, now: datetime) -> None:
        with session_scope(self.db) as session:
            current = session.get(Outbox, row.id)
            if current is None or current.status != "sending":
                return  # erased or cancelled meanwhile
            current.claimed_by, current.claimed_until = None, None
            if result.ok:
                current.status, current.sent_at, current.error = "sent", now, None
                current.external_id = result.external_id
                current.attempts += 1
                self.stats.sent += 1
                self.stats.by_channel[row.channel] = self.stats.by_channel.get(row.channel, 0) + 1
            elif result.window_closed:
                # WhatsApp outside 24 hours: keep it until the person writes again.
                current.status, current.error = "held", "outside the 24-hour window"
            elif result.permanent:
                current.status, current.error, current.sent_at = "failed", result.error, now
                current.attempts += 1
                self.stats.failed += 1
                log.info("delivery to %s failed for good: %s", mask_phone(row.address),
                         result.error)
                if result.unreachable or result.opted_out:
                    self._mark_unreachable(session, row, result)
            else:
                if not (result.error or "").startswith("sent part"):
                    current.attempts += 1
                current.error = (result.error or "")[:300]
                if result.error and result.error.startswith("sent part"):
                    current.attempts += 1
                if current.attempts >= self.config.sender.max_attempts:
                    current.status, current.sent_at = "failed", now
                    self.stats.failed += 1
                else:
                    delay = result.retry_after if result.retry_after else self.backoff(
                        current.attempts)
                    current.status = "queued"
                    current.next_attempt_at = now + timedelta(seconds=delay)
                    self.stats.retried += 1
            session.add(current)

    def _mark_unreachable(self, session: Session, row: Outbox, result: SendResult) -> None:
        identity = session.exec(
            select(ChannelIdentity).where(ChannelIdentity.channel == row.channel,
                                          ChannelIdentity.address == row.address)
        ).first()
        if identity is not None:
            identity.reachable = False
            identity.unreachable_reason = (result.error or "")[:120]
            session.add(identity)
        if result.opted_out and row.member_id:
            member = session.get(Member, row.member_id)
            if member is not None:
                member.opted_out = True
                session.add(member)

    # --- the loop ---------------------------------------------------------------------

    def run_forever(self) -> None:
        """Send until stop() is called, polling the outbox when idle."""
        log.info("sender %s started for %s", self.worker_id, ", ".join(sorted(self.channels)))
        while not self.stop_event.is_set():
            try:
                n = self.run_once()
            except Exception:
                log.exception("sender loop error; retrying shortly")
                n = 0
            if n == 0:
                self.wake_event.wait(self.config.sender.poll_interval_s)
                self.wake_event.clear()

    def drain(self, *, timeout: float = 30.0) -> int:
        """Send everything due now (for CLI commands and tests); return how many."""
        total = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.run_once()
            total += n
            if n == 0:
                break
        return total

    def stop(self) -> None:
        """Ask the loop to finish its current message and stop."""
        self.stop_event.set()
        self.wake_event.set()
