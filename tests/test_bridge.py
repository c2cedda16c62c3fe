"""The weekly family bridge through the scheduler and the engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from bot import scheduler
from handlers.bridge import fund_due_reminders, silent_parents
from storage.db import session_scope
from storage.models import FundRequest, WeeklyAnswer
from tests.conftest import Demo

FRIDAY_16_WIB = datetime(2026, 3, 6, 9, 0, tzinfo=UTC)


def test_carer_weekly_question_and_parent_digest(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    for name in ("Warsini", "Rina"):
        demo.say(name, "MENU")
    cfg = demo.engine.config
    scheduler.run_due(demo.db, cfg, FRIDAY_16_WIB - timedelta(minutes=1))
    scheduler.run_due(demo.db, cfg, FRIDAY_16_WIB)
    questions = [r.text for r in demo.inbox("Warsini") if r.kind == "reminder"]
    assert len(questions) == 1 and "Dimas" in questions[0]
    scheduler.run_due(demo.db, cfg, FRIDAY_16_WIB)  # the same instant again: nothing twice
    assert len([r for r in demo.inbox("Warsini") if r.kind == "reminder"]) == 1
    demo.clock.now = FRIDAY_16_WIB + timedelta(minutes=30)
    assert "sekolah" in demo.say("Warsini", "1")[-1]
    demo.say("Warsini", "9")  # not 1-3: asked again
    demo.say("Warsini", "1")
    assert "Sari" in demo.say("Warsini", "main bola di lapangan")[-1]  # next child
    demo.say("Warsini", "2")
    demo.say("Warsini", "1")
    assert "Terima kasih" in demo.say("Warsini", "-")[-1]
    digest = [r.text for r in demo.inbox("Rina") if r.kind == "digest"]
    assert len(digest) == 1
    assert "Dimas" in digest[0] and "main bola" in digest[0] and "Sari" in digest[0]
    with session_scope(demo.db) as session:
        assert len(session.exec(select(WeeklyAnswer)).all()) == 2


def test_silent_parent_reminded_once_and_coordinator_told(make_family: Callable[..., Demo]
                                                          ) -> None:
    demo = make_family()
    cfg = demo.engine.config
    later = demo.clock() + timedelta(days=cfg.scheduler.silent_parent_days + 1)
    with session_scope(demo.db) as session:
        assert silent_parents(session, demo.clock(), cfg) == []
        out = silent_parents(session, later, cfg)
    recipients = {o.member_id for o in out}
    assert recipients == {demo.ids["Rina"], demo.ids["Darto"]}
    keys = {o.idempotency_key for o in out}
    with session_scope(demo.db) as session:
        again = silent_parents(session, later + timedelta(hours=1), cfg)
    assert {o.idempotency_key for o in again} == keys  # same silence: the outbox keeps one


def test_fund_due_date_reminder(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    with session_scope(demo.db) as session:
        fam_id = demo.member("Rina").family_id or 0
        session.add(FundRequest(family_id=fam_id, village_id=demo.member("Rina").village_id,
                                requester_id=demo.ids["Warsini"], child_id=demo.ids["Dimas"],
                                purpose="books", amount=100_000,
                                due_date=(demo.clock() + timedelta(days=2)).date(),
                                created_at=demo.clock(), updated_at=demo.clock()))
    with session_scope(demo.db) as session:
        out = fund_due_reminders(session, demo.clock(), demo.engine.config)
    assert [o.member_id for o in out] == [demo.ids["Rina"]]
