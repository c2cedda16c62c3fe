"""The inbound queue: a webhook stores what it accepts and answers; the worker processes it.

Why: a platform waits for our answer (Twilio gives up after 15 s; Telegram slows down and
retries), and a burst, such as a village answering a broadcast at once, must not make
every webhook wait for the engine. With ``[server] inbound = "queue"`` (the default) the
web process checks the request (secret or signature, then the shape of the body), stores
the message with one INSERT and answers 200. The worker (``desmigratif worker``, which
``serve`` starts) claims stored messages and runs each through the engine exactly as an
inline webhook would, then deletes it.

What it guarantees:
- nothing acknowledged is lost: the row is committed before the 200;
- nothing is processed twice: a redelivery while the message waits is dropped by the
  unique (channel, external_id); after it was processed, by the engine's inbound record;
- a chat's messages are processed one at a time, in the order they were stored, whatever
  the number of workers: only the oldest row of a chat can be claimed, and it stays in
  the table (leased) until it has been processed;
- a worker killed mid-batch: its rows become claimable again when their lease runs out;
  the engine's inbound record turns a second run of any that had committed into a no-op.

The table holds a message's text for seconds, not days: rows are deleted once handled.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.engine import URL, Connection
from sqlalchemy.engine import Engine as DbEngine

from bot import loops
from bot.messages import Inbound
from bot.privacy import mask_phone
from storage.db import dialect_insert, is_postgres, make_engine
from storage.models import InboundQueue

log = logging.getLogger(__name__)

QUEUE = InboundQueue.__table__  # type: ignore[attr-defined]
# How long a claimed row stays the claimer's: far longer than a batch takes (50 messages at
# a few ms each), short enough that a killed worker's messages are soon picked up again.
LEASE_S = 60.0
BATCH = 50
MAX_ATTEMPTS = 8  # then the message is given up (logged): the engine itself keeps failing
POLL_S = 0.1

_EARLIER = QUEUE.alias("earlier")
# A row can be claimed when it is due and no older row of its chat is still in the table
# (waiting, or leased by a worker that has not finished it).
_HEAD = ~select(literal(1)).where(_EARLIER.c.chat_key == QUEUE.c.chat_key,
                                  _EARLIER.c.id < QUEUE.c.id).exists()


def utcnow() -> datetime:
    """Return the current instant in UTC."""
    return datetime.now(UTC)


# --- the web side ---------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def queue_file(url: URL) -> Path | None:
    """Return the SQLite file that holds the queue of a database, None when it is in it.

    SQLite lets one connection write to a file at a time, and the engine holds that lock
    for a whole message: a webhook storing into the same file would wait behind the
    worker (measured: 213 webhooks/s, p50 18 ms). So on SQLite the queue is a file of its
    own beside the database (``desmigratif-inbox.db`` for ``desmigratif.db``), where only
    webhooks and the worker's claims write. PostgreSQL locks rows: there the queue is the
    ``inboundqueue`` table of the database itself.
    """
    if url.get_backend_name() != "sqlite" or not url.database or \
            url.database == ":memory:" or url.database.startswith("file:"):
        return None
    path = Path(url.database)
    return path.with_name(f"{path.stem}-inbox{path.suffix or '.db'}")


_engines: dict[tuple[int, str], DbEngine] = {}
_engines_lock = threading.Lock()


def queue_db(db: DbEngine) -> DbEngine:
    """Return the engine of the inbound queue of a database (made once per process)."""
    path = queue_file(db.url)
    if path is None:
        return db
    # Per process: a connection pool must not cross gunicorn's fork.
    key = (os.getpid(), str(path))
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = make_engine(f"sqlite:///{path}")
            # A spool, not a schema: what it holds lives for seconds, so it is created
            # where it is missing rather than migrated.
            QUEUE.create(engine, checkfirst=True)
            _engines[key] = engine
        return engine


def prepare(db: DbEngine) -> None:
    """Make the queue where it is missing, and close what that opened (serve does this
    before it forks its processes, so that none of them has to)."""
    queue = queue_db(db)
    if queue is not db:
        queue.dispose()


def accept(db: DbEngine, *, channel: str, external_id: str, chat_key: str,
           payload: str | dict[str, Any], now: datetime) -> bool:
    """Store one message for the worker; False when the same one is already waiting.

    `db` is the application's database; the message goes to its queue (queue_db).
    `payload` is JSON, as text or to be serialised.
    """
    if not isinstance(payload, str):
        payload = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    values = (channel, external_id[:80], chat_key[:100], payload)
    path = queue_file(db.url)
    if path is not None:
        spool = _spool(db, path)
        try:
            return spool.insert(*values, now)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            # The file was made (by another process?) without its table yet.
            QUEUE.create(queue_db(db), checkfirst=True)
            return spool.insert(*values, now)
    queue = queue_db(db)
    with queue.begin() as conn:
        # RETURNING, not rowcount: drivers differ on the rowcount of a skipped insert.
        return conn.execute(_accept_statement(queue), {
            "channel": channel, "external_id": values[1], "chat_key": values[2],
            "payload": payload, "received_at": now, "available_at": now, "attempts": 0,
        }).first() is not None


_accept_statements: dict[str, Any] = {}


def _accept_statement(queue: DbEngine) -> Any:
    """Return the INSERT of accept() for the queue's database, built once: building a
    statement costs more than running it (SQLAlchemy's coercions and cache key)."""
    stmt = _accept_statements.get(queue.dialect.name)
    if stmt is None:
        stmt = (dialect_insert(queue, QUEUE)
                .on_conflict_do_nothing(index_elements=["channel", "external_id"])
                .returning(QUEUE.c.id))
        _accept_statements[queue.dialect.name] = stmt
    return stmt


class _Spool:
    """The SQLite queue file as the web process writes it: the driver itself, one
    connection per process and thread.

    Every webhook does this, and through SQLAlchemy (pool checkout, events, the compiled
    statement, the result) it cost four times the INSERT and COMMIT themselves (223 against
    54 us measured). Same settings as storage.db's engines; times written the way
    SQLAlchemy's SQLite DATETIME stores them, which the worker reads back (tested).
    """

    SQL = ("INSERT INTO inboundqueue (channel, external_id, chat_key, payload, received_at, "
           "available_at, attempts) VALUES (?, ?, ?, ?, ?, ?, 0) "
           "ON CONFLICT (channel, external_id) DO NOTHING RETURNING id")

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        for pragma in ("journal_mode=WAL", "busy_timeout=30000", "synchronous=NORMAL"):
            self.conn.execute(f"PRAGMA {pragma}")

    def insert(self, channel: str, external_id: str, chat_key: str, payload: str,
               now: datetime) -> bool:
        stamp = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        cur = self.conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                stored = cur.execute(self.SQL, (channel, external_id, chat_key, payload,
                                                stamp, stamp)).fetchone() is not None
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        finally:
            cur.close()
        return stored


_spools = threading.local()


def _spool(db: DbEngine, path: Path) -> _Spool:
    found = getattr(_spools, "by_key", None)
    if found is None:
        found = _spools.by_key = {}
    key = (os.getpid(), path)  # a connection must not cross gunicorn's fork
    spool = found.get(key)
    if spool is None:
        if not path.exists():
            # Made once, by whichever process comes first. Not in every web process:
            # an engine and a DDL check there cost each one 7 MB of its own memory.
            queue_db(db)
        spool = found[key] = _Spool(path)
    return spool


def whatsapp_payload(inbound: Inbound) -> dict[str, Any]:
    """Return what is stored of a WhatsApp message (the parsed form, not the form)."""
    return {"address": inbound.address, "text": inbound.text, "kind": inbound.kind,
            "profile_name": inbound.profile_name}


def waiting(conn: Connection, now: datetime) -> tuple[int, float]:
    """Return how many messages wait in the queue and the age of the oldest, in seconds."""
    count, oldest = conn.execute(select(func.count(), func.min(QUEUE.c.received_at))).one()
    if not count or oldest is None:
        return 0, 0.0
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(count), max(0.0, (now - oldest).total_seconds())


# --- the worker side ------------------------------------------------------------------


@dataclass
class InboxStats:
    """What one worker has done, for logs and tests."""

    processed: int = 0
    retried: int = 0
    given_up: int = 0


class InboxWorker:
    """Claims stored messages and runs them through the engine, oldest first per chat."""

    def __init__(self, engine: Any, *, worker_id: str | None = None,
                 on_processed: Callable[[], None] | None = None,
                 batch: int = BATCH, lease_s: float = LEASE_S) -> None:
        self.engine = engine
        self.db: DbEngine = engine.db
        self.queue = queue_db(engine.db)
        self.config = engine.config
        self.worker_id = worker_id or f"inbox-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.on_processed = on_processed
        self.batch = batch
        self.lease_s = lease_s
        self.stats = InboxStats()
        self.stop_event = threading.Event()

    # --- one round --------------------------------------------------------------------

    def claim(self, now: datetime) -> list[Any]:
        """Lease up to a batch of claimable rows (one per chat), oldest first."""
        with self.queue.connect() as conn:
            # Nothing waiting (most of the time): one index probe, no write lock taken.
            probe = select(QUEUE.c.id).where(QUEUE.c.available_at <= now).limit(1)
            if conn.execute(probe).first() is None:
                return []
        due = (select(QUEUE.c.id).where(QUEUE.c.available_at <= now, _HEAD)
               .order_by(QUEUE.c.id).limit(self.batch))
        if is_postgres(self.queue):
            due = due.with_for_update(skip_locked=True, of=QUEUE)
        claim = (update(QUEUE).where(QUEUE.c.id.in_(due.scalar_subquery()))
                 .values(available_at=now + timedelta(seconds=self.lease_s),
                         attempts=QUEUE.c.attempts + 1)
                 .returning(QUEUE.c.id, QUEUE.c.channel, QUEUE.c.external_id,
                            QUEUE.c.payload, QUEUE.c.received_at, QUEUE.c.attempts))
        with self.queue.begin() as conn:
            rows = list(conn.execute(claim).all())
        rows.sort(key=lambda r: r.id)
        return rows

    def run_once(self, now: datetime | None = None) -> int:
        """Process one batch; return how many messages were taken from the queue."""
        rows = self.claim(now or self.engine.clock())
        if not rows:
            return 0
        done: list[int] = []
        try:
            for row in rows:
                if self._process(row):
                    done.append(row.id)
        finally:
            # Deleting ends the lease: the chat's next message can be claimed. Rows kept
            # (a failure) wait for their retry time, their chat behind them.
            if done:
                with self.queue.begin() as conn:
                    conn.execute(delete(QUEUE).where(QUEUE.c.id.in_(done)))
            if self.on_processed is not None:
                self.on_processed()
        return len(done)

    def _process(self, row: Any) -> bool:
        """Run one stored message through the engine; False to keep it for a retry."""
        try:
            outcome = self._handle(row)
        except Exception:
            return self._failed(row)
        self.stats.processed += 1
        _count(row.channel, outcome)
        return True

    def _handle(self, row: Any) -> str:
        data = json.loads(row.payload)
        if row.channel == "telegram":
            from bot.channels import telegram

            try:
                return telegram.process_update(self.db, self.engine, self.config, data)
            except telegram.MalformedUpdate as exc:
                # Our shape check let it through and python-telegram-bot cannot read it:
                # nothing can be done with it later either.
                log.warning("telegram update %s given up: %s", row.external_id, exc)
                return "malformed"
        if row.channel == "whatsapp":
            inbound = Inbound(channel="whatsapp", address=data["address"], text=data["text"],
                              external_id=row.external_id, received_at=_aware(row.received_at),
                              kind=data["kind"], profile_name=data.get("profile_name"))
            result = self.engine.handle(inbound)
            if result.duplicate:
                return "duplicate"
            log.info("whatsapp message %s from %s: %s", row.external_id,
                     mask_phone(inbound.address), result.outcome)
            return "error" if result.outcome == "error" else "processed"
        log.warning("inbound queue row %s of unknown channel %r given up", row.id, row.channel)
        return "malformed"

    def _failed(self, row: Any) -> bool:
        """Keep a row whose processing raised, for a later retry, or give it up."""
        if row.attempts >= MAX_ATTEMPTS:
            log.exception("%s message %s given up after %d attempts", row.channel,
                          row.external_id, row.attempts)
            self.stats.given_up += 1
            _count(row.channel, "given_up")
            return True
        delay = min(300.0, 2.0 ** row.attempts)
        log.exception("%s message %s failed (attempt %d): retried in %.0f s", row.channel,
                      row.external_id, row.attempts, delay)
        with self.queue.begin() as conn:
            conn.execute(update(QUEUE).where(QUEUE.c.id == row.id)
                         .values(available_at=self.engine.clock() + timedelta(seconds=delay)))
        self.stats.retried += 1
        return False

    # --- the loop ---------------------------------------------------------------------

    def run_forever(self) -> None:
        """Process stored messages until stop() is called, polling when idle."""
        log.info("inbox %s started", self.worker_id)
        loops.run_until_stopped("inbox", self.run_once, self.stop_event,
                                lambda: self.stop_event.wait(POLL_S))

    def drain(self, *, timeout: float = 30.0) -> int:
        """Process everything claimable now (for CLI commands and tests); return how many."""
        return loops.drain(self.run_once, timeout=timeout)

    def stop(self) -> None:
        """Ask the loop to finish its current batch and stop."""
        self.stop_event.set()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _count(channel: str, outcome: str) -> None:
    from bot import metrics

    metrics.inbound_processed(channel, outcome)
