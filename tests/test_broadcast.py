"""Announcements: who they reach, in which language, when, how fast, and UMUMKAN in chat."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, text
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import col, select

from bot.broadcast import (
    create_broadcast,
    estimate_seconds,
    plan,
    progress,
    run_due_broadcasts,
    start_broadcast,
)
from bot.channels.simulator import SimulatorChannel
from bot.config import Config, load_config
from bot.sender import Sender
from storage.db import make_engine, session_scope
from storage.models import (
    AuditLog,
    Broadcast,
    ChannelIdentity,
    Family,
    Member,
    Outbox,
    Village,
)
from storage.repo import MemberSpec
from tests.conftest import Clock, Demo


def _village(db: DbEngine, name: str = "Kenanga") -> Village:
    with session_scope(db) as session:
        v = session.exec(select(Village).where(Village.name == name)).one()
        return v


def _broadcast_rows(db: DbEngine, bid: int) -> list[Outbox]:
    with session_scope(db) as session:
        return list(session.exec(select(Outbox).where(Outbox.broadcast_id == bid)
                                 .order_by(col(Outbox.member_id))).all())


def test_fan_out_reaches_each_in_their_language(make_family: Callable[..., Demo],
                                                db: DbEngine, config: Config,
                                                clock: Clock) -> None:
    clock.now = clock.now.replace(hour=3)  # 10:00 WIB: no quiet hours
    demo = make_family(extra=[MemberSpec(role="carer", name="Paklik", language="jv")])
    with session_scope(db) as session:  # Paklik has not linked a chat yet
        for ident in session.exec(select(ChannelIdentity).where(
                ChannelIdentity.member_id == demo.ids["Paklik"])).all():
            session.delete(ident)
    demo.say("Warsini", "BAHASA en")
    demo.say("Rina", "STOP")
    with session_scope(db) as session:
        village = session.exec(select(Village)).one()
        b = create_broadcast(session, village=village, text="Rapat hari Senin", now=clock(),
                             config=config, actor="test",
                             translations={"en": "Meeting on Monday"})
        bid = b.id or 0
    rows = {r.member_id: r for r in _broadcast_rows(db, bid)}
    # Dimas (14), Warsini, Paklik (not linked: held); Sari (5) has no account; Rina opted out.
    assert set(rows) == {demo.ids["Dimas"], demo.ids["Warsini"], demo.ids["Paklik"]}
    assert rows[demo.ids["Warsini"]].text.endswith("Meeting on Monday")
    assert "village coordinator of Kenanga" in rows[demo.ids["Warsini"]].text
    assert rows[demo.ids["Dimas"]].text == ("Pengumuman dari petugas desa Kenanga:\n\n"
                                            "Rapat hari Senin")
    assert rows[demo.ids["Paklik"]].text.startswith("Pengumuman saka petugas desa Kenanga")
    assert rows[demo.ids["Paklik"]].status == "held" and rows[demo.ids["Paklik"]].channel == ""
    assert {r.kind for r in rows.values()} == {"broadcast"}
    assert all(r.priority == 8 for r in rows.values())
    with session_scope(db) as session:
        b2 = session.get(Broadcast, bid)
        assert b2 is not None
        p = progress(session, b2, config)
        assert (p["recipients"], p["opted_out"], p["queued"], p["held"]) == (4, 1, 2, 1)
        audit = session.exec(select(AuditLog).where(AuditLog.action == "broadcast.create")).one()
        assert audit.actor == "test" and "Rapat" not in audit.details
    # Paklik links a chat later: the held announcement follows.
    demo.say("Paklik", f"DAFTAR {demo.codes['Paklik']}", address="sim-paklik")
    assert [r.status for r in _broadcast_rows(db, bid) if r.member_id == demo.ids["Paklik"]] \
        == ["queued"]


def test_children_without_consent_are_not_reached(make_family: Callable[..., Demo],
                                                  db: DbEngine, config: Config,
                                                  clock: Clock) -> None:
    demo = make_family(consent=False)
    with session_scope(db) as session:
        village = session.exec(select(Village)).one()
        who = plan(session, village_id=village.id or 0, roles=[], age_band=None, now=clock(),
                   config=config)
    ids = {mid for mid, _lang, _tz in who.members}
    assert demo.ids["Dimas"] not in ids and demo.ids["Sari"] not in ids
    assert {demo.ids["Warsini"], demo.ids["Rina"]} <= ids
    assert demo.ids["Darto"] not in ids  # coordinators are not in the families


def test_roles_and_age_band(make_family: Callable[..., Demo], db: DbEngine, config: Config,
                            clock: Clock) -> None:
    demo = make_family()
    make_family(village="Kenanga", extra=[])  # a second family, same ages
    with session_scope(db) as session:
        vid = session.exec(select(Village)).one().id or 0
        parents = plan(session, village_id=vid, roles=["parent"], age_band=None, now=clock(),
                       config=config)
        assert len(parents.members) == 2
        # Sari (born 2021) is 2-9; nobody is 0-23 months.
        small = plan(session, village_id=vid, roles=["carer"], age_band="2-9", now=clock(),
                     config=config)
        assert len(small.members) == 2
        babies = plan(session, village_id=vid, roles=[], age_band="0-23m", now=clock(),
                      config=config)
        assert babies.recipients == 0
        session.add(Member(family_id=session.get(Member, demo.ids["Dimas"]).family_id,  # type: ignore[union-attr]
                           village_id=vid, role="child", name="Bayi", birth_year=2025,
                           created_at=clock()))
        session.flush()
        babies = plan(session, village_id=vid, roles=["carer", "parent"], age_band="0-23m",
                      now=clock(), config=config)
        assert {m for m, _l, _t in babies.members} == {demo.ids["Warsini"], demo.ids["Rina"]}


def test_quiet_hours_delay_each_recipient_in_their_zone(make_family: Callable[..., Demo],
                                                        db: DbEngine, config: Config,
                                                        clock: Clock) -> None:
    clock.now = datetime(2026, 3, 5, 14, 30, tzinfo=UTC)  # 21:30 WIB, 22:30 in Hong Kong
    demo = make_family()
    with session_scope(db) as session:
        village = session.exec(select(Village)).one()
        bid = create_broadcast(session, village=village, text="Besok kerja bakti",
                               now=clock(), config=config, actor="test").id or 0
    rows = {r.member_id: r for r in _broadcast_rows(db, bid)}
    warsini = rows[demo.ids["Warsini"]].next_attempt_at
    rina = rows[demo.ids["Rina"]].next_attempt_at
    assert warsini.replace(tzinfo=UTC) == datetime(2026, 3, 6, 0, 0, tzinfo=UTC)  # 07:00 WIB
    assert rina.replace(tzinfo=UTC) == datetime(2026, 3, 5, 23, 0, tzinfo=UTC)  # 07:00 HKT


def test_scheduled_broadcast_starts_once_and_finishes(make_family: Callable[..., Demo],
                                                      db: DbEngine, config: Config,
                                                      clock: Clock) -> None:
    clock.now = clock.now.replace(hour=3)
    make_family()
    with session_scope(db) as session:
        village = session.exec(select(Village)).one()
        b = create_broadcast(session, village=village, text="Nanti", now=clock(), config=config,
                             actor="test", send_at=clock() + timedelta(hours=1))
        bid = b.id or 0
        assert b.status == "scheduled"
    assert _broadcast_rows(db, bid) == []
    clock.advance(hours=1)
    with session_scope(db) as session:
        run_due_broadcasts(session, clock(), config)
    with session_scope(db) as session:
        run_due_broadcasts(session, clock(), config)  # a second run starts nothing again
        b2 = session.get(Broadcast, bid)
        assert b2 is not None and b2.status == "sending"
        assert not start_broadcast(session, b2, now=clock(), config=config)
    assert len(_broadcast_rows(db, bid)) == 3
    Sender(db, config, {"simulator": SimulatorChannel()}, clock=clock).drain(timeout=10)
    with session_scope(db) as session:
        run_due_broadcasts(session, clock(), config)
    with session_scope(db) as session:
        b3 = session.get(Broadcast, bid)
        assert b3 is not None and b3.status == "done" and b3.finished_at is not None
        assert progress(session, b3, config)["sent"] == 3
        # Months later the outbox has forgotten the rows; the counts stay.
        session.execute(delete(Outbox).where(col(Outbox.broadcast_id) == bid))
        later = progress(session, b3, config)
        assert (later["status"], later["sent"], later["recipients"]) == ("done", 3, 3)


def test_periodic_job_is_registered() -> None:
    scheduler = pytest.importorskip("bot.scheduler")
    jobs = getattr(scheduler, "PERIODIC_JOBS", {})
    assert "broadcasts" in jobs and jobs["broadcasts"].run is run_due_broadcasts


def test_stop_after_queueing_counts_as_opted_out(make_family: Callable[..., Demo],
                                                 db: DbEngine, config: Config,
                                                 clock: Clock) -> None:
    clock.now = clock.now.replace(hour=3)
    demo = make_family()
    with session_scope(db) as session:
        village = session.exec(select(Village)).one()
        bid = create_broadcast(session, village=village, text="x", now=clock(), config=config,
                               actor="test").id or 0
    demo.say("Warsini", "STOP")
    with session_scope(db) as session:
        b = session.get(Broadcast, bid)
        assert b is not None
        p = progress(session, b, config)
    assert p["opted_out"] == 1 and p["queued"] == 2


def test_estimate_adds_up_the_channels() -> None:
    config = load_config(env={})
    config.twilio.rate_per_s = 80
    config.telegram.rate_per_s = 30
    assert estimate_seconds({"whatsapp": 800, "telegram": 300}, config) == 20
    assert estimate_seconds({"": 50}, config) == 0  # held: nothing to send yet
    assert estimate_seconds({}, config) == 0


def test_umumkan_in_chat(make_family: Callable[..., Demo], db: DbEngine) -> None:
    demo = make_family()
    replies = demo.say("Darto", "UMUMKAN Posyandu hari Sabtu jam 08.00")
    assert any("Pengumuman #" in r and "3 orang" in r and "Kenanga" in r for r in replies), \
        replies
    assert any("kurang dari semenit" in r for r in replies)
    texts = [r.text for r in demo.inbox("Rina") if r.kind == "broadcast"]
    assert texts == ["Pengumuman dari petugas desa Kenanga:\n\nPosyandu hari Sabtu jam 08.00"]
    assert not [r for r in demo.inbox("Darto") if r.kind == "broadcast"]
    assert any("UMUMKAN" in r for r in demo.say("Darto", "UMUMKAN"))
    # Not a keyword for the families, and never guessed from a typo.
    assert not any("Pengumuman #" in r for r in demo.say("Warsini", "UMUMKAN halo"))
    assert not any("Pengumuman #" in r for r in demo.say("Darto", "UMUMKN halo"))
    with session_scope(db) as session:
        assert len(session.exec(select(Broadcast)).all()) == 1


def test_announce_in_english(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    demo.say("Darto", "LANG en")
    replies = demo.say("Darto", "ANNOUNCE Meeting tonight")
    assert any("is on its way to 3 people in Kenanga" in r for r in replies), replies


def test_fan_out_of_100k_is_fast(sqlite_url: str) -> None:
    """100,000 recipients are queued in well under the 5 s budget on SQLite."""
    n = 100_000
    config = load_config(env={})
    config.database.url = sqlite_url
    db = make_engine(sqlite_url)
    now = datetime(2026, 3, 5, 3, 0, tzinfo=UTC)
    with session_scope(db) as session:
        village = Village(name="Besar", district="D", created_at=now)
        session.add(village)
        session.flush()
        vid = village.id
        session.execute(insert(Family), [{"village_id": vid, "language": "id",
                                          "consent_status": "given", "created_at": now}
                                         for _ in range(n // 4)])
        fids = [r[0] for r in session.execute(text("SELECT id FROM family")).all()]
        session.execute(insert(Member), [{
            "family_id": fids[i % len(fids)], "village_id": vid,
            "role": ("carer", "parent")[i % 2], "name": f"M{i}",
            "language": ("id", "en", "jv")[i % 3], "timezone": "Asia/Jakarta",
            "opted_out": i % 100 == 0, "tips_opt_in": True, "welcomed": True,
            "created_at": now} for i in range(n)])
        mids = [r[0] for r in session.execute(text("SELECT id FROM member")).all()]
        session.execute(insert(ChannelIdentity), [{
            "member_id": m, "channel": "telegram", "address": str(10_000 + m),
            "reachable": True, "created_at": now} for m in mids])
    started = time.perf_counter()
    with session_scope(db) as session:
        v = session.get(Village, vid)
        assert v is not None
        b = create_broadcast(session, village=v, text="Pengumuman", now=now, config=config,
                             actor="test", translations={"en": "Notice", "jv": "Wara-wara"})
        bid = b.id
    took = time.perf_counter() - started
    with session_scope(db) as session:
        count = session.exec(select(Outbox.id).where(Outbox.broadcast_id == bid)).all()
        assert len(count) == n - n // 100
    Path("test-artifacts").mkdir(exist_ok=True)
    Path("test-artifacts/broadcast-100k.json").write_text(json.dumps(
        {"recipients": n, "queued": len(count), "seconds": round(took, 2)}))
    # The budget is 5 s (measured about 2 s on a 2-core VM); leave room for slow CI.
    assert took < 10, f"queueing {n} took {took:.1f} s"
    db.dispose()


def test_the_chat_last_written_from_is_used(make_family: Callable[..., Demo], db: DbEngine,
                                            config: Config, clock: Clock) -> None:
    demo = make_family()
    with session_scope(db) as session:
        for name, last in (("Warsini", clock() - timedelta(days=1)), ("Rina", None)):
            session.add(ChannelIdentity(member_id=demo.ids[name], channel="telegram",
                                        address=f"tg-{name}", last_inbound_at=last,
                                        created_at=clock()))
        village = session.exec(select(Village)).one()
        who = plan(session, village_id=village.id or 0, roles=["carer", "parent"],
                   age_band=None, now=clock(), config=config)
    # Warsini wrote from Telegram; Rina never wrote from either: the newest chat wins.
    assert who.identities[demo.ids["Warsini"]] == ("telegram", "tg-Warsini")
    assert who.identities[demo.ids["Rina"]] == ("telegram", "tg-Rina")
    demo.say("Rina", "MENU")  # now she has written from the simulator
    with session_scope(db) as session:
        who = plan(session, village_id=village.id or 0, roles=["parent"], age_band=None,
                   now=clock(), config=config)
    assert who.identities[demo.ids["Rina"]][0] == "simulator"


def test_whatsapp_window_template_telegram_or_held(make_family: Callable[..., Demo],
                                                   db: DbEngine, config: Config,
                                                   clock: Clock) -> None:
    """The outbox's rules for WhatsApp outside its 24-hour window apply in bulk too."""
    clock.now = clock.now.replace(hour=3)
    demo = make_family(link=False)
    with session_scope(db) as session:
        chats = {"Warsini": [("whatsapp", "whatsapp:+6281200000001", clock())],  # open
                 "Rina": [("whatsapp", "whatsapp:+85261230000", None),  # closed, Telegram
                          ("telegram", "7001", None)],
                 "Dimas": [("whatsapp", "whatsapp:+6281200000003", None)]}  # closed only
        for name, rows in chats.items():
            for channel, address, last in rows:
                session.add(ChannelIdentity(member_id=demo.ids[name], channel=channel,
                                            address=address, last_inbound_at=last,
                                            created_at=clock() - timedelta(days=3)))
        # Rina's WhatsApp chat is the newer one: without the window rule it would be used.
        session.flush()
        village = session.exec(select(Village)).one()
    config.twilio.templates = {"nudge": "HXnudge"}
    with session_scope(db) as session:
        bid = create_broadcast(session, village=village, text="Rapat", now=clock(),
                               config=config, actor="test").id or 0
    rows = {r.member_id: r for r in _broadcast_rows(db, bid)}
    assert (rows[demo.ids["Warsini"]].channel, rows[demo.ids["Warsini"]].status) == (
        "whatsapp", "queued")
    assert (rows[demo.ids["Rina"]].channel, rows[demo.ids["Rina"]].address) == (
        "telegram", "7001")
    dimas = rows[demo.ids["Dimas"]]
    assert (dimas.status, dimas.channel) == ("held", "whatsapp")
    assert [r.kind for r in demo.inbox("Dimas")] == ["broadcast", "nudge"]
    # With an approved template for broadcasts, closed chats get the template instead.
    config.twilio.templates = {"broadcast": "HXbroadcast"}
    with session_scope(db) as session:
        bid2 = create_broadcast(session, village=village, text="Rapat lagi", now=clock(),
                                config=config, actor="test").id or 0
    rows = {r.member_id: r for r in _broadcast_rows(db, bid2)}
    assert rows[demo.ids["Dimas"]].template == "broadcast"
    assert json.loads(rows[demo.ids["Dimas"]].template_vars or "{}") == {"1": "Dimas"}
    assert rows[demo.ids["Warsini"]].template is None


