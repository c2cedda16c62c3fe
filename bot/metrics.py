"""What operators see of a running bot: Prometheus metrics and ``desmigratif status``.

Two kinds of numbers:

- **Counters and histograms**, counted where things happen: the webhooks, the
  sender as it settles each message, the scheduler after each run. Under
  ``desmigratif serve`` they use prometheus-client's multiprocess mode: every process
  (each gunicorn worker, the worker subprocess) writes its own files under
  ``PROMETHEUS_MULTIPROC_DIR`` (set by ``serve`` before anything imports
  prometheus-client), and ``/metrics``, whichever gunicorn worker answers it, adds them
  all up. Without that variable (tests, ``desmigratif chat``) they live in the process.
- **Gauges read from the database at scrape time** (:class:`DatabaseCollector`): the
  outbox depth, the age of the oldest due message, open safety alerts, the scheduler
  lease and periodic jobs. The database is the truth for these, shared by every process.
  A few indexed queries, on connections of their own with short timeouts, so a slow or
  dead database never fails a scrape: ``desmigratif_db_up`` is then 0 and they are absent.

Nothing here may break what it measures: every counting helper swallows its own errors.
``desmigratif status`` prints :func:`status_snapshot`, the same questions and a few
longer ones, straight from the database.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Table, case, create_engine, func, select
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.pool import NullPool

from storage.models import (
    CHANNELS,
    Alert,
    InboundLog,
    JobRun,
    Outbox,
    SchedulerLease,
)

__all__ = [
    "CONTENT_TYPE", "DatabaseCollector", "DatabaseUnavailable", "MULTIPROCESS",
    "count_send", "engine_outcome", "format_status", "http_outcome", "observe_webhook",
    "read_engine", "reader_for", "render", "scheduler_ran", "scheduler_tick", "send_result",
    "status_outcome", "status_snapshot", "telegram_outcome",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")

# prometheus-client chose where values live when it was imported: in this process, or in
# per-process files under PROMETHEUS_MULTIPROC_DIR. What it chose is the truth here.
MULTIPROCESS: bool = bool(getattr(values.ValueClass, "_multiprocess", False))
CONTENT_TYPE = CONTENT_TYPE_LATEST

WEBHOOK_CHANNELS = ("telegram", "whatsapp", "twilio_status")
WEBHOOK_OUTCOMES = ("handled", "duplicate", "ignored", "forbidden", "bad_request",
                    "disabled", "error")
SEND_RESULTS = ("sent", "retry", "rate_limited", "held", "failed", "unreachable")
OUTBOX_WAITING = ("queued", "sending", "held")

# Short, so that a scrape or `status` answers fast when the database does not.
CONNECT_TIMEOUT_S = 3
QUERY_TIMEOUT_MS = 3000
SQLITE_BUSY_S = 2.0

# --- the metrics ------------------------------------------------------------------------

WEBHOOKS = Counter(
    "desmigratif_webhooks", "Webhook requests received, by channel and outcome.",
    ["channel", "outcome"])
WEBHOOK_SECONDS = Histogram(
    "desmigratif_webhook_duration_seconds",
    "Time to handle one webhook request (authentication, parsing, the conversation, "
    "the database), by channel.",
    ["channel"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
INBOUND_PROCESSED = Counter(
    "desmigratif_inbound_processed",
    "Messages the worker took from the inbound queue, by channel and outcome: processed, "
    "duplicate (already handled), ignored, error (a handler failed; the person was "
    "answered with an apology), malformed or given_up (logged, dropped).",
    ["channel", "outcome"])
SENDS = Counter(
    "desmigratif_sends",
    "Delivery attempts settled by the sender, by channel and result: sent, retry "
    "(temporary failure, tried again later), rate_limited (the platform said 429), held "
    "(WhatsApp's 24-hour window is closed), failed, unreachable (blocked, opted out).",
    ["channel", "result"])
SEND_RETRIES = Counter(
    "desmigratif_send_retries",
    "Delivery attempts of messages that had failed an attempt before, by channel (a 429 "
    "is not a failed attempt: the platform only asked to wait).",
    ["channel"])
SCHEDULER_RUNS = Counter(
    "desmigratif_scheduler_runs",
    "Runs of a reminder kind or periodic job by the scheduler (or run-due).", ["kind"])
SCHEDULER_QUEUED = Counter(
    "desmigratif_scheduler_queued_messages",
    "Messages queued by scheduler runs, by reminder kind or periodic job.", ["kind"])
SCHEDULER_LAG = Histogram(
    "desmigratif_scheduler_lag_seconds",
    "Seconds between the instant a reminder or periodic job was due and the run that did "
    "it (for reminders, the most overdue member of the run).",
    ["kind"], buckets=(1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600))
SCHEDULER_TICKS = Counter(
    "desmigratif_scheduler_ticks",
    "Live scheduler ticks: ran (this process held the lease), standby (another one "
    "did), error.", ["result"])

# Every series a dashboard or an alert expects exists from the start, at 0, so that a
# rate is defined before the first event.
for _ch in WEBHOOK_CHANNELS:
    WEBHOOK_SECONDS.labels(_ch)
    for _label in WEBHOOK_OUTCOMES:
        WEBHOOKS.labels(_ch, _label)
for _ch in ("telegram", "whatsapp"):
    SEND_RETRIES.labels(_ch)
    for _label in SEND_RESULTS:
        SENDS.labels(_ch, _label)
for _label in ("ran", "standby", "error"):
    SCHEDULER_TICKS.labels(_label)


def _harmless(fn: Callable[P, None]) -> Callable[P, None]:
    """Make a counting helper never raise: a metric must not break a send or a webhook."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.warning("metrics: %s failed", fn.__name__, exc_info=True)

    return wrapper


