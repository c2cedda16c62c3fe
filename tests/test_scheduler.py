"""The scheduler with a fixed clock, on SQLite and PostgreSQL: who is due when, exactly once.

Each test keeps only the reminder kinds and periodic jobs it is about (the ``kinds``
fixture), so other features' kinds neither add rows nor fail here; throwaway kinds are
registered in the test and removed after it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import Session, col, select

import handlers  # noqa: F401  (registers every kind and job, snapshotted below)
from bot import scheduler
from bot.channels.simulator import address_for
from bot.config import Config, load_config
from bot.messages import Outbound, Raw, t
from bot.outbox import queue_messages
from bot.scheduler import (
    PENDING,
    PERIODIC_JOBS,
    REMINDER_KINDS,
    LiveScheduler,
    ReminderKind,
    acquire_lease,
    lease_state,
    next_occurrence,
    previous_occurrence,
    reminder_kind,
    run_due,
)
from storage.db import make_engine, session_scope
from storage.models import (
    Family,
    InboundLog,
    JobRun,
    Member,
    Outbox,
    ReminderSchedule,
)
from storage.repo import get_or_create_village, link_identity
from tests.conftest import Clock

SUN = datetime(2026, 3, 22, tzinfo=UTC)  # a Sunday, one week before Rome's summer time


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# --- helpers shared with the other scheduler test modules ------------------------------


@pytest.fixture
def kinds() -> Iterator[Callable[..., None]]:
    """Restrict the registries to some kinds and jobs for one test; restore afterwards."""
    saved_kinds, saved_jobs = dict(REMINDER_KINDS), dict(PERIODIC_JOBS)

    def only(*names: str, jobs: tuple[str, ...] = ()) -> None:
        REMINDER_KINDS.clear()
        REMINDER_KINDS.update({n: saved_kinds[n] for n in names if n in saved_kinds})
        PERIODIC_JOBS.clear()
        PERIODIC_JOBS.update({n: saved_jobs[n] for n in jobs})

    only("parent_checkin")
    yield only
    REMINDER_KINDS.clear()
    REMINDER_KINDS.update(saved_kinds)
    PERIODIC_JOBS.clear()
    PERIODIC_JOBS.update(saved_jobs)


def people(db: DbEngine, *specs: tuple[str, str, str], now: datetime = PENDING,
           link: bool = True, **fields: Any) -> dict[str, int]:
    """Create members (name, role, IANA zone) in one family; return their ids by name."""
    ids: dict[str, int] = {}
    with session_scope(db) as session:
        village = get_or_create_village(session, "Kenanga", now=now)
        family = Family(village_id=village.id or 0, consent_status="given", created_at=now)
        session.add(family)
        session.flush()
        for name, role, tz in specs:
            member = Member(family_id=family.id, village_id=village.id or 0, role=role,
                            name=name, timezone=tz, created_at=now, **fields)
            session.add(member)
            session.flush()
            if link:
                link_identity(session, member, "simulator", address_for(member.id or 0),
                              now=now)
            ids[name] = member.id or 0
    return ids


def rows_of(db: DbEngine, prefix: str = "parent_checkin:") -> list[Outbox]:
    """Return the outbox rows whose idempotency key starts with prefix, oldest first."""
    with session_scope(db) as session:
        return list(session.exec(select(Outbox).where(col(Outbox.idempotency_key)
                                                      .startswith(prefix))
                                 .order_by(col(Outbox.id))).all())


def schedule_row(db: DbEngine, member_id: int, kind: str = "parent_checkin"
                 ) -> ReminderSchedule:
    with session_scope(db) as session:
        row = session.exec(select(ReminderSchedule).where(
            ReminderSchedule.member_id == member_id, ReminderSchedule.kind == kind)).one()
        return row


def throwaway(name: str, roles: set[str], when: str, **options: Any) -> ReminderKind:
    """Register a kind for one test (the ``kinds`` fixture removes it afterwards)."""
    def build(session: Session, member: Member, at: datetime, config: Config
              ) -> list[Outbound]:
        return [Outbound([t("Reply MENU to see what you can do.")], member_id=member.id,
                         kind="reminder")]

    options.setdefault("build", build)
    return reminder_kind(ReminderKind(name=name, roles=frozenset(roles),
                                      schedule=lambda _c: when, **options))


# --- local time arithmetic (no database) ------------------------------------------------

ZONES = ["Asia/Taipei", "Asia/Riyadh", "Europe/Rome", "Asia/Jakarta", "Asia/Makassar",
         "Pacific/Auckland", "Pacific/Pago_Pago", "America/Los_Angeles", "Pacific/Kiritimati",
         "Australia/Lord_Howe", "Asia/Kathmandu"]


@pytest.mark.parametrize("tz", ZONES)
def test_occurrences_agree_with_cron_trigger(tz: str) -> None:
    """Weekly 19:00 in every zone through 2026, summer-time changes included."""
    zone = ZoneInfo(tz)
    cron = CronTrigger(day_of_week="sun", hour=19, minute=0, timezone=zone)
    daily = CronTrigger(hour=8, minute=15, timezone=zone)
    instant = utc(2026, 1, 1)
    while instant < utc(2027, 1, 10):
        ours = next_occurrence(zone, 6, datetime.min.time().replace(hour=19), instant)
        assert ours == cron.get_next_fire_time(None, instant + timedelta(seconds=1))
        assert previous_occurrence(zone, 6, ours.astimezone(zone).time(), ours) == ours
        ours_daily = next_occurrence(zone, None, datetime.min.time().replace(hour=8, minute=15),
                                     instant)
        assert ours_daily == daily.get_next_fire_time(None, instant + timedelta(seconds=1))
        instant += timedelta(hours=7, minutes=13)


def test_summer_time_gap_and_fold_happen_once_on_their_day() -> None:
    rome = ZoneInfo("Europe/Rome")
    half_two = datetime.min.time().replace(hour=2, minute=30)
    # 02:30 does not exist on 29 March 2026: it comes at 03:30 summer time, that day.
    gap = next_occurrence(rome, 6, half_two, utc(2026, 3, 28))
    assert gap == utc(2026, 3, 29, 1, 30)
    # 02:30 happens twice on 25 October 2026: only the first, then a week later.
    fold = next_occurrence(rome, 6, half_two, utc(2026, 10, 24))
    assert fold == utc(2026, 10, 25, 0, 30)
    assert next_occurrence(rome, 6, half_two, fold) == utc(2026, 11, 1, 1, 30)


# --- who gets the check-in, when ---------------------------------------------------------


def test_each_parent_at_19_local_on_both_sides_of_the_date_line(
        db: DbEngine, config: Config, kinds: Callable[..., None]) -> None:
    expected = {
        "kiritimati": ("Pacific/Kiritimati", utc(2026, 3, 22, 5)),  # UTC+14
        "auckland": ("Pacific/Auckland", utc(2026, 3, 22, 6)),  # UTC+13, summer
        "taipei": ("Asia/Taipei", utc(2026, 3, 22, 11)),
        "hongkong": ("Asia/Hong_Kong", utc(2026, 3, 22, 11)),
        "riyadh": ("Asia/Riyadh", utc(2026, 3, 22, 16)),
        "rome": ("Europe/Rome", utc(2026, 3, 22, 18)),  # still winter time
        "losangeles": ("America/Los_Angeles", utc(2026, 3, 23, 2)),  # summer since 8 March
        "pagopago": ("Pacific/Pago_Pago", utc(2026, 3, 23, 6)),  # UTC-11: Monday in UTC
    }
    ids = people(db, *((name, "parent", tz) for name, (tz, _) in expected.items()))
    people(db, ("carer", "carer", "Asia/Jakarta"), ("child", "child", "Asia/Jakarta"))
    run_due(db, config, utc(2026, 3, 21))  # computes everyone's first occurrence
    for when in sorted({when for _tz, when in expected.values()}):
        run_due(db, config, when - timedelta(minutes=1))
        due = {ids[name] for name, (_tz, w) in expected.items() if w == when}
        assert not due & {r.member_id for r in rows_of(db)}, f"early at {when}"
        run_due(db, config, when)
    by_member = {r.member_id: r for r in rows_of(db)}
    assert len(rows_of(db)) == len(expected)  # one each, no carer, no child
    for name, (_tz, when) in expected.items():
        row = by_member[ids[name]]
        assert row.created_at == when, name
        assert row.next_attempt_at == when  # 19:00 is not in quiet hours
        # The key carries the local date: a Sunday everywhere, Monday in UTC or not.
        assert row.idempotency_key == f"parent_checkin:{ids[name]}:2026-03-22"
        assert row.kind == "reminder" and row.channel == "simulator"
        assert row.text.startswith("Halo ") and "KABAR" in row.text
    # And everyone's next one is a week later, at 19:00 local again.
    assert schedule_row(db, ids["rome"]).next_due_at == utc(2026, 3, 29, 17)  # summer time
    assert schedule_row(db, ids["pagopago"]).next_due_at == utc(2026, 3, 30, 6)


def test_carers_in_wib_and_wita(db: DbEngine, config: Config,
                                kinds: Callable[..., None]) -> None:
    kinds()
    throwaway("t_carer", {"carer"}, "fri 16:00")
    ids = people(db, ("jakarta", "carer", "Asia/Jakarta"), ("lombok", "carer", "Asia/Makassar"),
                 ("parent", "parent", "Asia/Jakarta"))
    run_due(db, config, utc(2026, 3, 19))
    assert run_due(db, config, utc(2026, 3, 20, 8)) == {"t_carer": 1}  # 16:00 WITA
    assert run_due(db, config, utc(2026, 3, 20, 8, 59)) == {"t_carer": 0}
    assert run_due(db, config, utc(2026, 3, 20, 9)) == {"t_carer": 1}  # 16:00 WIB
    when = {r.member_id: r.created_at for r in rows_of(db, "t_carer:")}
    assert when == {ids["lombok"]: utc(2026, 3, 20, 8), ids["jakarta"]: utc(2026, 3, 20, 9)}


def test_rome_across_both_summer_time_changes(db: DbEngine, config: Config,
                                              kinds: Callable[..., None]) -> None:
    (rome,) = people(db, ("rome", "parent", "Europe/Rome")).values()
    run_due(db, config, utc(2026, 3, 21))
    for instant in (utc(2026, 3, 22, 18), utc(2026, 3, 29, 17)):  # 19:00 CET, 19:00 CEST
        assert run_due(db, config, instant)["parent_checkin"] == 1
    run_due(db, config, utc(2026, 10, 17))  # long after: missed weeks are skipped
    for instant in (utc(2026, 10, 18, 17), utc(2026, 10, 25, 18)):  # CEST, then CET
        assert run_due(db, config, instant)["parent_checkin"] == 1
    assert [r.created_at for r in rows_of(db)] == [
        utc(2026, 3, 22, 18), utc(2026, 3, 29, 17), utc(2026, 10, 18, 17), utc(2026, 10, 25, 18)]
    # A time in the night of the change (quiet hours off to see it go at once).
    config.scheduler.quiet_hours_start = config.scheduler.quiet_hours_end = "07:00"
    with session_scope(db) as session:
        member = session.get(Member, rome)
        assert member is not None
        member.reminder_time = "02:30"
        scheduler.reschedule(session, member, utc(2027, 3, 27), config)
    assert run_due(db, config, utc(2027, 3, 28, 1, 29))["parent_checkin"] == 0
    assert run_due(db, config, utc(2027, 3, 28, 1, 30))["parent_checkin"] == 1  # 03:30 CEST
    assert schedule_row(db, rome).next_due_at == utc(2027, 4, 4, 0, 30)


def test_quiet_hours_hold_until_morning_but_not_urgent_kinds(
        db: DbEngine, config: Config, kinds: Callable[..., None]) -> None:
    config.scheduler.parent_checkin = "sun 22:00"
    throwaway("t_urgent", {"parent"}, "sun 22:00", urgent=True)
    (taipei,) = people(db, ("taipei", "parent", "Asia/Taipei")).values()
    run_due(db, config, utc(2026, 3, 21))
    assert run_due(db, config, utc(2026, 3, 22, 14)) == {"parent_checkin": 1, "t_urgent": 1}
    (held,) = rows_of(db)
    assert held.next_attempt_at == utc(2026, 3, 22, 23)  # Monday 07:00 in Taipei
    (urgent,) = rows_of(db, "t_urgent:")
    assert urgent.next_attempt_at == utc(2026, 3, 22, 14) and urgent.priority == 0
    assert held.member_id == urgent.member_id == taipei


def test_rest_day_and_own_time(db: DbEngine, config: Config,
                               kinds: Callable[..., None]) -> None:
    ids = people(db, ("friday", "parent", "Asia/Hong_Kong"))
    ids |= people(db, ("late", "parent", "Asia/Hong_Kong"), reminder_time="20:30")
    with session_scope(db) as session:
        session.execute(update(Member).where(col(Member.id) == ids["friday"]).values(rest_day=4))
    run_due(db, config, utc(2026, 3, 19))
    assert run_due(db, config, utc(2026, 3, 20, 11))["parent_checkin"] == 1  # Fri 19:00 HKT
    assert run_due(db, config, utc(2026, 3, 22, 11))["parent_checkin"] == 0  # not Sunday
    assert run_due(db, config, utc(2026, 3, 22, 12, 30))["parent_checkin"] == 1  # Sun 20:30
    assert [(r.member_id, r.created_at) for r in rows_of(db)] == [
        (ids["friday"], utc(2026, 3, 20, 11)), (ids["late"], utc(2026, 3, 22, 12, 30))]


def test_opted_out_and_unlinked_are_skipped_and_move_on(
        db: DbEngine, config: Config, kinds: Callable[..., None]) -> None:
    ids = people(db, ("out", "parent", "Asia/Taipei"), opted_out=True)
    ids |= people(db, ("nochat", "parent", "Asia/Taipei"), link=False)
    ids |= people(db, ("in", "parent", "Asia/Taipei"))
    run_due(db, config, utc(2026, 3, 21))
    assert run_due(db, config, utc(2026, 3, 22, 11))["parent_checkin"] == 1
    assert [r.member_id for r in rows_of(db)] == [ids["in"]]
    for name in ("out", "nochat"):
        assert schedule_row(db, ids[name]).next_due_at == utc(2026, 3, 29, 11)
    with session_scope(db) as session:  # MULAI: back in for next week
        session.execute(update(Member).where(col(Member.id) == ids["out"])
                        .values(opted_out=False))
    run_due(db, config, utc(2026, 3, 29, 11))
    assert sorted(r.member_id for r in rows_of(db)) == sorted([ids["in"], ids["in"], ids["out"]])


# --- exactly once --------------------------------------------------------------------------


def test_run_due_twice_sends_nothing_twice(db: DbEngine, config: Config,
                                           kinds: Callable[..., None]) -> None:
    people(db, ("a", "parent", "Asia/Taipei"), ("b", "parent", "Asia/Taipei"))
    at = utc(2026, 3, 22, 11)
    assert run_due(db, config, at, send=True) == {"parent_checkin": 2}
    assert run_due(db, config, at, send=True) == {"parent_checkin": 0}
    assert run_due(db, config, at + timedelta(minutes=5), send=True) == {"parent_checkin": 0}
    rows = rows_of(db)
    assert len(rows) == 2 and {r.status for r in rows} == {"sent"}


def test_the_outbox_key_is_the_second_guard(db: DbEngine, config: Config,
                                            kinds: Callable[..., None]) -> None:
    """A row read twice (a stale scheduler) still queues nothing twice."""
    (a,) = people(db, ("a", "parent", "Asia/Taipei")).values()
    at = utc(2026, 3, 22, 11)
    run_due(db, config, at)
    with session_scope(db) as session:  # forget that it ran: as a racing reader would see
        session.execute(update(ReminderSchedule).values(next_due_at=at, last_local_date=None))
    assert run_due(db, config, at + timedelta(minutes=1)) == {"parent_checkin": 0}
    assert len(rows_of(db)) == 1 and schedule_row(db, a).last_local_date == date(2026, 3, 22)


def test_catch_up_within_grace_and_skip_older(db: DbEngine, config: Config,
                                              kinds: Callable[..., None],
                                              caplog: pytest.LogCaptureFixture) -> None:
    ids = people(db, ("taipei", "parent", "Asia/Taipei"), ("riyadh", "parent", "Asia/Riyadh"),
                 ("auckland", "parent", "Pacific/Auckland"))
    run_due(db, config, utc(2026, 3, 21))
    # Down from Sunday 05:00 to 16:30 UTC: Auckland's 06:00 is 10.5 h old, beyond the
    # 6 h grace; Taipei's 11:00 is 5.5 h old; Riyadh's 16:00 half an hour.
    with caplog.at_level(logging.WARNING, logger="bot.scheduler"):
        assert run_due(db, config, utc(2026, 3, 22, 16, 30))["parent_checkin"] == 2
    assert "missed by more than 360 minutes" in caplog.text
    rows = {r.member_id: r for r in rows_of(db)}
    assert set(rows) == {ids["taipei"], ids["riyadh"]}
    assert rows[ids["riyadh"]].next_attempt_at == utc(2026, 3, 22, 16, 30)
    # 00:30 in Taipei: the late reminder waits for the morning.
    assert rows[ids["taipei"]].next_attempt_at == utc(2026, 3, 22, 23)
    assert rows[ids["taipei"]].idempotency_key.endswith(":2026-03-22")  # type: ignore[union-attr]
    assert schedule_row(db, ids["auckland"]).next_due_at == utc(2026, 3, 29, 6)


def test_new_member_gets_an_occurrence_that_just_passed(db: DbEngine, config: Config,
                                                        kinds: Callable[..., None]) -> None:
    ids = people(db, ("new", "parent", "Asia/Taipei"), ("riyadh", "parent", "Asia/Riyadh"))
    # First run ever at 11:00:20: Taipei's 19:00 just passed (within grace), Riyadh's
    # last Sunday 19:00 is a week old.
    assert run_due(db, config, utc(2026, 3, 22, 11, 0, 20))["parent_checkin"] == 1
    assert [r.member_id for r in rows_of(db)] == [ids["new"]]
    assert schedule_row(db, ids["riyadh"]).next_due_at == utc(2026, 3, 22, 16)


def test_new_time_later_the_same_day_does_not_repeat_today(
        db: DbEngine, config: Config, kinds: Callable[..., None]) -> None:
    (a,) = people(db, ("a", "parent", "Asia/Taipei")).values()
    run_due(db, config, utc(2026, 3, 22, 11))
    with session_scope(db) as session:
        member = session.get(Member, a)
        assert member is not None
        member.reminder_time = "20:00"
        scheduler.reschedule(session, member, utc(2026, 3, 22, 11, 30), config)
    assert schedule_row(db, a).next_due_at == utc(2026, 3, 22, 12)
    assert run_due(db, config, utc(2026, 3, 22, 12))["parent_checkin"] == 0
    assert schedule_row(db, a).next_due_at == utc(2026, 3, 29, 12)


class Crash(BaseException):
    """The process dies here (not an error the scheduler may catch)."""


def test_restart_mid_run_sends_each_once(db: DbEngine, config: Config,
                                         kinds: Callable[..., None],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    kinds()
    monkeypatch.setattr(scheduler, "BATCH_SIZE", 2)
    calls: list[int] = []

    def build(session: Session, member: Member, at: datetime, config: Config
              ) -> list[Outbound]:
        calls.append(member.id or 0)
        if len(calls) == 5:
            raise Crash
        return [Outbound([t("Reply MENU to see what you can do.")], member_id=member.id,
                         kind="reminder")]

    throwaway("t_crash", {"parent"}, "sun 19:00", build=build)
    ids = people(db, *((f"p{i}", "parent", "Asia/Taipei") for i in range(6)))
    at = utc(2026, 3, 22, 11)
    with pytest.raises(Crash):
        run_due(db, config, at)
    assert len(rows_of(db, "t_crash:")) == 4  # two batches committed, the third lost whole
    assert run_due(db, config, at) == {"t_crash": 2}
    assert sorted(r.member_id for r in rows_of(db, "t_crash:")) == sorted(ids.values())


def test_a_failing_member_does_not_stop_the_others(db: DbEngine, config: Config,
                                                   kinds: Callable[..., None],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    kinds()
    ids = people(db, *((f"p{i}", "parent", "Asia/Taipei") for i in range(3)))

    def build(session: Session, member: Member, at: datetime, config: Config
              ) -> list[Outbound]:
        if member.id == ids["p1"]:
            raise ValueError("a bug in one member's message")
        return [Outbound([t("Reply MENU to see what you can do.")], member_id=member.id,
                         kind="reminder")]

    throwaway("t_bug", {"parent"}, "sun 19:00", build=build)
    with caplog.at_level(logging.ERROR, logger="bot.scheduler"):
        assert run_due(db, config, utc(2026, 3, 22, 11)) == {"t_bug": 2}
    assert "failed; this occurrence is skipped" in caplog.text
    assert schedule_row(db, ids["p1"], "t_bug").next_due_at == utc(2026, 3, 29, 11)


def _crashing_child(url: str, at: datetime) -> None:
    """Run the scheduler in a child process that dies (os._exit) on the fifth member."""
    calls: list[int] = []

    def build(session: Session, member: Member, when: datetime, config: Config
              ) -> list[Outbound]:
        calls.append(1)
        if len(calls) == 5:
            os._exit(3)
        return [Outbound([t("Reply MENU to see what you can do.")], member_id=member.id,
                         kind="reminder")]

    REMINDER_KINDS.clear()
    PERIODIC_JOBS.clear()
    throwaway("t_killed", {"parent"}, "sun 19:00", build=build)
    scheduler.BATCH_SIZE = 2
    cfg = load_config(env={})
    cfg.database.url = url
    run_due(make_engine(url), cfg, at)
    os._exit(0)  # pragma: no cover - the build above ends the process first


def test_killed_process_mid_run(db: DbEngine, config: Config,
                                kinds: Callable[..., None]) -> None:
    kinds()
    throwaway("t_killed", {"parent"}, "sun 19:00")
    ids = people(db, *((f"p{i}", "parent", "Asia/Taipei") for i in range(7)))
    at = utc(2026, 3, 22, 11)
    child = multiprocessing.get_context("fork").Process(target=_crashing_child,
                                                        args=(config.database.url, at))
    child.start()
    child.join(60)
    assert child.exitcode == 3
    assert len(rows_of(db, "t_killed:")) == 4
    assert run_due(db, config, at) == {"t_killed": 3}
    assert sorted(r.member_id for r in rows_of(db, "t_killed:")) == sorted(ids.values())


def test_two_schedulers_racing(db: DbEngine, config: Config, kinds: Callable[..., None],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two run-due at once (threads, own connections): every member exactly once."""
    monkeypatch.setattr(scheduler, "BATCH_SIZE", 7)
    ids = people(db, *((f"p{i}", "parent", "Asia/Taipei") for i in range(120)))
    at = utc(2026, 3, 22, 11)
    engines = [make_engine(config.database.url) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def one(engine: DbEngine) -> None:
        try:
            barrier.wait()
            results.append(run_due(engine, config, at))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(e,)) for e in engines]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for e in engines:
        e.dispose()
    assert not errors
    assert sum(r["parent_checkin"] for r in results) == 120
    rows = rows_of(db)
    assert sorted(r.member_id for r in rows) == sorted(ids.values())


