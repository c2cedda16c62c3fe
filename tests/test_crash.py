"""Crash tests: real processes killed with SIGKILL mid-work, real PostgreSQL, real HTTP.

Each test starts ``desmigratif`` commands as subprocesses (tests/fakes/processes.py)
against the loopback fakes of Telegram and Twilio running in this process, kills one of
them half-way, starts it again, and checks from the fakes' records and the database that
nothing was lost and that nothing was done twice beyond what the design allows:

- the sender: a killed sender's claimed rows go again after ``[sender] lease_s``, so at
  most the messages it had in flight (one claimed batch) reach someone twice;
- the scheduler: a batch of reminders is queued in one transaction with idempotency keys,
  so a killed ``run-due`` loses its batch whole and the next run queues each one once;
- the web process: a webhook is acknowledged only after the message is stored in the
  inbound queue; the worker processes it in one transaction that records its platform id,
  so a retried delivery is recognised and not redone, and the rows a killed worker had
  claimed are processed by the next one once their lease runs out.

Select them with ``-m crash``. PostgreSQL tests skip when no server answers (they fail
instead with ``DESMIGRATIF_REQUIRE_POSTGRES=1``, as in CI).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import SQLModel, col

import handlers  # noqa: F401  (registers the reminder kinds)
from bot import inbox
from bot.channels import build_channels
from bot.config import Config, load_config
from bot.scheduler import BATCH_SIZE
from bot.sender import Sender
from storage.db import make_engine, session_scope
from storage.models import (
    ChannelIdentity,
    Family,
    InboundLog,
    Member,
    Outbox,
    Relay,
    ReminderSchedule,
    Village,
)
from tests.fakes.payloads import tg_text, twilio_inbound, twilio_signature
from tests.fakes.processes import (
    Processes,
    children,
    cmdline,
    free_port,
    is_worker,
    log_has,
    wait_until,
    write_config,
)
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

pytestmark = pytest.mark.crash

PUBLIC_URL = "https://bot.example.org"
SECRET = "crash-secret"
LEASE_S = 3.0  # short, so that a killed sender's rows come back within the test
BATCH = 50  # [sender] batch_size: one claim, hence what one sender can have in flight
VILLAGE = "Kenanga"


# --- fixtures and helpers --------------------------------------------------------------


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """Return the run's PostgreSQL database, emptied for this test."""
    engine = make_engine(pg_database)
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        # A connection left in a transaction would block this for ever: fail instead.
        conn.execute(text("SET LOCAL lock_timeout = '30s'"))
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return pg_database


@pytest.fixture
def fakes() -> Iterator[tuple[FakeTelegram, FakeTwilio]]:
    """Run keep-alive fakes of Telegram and Twilio with no rate limit of their own."""
    with FakeTelegram(keep_alive=True) as tg, FakeTwilio(keep_alive=True) as tw:
        yield tg, tw