# --- webhooks ---------------------------------------------------------------------------

# What an HTTP error answered to a webhook says about the request.
_HTTP_OUTCOMES = {400: "bad_request", 403: "forbidden", 404: "disabled"}


def http_outcome(code: int) -> str:
    """Return the webhook outcome of an HTTP error answered to a platform's request:
    forbidden (403), disabled (404: the channel is not configured), bad_request (another
    4xx), or error."""
    return _HTTP_OUTCOMES.get(code, "bad_request" if code < 500 else "error")


@_harmless
def observe_webhook(channel: str, outcome: str, seconds: float) -> None:
    """Count one webhook request by channel and outcome, and time it."""
    WEBHOOKS.labels(channel, outcome).inc()
    WEBHOOK_SECONDS.labels(channel).observe(seconds)


def engine_outcome(result: Any) -> str:
    """Return the webhook outcome of one message the engine handled."""
    if result is None:
        return "ignored"
    if result.duplicate:
        return "duplicate"
    return "error" if result.outcome == "error" else "handled"


def telegram_outcome(outcome: str) -> str:
    """Return the webhook outcome of what ``telegram.process_update`` said it did."""
    if outcome in ("duplicate", "ignored", "error", "queued"):
        return outcome
    return "handled"  # a message, an edit, a block or an unblock


def status_outcome(outcome: str) -> str:
    """Return the webhook outcome of a Twilio status callback (``record_status``'s answer)."""
    return "ignored" if outcome in ("unknown", "ignored") else "handled"


@_harmless
def inbound_processed(channel: str, outcome: str) -> None:
    """Count one message the worker took from the inbound queue (bot/inbox.py)."""
    INBOUND_PROCESSED.labels(channel, outcome).inc()


# --- the sender -------------------------------------------------------------------------


def send_result(status: str, result: Any) -> str:
    """Return the result label of a settled delivery attempt, from the row's new status."""
    if status == "sent":
        return "sent"
    if status == "held":
        return "held"
    if status == "failed":
        return "unreachable" if result.unreachable or result.opted_out else "failed"
    return "rate_limited" if result.retry_after else "retry"


@_harmless
def count_send(channel: str, result: str, *, retry: bool = False) -> None:
    """Count one settled delivery attempt (and whether it repeated an earlier one)."""
    SENDS.labels(channel, result).inc()
    if retry:
        SEND_RETRIES.labels(channel).inc()


# --- the scheduler ----------------------------------------------------------------------


@_harmless
def scheduler_ran(kind: str, queued: int, lag: timedelta | None) -> None:
    """Count one run of a reminder kind or periodic job, what it queued and how late."""
    SCHEDULER_RUNS.labels(kind).inc()
    SCHEDULER_QUEUED.labels(kind).inc(queued)
    if lag is not None:
        SCHEDULER_LAG.labels(kind).observe(max(0.0, lag.total_seconds()))


@_harmless
def scheduler_tick(result: str) -> None:
    """Count one live scheduler tick: ran, standby or error."""
    SCHEDULER_TICKS.labels(result).inc()


# --- reading the database ---------------------------------------------------------------


class DatabaseUnavailable(Exception):
    """The database cannot be read (no file, no server, no answer in time)."""