# --- one scheduler among many processes ---------------------------------------------------


def test_lease_one_holder_takeover_and_release(db: DbEngine, config: Config,
                                               clock: Clock,
                                               kinds: Callable[..., None]) -> None:
    people(db, ("a", "parent", "Asia/Taipei"))
    clock.now = utc(2026, 3, 22, 11)
    first, second = LiveScheduler(db, config, clock=clock), LiveScheduler(db, config, clock=clock)
    assert first.tick() == {"parent_checkin": 1}
    assert second.tick() is None  # the first holds the lease
    clock.advance(seconds=config.scheduler.tick_seconds)
    assert first.tick() == {"parent_checkin": 0}  # renewed
    clock.advance(seconds=3 * config.scheduler.tick_seconds + 1)  # the first died
    assert second.tick() == {"parent_checkin": 0}
    assert first.tick() is None
    second.shutdown()  # gives the lease up: the first takes it at once
    assert first.tick() is not None
    state = lease_state(db)
    assert state is not None and state[0] == first.holder
    assert len(rows_of(db)) == 1


def test_lease_race(db: DbEngine) -> None:
    """Processes starting together: exactly one gets the lease, every round."""
    engines = [make_engine(str(db.url.render_as_string(hide_password=False)))
               for _ in range(4)]
    ttl = timedelta(seconds=90)
    for round_ in range(5):
        now = utc(2026, 3, 22) + timedelta(hours=round_)  # the previous lease ran out
        barrier = threading.Barrier(4)
        won: list[str] = []

        def take(engine: DbEngine, holder: str, now: datetime = now,
                 barrier: threading.Barrier = barrier, won: list[str] = won) -> None:
            barrier.wait()
            if acquire_lease(engine, holder, now, ttl):
                won.append(holder)

        threads = [threading.Thread(target=take, args=(e, f"h{i}"))
                   for i, e in enumerate(engines)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert len(won) == 1, won
    for e in engines:
        e.dispose()


def test_live_scheduler_runs_in_the_background(db: DbEngine, config: Config,
                                               kinds: Callable[..., None]) -> None:
    config.scheduler.tick_seconds = 1
    live = LiveScheduler(db, config)
    live.start()
    try:
        job = live._scheduler.get_jobs()[0]
        assert job.coalesce is True and job.misfire_grace_time == 1
        for _ in range(100):
            if live.last_counts is not None:
                break
            threading.Event().wait(0.05)
        assert live.last_counts == {"parent_checkin": 0}
    finally:
        live.shutdown()
    state = lease_state(db)
    assert state is not None and state[1] == PENDING  # released


# --- periodic jobs ----------------------------------------------------------------------


def test_periodic_job_every_and_idempotency(db: DbEngine, config: Config,
                                            kinds: Callable[..., None]) -> None:
    kinds()
    (a,) = people(db, ("a", "parent", "Asia/Taipei")).values()

    def notice(session: Session, now: datetime, config: Config) -> list[Outbound]:
        return [Outbound([t("Reply MENU to see what you can do.")], member_id=a,
                         kind="notice", idempotency_key=f"t_job:{now.date()}")]

    scheduler.periodic_job("t_job", every=timedelta(hours=1))(notice)
    at = utc(2026, 3, 22, 11)
    assert run_due(db, config, at) == {"t_job": 1}
    assert run_due(db, config, at + timedelta(minutes=30)) == {"t_job": 0}  # not due
    assert run_due(db, config, at + timedelta(hours=1)) == {"t_job": 0}  # same key
    assert len(rows_of(db, "t_job:")) == 1
    with session_scope(db) as session:
        assert session.get(JobRun, "t_job").last_run_at == at + timedelta(hours=1)  # type: ignore[union-attr]


def test_retention_deletes_old_finished_rows_only(db: DbEngine, config: Config,
                                                  kinds: Callable[..., None]) -> None:
    kinds(jobs=("outbox_retention",))
    now = utc(2026, 6, 1)
    old, recent = now - timedelta(days=91), now - timedelta(days=89)
    with session_scope(db) as session:
        for status, when in (("sent", old), ("failed", old), ("cancelled", old),
                             ("queued", old), ("held", old), ("sent", recent)):
            session.add(Outbox(channel="simulator", address="a", text=f"{status} {when.date()}",
                               status=status, next_attempt_at=when, created_at=when))
        for i, when in enumerate((old, recent)):
            session.add(InboundLog(channel="simulator", external_id=f"x{i}", received_at=when))
    run_due(db, config, now)
    with session_scope(db) as session:
        left = sorted(r.text for r in session.exec(select(Outbox)).all())
        inbound = session.exec(select(InboundLog)).all()
    assert left == [f"held {old.date()}", f"queued {old.date()}", f"sent {recent.date()}"]
    assert [r.external_id for r in inbound] == ["x1"]


# --- rows in step with members; describe ------------------------------------------------


def test_rows_follow_new_members_and_role_changes(db: DbEngine, config: Config,
                                                  kinds: Callable[..., None]) -> None:
    ids = people(db, ("a", "parent", "Asia/Taipei"), ("c", "carer", "Asia/Jakarta"))
    run_due(db, config, utc(2026, 3, 21))
    ids |= people(db, ("b", "parent", "Asia/Taipei"))
    assert scheduler.ensure_schedules(db, REMINDER_KINDS["parent_checkin"], full=False) == 1
    assert scheduler.ensure_schedules(db, REMINDER_KINDS["parent_checkin"], full=True) == 0
    with session_scope(db) as session:
        session.execute(update(Member).where(col(Member.id) == ids["a"]).values(role="carer"))
    assert run_due(db, config, utc(2026, 3, 22, 11))["parent_checkin"] == 1  # b only
    with session_scope(db) as session:
        kinds_of = {(r.member_id, r.kind) for r in session.exec(select(ReminderSchedule))}
    assert kinds_of == {(ids["b"], "parent_checkin")}


def test_describe_shows_what_would_go_without_sending(db: DbEngine, config: Config,
                                                      kinds: Callable[..., None]) -> None:
    kinds("parent_checkin", jobs=("outbox_retention",))
    people(db, ("a", "parent", "Asia/Taipei"), ("b", "parent", "Asia/Taipei"))
    people(db, ("out", "parent", "Asia/Taipei"), opted_out=True)
    at = utc(2026, 3, 22, 11)
    lines = scheduler.describe(db, config, at)
    text = "\n".join(lines)
    checkin = next(line for line in lines if line.startswith("reminder parent_checkin"))
    assert "sun 19:00" in checkin and "members 3" in checkin
    assert "would queue 2 for 3 due" in checkin and "opted out 1" in checkin
    assert "next 2026-03-29T11:00:00Z" in checkin
    assert "job outbox_retention: every 10 min" in text and "lease: free" in text
    assert text.endswith("total: 2 message(s) would be queued now")
    assert rows_of(db) == []  # nothing was queued...
    assert run_due(db, config, at)["parent_checkin"] == 2  # ...so the real run still sends


def test_fast_path_writes_what_queue_messages_writes(db: DbEngine, config: Config,
                                                     kinds: Callable[..., None],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch insert and bot.outbox.queue_messages agree row for row, on every channel."""
    kinds()
    at = utc(2026, 3, 22, 14)  # 22:00 in Taipei: quiet hours
    config.twilio.templates = {"reminder": "HXreminder"}
    chats = {"sim": ("simulator", "sim-a", None), "jv": ("simulator", "sim-b", None),
             "tg": ("telegram", "1001", None),
             "wa_open": ("whatsapp", "whatsapp:+6281200000001", at - timedelta(hours=2)),
             "wa_closed": ("whatsapp", "whatsapp:+393200000001", None),
             "wa_held": ("whatsapp", "whatsapp:+393200000002", None)}
    zones = {"jv": "Asia/Riyadh", "wa_closed": "Europe/Rome"}
    ids = people(db, *((name, "parent", zones.get(name, "Asia/Taipei")) for name in chats),
                 link=False)
    with session_scope(db) as session:
        session.execute(update(Member).where(col(Member.id) == ids["jv"]).values(language="jv"))
        for name, (channel, address, last) in chats.items():
            member = session.get(Member, ids[name])
            assert member is not None
            link_identity(session, member, channel, address, now=PENDING).last_inbound_at = last
    name_of = {v: k for k, v in ids.items()}
    reminder = lambda m: Outbound([t("Reply MENU to see what you can do.")],  # noqa: E731
                                  member_id=m, kind="reminder", template="reminder",
                                  template_vars={"1": "x"})
    tip = lambda m: Outbound([t("Reply TIPS for another tip, or MENU.")],  # noqa: E731
                             member_id=m, kind="tip", urgent=True)
    long = lambda m: Outbound([Raw("kabar " * 900)], member_id=m, kind="notice")  # noqa: E731
    plan = {"sim": (reminder, tip), "jv": (reminder, tip), "tg": (reminder, long),
            "wa_open": (reminder, long), "wa_closed": (reminder,), "wa_held": (tip,)}

    def items(member: Member) -> list[Outbound]:
        return [make(member.id) for make in plan[name_of[member.id or 0]]]

    throwaway("t_same", {"parent"}, "daily 00:00", build=lambda s, m, when, c: items(m))
    fields = ("member_id", "channel", "address", "kind", "priority", "text", "template",
              "template_vars", "status", "attempts", "next_attempt_at", "error",
              "broadcast_id", "created_at", "sent_at", "idempotency_key")

    def written() -> list[list[Any]]:
        with session_scope(db) as session:
            rows = session.exec(select(Outbox)).all()
            session.execute(delete(Outbox))
        return sorted(([getattr(r, f) for f in fields] for r in rows), key=repr)

    run_due(db, config, at - timedelta(days=2))  # the rows exist
    written()
    with session_scope(db) as session:  # due now, everyone
        session.execute(update(ReminderSchedule).values(next_due_at=at))
    fast: list[int] = []
    insert_plain = scheduler._insert_plain
    monkeypatch.setattr(scheduler, "_insert_plain",
                        lambda session, values: fast.append(len(values))
                        or insert_plain(session, values))
    run_due(db, config, at)
    ours = written()
    with session_scope(db) as session:
        reference = []
        for member_id in ids.values():
            member = session.get(Member, member_id)
            assert member is not None
            expected = items(member)
            key = f"t_same:{member_id}:{at.astimezone(ZoneInfo(member.timezone)).date()}"
            for i, item in enumerate(expected):
                item.idempotency_key = key if i == 0 else f"{key}:{i}"
            reference.extend(expected)
        queue_messages(session, reference, now=at, config=config)
    theirs = written()
    assert sum(fast) == 5  # sim and jv (two each), wa_closed (its template)
    assert len(ours) == 2 + 2 + (1 + 2) + (1 + 4) + 1 + 1  # long texts split
    assert ours == theirs
    by = {(name_of[r[0]], r[3]): r for r in ours if r[15]}
    assert by["wa_closed", "reminder"][6] == "reminder"  # template outside the window
    assert by["wa_held", "tip"][8] == "held"  # no template for tips: held
    assert by["wa_open", "reminder"][6] is None
    assert by["sim", "reminder"][10] == utc(2026, 3, 22, 23)  # held by quiet hours
    assert by["sim", "tip"][10] == at  # urgent: not held
