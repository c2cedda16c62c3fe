"""The outbound sender: claims due outbox rows, delivers them, records the outcome.

Rows are claimed in a short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
SQLite's ``BEGIN IMMEDIATE`` serialises claimers), sent outside any transaction, and
settled in small groups. A claimer that dies leaves its rows "sending" until their lease
ends; then another sender takes them again, so at most the in-flight messages of a
killed process are repeated. A row waits while another row for the same chat is being
sent or is queued ahead of it (more urgent, or as urgent and older): one message in
flight per chat, order kept per recipient, and replies still overtake bulk messages.

Network channels have several messages in flight at once, each to a different chat (the
claim never hands out two rows of one chat's queue): an ``AsyncChannel`` (Telegram) gets
its part of a batch as one coroutine, paced and sent on its event loop; a
``ConcurrentChannel`` (WhatsApp) one worker-thread future per message. Each channel is
paced by a token bucket a little under its limit, Telegram chats by one more per chat,
and a ``WindowGuard`` makes sure no more requests than the limit can reach the platform
in any of its windows, whatever the network's timing. A 429
pauses the chat it concerns (or the whole channel, when the platform says so or when
most recent answers are 429s), and the message waits its ``retry_after``. Other
temporary failures retry with exponential backoff and jitter, up to
``[sender] max_attempts``; permanent ones fail at once, with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import and_, bindparam, exists, literal_column, or_, update
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from bot import loops, metrics
from bot.channels.base import AsyncChannel, Channel, ConcurrentChannel, SendResult
from bot.config import Config
from bot.outbox import cancel_unasked, hold_address, hold_for_window, split_text
from bot.privacy import mask_phone
from storage.db import is_postgres, session_scope
from storage.models import ChannelIdentity, Member, Outbox

_DUE_TYPE = Outbox.__table__.c.next_attempt_at.type  # type: ignore[attr-defined]
_ANY_DUE = (select(col(Outbox.id))
            .where(col(Outbox.status) == "queued", col(Outbox.next_attempt_at) <= bindparam("now"))
            .limit(1))

__all__ = ["RateLimiter", "Sender", "SenderStats", "split_text"]

log = logging.getLogger(__name__)

# Settle finished messages at least this often within a long (rate-limited) batch, so
# Twilio's status callbacks find the message id stored.
FLUSH_EVERY_S = 0.25
# What one send costs the sending process in CPU time, roughly (python-telegram-bot and
# httpx): with sends that take L seconds, about L / SEND_CPU_S + 1 in flight keep it busy.
SEND_CPU_S = 0.001
# A 429 for one chat pauses the whole channel when this many of the answers in the last
# second were 429s, and at least half of them: then it is the platform's overall limit.
BREAKER_MIN_429 = 5

_SENT = (
    update(Outbox)
    .where(col(Outbox.id) == bindparam("rid"), col(Outbox.status) == "sending")
    .values(status="sent", sent_at=bindparam("at"), external_id=bindparam("xid"), error=None,
            attempts=col(Outbox.attempts) + 1, claimed_by=None, claimed_until=None)
)
_RELEASE = (
    update(Outbox)
    .where(col(Outbox.id) == bindparam("rid"), col(Outbox.status) == "sending")
    .values(status="queued", claimed_by=None, claimed_until=None,
            next_attempt_at=bindparam("due"))
)


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
            now = self.clock()
            self.paused_until = max(self.paused_until, now + seconds)
            self.tokens = 0
            self.updated = max(self.updated, now)


class WindowGuard:
    """Never more than the platform's count of sends in any of its windows, for sure.

    A platform counts requests as they *arrive*, in a sliding window (Telegram: one
    second, or one message a second for a chat). Pacing start times is not enough: a
    first request that is slow to connect arrives late, next to the following ones. A
    request arrives before its answer comes back, so counting sends from their start
    until a window after their answer (and those in flight as arriving any moment)
    bounds what the platform can see in any window, whatever the network does.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = 1.0 if rate >= 1 else 1.0 / rate
        self.limit = max(1, math.floor(rate * self.window + 1e-9))
        self.clock = clock
        self.done: deque[float] = deque()
        self.in_flight = 0
        self.lock = threading.Lock()

    def wait_time(self) -> float:
        """Return seconds until one more send may start (0 when it may now)."""
        with self.lock:
            now = self.clock()
            while self.done and self.done[0] <= now - self.window:
                self.done.popleft()
            excess = self.in_flight + len(self.done) - self.limit + 1
            if excess <= 0:
                return 0.0
            if excess > len(self.done):
                return 0.005  # only answers still to come can free a place
            return self.done[excess - 1] + self.window - now + 1e-6

    def start(self) -> None:
        """Count a send that starts now."""
        with self.lock:
            self.in_flight += 1

    def finish(self) -> None:
        """Count the answer to a send, now."""
        with self.lock:
            self.in_flight = max(0, self.in_flight - 1)
            self.done.append(self.clock())