_OUTBOX: Table = Outbox.__table__  # type: ignore[attr-defined]
_INBOUND: Table = InboundLog.__table__  # type: ignore[attr-defined]
_ALERT: Table = Alert.__table__  # type: ignore[attr-defined]
_JOBRUN: Table = JobRun.__table__  # type: ignore[attr-defined]
_LEASE: Table = SchedulerLease.__table__  # type: ignore[attr-defined]


def _sqlite_file(url: URL) -> Path | None:
    path = url.database
    return Path(path) if url.get_backend_name() == "sqlite" and path and \
        path != ":memory:" and not path.startswith("file:") else None


def reader_for(url: str | URL, *, query_timeout_ms: int = QUERY_TIMEOUT_MS) -> DbEngine:
    """Create an engine for read-only queries: its own connections, short timeouts.

    Not the application's engine: on SQLite that one opens every transaction with
    ``BEGIN IMMEDIATE`` (the write lock, waited for up to 30 s), which reads need not take;
    on PostgreSQL its pool belongs to the requests, and here a query that takes longer
    than `query_timeout_ms` is cancelled by the server.
    """
    url = make_url(url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    _check_file(url)
    if url.get_backend_name() == "sqlite":
        # A connection per use: opening a SQLite file costs little, and none stays open.
        return create_engine(url, poolclass=NullPool,
                             connect_args={"check_same_thread": False,
                                           "timeout": SQLITE_BUSY_S})
    return create_engine(url, pool_size=1, max_overflow=2, pool_pre_ping=True,
                         pool_recycle=300,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                                       "options": f"-c statement_timeout={query_timeout_ms}"})


# One reader per application engine and process (a pool must not cross a fork).
_readers: weakref.WeakKeyDictionary[DbEngine, tuple[int, DbEngine]] = \
    weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def _check_file(url: URL) -> None:
    path = _sqlite_file(url)
    if path is not None and not path.exists():
        # Connecting would create an empty file where the database should be.
        raise DatabaseUnavailable(f"no database file at {path}")


def read_engine(db: DbEngine) -> DbEngine:
    """Return the reader for an application engine (see reader_for), made once."""
    _check_file(db.url)
    if db.url.get_backend_name() == "sqlite" and _sqlite_file(db.url) is None:
        return db  # an in-memory database is visible to its own engine only
    with _readers_lock:
        found = _readers.get(db)
        if found is None or found[0] != os.getpid():
            found = (os.getpid(), reader_for(db.url))
            _readers[db] = found
        return found[1]


def inbox_waiting(db: DbEngine, conn: Connection, now: datetime) -> tuple[int, float]:
    """Return the inbound queue's length and oldest age, where the queue is (bot/inbox.py).

    `conn` reads the database itself; a queue in a file of its own is read with a reader
    of that file (no file yet: no webhook has been stored, nothing waits).
    """
    from bot.inbox import queue_file, waiting

    path = queue_file(db.url)
    if path is None:
        return waiting(conn, now)
    if not path.exists():
        return 0, 0.0
    with reader_for(f"sqlite:///{path}").connect() as side:
        return waiting(side, now)


def _seconds(delta: timedelta) -> float:
    return round(max(0.0, delta.total_seconds()), 3)


def _channel(value: str | None) -> str:
    return value or "none"  # rows for someone with no chat yet


def _outbox_waiting(conn: Connection, now: datetime) -> tuple[dict[str, dict[str, int]],
                                                               datetime | None]:
    """Count waiting outbox rows by channel and status; find the oldest due queued one.

    Both read the (status, next_attempt_at) index; the counts visit only unfinished rows.
    """
    o = _OUTBOX.c
    due = case((o.next_attempt_at <= now, 1), else_=0)
    counts: dict[str, dict[str, int]] = {}
    for channel, status, n, n_due in conn.execute(
            select(o.channel, o.status, func.count(), func.sum(due))
            .where(o.status.in_(OUTBOX_WAITING)).group_by(o.channel, o.status)):
        entry = counts.setdefault(_channel(channel),
                                  {"queued": 0, "due": 0, "sending": 0, "held": 0})
        entry[status] += int(n)
        if status == "queued":
            entry["due"] += int(n_due or 0)
    oldest = conn.execute(select(func.min(o.next_attempt_at))
                          .where(o.status == "queued", o.next_attempt_at <= now)).scalar()
    return counts, oldest


def _lease(conn: Connection) -> tuple[str, datetime] | None:
    row = conn.execute(select(_LEASE.c.holder, _LEASE.c.expires_at)
                       .where(_LEASE.c.name == "scheduler")).first()
    return (row[0], row[1]) if row else None