def test_a_long_announcement_is_split_per_channel(make_family: Callable[..., Demo],
                                                  db: DbEngine, config: Config,
                                                  clock: Clock) -> None:
    clock.now = clock.now.replace(hour=3)
    demo = make_family(link=False)
    with session_scope(db) as session:
        session.add(ChannelIdentity(member_id=demo.ids["Warsini"], channel="whatsapp",
                                    address="whatsapp:+6281200000001", last_inbound_at=clock(),
                                    created_at=clock()))
        session.add(ChannelIdentity(member_id=demo.ids["Rina"], channel="telegram",
                                    address="7001", created_at=clock()))
        village = session.exec(select(Village)).one()
        text = " ".join(["kata"] * 798)  # 3,989 characters, 4,028 with the header
        bid = create_broadcast(session, village=village, text=text, now=clock(),
                               config=config, actor="test", roles=["carer", "parent"]).id or 0
    rows = _broadcast_rows(db, bid)
    per_member: dict[int | None, list[Outbox]] = {}
    for r in rows:
        per_member.setdefault(r.member_id, []).append(r)
    assert len(per_member[demo.ids["Warsini"]]) == 3  # WhatsApp: 1,500 characters a message
    assert len(per_member[demo.ids["Rina"]]) == 2  # Telegram: 4,000
    assert all(len(r.text) <= 1500 for r in per_member[demo.ids["Warsini"]])
    with session_scope(db) as session:
        b = session.get(Broadcast, bid)
        assert b is not None
        p = progress(session, b, config)
    assert (p["recipients"], p["queued"]) == (2, 2)  # people, not pieces
    Sender(db, config, {"simulator": SimulatorChannel(), "telegram": SimulatorChannel(),
                        "whatsapp": SimulatorChannel()}, clock=clock).drain(timeout=10)
    with session_scope(db) as session:
        b = session.get(Broadcast, bid)
        assert b is not None
        p = progress(session, b, config)
    assert (p["status"], p["sent"], p["queued"]) == ("done", 2, 0)