class _Breaker:
    """Count a channel's answers over the last second, to tell a global 429 storm."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, bool]] = deque()
        self.limited = 0

    def note(self, now: float, limited: bool) -> bool:
        """Record one answer; return True when the channel as a whole is being limited."""
        self.events.append((now, limited))
        self.limited += limited
        while self.events and self.events[0][0] <= now - 1.0:
            _, old = self.events.popleft()
            self.limited -= old
        return limited and self.limited >= BREAKER_MIN_429 \
            and self.limited * 2 >= len(self.events)


@dataclass
class SenderStats:
    """Counts since the sender started."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)


@dataclass
class _Batch:
    """One claimed batch on its way: messages in flight, outcomes to settle, rows to give back."""

    pending: dict[Future[SendResult], Outbox] = field(default_factory=dict)
    results: list[tuple[Outbox, SendResult, datetime]] = field(default_factory=list)
    releases: list[tuple[int, datetime]] = field(default_factory=list)
    done: int = 0
    flushed_at: float = field(default_factory=time.monotonic)

    def in_flight(self, channel: str) -> int:
        return sum(1 for row in self.pending.values() if row.channel == channel)


class Sender:
    """Delivers the outbox through the configured channels."""

    def __init__(self, db: DbEngine, config: Config, channels: dict[str, Channel], *,
                 clock: Callable[[], datetime] = utcnow, worker_id: str | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 lease_clock: Callable[[], datetime] | None = None) -> None:
        self.db = db
        self.config = config
        self.channels = channels
        self.clock = clock
        # Leases are compared between processes, so a sender whose clock is shifted (run-due
        # --at sends "as if" at another instant) stamps and checks them on the wall clock:
        # else the other senders take its rows at once, or it takes theirs. None: `clock`.
        self.lease_clock = lease_clock
        self.sleep = sleep
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        # Limiters read the sender's clock, so a test's fixed clock drives them too.
        self._ticks = lambda: self.clock().timestamp()
        # Network channels declare a small burst (1.5): platforms count sends in a sliding
        # window, where a bucket holding a second's worth would let twice the limit through
        # in one window; a bucket of 1.5 at 97 % of the rate stays under the limit in any
        # second (1.5 + 0.97 x 30 < 31) yet does not lose the time of a late wake-up.
        self.limiters = {name: RateLimiter(ch.rate_per_s, burst=getattr(ch, "burst", None),
                                           clock=self._ticks)
                         for name, ch in channels.items()}
        self.address_limiters: dict[tuple[str, str], RateLimiter] = {}
        # Channels that state their platform's limits get a guard that counts arrivals.
        self.guards = {name: WindowGuard(limit, clock=self._ticks)
                       for name, ch in channels.items()
                       if (limit := getattr(ch, "limit_per_s", None))}
        self.address_guards: dict[tuple[str, str], WindowGuard] = {}
        # Checked once: a runtime Protocol check costs tens of microseconds.
        self._concurrent = {name: isinstance(ch, ConcurrentChannel)
                            for name, ch in channels.items()}
        self._async = {name: isinstance(ch, AsyncChannel) for name, ch in channels.items()}
        self._latency: dict[str, float] = {}  # the shortest recent send, per channel
        # At most about a second's worth of sends per batch on a rate-limited channel, so
        # that a batch is settled (and its outcome safe) soon after it was sent.
        rates = [ch.rate_per_s for ch in channels.values()
                 if self._concurrent[ch.name] or self._async[ch.name]]
        self._claim_limit = min(config.sender.batch_size,
                                max(16, math.ceil(max(rates)))) if rates else None
        self._breakers = {name: _Breaker() for name in channels}
        self.stats = SenderStats()
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        # Finished sends, in the order they finished (cheaper than polling every future).
        self._finished: queue.SimpleQueue[Future[SendResult]] = queue.SimpleQueue()
        self._reaped_at = float("-inf")

    # --- claiming ---------------------------------------------------------------------

    def _lease_now(self, now: datetime) -> datetime:
        """Return the instant leases are stamped and checked at (see lease_clock)."""
        return self.lease_clock() if self.lease_clock is not None else now

    def _due_column(self) -> Any:
        """Return the due time as the claim compares it.

        SQLite, without statistics, would search by due time and then sort the whole
        backlog on every claim; the unary ``+`` (a no-op on the value) keeps it on the
        claim index, which it walks in order and leaves after one batch.
        """
        if is_postgres(self.db):
            return col(Outbox.next_attempt_at)
        return literal_column("+outbox.next_attempt_at", type_=_DUE_TYPE)

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
        # One message in flight per chat, in order: a row waits while another row for the
        # same chat is being sent, or is queued ahead of it (more urgent, or as urgent and
        # older). Two rows of one chat sent at once could arrive in either order.
        # ("status IN" first: the recipient index then reaches only the chat's unfinished
        # rows, not its whole history.)
        blocked = exists().where(and_(
            col(older.channel) == col(Outbox.channel), col(older.address) == col(Outbox.address),
            col(older.status).in_(("queued", "sending")), col(older.id) != col(Outbox.id),
            or_(col(older.status) == "sending",
                col(older.priority) < col(Outbox.priority),
                and_(col(older.priority) == col(Outbox.priority),
                     col(older.id) < col(Outbox.id))),
        ))
        due = (
            select(col(Outbox.id))
            .where(Outbox.status == "queued", self._due_column() <= now,
                   Outbox.channel != "", col(Outbox.channel).in_(list(self.channels)), ~blocked)
            # In the claim index's order (status, priority, next_attempt_at, id): the scan
            # stops after `limit` rows instead of sorting a whole backlog on every claim.
            .order_by(col(Outbox.priority), col(Outbox.next_attempt_at), col(Outbox.id))
            .limit(limit)
        )
        if is_postgres(self.db):
            due = due.with_for_update(skip_locked=True, of=Outbox)  # type: ignore[arg-type]
        # One statement claims and returns the rows (no read-then-write round trips).
        claim = (
            update(Outbox).where(col(Outbox.id).in_(due.scalar_subquery()))
            .values(status="sending", claimed_by=self.worker_id,
                    claimed_until=self._lease_now(now)
                    + timedelta(seconds=self.config.sender.lease_s))
            .returning(Outbox)
            .execution_options(synchronize_session=False)
        )
        with self.db.connect() as conn:
            # Nothing due (a quiet night with tomorrow's messages waiting): the due-time
            # index says so at once, without walking the queue or taking the write lock.
            if conn.execute(_ANY_DUE, {"now": now}).first() is None:
                return []
        with session_scope(self.db) as session:
            rows = list(session.scalars(claim).all())
        rows.sort(key=lambda r: (r.priority, r.id or 0))
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

    def _address_guard(self, channel: Channel, address: str) -> WindowGuard | None:
        limit = getattr(channel, "limit_per_address_per_s", None)
        if not limit:
            return None
        key = (channel.name, address)
        guard = self.address_guards.get(key)
        if guard is None:
            if len(self.address_guards) > 50_000:
                # Bounded memory: drop the chats with nothing in flight.
                self.address_guards = {k: g for k, g in self.address_guards.items()
                                       if g.in_flight}
            guard = WindowGuard(limit, clock=self._ticks)
            self.address_guards[key] = guard
        return guard

    def run_once(self, now: datetime | None = None) -> int:
        """Claim and deliver one batch; return how many rows were settled."""
        now = now or self.clock()
        if now.timestamp() - self._reaped_at >= 1.0:  # leases are long: once a second will do
            self.reap(self._lease_now(now))
            self._reaped_at = now.timestamp()
        rows = self.claim(now, self._claim_limit)
        if not rows:
            return 0
        batch = _Batch()
        # Rows of event-loop channels are paced and sent on their loop, a whole group at
        # once: one hand-over between threads per batch instead of two per message.
        groups: dict[str, list[Outbox]] = {}
        inline: list[Outbox] = []
        for row in rows:
            channel = self.channels[row.channel]
            if self._async[row.channel] and (row.template or len(row.text) <= channel.max_length):
                groups.setdefault(row.channel, []).append(row)
            else:
                inline.append(row)
        dispatched = [
            asyncio.run_coroutine_threadsafe(
                self._dispatch(self.channels[name], group),
                cast(AsyncChannel, self.channels[name]).loop)
            for name, group in groups.items()]
        try:
            for row in inline:
                self._collect(batch)
                if self.stop_event.is_set():
                    batch.releases.append((row.id or 0, self.clock()))
                    continue
                self._send_row(batch, row)
                if batch.results and time.monotonic() - batch.flushed_at > FLUSH_EVERY_S:
                    self._flush(batch)
            while batch.pending:
                self._collect(batch, block=True)
        finally:
            for future in dispatched:
                try:
                    part = future.result()
                except Exception:
                    log.exception("sending a batch failed; its messages go again after the lease")
                    continue
                batch.results.extend(part.results)
                batch.releases.extend(part.releases)
                batch.done += part.done
            self._flush(batch)
        return batch.done

    def _pace(self, channel: Channel, row: Outbox) -> tuple[str, float]:
        """Decide about one row now: ("go", 0) with tokens taken, ("wait", s) or ("later", s)."""
        per_address = self._address_limiter(channel, row.address)
        chat_guard = self._address_guard(channel, row.address)
        chat_wait = max(per_address.wait_time() if per_address is not None else 0.0,
                        chat_guard.wait_time() if chat_guard is not None else 0.0)
        if chat_wait > 0:
            # This chat had a message a moment ago: come back to it, don't block others.
            return "later", chat_wait
        limiter = self.limiters[row.channel]
        guard = self.guards.get(row.channel)
        wait_s = max(limiter.wait_time(), guard.wait_time() if guard is not None else 0.0)
        if wait_s > 1.0 or (wait_s > 0 and self.stop_event.is_set()):
            # Paused by a 429: put the row back for later instead of holding the batch.
            return "later", wait_s
        if wait_s > 0:
            return "wait", min(wait_s, 0.5)
        limiter.take()
        if per_address is not None:
            per_address.take()
        for counted in (guard, chat_guard):
            if counted is not None:
                counted.start()
        return "go", 0.0

    def _send_row(self, batch: _Batch, row: Outbox) -> None:
        """Pace one row and send it (in flight or inline), or give it back for later."""
        channel = self.channels[row.channel]
        concurrent = self._concurrent[row.channel] and bool(
            row.template or len(row.text) <= channel.max_length)
        if concurrent:
            # Wait for a free slot first: a token taken and then held would let two
            # sends go out together later.
            while batch.in_flight(row.channel) >= max(1, channel.max_in_flight):  # type: ignore[attr-defined]
                self._collect(batch, block=True)
        while True:
            decision, seconds = self._pace(channel, row)
            if decision == "go":
                break
            if decision == "later":
                batch.releases.append((row.id or 0, self.clock() + timedelta(seconds=seconds)))
                return
            self._wait(batch, seconds)
        if concurrent:
            future: Future[SendResult] = channel.submit(row)  # type: ignore[attr-defined]
            batch.pending[future] = row
            future.add_done_callback(self._finished.put)
        else:
            self._note(batch, row, self._deliver(channel, row))

    async def _dispatch(self, channel: Channel, rows: list[Outbox]) -> _Batch:
        """Pace and send a group of rows on the channel's event loop (several in flight)."""
        sender = cast(AsyncChannel, channel)
        batch = _Batch()
        # As many in flight as keep the loop busy (Little's law: the time a send waits
        # on the network over the CPU time it costs), up to the channel's maximum. More
        # than needed only makes the HTTP client's pool slower to search. The shortest
        # recent send time is the network's; longer ones were queued behind each other.
        latency = self._latency.get(channel.name, 3 * SEND_CPU_S)  # start narrow, widen
        width = min(max(1, sender.max_in_flight), max(2, math.ceil(latency / SEND_CPU_S) + 1))
        slots = asyncio.Semaphore(width)
        tasks: list[asyncio.Task[None]] = []

        async def send(row: Outbox) -> None:
            started = time.perf_counter()
            try:
                result = await sender.send_async(row)
            except Exception as exc:  # an adapter bug must not kill the sender loop
                log.exception("channel %s failed unexpectedly", row.channel)
                result = SendResult(ok=False, error=f"internal: {type(exc).__name__}")
            finally:
                slots.release()
            took = time.perf_counter() - started
            # The minimum, forgotten slowly (x2 in about 700 sends), so it follows change.
            self._latency[channel.name] = min(self._latency.get(channel.name, took) * 1.001,
                                              took)
            self._note(batch, row, result)

        for row in rows:
            if self.stop_event.is_set():
                batch.releases.append((row.id or 0, self.clock()))
                continue
            await slots.acquire()  # a free slot first, then the tokens (see _send_row)
            while True:
                decision, seconds = self._pace(channel, row)
                if decision != "wait":
                    break
                await asyncio.sleep(seconds)
            if decision == "later":
                slots.release()
                batch.releases.append((row.id or 0, self.clock() + timedelta(seconds=seconds)))
                continue
            tasks.append(asyncio.ensure_future(send(row)))
        if tasks:
            await asyncio.gather(*tasks)
        return batch

    def _wait(self, batch: _Batch, seconds: float) -> None:
        """Wait a little for tokens, waking early when a message in flight finishes."""
        if batch.pending:
            self._collect(batch, timeout=seconds)
        else:
            self.sleep(seconds)

    def _collect(self, batch: _Batch, *, block: bool = False,
                 timeout: float | None = None) -> None:
        """Take the outcomes of finished sends (waiting for one when `block` or `timeout`)."""
        if not batch.pending:
            return
        try:
            if block or timeout:
                future = self._finished.get(timeout=timeout)
            else:
                future = self._finished.get_nowait()
        except queue.Empty:
            return
        while True:
            row = batch.pending.pop(future, None)
            if row is not None:  # (None: left over from a batch that failed half-way)
                try:
                    result = future.result()
                except Exception as exc:  # an adapter bug must not kill the sender loop
                    log.exception("channel %s failed unexpectedly", row.channel)
                    result = SendResult(ok=False, error=f"internal: {type(exc).__name__}")
                self._note(batch, row, result)
            try:
                future = self._finished.get_nowait()
            except queue.Empty:
                return

    def _note(self, batch: _Batch, row: Outbox, result: SendResult) -> None:
        """Record an outcome for settling, and obey a 429 at once."""
        for counted in (self.guards.get(row.channel),
                        self.address_guards.get((row.channel, row.address))):
            if counted is not None:
                counted.finish()
        limited = bool(result.retry_after)
        global_storm = self._breakers[row.channel].note(self._ticks(), limited)
        if limited and result.retry_after:
            per_address = self.address_limiters.get((row.channel, row.address))
            if per_address is not None:
                per_address.pause(result.retry_after)
            if result.retry_scope != "address" or per_address is None or global_storm:
                self.limiters[row.channel].pause(result.retry_after)
        batch.results.append((row, result, self.clock()))
        batch.done += 1

    def _deliver(self, channel: Channel, row: Outbox) -> SendResult:
        pieces = split_text(row.text, channel.max_length) if not row.template else [row.text]
        if len(pieces) == 1:
            try:
                return channel.send(row)
            except Exception as exc:  # an adapter bug must not kill the sender loop
                log.exception("channel %s failed unexpectedly", channel.name)
                return SendResult(ok=False, error=f"internal: {type(exc).__name__}")
        # A long message goes as several; a retry resends only what did not go yet.
        # (Rows are split when queued; this is for one released to a shorter channel.)
        start = int((row.error or "").split("part ")[-1]) if (row.error or "").startswith(
            "sent part ") else 0
        per_address = self._address_limiter(channel, row.address)
        ids: list[str] = []
        for i, piece in enumerate(pieces[start:], start):
            if i > start and per_address is not None:
                while (pause := per_address.wait_time()) > 0 and not self.stop_event.is_set():
                    self.sleep(min(pause, 1.0))
                per_address.take()
            part_row = Outbox(**{**row.model_dump(), "text": piece})
            try:
                result = channel.send(part_row)
            except Exception as exc:
                log.exception("channel %s failed unexpectedly", channel.name)
                result = SendResult(ok=False, error=f"internal: {type(exc).__name__}")
            if not result.ok:
                if i > start:
                    return SendResult(ok=False, retry_after=result.retry_after,
                                      retry_scope=result.retry_scope,
                                      permanent=result.permanent, unreachable=result.unreachable,
                                      opted_out=result.opted_out,
                                      window_closed=result.window_closed,
                                      error=f"sent part {i}")
                return result
            if result.external_id:
                ids.append(result.external_id)
        return SendResult(ok=True, external_id=",".join(ids)[:64] or None)

    # --- settling ---------------------------------------------------------------------

    def _flush(self, batch: _Batch) -> None:
        """Settle what finished and give back what waits, in one transaction."""
        if not (batch.results or batch.releases):
            return
        results, releases = batch.results, batch.releases
        batch.results, batch.releases = [], []
        batch.flushed_at = time.monotonic()
        with session_scope(self.db) as session:
            if results:
                self._settle_rows(session, results)
            if releases:
                session.connection().execute(
                    _RELEASE, [{"rid": rid, "due": due} for rid, due in releases])

    def _release(self, row: Outbox, when: datetime) -> None:
        with session_scope(self.db) as session:
            session.connection().execute(_RELEASE, [{"rid": row.id, "due": when}])

    def backoff(self, attempts: int) -> float:
        """Return the delay before attempt number `attempts + 1` (exponential, jittered)."""
        base = self.config.sender.backoff_base_s * (2 ** max(0, attempts - 1))
        return min(self.config.sender.backoff_max_s, base) * random.uniform(0.5, 1.0)

    def _settle(self, row: Outbox, result: SendResult, now: datetime) -> None:
        with session_scope(self.db) as session:
            self._settle_rows(session, [(row, result, now)])

    def _settle_rows(self, session: Session,
                     entries: list[tuple[Outbox, SendResult, datetime]]) -> None:
        delivered = [(row, result, now) for row, result, now in entries if result.ok]
        if delivered:
            # The common case, in one statement for all: no need to load the rows.
            session.connection().execute(_SENT, [
                {"rid": row.id, "at": now, "xid": result.external_id}
                for row, result, now in delivered])
            self.stats.sent += len(delivered)
            for row, _, _ in delivered:
                self.stats.by_channel[row.channel] = self.stats.by_channel.get(row.channel, 0) + 1
                metrics.count_send(row.channel, "sent", retry=row.attempts > 0)
        entries = [entry for entry in entries if not entry[1].ok]
        if not entries:
            return
        query = select(Outbox).where(col(Outbox.id).in_([row.id for row, _, _ in entries]))
        if is_postgres(self.db):
            query = query.with_for_update()
        current = {r.id: r for r in session.exec(query).all()}
        for row, result, now in entries:
            cur = current.get(row.id)
            if cur is None or cur.status != "sending":
                continue  # erased or cancelled meanwhile
            self._apply(session, cur, result, now)
            metrics.count_send(cur.channel, metrics.send_result(cur.status, result),
                               retry=row.attempts > 0)

    def _apply(self, session: Session, current: Outbox, result: SendResult,
               now: datetime) -> None:
        current.claimed_by, current.claimed_until = None, None
        if result.ok:
            current.status, current.sent_at, current.error = "sent", now, None
            current.external_id = result.external_id
            current.attempts += 1
            self.stats.sent += 1
            self.stats.by_channel[current.channel] = \
                self.stats.by_channel.get(current.channel, 0) + 1
        elif result.window_closed:
            # WhatsApp outside 24 hours: keep it until the person writes again, and nudge.
            current.attempts += 1
            hold_for_window(session, current, now, self.config)
        elif result.permanent:
            current.status, current.error, current.sent_at = "failed", result.error, now
            current.attempts += 1
            self.stats.failed += 1
            log.info("delivery of message %s to %s failed for good: %s", current.id,
                     mask_phone(current.address), result.error)
            if result.unreachable or result.opted_out:
                self._mark_unreachable(session, current, result, now)
        else:
            # The platform said when to come back (429): that is not a failed attempt.
            if not result.retry_after:
                current.attempts += 1
            current.error = (result.error or "")[:300]
            if current.attempts >= self.config.sender.max_attempts:
                current.status, current.sent_at = "failed", now
                self.stats.failed += 1
                log.info("delivery of message %s to %s failed after %d attempts: %s",
                         current.id, mask_phone(current.address), current.attempts,
                         result.error)
            else:
                delay = result.retry_after if result.retry_after else self.backoff(
                    current.attempts)
                current.status = "queued"
                current.next_attempt_at = now + timedelta(seconds=delay)
                self.stats.retried += 1
        session.add(current)

    def _mark_unreachable(self, session: Session, row: Outbox, result: SendResult,
                          now: datetime) -> None:
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
                cancel_unasked(session, member.id or 0, now)
        # What else waits for this chat would fail the same way: keep it for when the
        # member writes again (from any chat).
        hold_address(session, row.channel, row.address, f"chat unreachable: {result.error}")

    # --- the loop ---------------------------------------------------------------------

    def run_forever(self) -> None:
        """Send until stop() is called, polling the outbox when idle."""
        log.info("sender %s started for %s", self.worker_id, ", ".join(sorted(self.channels)))

        def idle() -> None:
            self.wake_event.wait(self.config.sender.poll_interval_s)
            self.wake_event.clear()

        loops.run_until_stopped("sender", self.run_once, self.stop_event, idle)

    def drain(self, *, timeout: float = 30.0) -> int:
        """Send everything due now (for CLI commands and tests); return how many."""
        return loops.drain(self.run_once, timeout=timeout)

    def stop(self) -> None:
        """Ask the loop to finish its current message and stop."""
        self.stop_event.set()
        self.wake_event.set()