class DatabaseCollector(Collector):
    """Gauges read from the database when Prometheus scrapes."""

    def __init__(self, db: DbEngine, clock: Callable[[], datetime] | None = None) -> None:
        self.db = db
        self.clock = clock or (lambda: datetime.now(UTC))

    def collect(self) -> Iterator[Metric]:
        """Yield desmigratif_db_up and, when the database answered, the gauges."""
        up = GaugeMetricFamily("desmigratif_db_up",
                               "1 when the database answered this scrape's queries, else 0.")
        try:
            with read_engine(self.db).connect() as conn:
                families = self._families(conn, self.clock())
        except Exception as exc:
            # Every scrape says so while it lasts; the reason in one line, no traceback.
            log.warning("metrics: the database did not answer: %s: %s", type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, conn: Connection, now: datetime) -> list[Metric]:
        counts, oldest = _outbox_waiting(conn, now)
        depth = GaugeMetricFamily(
            "desmigratif_outbox_messages",
            "Outbox rows not finished, by channel and status: queued (waiting for their "
            "time or the sender), sending (claimed by a sender), held (waiting for the "
            "person to write again, or to link a chat).", labels=["channel", "status"])
        due = GaugeMetricFamily(
            "desmigratif_outbox_due_messages",
            "Queued outbox rows whose time has come, by channel: what the sender should be "
            "sending now.", labels=["channel"])
        for channel in sorted(set(CHANNELS) | set(counts)):
            entry = counts.get(channel, {})
            for status in OUTBOX_WAITING:
                depth.add_metric([channel, status], entry.get(status, 0))
            due.add_metric([channel], entry.get("due", 0))
        age = GaugeMetricFamily(
            "desmigratif_outbox_oldest_due_age_seconds",
            "How long the oldest due queued message has been due (0 when none is).")
        age.add_metric([], _seconds(now - oldest) if oldest is not None else 0.0)
        alerts = GaugeMetricFamily("desmigratif_safety_alerts_open",
                                   "Safety alerts no coordinator has acknowledged yet.")
        alerts.add_metric([], conn.execute(select(func.count()).select_from(_ALERT)
                                           .where(_ALERT.c.status == "open")).scalar() or 0)
        lease = _lease(conn)
        held = GaugeMetricFamily(
            "desmigratif_scheduler_lease_held",
            "1 when a live scheduler holds the lease (its lease has not run out), else 0.")
        held.add_metric([], 1 if lease is not None and lease[1] > now else 0)
        jobs = GaugeMetricFamily(
            "desmigratif_scheduler_job_last_run_timestamp_seconds",
            "When each periodic job last ran, as a Unix time.", labels=["kind"])
        for kind, last in conn.execute(select(_JOBRUN.c.kind, _JOBRUN.c.last_run_at)):
            jobs.add_metric([kind], last.timestamp())
        count, age_s = inbox_waiting(self.db, conn, now)
        inbox = GaugeMetricFamily(
            "desmigratif_inbound_queue_messages",
            "Messages webhooks accepted that the worker has not processed yet.")
        inbox.add_metric([], count)
        inbox_age = GaugeMetricFamily(
            "desmigratif_inbound_queue_oldest_age_seconds",
            "How long the oldest unprocessed inbound message has waited (0 when none).")
        inbox_age.add_metric([], age_s)
        return [depth, due, age, alerts, held, jobs, inbox, inbox_age]