@pytest.fixture
def engines() -> Iterator[Callable[[str], DbEngine]]:
    """Return a factory of database engines, all disposed of at the end of the test."""
    made: list[DbEngine] = []

    def make(url: str) -> DbEngine:
        made.append(make_engine(url))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Track the subprocesses a test starts; kill every one of them at the end."""
    running = Processes(workdir=tmp_path, config=tmp_path / "config.toml")
    try:
        yield running
    finally:
        running.close()


def configure(path: Path, url: str, tg: FakeTelegram, tw: FakeTwilio,
              **sections: dict[str, Any]) -> Config:
    """Write the config file the processes read (fakes, fast rates); return it loaded."""
    values: dict[str, dict[str, Any]] = {
        "server": {"public_url": PUBLIC_URL, "simulator": False, "workers": 2},
        "database": {"url": url},
        "telegram": {"token": tg.token, "webhook_secret": SECRET,
                     "api_base_url": tg.base_url, "rate_per_s": 100_000.0,
                     "rate_per_chat_per_s": 1000.0, "timeout_s": 5.0},
        "twilio": {"account_sid": tw.account_sid, "auth_token": tw.auth_token,
                   "api_base_url": tw.url, "rate_per_s": 100_000.0, "timeout_s": 5.0,
                   "status_callback": False},
        # No quiet hours: whatever the time of day, messages are due at once.
        "scheduler": {"quiet_hours_start": "00:00", "quiet_hours_end": "00:00"},
        "sender": {"batch_size": BATCH, "lease_s": LEASE_S, "poll_interval_s": 0.05,
                   "backoff_base_s": 0.05, "backoff_max_s": 0.5},
        "logging": {"level": "INFO"},
    }
    for name, keys in sections.items():
        values[name] = {**values.get(name, {}), **keys}
    write_config(path, values)
    return load_config(path, env={})


def populate(db: DbEngine, n: int, now: datetime, *, roles: tuple[str, ...],
             whatsapp_every: int = 0) -> dict[int, tuple[str, str]]:
    """Create n members of one village with linked chats, in bulk; return their chats.

    Families of ``len(roles)``, consent given, everyone welcomed. Every
    ``whatsapp_every``-th member writes on WhatsApp (window open: they wrote just now),
    the others on Telegram.
    """
    size = len(roles)
    with session_scope(db) as session:
        village = Village(name=VILLAGE, district="Indramayu", created_at=now)
        session.add(village)
        session.flush()
        vid = village.id
        fids = list(session.execute(
            insert(Family).returning(col(Family.id)),
            [{"village_id": vid, "language": "id", "consent_status": "given",
              "created_at": now} for _ in range(-(-n // size))]).scalars())
        fids.sort()
        mids = list(session.execute(
            insert(Member).returning(col(Member.id)),
            [{"family_id": fids[i // size], "village_id": vid, "role": roles[i % size],
              "name": f"M{i}", "language": "id", "timezone": "Asia/Jakarta",
              "opted_out": False, "tips_opt_in": True, "welcomed": True,
              "created_at": now} for i in range(n)]).scalars())
        chats: dict[int, tuple[str, str]] = {}
        for i, mid in enumerate(sorted(mids)):
            if whatsapp_every and i % whatsapp_every == 0:
                chats[mid] = ("whatsapp", f"whatsapp:+62812{mid:08d}")
            else:
                chats[mid] = ("telegram", str(1_000_000 + mid))
        session.execute(insert(ChannelIdentity), [
            {"member_id": mid, "channel": ch, "address": addr, "reachable": True,
             "last_inbound_at": now if ch == "whatsapp" else None, "created_at": now}
            for mid, (ch, addr) in chats.items()])
    return chats


def received(tg: FakeTelegram, tw: FakeTwilio) -> Counter[str]:
    """Count the messages the fakes accepted, per chat address as stored in the outbox."""
    counts: Counter[str] = Counter(str(m["chat_id"]) for m in tg.sent)
    counts.update(str(m["to"]) for m in tw.sent)
    return counts


def scalar(db: DbEngine, query: Any) -> Any:
    """Run one query; return its single value."""
    with db.connect() as conn:
        return conn.execute(query).scalar()


def report(label: str, **figures: Any) -> None:
    """Print measured figures (shown with -s or -rA)."""
    print(f"\n[crash] {label}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# --- 1. the sender ----------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "members"), [("postgresql", 10_000), ("sqlite", 2_000)])
def test_sender_killed_mid_broadcast_delivers_everything_once(
        request: pytest.FixtureRequest, tmp_path: Path, procs: Processes,
        engines: Callable[[str], DbEngine], fakes: tuple[FakeTelegram, FakeTwilio],
        backend: str, members: int) -> None:
    """Two senders share a broadcast; one is SIGKILLed half-way and started again.

    The bound: a sender claims one batch, ``min(batch_size, max(16, ceil(fastest
    channel's rate)))`` rows (``Sender._claim_limit``), marks them "sending" with its id
    and a lease, and settles them when the batch is done; it claims the next batch only
    then. So at any instant at most one batch of a sender is claimed and not settled, and
    only those rows can have reached the platform without the database knowing. After
    the lease, another sender takes them again: those, and only those, may arrive twice.
    """
    started = time.monotonic()
    tg, tw = fakes
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else request.getfixturevalue("sqlite_url"))
    config = configure(tmp_path / "config.toml", url, tg, tw)
    first = procs.start("worker-a", "worker", "--no-scheduler")
    second = procs.start("worker-b", "worker", "--no-scheduler")
    db = engines(url)
    chats = populate(db, members, datetime.now(UTC), roles=("parent", "carer"),
                     whatsapp_every=10)
    bound = Sender(db, config, build_channels(config))._claim_limit or BATCH
    assert bound == BATCH
    wait_until(lambda: log_has(first, "started for") and log_has(second, "started for"),
               timeout=30, what="both senders to start", procs=procs, watch=(first, second))
    queued = procs.start("broadcast", "broadcast", "--village", VILLAGE, "--text",
                         "Posyandu hari Sabtu jam 8", "--no-wait")
    assert queued.wait(timeout=60) == 0, queued.tail()
    bid = int(re.findall(r"broadcast (\d+) queued", queued.output())[0])
    assert scalar(db, select(func.count()).select_from(Outbox)
                  .where(col(Outbox.broadcast_id) == bid)) == members

    # Half-way, at a moment when the victim holds claimed rows, kill it.
    victim_id = f"{socket.gethostname()}:{first.pid}"
    in_flight = (select(col(Outbox.id), col(Outbox.address))
                 .where(col(Outbox.status) == "sending", col(Outbox.claimed_by) == victim_id))

    def victim_busy_half_way() -> bool:
        if len(tg.sent) + len(tw.sent) < members // 2:
            return False
        with db.connect() as conn:
            return conn.execute(in_flight.limit(1)).first() is not None

    wait_until(victim_busy_half_way, timeout=60, what="half the broadcast sent",
               procs=procs, watch=(first, second), interval=0.005)
    first.crash()
    sent_at_kill = len(tg.sent) + len(tw.sent)
    # Read at once: the lease keeps the rows marked as the victim's for LEASE_S.
    with db.connect() as conn:
        claimed = {addr for _rid, addr in conn.execute(in_flight).all()}
    # (Empty only if the kill fell between two of its batches: then nothing may repeat.)
    assert len(claimed) <= bound
    procs.start("worker-a2", "worker", "--no-scheduler")

    unsettled = (select(func.count()).select_from(Outbox)
                 .where(col(Outbox.broadcast_id) == bid,
                        col(Outbox.status).in_(("queued", "sending"))))
    wait_until(lambda: scalar(db, unsettled) == 0, timeout=90,
               what="every outbox row of the broadcast settled", procs=procs,
               watch=(second,), interval=0.1)

    with db.connect() as conn:
        statuses = dict(Counter(s for (s,) in conn.execute(
            select(col(Outbox.status)).where(col(Outbox.broadcast_id) == bid))))
    assert statuses == {"sent": members}, statuses
    counts = received(tg, tw)
    expected = {addr for _ch, addr in chats.values()}
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} members got nothing, e.g. {sorted(missing)[:5]}"
    assert set(counts) == expected, "messages to addresses outside the broadcast"
    twice = {addr for addr, n in counts.items() if n > 1}
    assert max(counts.values()) <= 2, counts.most_common(3)
    assert twice <= claimed, (f"{len(twice - claimed)} duplicates were not in the killed "
                              f"sender's claimed batch: {sorted(twice - claimed)[:5]}")
    assert len(twice) <= bound
    assert not tg.errors and not tw.errors
    report(f"sender/{backend}", members=members, sent_at_kill=sent_at_kill,
           claimed_by_killed=len(claimed), duplicates=len(twice), bound=bound,
           seconds=round(time.monotonic() - started, 1))


# --- 2. the scheduler -------------------------------------------------------------------

def last_sunday_evening() -> datetime:
    """Return the latest Sunday 19:00 in Jakarta (12:00 UTC) that is a day old or more.

    In the past, so that the live sender (on the wall clock) finds the reminders due.
    """
    day = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0,
                                                           microsecond=0)
    return day - timedelta(days=(day.weekday() - 6) % 7)


def test_scheduler_killed_mid_run_due_queues_each_reminder_once(
        pg_url: str, tmp_path: Path, procs: Processes, engines: Callable[[str], DbEngine],
        fakes: tuple[FakeTelegram, FakeTwilio]) -> None:
    """``run-due`` is SIGKILLed half-way through queuing 5,000 reminders, then run again.

    Reminders are queued a batch (``bot.scheduler.BATCH_SIZE`` rows) per transaction, each
    with the key ``parent_checkin:member:local-date``, and the schedule rows move on in
    the same transaction. A kill loses the open batch whole; the next run finds those
    members still due and queues them, and nobody twice. A sender runs all along (as in
    production, beside the operator's command), so delivery is checked too: exactly one
    message per member, since no sender was killed here.
    """
    started = time.monotonic()
    members = 5_000
    due_at = last_sunday_evening()  # every parent's weekly check-in is due then
    tg, tw = fakes
    configure(tmp_path / "config.toml", pg_url, tg, tw)
    sender = procs.start("worker", "worker", "--no-scheduler")
    db = engines(pg_url)
    chats = populate(db, members, due_at - timedelta(days=1), roles=("parent",))
    with session_scope(db) as session:
        # Every parent due now for the check-in; the weekly tip not due for days.
        session.execute(insert(ReminderSchedule), [
            {"member_id": mid, "kind": kind, "next_due_at": at}
            for mid in chats
            for kind, at in (("parent_checkin", due_at),
                             ("weekly_tip", due_at + timedelta(days=3)))])
    wait_until(lambda: log_has(sender, "started for"), timeout=30, what="the sender to start",
               procs=procs, watch=(sender,))

    is_checkin = col(Outbox.idempotency_key).like("parent_checkin:%")
    reminders = select(func.count()).select_from(Outbox).where(is_checkin)
    at = due_at.isoformat().replace("+00:00", "Z")
    first = procs.start("run-due-1", "scheduler", "run-due", "--at", at)

    def half_queued() -> int:
        n = int(scalar(db, reminders))
        if n > members - BATCH_SIZE or not first.alive():
            raise AssertionError(f"run-due queued {n} of {members} before it could be "
                                 "killed half-way: make the population bigger\n"
                                 + procs.report())
        return n if n >= BATCH_SIZE else 0

    wait_until(half_queued, timeout=60, what="the first batches queued", procs=procs,
               watch=(sender,), interval=0.005)
    first.crash()
    at_kill = int(scalar(db, reminders))
    # A batch is one transaction: what the kill interrupted is not there at all.
    assert at_kill % BATCH_SIZE == 0 and 0 < at_kill < members, at_kill

    second = procs.start("run-due-2", "scheduler", "run-due", "--at", at)
    assert second.wait(timeout=120) == 0, procs.report()
    queued_by_second = int(re.findall(r"parent_checkin: (\d+)", second.output())[-1])
    assert queued_by_second == members - at_kill

    key_rows = (select(col(Outbox.member_id), col(Outbox.idempotency_key))
                .where(is_checkin))
    unsent = (select(func.count()).select_from(Outbox)
              .where(is_checkin, col(Outbox.status) != "sent"))
    wait_until(lambda: scalar(db, unsent) == 0, timeout=90, what="every reminder sent",
               procs=procs, watch=(sender,), interval=0.2)
    with db.connect() as conn:
        rows = conn.execute(key_rows).all()
    per_member = Counter(mid for mid, _key in rows)
    assert len(rows) == members and set(per_member) == set(chats)
    assert {key for _mid, key in rows} == {f"parent_checkin:{mid}:{due_at.date()}"
                                               for mid in chats}
    counts = received(tg, tw)
    assert set(counts) == {addr for _ch, addr in chats.values()}
    assert set(counts.values()) == {1}, counts.most_common(3)
    report("scheduler/postgresql", members=members, queued_at_kill=at_kill,
           queued_by_second_run=queued_by_second, duplicates=sum(counts.values()) - members,
           seconds=round(time.monotonic() - started, 1))


# --- 3. the web process -----------------------------------------------------------------


class Platform:
    """Deliver webhooks as Telegram and Twilio do, from several threads, retrying each
    delivery (after a connection error or a 5xx) until it is acknowledged with a 2xx."""

    def __init__(self, base_url: str, deliveries: list[tuple[str, str, bytes, dict[str, str]]],
                 *, threads: int = 8, deadline_s: float = 150.0) -> None:
        self.base_url = base_url
        self.todo: list[tuple[str, str, bytes, dict[str, str]]] = list(reversed(deliveries))
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # external id -> attempts it took
        self.refused: list[tuple[str, int, str]] = []
        self.duplicates = 0  # deliveries answered "already processed" (Telegram says so)
        self.retries = 0
        self.deadline = time.monotonic() + deadline_s
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        """Start delivering."""
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Give up what is left (a failed test must not leave threads posting)."""
        self.stopped.set()
        for thread in self.threads:
            if thread.ident is not None:
                thread.join(timeout=20)

    def done(self) -> bool:
        """Tell whether every thread has finished (all acknowledged, refused or given up)."""
        return not any(thread.is_alive() for thread in self.threads)

    def _run(self) -> None:
        while True:
            with self.lock:
                if not self.todo:
                    return
                external_id, path, body, headers = self.todo.pop()
            self._deliver(external_id, path, body, headers)

    def _deliver(self, external_id: str, path: str, body: bytes,
                 headers: dict[str, str]) -> None:
        attempts = 0
        while time.monotonic() < self.deadline and not self.stopped.is_set():
            attempts += 1
            req = urllib.request.Request(self.base_url + path, data=body, headers=headers,
                                         method="POST")
            try:
                with urllib.request.urlopen(req, timeout=15) as answer:
                    text_ = answer.read().decode("utf-8", "replace")
                with self.lock:
                    self.acked[external_id] = attempts
                    self.duplicates += '"duplicate"' in text_
                return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    with self.lock:
                        self.refused.append((external_id, exc.code, exc.read()[:200].decode()))
                    return
            except (OSError, ValueError, http.client.HTTPException):
                # Refused, reset, or closed half-way (the answer's headers came, its body
                # did not: IncompleteRead): not acknowledged, the platform tries again.
                pass
            with self.lock:
                self.retries += 1
            self.stopped.wait(0.05)  # a platform's retry delay (much shortened)


def deliveries_for(chats: dict[int, tuple[str, str]], parents: list[int], n: int,
                   auth_token: str) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """Build n KABAR webhooks from the parents in turn: (external id, path, body, headers).

    One in ten (from Telegram and from Twilio) is delivered a second time a little
    later, as platforms sometimes do.
    """
    out: list[tuple[str, str, bytes, dict[str, str]]] = []
    for k in range(n):
        channel, address = chats[parents[k % len(parents)]]
        text_ = f"KABAR crash-{k:05d}"
        if channel == "telegram":
            update = tg_text(k + 1, int(address), text_)
            out.append((str(k + 1), "/webhooks/telegram", json.dumps(update).encode(),
                        {"Content-Type": "application/json",
                         "X-Telegram-Bot-Api-Secret-Token": SECRET}))
        else:
            sid = f"SM{k:032x}"
            form = twilio_inbound(text_, from_=address, message_sid=sid)
            signature = twilio_signature(auth_token, PUBLIC_URL + "/webhooks/twilio", form)
            out.append((sid, "/webhooks/twilio", urllib.parse.urlencode(form).encode(),
                        {"Content-Type": "application/x-www-form-urlencoded",
                         "X-Twilio-Signature": signature}))
    again = [(i + 50, delivery) for i, delivery in enumerate(out) if i % 20 in (0, 5)]
    for i, delivery in reversed(again):
        out.insert(min(i, len(out)), delivery)
    return out


def gunicorn_workers(master: int) -> list[int]:
    """Return the gunicorn worker processes of a serve (not its sender subprocess)."""
    return [pid for pid in children(master) if not is_worker(pid)]


def queue_empty(db: DbEngine) -> bool:
    """Tell whether the inbound queue holds nothing (every stored webhook processed)."""
    return scalar(db, select(func.count()).select_from(inbox.QUEUE)) == 0


def healthy(base_url: str) -> bool:
    """Tell whether the server answers /healthz with 200."""
    try:
        with urllib.request.urlopen(base_url + "/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError):
        return False


def test_web_killed_during_webhook_burst_loses_and_repeats_nothing(
        request: pytest.FixtureRequest, pg_url: str, tmp_path: Path, procs: Processes,
        engines: Callable[[str], DbEngine], fakes: tuple[FakeTelegram, FakeTwilio]) -> None:
    """2,000 KABAR webhooks (and 200 redeliveries) from 8 threads; a gunicorn worker and
    then the whole serve die.

    A third of the way, one gunicorn worker is SIGKILLed (the master starts another);
    two thirds of the way, the whole serve (master, workers, sender subprocess) is, and it
    is started again. The senders retry whatever got no 2xx, as the platforms do. Every
    acknowledged webhook must have its inbound record and its effects (the relay, its
    outbox rows), each exactly once, retried ones included.
    """
    started = time.monotonic()
    messages, families = 2_000, 200
    tg, tw = fakes
    # The sender beside the web workers at the platforms' real rates: it is not what
    # this test is about, and it should not take the CPU the webhooks need.
    configure(tmp_path / "config.toml", pg_url, tg, tw,
              telegram={"rate_per_s": 30.0, "rate_per_chat_per_s": 1.0},
              twilio={"rate_per_s": 80.0})
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    serve = procs.start("serve", "serve", "--no-scheduler", "--port", str(port))
    db = engines(pg_url)
    chats = populate(db, 2 * families, datetime.now(UTC), roles=("parent", "carer"),
                     whatsapp_every=4)
    with db.connect() as conn:
        parents = sorted(mid for mid in conn.execute(
            select(col(Member.id)).where(col(Member.role) == "parent")).scalars() if mid)
    wait_until(lambda: healthy(base_url), timeout=60, what="serve to answer /healthz",
               procs=procs, watch=(serve,), interval=0.1)
    wait_until(lambda: len(gunicorn_workers(serve.pid)) == 2, timeout=30,
               what="two gunicorn workers", procs=procs, watch=(serve,))

    deliveries = deliveries_for(chats, parents, messages, tw.auth_token)
    platform = Platform(base_url, deliveries)
    request.addfinalizer(platform.stop)
    platform.start()
    wait_until(lambda: len(platform.acked) >= messages // 3, timeout=120,
               what="a third acknowledged", procs=procs, watch=(serve,), interval=0.005)
    victim = gunicorn_workers(serve.pid)[0]
    os.kill(victim, signal.SIGKILL)
    acked_at_worker_kill = len(platform.acked)
    wait_until(lambda: len(platform.acked) >= 2 * messages // 3, timeout=120,
               what="two thirds acknowledged", procs=procs, watch=(serve,), interval=0.005)
    serve.crash_all()
    acked_at_serve_kill = len(platform.acked)
    again = procs.start("serve-2", "serve", "--no-scheduler", "--port", str(port))
    wait_until(platform.done, timeout=180, what="every webhook acknowledged", procs=procs,
               watch=(again,), interval=0.1)

    assert not platform.refused, platform.refused[:5]
    expected = {ext for ext, *_ in deliveries}
    assert set(platform.acked) == expected, f"{len(expected - set(platform.acked))} not acked"
    # Acknowledged means stored: the new serve's worker processes what waits, the rows the
    # killed worker had claimed included, once their lease runs out.
    acked_all = time.monotonic()
    wait_until(lambda: queue_empty(db), timeout=inbox.LEASE_S + 120,
               what="the inbound queue to be processed", procs=procs, watch=(again,))
    queue_drained_s = time.monotonic() - acked_all
    with db.connect() as conn:
        inbound = conn.execute(select(col(InboundLog.channel), col(InboundLog.external_id),
                                      col(InboundLog.outcome))).all()
        relays = Counter(conn.execute(select(col(Relay.text))).scalars())
        relayed = Counter(
            m.group(1) for (body,) in conn.execute(
                select(col(Outbox.text)).where(col(Outbox.kind) == "relay"))
            if (m := re.search(r"crash-(\d{5})", body)))
        replies = conn.execute(select(func.count()).select_from(Outbox)
                               .where(col(Outbox.kind) == "reply")).scalar()
    ids = Counter(ext for _ch, ext, _outcome in inbound)
    assert set(ids) == expected and set(ids.values()) == {1}, "an acknowledged webhook lost"
    assert {outcome for *_, outcome in inbound} == {"command:news"}
    tokens = {f"{k:05d}" for k in range(messages)}
    assert relays == Counter({f"crash-{t}": 1 for t in tokens}), relays.most_common(3)
    assert relayed == Counter(dict.fromkeys(tokens, 1)), relayed.most_common(3)
    assert replies == messages
    # Of an update delivered twice, one delivery did the work (the inbound records above):
    # the other was told "duplicate" while the first waited in the queue, or was stored
    # again and recognised by the engine.
    twice_tg = sum(1 for (ext, path), n in Counter((d[0], d[1]) for d in deliveries).items()
                   if n == 2 and path == "/webhooks/telegram")
    assert twice_tg > 0
    report("web/postgresql", webhooks=messages, acked_at_worker_kill=acked_at_worker_kill,
           acked_at_serve_kill=acked_at_serve_kill, redeliveries=len(deliveries) - messages,
           retries=platform.retries, answered_duplicate=platform.duplicates,
           max_attempts=max(platform.acked.values()), queue_drained_s=round(queue_drained_s, 1),
           seconds=round(time.monotonic() - started, 1))


def _running(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie waiting to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def test_the_worker_stops_when_serve_is_killed(pg_url: str, tmp_path: Path,
                                               procs: Processes,
                                               fakes: tuple[FakeTelegram, FakeTwilio]) -> None:
    """SIGKILL of serve's master runs no clean-up: its sender must not send on alone."""
    tg, tw = fakes
    configure(tmp_path / "config.toml", pg_url, tg, tw)
    port = free_port()
    serve = procs.start("serve", "serve", "--no-scheduler", "--port", str(port))
    wait_until(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=60,
               what="serve to answer /healthz", procs=procs, watch=(serve,), interval=0.1)
    workers = [pid for pid in children(serve.pid) if is_worker(pid)]
    assert len(workers) == 1, [cmdline(pid) for pid in children(serve.pid)]
    serve.crash()  # the master alone: its children are orphaned, not signalled
    wait_until(lambda: not _running(workers[0]), timeout=30,
               what="the orphaned worker to stop", procs=procs, watch=())


def test_serve_starts_another_worker_when_its_worker_dies(
        pg_url: str, tmp_path: Path, procs: Processes, engines: Callable[[str], DbEngine],
        fakes: tuple[FakeTelegram, FakeTwilio]) -> None:
    """The worker SIGKILLed: serve forks another, and what webhooks stored meanwhile is
    processed and answered."""
    tg, tw = fakes
    configure(tmp_path / "config.toml", pg_url, tg, tw)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    serve = procs.start("serve", "serve", "--no-scheduler", "--port", str(port))
    db = engines(pg_url)
    chats = populate(db, 2, datetime.now(UTC), roles=("parent", "carer"))
    wait_until(lambda: healthy(base_url), timeout=60, what="serve to answer /healthz",
               procs=procs, watch=(serve,), interval=0.1)
    (first,) = [pid for pid in children(serve.pid) if is_worker(pid)]
    os.kill(first, signal.SIGKILL)
    chat = int(next(address for _channel, address in chats.values()))
    update = json.dumps(tg_text(1, chat, "MENU")).encode()
    answer = urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - loopback
        f"{base_url}/webhooks/telegram", data=update, method="POST",
        headers={"Content-Type": "application/json",
                 "X-Telegram-Bot-Api-Secret-Token": SECRET}), timeout=10)
    assert json.loads(answer.read())["outcome"] == "queued"
    wait_until(lambda: [p for p in children(serve.pid) if is_worker(p) and p != first],
               timeout=30, what="another worker", procs=procs, watch=(serve,))
    wait_until(lambda: len(tg.texts_for(chat)) == 1, timeout=30,
               what="the reply from the new worker", procs=procs, watch=(serve,))
    assert log_has(serve, "the worker (pid")
