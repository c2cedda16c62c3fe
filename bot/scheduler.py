"""Timed jobs: reminders in each person's own time zone, and a few periodic jobs.

Two kinds of job, never one job per person:

- A **reminder kind** (the parents' check-in, the carers' weekly question, weekly tips...)
  reaches every member of some roles at a weekly or daily *local* time, in the member's own
  IANA time zone (a parent in Rome gets Sunday 19:00 in Rome, summer time or not). Each
  (member, kind) has one ``ReminderSchedule`` row with the next occurrence as a UTC instant,
  indexed by ``(kind, next_due_at)``: a tick reads only the rows due now, a batch at a time,
  so its cost follows the number of people due, not the number of members.
- A **periodic job** (scheduled broadcasts, alert escalation, outbox clean-up...) runs at
  every tick, or at most every ``every``, with ``now``, and returns messages to queue.

Exactly once. A batch of due rows is claimed (``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
SQLite's ``BEGIN IMMEDIATE`` serialises writers), its messages are rendered into the outbox
and the rows are moved to their next occurrence, in one transaction: a crash loses the
batch whole and the next run does it again. Every reminder message carries the idempotency
key ``kind:member:local-date``, unique in the outbox (a duplicate is silently skipped), and
the row remembers the local date it last ran for. ``desmigratif scheduler run-due`` and
each live scheduler tick run the same function (``_run_all``).

Catch-up. An occurrence missed by less than ``[scheduler] grace_minutes`` (downtime) runs
late; an older one is skipped and logged, and the row moves on to the next one.

Who gets what. Opted-out members are skipped (the row moves on). A member with no reachable
chat is skipped too: a weekly nudge held for weeks and delivered in a heap when they link
their chat is noise (kinds marked ``urgent`` are the exception, their messages are usually
for someone else). Quiet hours hold non-urgent messages until morning (``bot.outbox``).

One scheduler among many processes. ``LiveScheduler`` ticks in every worker process, but a
tick does work only while its process holds the ``SchedulerLease`` row "scheduler" (renewed
every tick and every batch, taken over when its holder stops renewing it). Every process
sends. ``run-due`` from the command line does not need the lease: it claims rows like any
scheduler, so it is safe beside a running one.

New members need no call here: each run inserts the missing rows (``INSERT ... SELECT`` of
members lacking one, in batches) with a placeholder instant, and the first run that reads
them computes their first occurrence. Handlers call :func:`reschedule` when a member changes
their time, rest day, time zone or role.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import re
import socket
import threading
import time as _time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, delete, exists, func, literal, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from bot import metrics
from bot.channels.base import MAX_LENGTH
from bot.config import Config
from bot.i18n import Translator
from bot.messages import Outbound
from bot.outbox import (
    ASKED_FOR,
    PRIORITY,
    WINDOW,
    WINDOW_MARGIN,
    first_name,
    queue_messages,
    quiet_until,
    template_key,
)
from storage.db import dialect_insert, is_postgres, session_scope
from storage.models import (
    ChannelIdentity,
    InboundLog,
    JobRun,
    Member,
    Outbox,
    ReminderSchedule,
    SchedulerLease,
)

log = logging.getLogger(__name__)

# next_due_at of a row inserted for a new member: "not computed yet", due at once.
PENDING = datetime(1970, 1, 1, tzinfo=UTC)
BATCH_SIZE = 1000  # reminder rows claimed per transaction
ENSURE_BATCH = 10_000  # schedule rows inserted per transaction for new members
LEASE_NAME = "scheduler"
FULL_SWEEP_EVERY = timedelta(hours=1)  # live scheduler: look for members lacking rows anew
_OUT_OF_ORDER_IDS = 1000  # new member ids may commit out of order (PostgreSQL sequences)

_RS: Table = ReminderSchedule.__table__  # type: ignore[attr-defined]
_OUTBOX: Table = Outbox.__table__  # type: ignore[attr-defined]
_JOBRUN: Table = JobRun.__table__  # type: ignore[attr-defined]
_LEASE: Table = SchedulerLease.__table__  # type: ignore[attr-defined]


def utcnow() -> datetime:
    """Return the current instant, timezone-aware UTC."""
    return datetime.now(UTC)


def _always(_member: Member) -> bool:
    return True


# --- the registry --------------------------------------------------------------------


@dataclass(frozen=True)
class ReminderKind:
    """A reminder sent to every member of some roles at a local time of their own.

    ``schedule`` gives the default as ``"sun 19:00"`` (or ``"daily 08:00"``), read from the
    config at each run. The member's ``reminder_time`` replaces the time of day
    (``use_member_time``); their ``rest_day`` replaces the weekday when ``use_rest_day``.
    ``build`` returns the messages for one member at one occurrence (the scheduled UTC
    instant); it may read and stage changes in the session, never commit. Messages without
    an idempotency key get ``kind:member:local-date`` (``:1``, ``:2``... for further ones).
    ``urgent``: the messages skip quiet hours, and the kind runs for opted-out and unlinked
    members too (its messages are for someone else, such as the village's coordinators).
    """

    name: str
    roles: frozenset[str]
    schedule: Callable[[Config], str]
    build: Callable[[Session, Member, datetime, Config], list[Outbound]]
    applies: Callable[[Member], bool] = _always
    urgent: bool = False
    use_rest_day: bool = False
    use_member_time: bool = True


@dataclass(frozen=True)
class PeriodicJob:
    """A job run at each scheduler tick (or at most every ``every``) with ``now``.

    ``run`` returns the messages to queue, each with its own idempotency key, so that two
    runs of the same instant queue nothing twice. It may stage changes; it never commits.
    """

    name: str
    run: Callable[[Session, datetime, Config], list[Outbound]]
    every: timedelta | None = None


REMINDER_KINDS: dict[str, ReminderKind] = {}
PERIODIC_JOBS: dict[str, PeriodicJob] = {}

JobFn = Callable[[Session, datetime, Config], list[Outbound]]


def reminder_kind(kind: ReminderKind) -> ReminderKind:
    """Register a reminder kind (a handler module does it at import)."""
    if kind.name in REMINDER_KINDS and REMINDER_KINDS[kind.name] is not kind:
        raise ValueError(f"reminder kind {kind.name} declared twice")
    if len(kind.name) > 24:
        raise ValueError(f"reminder kind {kind.name}: at most 24 characters")
    parse_schedule(kind.schedule(Config()))  # a bad default fails at import, not at 19:00
    REMINDER_KINDS[kind.name] = kind
    return kind


def periodic_job(name: str, *, every: timedelta | None = None) -> Callable[[JobFn], JobFn]:
    """Register the decorated function as a periodic job."""

    def deco(fn: JobFn) -> JobFn:
        existing = PERIODIC_JOBS.get(name)
        if existing is not None and existing.run is not fn:
            raise ValueError(f"periodic job {name} declared twice")
        if len(name) > 40:
            raise ValueError(f"periodic job {name}: at most 40 characters")
        PERIODIC_JOBS[name] = PeriodicJob(name, fn, every)
        return fn

    return deco


# --- local time arithmetic ------------------------------------------------------------

_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_SCHEDULE_RE = re.compile(
    r"^\s*(mon|tue|wed|thu|fri|sat|sun|daily)\s+([01]?\d|2[0-3]):([0-5]\d)\s*$")


@functools.lru_cache(maxsize=256)
def parse_schedule(text: str) -> tuple[int | None, time]:
    """Read ``"sun 19:00"`` or ``"daily 08:00"`` into (weekday or None, time of day)."""
    match = _SCHEDULE_RE.match(text.lower())
    if match is None:
        raise ValueError(f"schedule {text!r}: expected a day and time like 'sun 19:00'")
    day = None if match[1] == "daily" else _DAYS[match[1]]
    return day, time(int(match[2]), int(match[3]))


def parse_hhmm(value: str | None) -> time | None:
    """Read a stored ``"HH:MM"`` (None or garbage gives None)."""
    if not value:
        return None
    try:
        hh, mm = value.split(":")
        return time(int(hh), int(mm))
    except ValueError:
        return None


@functools.lru_cache(maxsize=512)
def zone(name: str, fallback: str = "Asia/Jakarta") -> ZoneInfo:
    """Return the ZoneInfo of an IANA name, or the fallback for an unknown one."""
    try:
        return ZoneInfo(name)
    except Exception:
        return ZoneInfo(fallback)


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """Return the UTC instant of wall time ``at`` on ``day`` in ``tz``.

    A wall time skipped by a summer-time gap (02:30 on Rome's last Sunday of March) is
    moved forward by the gap (03:30 summer time), as APScheduler's CronTrigger does; a
    wall time that happens twice (autumn) is the first of the two. Either way the
    occurrence belongs to ``day``.
    """
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)  # fold=0


def next_occurrence(tz: ZoneInfo, weekday: int | None, at: time, after: datetime) -> datetime:
    """Return the first occurrence strictly after ``after`` (UTC)."""
    start = after.astimezone(tz).date()
    for delta in range(0, 9):
        day = start + timedelta(days=delta)
        if weekday is not None and day.weekday() != weekday:
            continue
        instant = local_instant(day, at, tz)
        if instant > after:
            return instant
    raise AssertionError("no occurrence within nine days")  # pragma: no cover


def previous_occurrence(tz: ZoneInfo, weekday: int | None, at: time,
                        upto: datetime) -> datetime:
    """Return the last occurrence at or before ``upto`` (UTC)."""
    start = upto.astimezone(tz).date()
    for delta in range(0, 9):
        day = start - timedelta(days=delta)
        if weekday is not None and day.weekday() != weekday:
            continue
        instant = local_instant(day, at, tz)
        if instant <= upto:
            return instant
    raise AssertionError("no occurrence within nine days")  # pragma: no cover


@dataclass(frozen=True)
class MemberSchedule:
    """When one member gets one kind: their zone, weekday (None: daily) and time of day."""

    tz_name: str
    weekday: int | None
    at: time


def schedule_for(kind: ReminderKind, member: Member, config: Config) -> MemberSchedule:
    """Return the member's own schedule for a kind: the default, with their choices."""
    weekday, at = parse_schedule(kind.schedule(config))
    if kind.use_member_time:
        at = parse_hhmm(member.reminder_time) or at
    if kind.use_rest_day and member.rest_day is not None and 0 <= member.rest_day <= 6:
        weekday = member.rest_day
    return MemberSchedule(member.timezone or config.bot.default_timezone, weekday, at)


def next_due(kind: ReminderKind, member: Member, config: Config, after: datetime) -> datetime:
    """Return the member's next occurrence of a kind strictly after ``after``."""
    s = schedule_for(kind, member, config)
    return next_occurrence(zone(s.tz_name, config.bot.default_timezone), s.weekday, s.at,
                           after)


class _RunTranslator(Translator):
    """A translator that looks each message up once per run, not once per member.

    ``bot.i18n`` checks the catalog file for changes at every look-up, which is right for
    a long-running server and dominates a run that renders 100,000 reminders.
    """

    def __init__(self, lang: str) -> None:
        super().__init__(lang)
        self._memo: dict[str, str] = {}

    def gettext(self, msgid: str) -> str:
        """Return the translation of msgid, remembered for this run."""
        found = self._memo.get(msgid)
        if found is None:
            found = self._memo[msgid] = super().gettext(msgid)
        return found


class _Plan:
    """One schedule of one kind in one zone, worked out once per run for all who share it."""

    __slots__ = ("sched", "tz", "upcoming", "_previous", "_dates")

    def __init__(self, sched: MemberSchedule, tz: ZoneInfo, now: datetime) -> None:
        self.sched = sched
        self.tz = tz
        self.upcoming = next_occurrence(tz, sched.weekday, sched.at, now)
        self._previous: datetime | None = None
        self._dates: dict[datetime, date] = {}

    def previous(self, now: datetime) -> datetime:
        """Return the last occurrence at or before now."""
        if self._previous is None:
            self._previous = previous_occurrence(self.tz, self.sched.weekday, self.sched.at,
                                                 now)
        return self._previous

    def local_date(self, instant: datetime) -> date:
        """Return the local calendar day of an occurrence (the idempotency key's date)."""
        found = self._dates.get(instant)
        if found is None:
            if len(self._dates) > 1000:
                self._dates.clear()
            found = self._dates[instant] = instant.astimezone(self.tz).date()
        return found


class _Planner:
    """What one run needs again and again, computed once: plans, quiet hours, catalogs."""

    def __init__(self, config: Config, now: datetime) -> None:
        self.config = config
        self.now = now
        self.grace = timedelta(minutes=config.scheduler.grace_minutes)
        self._plans: dict[tuple[str, str, str | None, int | None], _Plan] = {}
        self._quiet: dict[str, datetime] = {}
        self._translators: dict[str, _RunTranslator] = {}
        self._templates: dict[tuple[str, str], str | None] = {}

    def plan(self, kind: ReminderKind, member: Member) -> _Plan:
        """Return the plan of this member's schedule for a kind."""
        key = (kind.name, member.timezone,
               member.reminder_time if kind.use_member_time else None,
               member.rest_day if kind.use_rest_day else None)
        found = self._plans.get(key)
        if found is None:
            if len(self._plans) > 50_000:
                self._plans.clear()  # bounded memory; there are few distinct schedules
            sched = schedule_for(kind, member, self.config)
            found = self._plans[key] = _Plan(
                sched, zone(sched.tz_name, self.config.bot.default_timezone), self.now)
        return found

    def translator(self, lang: str) -> Translator:
        """Return a translator for this run (catalog look-ups remembered)."""
        found = self._translators.get(lang)
        if found is None:
            found = self._translators[lang] = _RunTranslator(lang)
        return found

    def template(self, kind: str, lang: str) -> str | None:
        """Return the WhatsApp template key for a message kind in a language."""
        key = (kind, lang)
        if key not in self._templates:
            self._templates[key] = template_key(self.config, kind, lang)
        return self._templates[key]

    def due_at(self, tz_name: str, urgent: bool) -> datetime:
        """When a message queued now may go: now, or when quiet hours end."""
        if urgent:
            return self.now
        found = self._quiet.get(tz_name)
        if found is None:
            found = self._quiet[tz_name] = (quiet_until(tz_name, self.now, self.config)
                                            or self.now)
        return found


# --- keeping the schedule rows in step with the members -------------------------------


def ensure_schedules(db: Engine, kind: ReminderKind, *, full: bool = True) -> int:
    """Insert the missing schedule rows of a kind (members of its roles); return how many.

    ``full`` looks at every member; otherwise only at members newer than the newest row
    (with a margin for ids committed out of order), which is what a tick needs.
    """
    pending = literal(PENDING, type_=_RS.c.next_due_at.type)
    floor = 0
    if not full:
        with session_scope(db) as session:
            newest = session.execute(
                select(func.max(_RS.c.member_id)).where(_RS.c.kind == kind.name)
            ).scalar()
            floor = max(0, (newest or 0) - _OUT_OF_ORDER_IDS)
    total = 0
    while True:
        with session_scope(db) as session:
            lacking = (
                select(col(Member.id), literal(kind.name), pending)
                .where(col(Member.role).in_(sorted(kind.roles)), col(Member.id) > floor,
                       ~exists().where(_RS.c.member_id == col(Member.id),
                                       _RS.c.kind == kind.name))
                .order_by(col(Member.id))
                .limit(ENSURE_BATCH)
            )
            stmt = (dialect_insert(session, _RS)
                    .from_select(["member_id", "kind", "next_due_at"], lacking)
                    .on_conflict_do_nothing()
                    .returning(_RS.c.member_id))
            ids = list(session.execute(stmt).scalars())
        total += len(ids)
        if len(ids) < ENSURE_BATCH:
            return total
        floor = max(ids)


def reschedule(session: Session, member: Member, now: datetime,
               config: Config) -> dict[str, datetime]:
    """Recompute a member's next reminders after a change; return {kind: next instant}.

    Call it (in the handler's transaction) when a member changes their reminder time, rest
    day, time zone or role. Opting out or in needs no call (opted-out members are skipped
    as their occurrences come), but calling it does no harm. A kind the member already got
    today is not sent again today, even if the new time is later today.
    """
    assert member.id is not None, "flush the member first"
    upcoming: dict[str, datetime] = {}
    for kind in REMINDER_KINDS.values():
        if member.role not in kind.roles:
            session.execute(delete(_RS).where(_RS.c.member_id == member.id,
                                              _RS.c.kind == kind.name))
            continue
        nxt = next_due(kind, member, config, now)
        stmt = dialect_insert(session, _RS).values(member_id=member.id, kind=kind.name,
                                                    next_due_at=nxt)
        stmt = stmt.on_conflict_do_update(index_elements=["member_id", "kind"],
                                          set_={"next_due_at": nxt})
        session.execute(stmt)
        upcoming[kind.name] = nxt
    return upcoming


def upcoming_for(member: Member, now: datetime, config: Config) -> dict[str, datetime]:
    """Return {kind: next instant} of the member's reminders, without changing anything."""
    return {kind.name: next_due(kind, member, config, now)
            for kind in REMINDER_KINDS.values()
            if member.role in kind.roles and kind.applies(member)}


# --- processing due rows --------------------------------------------------------------


@dataclass
class KindStats:
    """What one run did for one kind."""

    queued: int = 0
    due: int = 0
    skipped_opted_out: int = 0
    skipped_no_chat: int = 0
    skipped_not_applicable: int = 0
    already_done: int = 0
    missed: int = 0
    initialised: int = 0
    failed: int = 0
    removed: int = 0
    claimed: int = 0

    def add(self, other: KindStats) -> None:
        """Add what a committed batch did."""
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)

    def summary(self, verb: str = "queued") -> str:
        """Return a one-line account for the log (or, with "would queue", a dry run)."""
        parts = [f"{verb} {self.queued} for {self.due} due"]
        for label, value in (("opted out", self.skipped_opted_out),
                             ("no reachable chat", self.skipped_no_chat),
                             ("not applicable", self.skipped_not_applicable),
                             ("already done today", self.already_done),
                             ("missed beyond grace, skipped", self.missed),
                             ("first occurrence computed", self.initialised),
                             ("build failed", self.failed)):
            if value:
                parts.append(f"{label} {value}")
        return ", ".join(parts)


def _claim_query(kind: str, now: datetime, limit: int | None, postgres: bool) -> Any:
    query = (
        select(_RS.c.id, _RS.c.next_due_at, _RS.c.last_local_date, Member)
        .join(Member, col(Member.id) == _RS.c.member_id)
        .where(_RS.c.kind == kind, _RS.c.next_due_at <= now)
    )
    if limit is not None:
        query = query.order_by(_RS.c.next_due_at).limit(limit)
        if postgres:
            # Two schedulers never hold the same row; the one that waits skips it.
            query = query.with_for_update(skip_locked=True, of=_RS)
    return query


@dataclass(frozen=True)
class _Chat:
    """The chat a member is reached on, as the outbox would choose it."""

    channel: str
    address: str
    last_inbound_at: datetime | None


def _reachable_chats(session: Session, member_ids: Sequence[int]) -> dict[int, _Chat]:
    """Return each member's chat to use: the reachable one they last wrote from.

    The same rule as ``bot.outbox.preferred_identity``, for a whole batch in one query.
    """
    if not member_ids:
        return {}
    best: dict[int, tuple[datetime, int, _Chat]] = {}
    rows = session.execute(
        select(col(ChannelIdentity.member_id), col(ChannelIdentity.last_inbound_at),
               col(ChannelIdentity.id), col(ChannelIdentity.channel),
               col(ChannelIdentity.address))
        .where(col(ChannelIdentity.member_id).in_(list(member_ids)),
               col(ChannelIdentity.reachable).is_(True))
    )
    for member_id, last, ident_id, channel, address in rows:
        rank = (last or PENDING, ident_id or 0)
        if member_id not in best or rank > best[member_id][:2]:
            best[member_id] = (*rank, _Chat(channel, address, last))
    return {mid: value[2] for mid, value in best.items()}


class _Batch:
    """One transaction's worth of due rows for one kind."""

    def __init__(self, session: Session, kind: ReminderKind, planner: _Planner,
                 stats: KindStats, *, careful: bool) -> None:
        self.session = session
        self.kind = kind
        self.planner = planner
        self.config = planner.config
        self.now = planner.now
        self.stats = stats
        self.careful = careful
        self.updates: list[tuple[int, tuple[datetime, date | None]]] = []
        self.removals: list[int] = []
        self.fast: list[list[tuple[Outbound, Member, _Chat]]] = []
        self.slow: list[Outbound] = []
        self.oldest_due: datetime | None = None  # the most overdue occurrence (lag metric)

    def process(self, rows: Sequence[Any]) -> None:
        members: dict[int, Member] = {row[3].id: row[3] for row in rows}
        chats = _reachable_chats(self.session, list(members))
        for rid, due_at, last_date, member in rows:
            self._one(rid, due_at, last_date, member, members, chats)

    def _one(self, rid: int, due_at: datetime, last_date: date | None, member: Member,
             members: dict[int, Member], chats: dict[int, _Chat]) -> None:
        kind, now, stats = self.kind, self.now, self.stats
        stats.claimed += 1
        if member.role not in kind.roles:
            self.removals.append(rid)
            stats.removed += 1
            return
        plan = self.planner.plan(kind, member)
        # Whatever happens below, the row moves on to the member's next occurrence.
        move = (plan.upcoming, last_date)
        occurrence = due_at
        if due_at <= PENDING:
            # A new row: its latest occurrence counts if it is within the grace period
            # (the member registered at 18:59, the tick came at 19:00:20), else wait.
            occurrence = plan.previous(now)
            if now - occurrence > self.planner.grace:
                stats.initialised += 1
                self.updates.append((rid, move))
                return
        elif now - occurrence > self.planner.grace:
            stats.missed += 1
            log.debug("%s for member %s at %s missed beyond the grace period", kind.name,
                      member.id, occurrence.isoformat())
            self.updates.append((rid, move))
            return
        local_day = plan.local_date(occurrence)
        if last_date is not None and local_day <= last_date:
            stats.already_done += 1
            self.updates.append((rid, move))
            return
        stats.due += 1
        if self.oldest_due is None or occurrence < self.oldest_due:
            self.oldest_due = occurrence
        if not kind.urgent and member.opted_out:
            stats.skipped_opted_out += 1
        elif not kind.urgent and member.id not in chats:
            stats.skipped_no_chat += 1
        elif not kind.applies(member):
            stats.skipped_not_applicable += 1
        else:
            items = self._build(member, occurrence)
            if items is not None:
                self._stage(items, f"{kind.name}:{member.id}:{local_day.isoformat()}",
                            members, chats)
                move = (plan.upcoming, local_day)
        self.updates.append((rid, move))

    def _stage(self, items: list[Outbound], key: str, members: dict[int, Member],
               chats: dict[int, _Chat]) -> None:
        """Give the messages their keys; put them in the batch insert, or all in the rest.

        One member's messages stay together, so that they keep their order in the outbox.
        """
        group: list[tuple[Outbound, Member, _Chat]] = []
        for i, item in enumerate(items):
            if item.idempotency_key is None:
                item.idempotency_key = key if i == 0 else f"{key}:{i}"
            if self.kind.urgent:
                item.urgent = True
            if item.member_id is not None and item.channel is None:
                target, chat = members.get(item.member_id), chats.get(item.member_id)
                if target is not None and chat is not None:
                    group.append((item, target, chat))
        if len(group) == len(items):
            self.fast.append(group)
        else:
            self.slow.extend(items)

    def _build(self, member: Member, occurrence: datetime) -> list[Outbound] | None:
        if not self.careful:
            return self.kind.build(self.session, member, occurrence, self.config)
        try:
            with self.session.begin_nested():
                return self.kind.build(self.session, member, occurrence, self.config)
        except Exception:
            self.stats.failed += 1
            log.exception("reminder %s for member %s failed; this occurrence is skipped",
                          self.kind.name, member.id)
            return None

    def flush(self, *, write_schedule: bool = True) -> None:
        """Queue the messages and move the rows to their next occurrence."""
        self.stats.queued += self._queue_fast()
        if self.slow:
            self.stats.queued += len(queue_messages(self.session, self.slow, now=self.now,
                                                    config=self.config))
        if write_schedule:
            # Rows of one zone and time move to the same instant: one UPDATE per group.
            groups: dict[tuple[datetime, date | None], list[int]] = {}
            for rid, move in self.updates:
                groups.setdefault(move, []).append(rid)
            for (nd, ld), ids in groups.items():
                self.session.execute(update(_RS).where(_RS.c.id.in_(ids))
                                     .values(next_due_at=nd, last_local_date=ld))
            if self.removals:
                self.session.execute(delete(_RS).where(_RS.c.id.in_(self.removals)))

    def _queue_fast(self) -> int:
        """Render and insert the batch's plain messages in one statement.

        A plain message is one ``bot.outbox.queue_messages`` would write as one queued row
        on the member's chat (tests/test_scheduler.py holds the two together); the rest (no
        chat, a text to split, WhatsApp's window closed without a template) goes through
        ``queue_messages`` itself. What this saves is its per-row savepoint and ORM object:
        ``ON CONFLICT DO NOTHING`` on the idempotency key skips duplicates for the batch.
        """
        values: list[tuple[Any, ...]] = []
        for group in self.fast:
            rows = [self._plain_row(item, member, chat) for item, member, chat in group]
            if any(row is None for row in rows):
                self.slow.extend(item for item, _member, _chat in group)
            else:
                values.extend(row for row in rows if row)
        return _insert_plain(self.session, values) if values else 0

    def _plain_row(self, item: Outbound, member: Member, chat: _Chat) -> tuple[Any, ...] | None:
        """Return the outbox row of a plain message, () to drop it, None if not plain."""
        if member.opted_out and item.kind not in ASKED_FOR:
            return ()
        planner = self.planner
        text = planner.translator(member.language).render_all(item.parts, item.sep)
        limit = MAX_LENGTH.get(chat.channel)
        if limit is not None and len(text) > limit:
            return None
        due = planner.due_at(member.timezone, item.urgent)
        template = template_vars = None
        if chat.channel == "whatsapp" and not (
                chat.last_inbound_at is not None
                and chat.last_inbound_at + WINDOW - WINDOW_MARGIN > due):
            template = planner.template(item.template or item.kind, member.language)
            if template is None:
                return None
            template_vars = json.dumps(item.template_vars or {"1": first_name(member)})
        # In the order of _PLAIN_COLUMNS.
        return (member.id, chat.channel, chat.address, item.kind,
                0 if item.urgent else PRIORITY.get(item.kind, 5), text, template,
                template_vars, "queued", 0, due, item.idempotency_key, item.broadcast_id,
                self.now)


_PLAIN_COLUMNS = ("member_id", "channel", "address", "kind", "priority", "text", "template",
                  "template_vars", "status", "attempts", "next_attempt_at", "idempotency_key",
                  "broadcast_id", "created_at")
_PLAIN_DATETIMES = tuple(i for i, name in enumerate(_PLAIN_COLUMNS)
                         if name in ("next_attempt_at", "created_at"))


def _insert_plain(session: Session, values: list[tuple[Any, ...]]) -> int:
    """Insert outbox rows, skipping taken idempotency keys; return how many went in.

    Straight to the driver's executemany: at 100,000 reminders SQLAlchemy's per-parameter
    processing costs more than SQLite's work. Datetimes are converted by the column's own
    bind processor, so the stored form is the one the ORM writes and reads.
    """
    conn = session.connection()
    dialect = conn.dialect
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
    if mark is None:  # pragma: no cover - another driver: let SQLAlchemy do it
        stmt = (dialect_insert(session, _OUTBOX)
                .on_conflict_do_nothing(index_elements=["idempotency_key"])
                .returning(_OUTBOX.c.id))
        return len(list(session.execute(stmt, [dict(zip(_PLAIN_COLUMNS, v, strict=True))
                                                for v in values]).scalars()))
    process = _OUTBOX.c.next_attempt_at.type.bind_processor(dialect)
    if process is not None:
        converted: dict[datetime, Any] = {}
        rows = []
        for value in values:
            row = list(value)
            for i in _PLAIN_DATETIMES:
                instant = row[i]
                found = converted.get(instant)
                if found is None:
                    found = converted[instant] = process(instant)
                row[i] = found
            rows.append(tuple(row))
        values = rows
    sql = (f"INSERT INTO {_OUTBOX.name} ({', '.join(_PLAIN_COLUMNS)}) "
           f"VALUES ({', '.join([mark] * len(_PLAIN_COLUMNS))}) "
           "ON CONFLICT (idempotency_key) DO NOTHING")
    return int(conn.exec_driver_sql(sql, values).rowcount or 0)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector off for one batch.

    A batch allocates hundreds of thousands of short-lived objects (ORM rows, messages),
    which sets off full collections of the whole heap again and again: a third of the
    run's time at 100,000 members. What a batch leaves is freed by reference counting;
    the collector runs as usual between batches.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _run_kind(db: Engine, kind: ReminderKind, planner: _Planner,
              renew: Callable[[], bool] | None = None) -> KindStats:
    """Process every row of a kind due at the planner's instant, a batch per transaction."""
    total = KindStats()
    oldest: datetime | None = None
    query = _claim_query(kind.name, planner.now, BATCH_SIZE, is_postgres(db))
    while True:
        stats = KindStats()
        try:
            with _gc_paused(), session_scope(db) as session:
                batch = _Batch(session, kind, planner, stats, careful=False)
                batch.process(session.execute(query).all())
                batch.flush()
        except Exception:
            # Something in the batch failed (most likely one member's build): do the batch
            # again, one member at a time in savepoints, skipping only what fails.
            log.warning("reminder %s: a batch failed; doing it again member by member",
                        kind.name, exc_info=True)
            stats = KindStats()
            with session_scope(db) as session:
                batch = _Batch(session, kind, planner, stats, careful=True)
                batch.process(session.execute(query).all())
                batch.flush()
        total.add(stats)
        if batch.oldest_due is not None and (oldest is None or batch.oldest_due < oldest):
            oldest = batch.oldest_due
        if stats.claimed < BATCH_SIZE:
            break
        if renew is not None and not renew():
            log.warning("reminder %s: this process lost the scheduler lease; stopping",
                        kind.name)
            break
    if total.claimed:
        log.info("reminder %s at %s: %s", kind.name, _iso(planner.now), total.summary())
    if total.missed:
        log.warning("reminder %s: %d occurrence(s) were missed by more than %d minutes "
                    "(downtime?) and are skipped", kind.name, total.missed,
                    planner.config.scheduler.grace_minutes)
    metrics.scheduler_ran(kind.name, total.queued,
                          planner.now - oldest if oldest is not None else None)
    return total


# --- periodic jobs --------------------------------------------------------------------


def _last_run(session: Session, name: str, *, lock: bool) -> datetime | None:
    query = select(_JOBRUN.c.last_run_at).where(_JOBRUN.c.kind == name)
    if lock:
        # Two runs of the same job wait for each other; the second sees the first's time.
        query = query.with_for_update()
    value: datetime | None = session.execute(query).scalar()
    return value


def _mark_run(session: Session, name: str, now: datetime) -> None:
    stmt = dialect_insert(session, _JOBRUN).values(kind=name, last_run_at=now)
    session.execute(stmt.on_conflict_do_update(index_elements=["kind"],
                                               set_={"last_run_at": now}))


def _job_due(job: PeriodicJob, last: datetime | None, now: datetime) -> bool:
    return job.every is None or last is None or now >= last + job.every


def _run_job(db: Engine, config: Config, job: PeriodicJob, now: datetime, *,
             dry_run: bool = False) -> int | None:
    """Run one periodic job in its own transaction; return how many messages it queued.

    None: not due yet (``every``). A dry run rolls everything back.
    """
    with Session(db, expire_on_commit=False) as session:
        try:
            last = _last_run(session, job.name, lock=is_postgres(db) and not dry_run)
            if not _job_due(job, last, now):
                session.rollback()
                return None
            items = job.run(session, now, config)
            queued = len(queue_messages(session, items, now=now, config=config))
            if dry_run:
                session.rollback()
            else:
                _mark_run(session, job.name, now)
                session.commit()
                metrics.scheduler_ran(job.name, queued, now - (last + job.every)
                                      if job.every is not None and last is not None else None)
            return queued
        except BaseException:
            session.rollback()
            raise


def _run_jobs(db: Engine, config: Config, now: datetime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in list(PERIODIC_JOBS.values()):
        try:
            counts[job.name] = _run_job(db, config, job, now) or 0
        except Exception:
            log.exception("periodic job %s failed; the next tick tries again", job.name)
            counts[job.name] = 0
    return counts


RETENTION_CHUNK = 5000
RETENTION_MAX_PER_RUN = 100_000
_DONE_STATUSES = ("sent", "failed", "cancelled")


@periodic_job("outbox_retention", every=timedelta(minutes=10))
def outbox_retention(session: Session, now: datetime, config: Config) -> list[Outbound]:
    """Delete finished outbox rows and inbound records older than ``retention_days``.

    Finished means sent, failed or cancelled; held and queued rows stay. The outbox is
    searched through its (status, next_attempt_at) index: a row is never due before it was
    created, so next_attempt_at before the cut-off finds old rows without a full scan. At
    most RETENTION_MAX_PER_RUN rows of each table per run, in chunks; a backlog clears over
    the following runs.
    """
    cutoff = now - timedelta(days=config.scheduler.retention_days)
    old_outbox = (select(_OUTBOX.c.id)
                  .where(_OUTBOX.c.status.in_(_DONE_STATUSES),
                         _OUTBOX.c.next_attempt_at < cutoff, _OUTBOX.c.created_at < cutoff)
                  .limit(RETENTION_CHUNK))
    inbound: Table = InboundLog.__table__  # type: ignore[attr-defined]
    old_inbound = (select(inbound.c.id).where(inbound.c.received_at < cutoff)
                   .limit(RETENTION_CHUNK))
    removed = {}
    for label, table, chosen in (("outbox", _OUTBOX, old_outbox),
                                 ("inbound", inbound, old_inbound)):
        total = 0
        while total < RETENTION_MAX_PER_RUN:
            ids = list(session.execute(chosen).scalars())
            if ids:
                session.execute(delete(table).where(table.c.id.in_(ids)))
            total += len(ids)
            if len(ids) < RETENTION_CHUNK:
                break
        removed[label] = total
    if any(removed.values()):
        log.info("retention: deleted %d outbox and %d inbound rows older than %d days",
                 removed["outbox"], removed["inbound"], config.scheduler.retention_days)
    return []


# --- the lease ------------------------------------------------------------------------


def acquire_lease(db: Engine, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Take or renew the scheduler lease; return whether ``holder`` has it now.

    One atomic UPDATE takes it when it ran out or renews it for its holder; a missing row
    is inserted, and of two processes inserting at once one wins.
    """
    expires = now + ttl
    with session_scope(db) as session:
        taken = session.execute(
            update(_LEASE)
            .where(_LEASE.c.name == LEASE_NAME,
                   or_(_LEASE.c.expires_at < now, _LEASE.c.holder == holder))
            .values(holder=holder, expires_at=expires)
        )
        if getattr(taken, "rowcount", 0) == 1:
            return True
        inserted = session.execute(
            dialect_insert(session, _LEASE)
            .values(name=LEASE_NAME, holder=holder, expires_at=expires)
            .on_conflict_do_nothing()
            .returning(_LEASE.c.name)
        ).first()
        return inserted is not None


def release_lease(db: Engine, holder: str) -> None:
    """Give the lease up (at shutdown), so another process takes over at its next tick."""
    with session_scope(db) as session:
        session.execute(update(_LEASE).where(_LEASE.c.name == LEASE_NAME,
                                             _LEASE.c.holder == holder)
                        .values(expires_at=PENDING))


def lease_state(db: Engine) -> tuple[str, datetime] | None:
    """Return (holder, expires_at) of the lease, or None if it was never taken."""
    with session_scope(db) as session:
        row = session.execute(select(_LEASE.c.holder, _LEASE.c.expires_at)
                              .where(_LEASE.c.name == LEASE_NAME)).first()
    return (row[0], row[1]) if row else None


# --- running --------------------------------------------------------------------------


def _iso(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _register_all() -> None:
    import handlers  # noqa: F401  (handler modules register their kinds and jobs)


def _run_all(db: Engine, config: Config, now: datetime, *,
             renew: Callable[[], bool] | None = None, full_ensure: bool = True
             ) -> dict[str, int]:
    """Run every reminder kind and periodic job due at ``now``; return queued counts."""
    counts: dict[str, int] = {}
    planner = _Planner(config, now)
    for kind in list(REMINDER_KINDS.values()):
        if renew is not None and not renew():
            log.warning("this process lost the scheduler lease; stopping the run")
            return counts
        try:
            ensure_schedules(db, kind, full=full_ensure)
            counts[kind.name] = _run_kind(db, kind, planner, renew).queued
        except Exception:
            log.exception("reminder %s failed; the next tick tries again", kind.name)
            counts[kind.name] = 0
    counts.update(_run_jobs(db, config, now))
    return counts


def run_due(db: Engine, config: Config, now: datetime, *, send: bool = False
            ) -> dict[str, int]:
    """Run every reminder and periodic job due at ``now``; return {kind or job: queued}.

    The same code as each live scheduler tick, without the lease (rows are claimed, so it
    is safe beside a running scheduler). Running it twice for one instant queues nothing
    the second time. ``send``: then deliver what is due, as if the clock read ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    _register_all()
    now = now.astimezone(UTC)
    counts = _run_all(db, config, now, full_ensure=True)
    if send:
        _send(db, config, now)
    return counts


def _send(db: Engine, config: Config, at: datetime) -> int:
    """Deliver what is due through the configured channels, the clock starting at ``at``."""
    from bot.channels import build_channels
    from bot.sender import Sender

    started = _time.monotonic()

    def clock() -> datetime:
        # It must move: the sender's rate limiters refill with it.
        return at + timedelta(seconds=_time.monotonic() - started)

    # Its leases on the wall clock: a live worker's sender shares the outbox with it.
    return Sender(db, config, build_channels(config), clock=clock, lease_clock=utcnow).drain()


# --- describing -----------------------------------------------------------------------


def _dry_run_kind(db: Engine, kind: ReminderKind, planner: _Planner
                  ) -> tuple[KindStats, int, datetime | None]:
    """Do a kind's run at the planner's instant and roll it back; return what it did."""
    stats = KindStats()
    now = planner.now
    with Session(db, expire_on_commit=False) as session:
        try:
            pending = literal(PENDING, type_=_RS.c.next_due_at.type)
            lacking = (select(col(Member.id), literal(kind.name), pending)
                       .where(col(Member.role).in_(sorted(kind.roles)),
                              ~exists().where(_RS.c.member_id == col(Member.id),
                                              _RS.c.kind == kind.name)))
            session.execute(dialect_insert(session, _RS)
                            .from_select(["member_id", "kind", "next_due_at"], lacking)
                            .on_conflict_do_nothing())
            scheduled = int(session.execute(select(func.count()).select_from(_RS)
                                            .where(_RS.c.kind == kind.name)).scalar() or 0)
            upcoming: datetime | None = session.execute(
                select(func.min(_RS.c.next_due_at))
                .where(_RS.c.kind == kind.name, _RS.c.next_due_at > now)).scalar()
            result = session.execute(_claim_query(kind.name, now, None, False)
                                      .execution_options(yield_per=BATCH_SIZE))
            for part in result.partitions():
                batch = _Batch(session, kind, planner, stats, careful=False)
                batch.process(part)
                batch.flush(write_schedule=False)
                moved = [move[0] for _rid, move in batch.updates]
                if moved:
                    upcoming = min([*moved, *([upcoming] if upcoming else [])])
                session.flush()
                session.expunge_all()
        finally:
            session.rollback()
    return stats, scheduled, upcoming


def _every_text(job: PeriodicJob, config: Config) -> str:
    if job.every is None:
        return f"every tick ({config.scheduler.tick_seconds} s)"
    minutes = int(job.every.total_seconds() // 60)
    return f"every {minutes} min" if minutes < 120 else f"every {minutes // 60} h"


def describe(db: Engine, config: Config, now: datetime) -> list[str]:
    """Return lines showing the jobs, their next run and what they would queue now."""
    _register_all()
    now = now.astimezone(UTC)
    sc = config.scheduler
    lines = [f"now {_iso(now)}; missed runs are caught up within {sc.grace_minutes} min; "
             f"quiet hours {sc.quiet_hours_start}-{sc.quiet_hours_end} in each member's "
             f"own time zone"]
    lease = lease_state(db)
    if lease is not None and lease[1] > now:
        lines.append(f"lease: held by {lease[0]} until {_iso(lease[1])}")
    else:
        lines.append("lease: free (no live scheduler holds it; a worker takes it at its "
                     "next tick)")
    planner = _Planner(config, now)
    total = 0
    for kind in sorted(REMINDER_KINDS.values(), key=lambda k: k.name):
        try:
            stats, scheduled, upcoming = _dry_run_kind(db, kind, planner)
        except Exception as exc:
            lines.append(f"reminder {kind.name}: could not be tried ({type(exc).__name__})")
            continue
        total += stats.queued
        choices = " or their own WAKTU time" if kind.use_member_time else ""
        if kind.use_rest_day:
            choices += " and LIBUR day"
        lines.append(
            f"reminder {kind.name}: {'/'.join(sorted(kind.roles))} at {kind.schedule(config)}"
            f"{choices}, local time; members {scheduled}; next {_iso(upcoming)}; "
            f"now: {stats.summary('would queue')}")
    for job in sorted(PERIODIC_JOBS.values(), key=lambda j: j.name):
        with session_scope(db) as session:
            last = _last_run(session, job.name, lock=False)
        try:
            queued = _run_job(db, config, job, now, dry_run=True)
        except Exception as exc:
            lines.append(f"job {job.name}: {_every_text(job, config)}; last run {_iso(last)}; "
                         f"failed when tried ({type(exc).__name__})")
            continue
        if queued is None:
            when = f"next {_iso(last + job.every) if last and job.every else '-'}"
        else:
            when = f"due now, would queue {queued}"
            total += queued
        lines.append(f"job {job.name}: {_every_text(job, config)}; last run {_iso(last)}; "
                     f"{when}")
    lines.append(f"total: {total} message(s) would be queued now")
    return lines


# --- the live scheduler ---------------------------------------------------------------


class LiveScheduler:
    """Ticks every ``tick_seconds`` in a background thread; works while holding the lease.

    One APScheduler interval job (memory job store, nothing pickled), coalesced, with a
    misfire grace of one tick: a late tick runs, a pile of missed ticks runs once. Start it
    from the worker process only (never at import: gunicorn forks after importing).
    """

    def __init__(self, db: Engine, config: Config, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self.holder = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl = timedelta(seconds=3 * max(1, config.scheduler.tick_seconds))
        self._scheduler: Any = None
        self._lock = threading.Lock()
        self._last_full: datetime | None = None
        self.last_counts: dict[str, int] | None = None

    def start(self) -> None:
        """Start ticking in a background thread (the first tick comes at once)."""
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        _register_all()
        executor_log = logging.getLogger("apscheduler.executors.default")
        if executor_log.level == logging.NOTSET:
            # Two INFO lines every tick say nothing; failures still come as warnings.
            executor_log.setLevel(logging.WARNING)
        seconds = max(1, self.config.scheduler.tick_seconds)
        scheduler = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": seconds})
        scheduler.add_job(self.tick, IntervalTrigger(seconds=seconds, timezone=UTC),
                          id="desmigratif-tick", name="scheduler tick",
                          next_run_time=utcnow(), replace_existing=True)
        scheduler.start()
        self._scheduler = scheduler
        log.info("scheduler %s started (tick %d s)", self.holder, seconds)

    def tick(self) -> dict[str, int] | None:
        """Run what is due if this process holds the lease; return the counts, else None."""
        with self._lock:
            now = self.clock()
            try:
                if not acquire_lease(self.db, self.holder, now, self.ttl):
                    metrics.scheduler_tick("standby")
                    return None
                full = self._last_full is None or now - self._last_full >= FULL_SWEEP_EVERY
                counts = _run_all(self.db, self.config, now, renew=self._renew,
                                  full_ensure=full)
                if full:
                    self._last_full = now
                self.last_counts = counts
                metrics.scheduler_tick("ran")
                return counts
            except Exception:
                log.exception("scheduler tick failed; the next tick tries again")
                metrics.scheduler_tick("error")
                return None

    def _renew(self) -> bool:
        return acquire_lease(self.db, self.holder, self.clock(), self.ttl)

    def shutdown(self) -> None:
        """Stop ticking, wait for a running tick, and give the lease up."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        try:
            release_lease(self.db, self.holder)
        except Exception:
            log.warning("could not release the scheduler lease; it runs out by itself",
                        exc_info=True)


__all__ = [
    "PERIODIC_JOBS", "REMINDER_KINDS", "LiveScheduler", "PeriodicJob", "ReminderKind",
    "acquire_lease", "describe", "ensure_schedules", "next_due", "next_occurrence",
    "periodic_job", "previous_occurrence", "release_lease", "reminder_kind", "reschedule",
    "run_due", "schedule_for", "upcoming_for",
]