class _Process(Collector):
    """This process's own metrics, for a registry of one scrape (single-process mode)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render(db: DbEngine, clock: Callable[[], datetime] | None = None) -> tuple[bytes, str]:
    """Return the text exposition of every metric and its content type.

    `clock` is the application's (the engine's) notion of now, for the ages.
    """
    registry = CollectorRegistry()
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        # Every process's files, dead ones included: counters must never go back.
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Process())
    registry.register(DatabaseCollector(db, clock))
    return generate_latest(registry), CONTENT_TYPE


# --- desmigratif status -----------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_snapshot(db: DbEngine, now: datetime) -> dict[str, Any]:
    """Read what an operator wants at a glance; raise DatabaseUnavailable if it can't.

    `db` is best a reader (reader_for): the queries only read.
    """
    o, i, a = _OUTBOX.c, _INBOUND.c, _ALERT.c
    hour, day = now - timedelta(hours=1), now - timedelta(days=1)
    try:
        with db.connect() as conn:
            waiting, oldest = _outbox_waiting(conn, now)
            delivered: dict[str, dict[str, int]] = {}
            recent = case((o.sent_at >= hour, 1), else_=0)
            for channel, status, n_day, n_hour in conn.execute(
                    select(o.channel, o.status, func.count(), func.sum(recent))
                    .where(o.status.in_(("sent", "failed")), o.sent_at >= day)
                    .group_by(o.channel, o.status)):
                entry = delivered.setdefault(_channel(channel), {
                    "sent_1h": 0, "failed_1h": 0, "sent_24h": 0, "failed_24h": 0})
                entry[f"{status}_1h"] += int(n_hour or 0)
                entry[f"{status}_24h"] += int(n_day)
            inbound = {channel: int(n) for channel, n in conn.execute(
                select(i.channel, func.count()).where(i.received_at >= hour)
                .group_by(i.channel))}
            open_alerts, escalated, oldest_alert = conn.execute(
                select(func.count(), func.sum(case((a.escalated, 1), else_=0)),
                       func.min(a.created_at)).where(a.status == "open")).one()
            inbox_count, inbox_age = inbox_waiting(db, conn, now)
            lease = _lease(conn)
            jobs = conn.execute(select(_JOBRUN.c.kind, _JOBRUN.c.last_run_at)
                                .order_by(_JOBRUN.c.kind)).all()
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise DatabaseUnavailable(reason[0] if reason else type(exc).__name__) from exc
    return {
        "at": _iso(now),
        "database": db.dialect.name,
        "outbox": dict(sorted(waiting.items())),
        "oldest_due_age_s": _seconds(now - oldest) if oldest is not None else None,
        "delivered": dict(sorted(delivered.items())),
        "inbound_last_hour": dict(sorted(inbound.items())),
        "inbound_queue": {"waiting": inbox_count,
                          "oldest_age_s": inbox_age if inbox_count else None},
        "alerts": {"open": int(open_alerts or 0), "escalated": int(escalated or 0),
                   "oldest_open_age_s": _seconds(now - oldest_alert)
                   if oldest_alert is not None else None},
        "scheduler": {
            "lease": None if lease is None else {
                "holder": lease[0], "expires_at": _iso(lease[1]), "live": lease[1] > now},
            "jobs": [{"kind": kind, "last_run_at": _iso(last),
                      "age_s": _seconds(now - last)} for kind, last in jobs],
        },
    }


def _ago(seconds: float | None) -> str:
    """Say a duration the short way: 42 s, 7 min, 3 h 05 min, 2 d 4 h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Align a table: the first column left, numbers right, two spaces between."""
    if not rows:
        return ["  (none)"]
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    return ["  " + "  ".join(c.ljust(widths[k]) if k == 0 else c.rjust(widths[k])
                             for k, c in enumerate(row)).rstrip() for row in cells]


def format_status(snap: dict[str, Any]) -> str:
    """Render a status snapshot as plain aligned text."""
    lines = [f"desmigratif status at {snap['at']} ({snap['database']})", "", "Outbox"]
    lines += _table(["channel", "queued", "due", "sending", "held"],
                    [[ch, e["queued"], e["due"], e["sending"], e["held"]]
                     for ch, e in snap["outbox"].items()])
    lines.append(f"  oldest due message waiting: {_ago(snap['oldest_due_age_s'])}")
    lines += ["", "Delivered"]
    lines += _table(["channel", "sent 1h", "failed 1h", "sent 24h", "failed 24h"],
                    [[ch, e["sent_1h"], e["failed_1h"], e["sent_24h"], e["failed_24h"]]
                     for ch, e in snap["delivered"].items()])
    lines += ["", "Inbound messages, last hour"]
    lines += _table(["channel", "messages"], [[ch, n] for ch, n in
                                              snap["inbound_last_hour"].items()])
    queue = snap["inbound_queue"]
    lines.append(f"  accepted, not processed yet: {queue['waiting']}"
                 + (f", oldest {_ago(queue['oldest_age_s'])}" if queue["waiting"] else ""))
    alerts = snap["alerts"]
    lines += ["", f"Safety alerts open: {alerts['open']}"
              + (f" ({alerts['escalated']} escalated), oldest {_ago(alerts['oldest_open_age_s'])}"
                 if alerts["open"] else "")]
    lease = snap["scheduler"]["lease"]
    if lease is None:
        lines.append("Scheduler lease: never taken (no scheduler has run)")
    elif lease["live"]:
        lines.append(f"Scheduler lease: held by {lease['holder']} until {lease['expires_at']}")
    else:
        lines.append(f"Scheduler lease: free (last holder {lease['holder']}, "
                     f"ran out {lease['expires_at']})")
    lines += ["", "Periodic jobs, last run"]
    lines += _table(["job", "last run", "ago"],
                    [[j["kind"], j["last_run_at"], _ago(j["age_s"])]
                     for j in snap["scheduler"]["jobs"]])
    return "\n".join(lines)
