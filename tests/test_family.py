"""Family features through the engine: news, school-fund requests, tips, safety."""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import col, select

from bot.content import age_band, load_default
from handlers.fund import decide
from storage.db import session_scope
from storage.models import Alert, AuditLog, FundRequest, Outbox, Relay, TipSeen
from storage.repo import MemberSpec
from tests.conftest import Demo


def _texts(demo: Demo, name: str, kind: str | None = None) -> list[str]:
    return [r.text for r in demo.inbox(name) if kind is None or r.kind == kind]


def _ready(demo: Demo, *names: str) -> None:
    for name in names:
        demo.say(name, "MENU")  # the first-contact notice out of the way


# --- KABAR -------------------------------------------------------------------------------


def test_parent_news_reaches_teen_and_carer_not_the_small_child(
        make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Rina")
    replies = demo.say("Rina", "KABAR Ibu sehat, kangen kalian semua")
    assert "Dimas" in replies[-1] and "Warsini" in replies[-1]
    for name in ("Dimas", "Warsini"):
        (relay,) = _texts(demo, name, "relay")
        assert "Rina" in relay and "kangen kalian semua" in relay and "KABAR" in relay
    assert _texts(demo, "Sari", "relay") == []  # 5 years old: no account of her own
    with session_scope(demo.db) as session:
        (logged,) = session.exec(select(Relay)).all()
        assert logged.recipients == 2 and logged.from_role == "parent"


def test_child_news_reaches_the_parents_in_their_language(make_family: Callable[..., Demo]
                                                          ) -> None:
    demo = make_family()
    _ready(demo, "Dimas", "Rina")
    demo.say("Rina", "BAHASA en")
    demo.say("Dimas", "kabar Aku juara kelas bu!")
    (relay,) = _texts(demo, "Rina", "relay")
    assert relay.startswith("Message from Dimas") and "juara kelas" in relay
    assert _texts(demo, "Warsini", "relay") == []


def test_bare_kabar_asks_for_the_message(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Warsini")
    assert "?" in demo.say("Warsini", "KABAR")[-1]
    demo.say("Warsini", "Dimas sudah ujian hari ini")
    assert any("ujian" in r for r in _texts(demo, "Rina", "relay"))


def test_relay_longer_than_the_limit_is_refused_not_cut(make_family: Callable[..., Demo]
                                                        ) -> None:
    demo = make_family()
    _ready(demo, "Warsini")
    reply = demo.say("Warsini", "KABAR " + "a" * 5000)[-1]
    assert "5000" in reply
    assert _texts(demo, "Rina", "relay") == []


# --- DANA ---------------------------------------------------------------------------------


def _request(demo: Demo, amount: str = "150rb") -> int:
    demo.say("Warsini", "DANA")
    demo.say("Warsini", "1")          # which child: Dimas
    demo.say("Warsini", "3")          # books
    demo.say("Warsini", amount)
    demo.say("Warsini", "-")          # no due date
    reply = demo.say("Warsini", "YA")[-1]
    with session_scope(demo.db) as session:
        request = session.exec(select(FundRequest).order_by(col(FundRequest.id).desc())).first()
        assert request is not None and f"#{request.id}" in reply
        return request.id or 0


def test_fund_request_flow_and_everyone_told(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Warsini", "Rina", "Darto")
    assert "1. Dimas" in demo.say("Warsini", "DANA")[-1]
    assert "1" in demo.say("Warsini", "x")[-1]  # not a number on the list: asked again
    demo.say("Warsini", "BATAL")
    demo.say("Warsini", "DANA")
    demo.say("Warsini", "1")
    assert "BOS" not in demo.say("Warsini", "3")[-1]
    assert "150rb" in demo.say("Warsini", "seratus duapuluh")[-1]  # re-asked with an example
    demo.say("Warsini", "Rp 150.000")
    summary = demo.say("Warsini", "-")[-1]
    assert "Rp150.000" in summary and "BOS" in summary and "PIP" in summary
    demo.say("Warsini", "YA")
    with session_scope(demo.db) as session:
        (request,) = session.exec(select(FundRequest)).all()
        assert (request.amount, request.purpose, request.status) == (150_000, "books", "pending")
    (to_parent,) = _texts(demo, "Rina", "notice")
    assert "Rp150.000" in to_parent and f"KIRIM {request.id}" in to_parent
    assert any(f"SETUJU {request.id}" in x for x in _texts(demo, "Darto", "notice"))
    # pending -> pledged -> approved -> paid, with everyone told each time
    demo.say("Rina", f"KIRIM {request.id}")
    demo.say("Darto", f"SETUJU {request.id}")
    demo.say("Rina", f"LUNAS {request.id}")
    with session_scope(demo.db) as session:
        final = session.get(FundRequest, request.id)
        assert final is not None and final.status == "paid"
        actions = [a.action for a in session.exec(select(AuditLog)).all()]
        fund_actions = [a for a in actions if a.startswith("fund.")]
        assert fund_actions == ["fund.create", "fund.pledged", "fund.approved", "fund.paid"]
    assert len(_texts(demo, "Warsini", "status")) == 3
    assert len(_texts(demo, "Darto", "status")) == 2  # not told of his own decision
    assert len(_texts(demo, "Rina", "status")) == 1


def test_fund_amount_in_parent_locale(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Warsini", "Rina")
    demo.say("Rina", "BAHASA en")
    _request(demo, "1,5 jt")
    (to_parent,) = _texts(demo, "Rina", "notice")
    assert "Rp1,500,000" in to_parent


def test_fund_rules(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Warsini", "Rina", "Darto", "Dimas")
    rid = _request(demo)
    assert "KIRIM 12" in demo.say("Rina", "KIRIM")[-1]  # asks which, with an example
    assert str(rid + 99) in demo.say("Rina", f"KIRIM {rid + 99}")[-1]  # not found
    assert f"#{rid}" in demo.say("Dimas", f"BATAL {rid}")[-1]  # not the requester
    assert "TOLAK" in demo.say("Darto", f"TOLAK {rid}")[-1]  # a reason is required
    demo.say("Darto", f"TOLAK {rid} sudah ditanggung BOS")
    with session_scope(demo.db) as session:
        request = session.get(FundRequest, rid)
        assert request is not None and request.status == "rejected"
        assert request.reason == "sudah ditanggung BOS"
    assert any("BOS" in x for x in _texts(demo, "Warsini", "status"))
    demo.say("Rina", f"KIRIM {rid}")  # too late: rejected is final
    with session_scope(demo.db) as session:
        request = session.get(FundRequest, rid)
        assert request is not None and request.status == "rejected"


def test_requester_cancels_and_other_village_coordinator_cannot_see(
        make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Warsini", "Darto")
    rid = _request(demo)
    other = make_family(village="Kuripan")
    _ready(other, "Darto")
    demo.ids["Darto2"] = other.ids["Darto"]
    assert f"#{rid}" in demo.say("Darto2", f"SETUJU {rid}")[-1]  # "could not find"
    with session_scope(demo.db) as session:
        request = session.get(FundRequest, rid)
        assert request is not None and request.status == "pending"
    demo.say("Warsini", f"BATAL {rid}")
    with session_scope(demo.db) as session:
        request = session.get(FundRequest, rid)
        assert request is not None and request.status == "cancelled"


def test_decide_service_for_the_api(make_family: Callable[..., Demo]) -> None:
    import pytest

    from handlers.fund import FundError

    demo = make_family()
    _ready(demo, "Warsini")
    rid = _request(demo)
    with session_scope(demo.db) as session:
        with pytest.raises(FundError) as err:
            decide(session, rid, approve=False, reason="", actor="coordinator:1",
                   now=demo.clock(), config=demo.engine.config)
        assert err.value.status_code == 422
        messages = decide(session, rid, approve=True, reason=None, actor="coordinator:1",
                          now=demo.clock(), config=demo.engine.config)
        assert {m.member_id for m in messages} >= {demo.ids["Warsini"], demo.ids["Rina"]}
        with pytest.raises(FundError) as err:
            decide(session, 424242, approve=True, reason=None, actor="c", now=demo.clock(),
                   config=demo.engine.config)
        assert err.value.status_code == 404


# --- TIPS ----------------------------------------------------------------------------------


def test_tips_never_repeat_until_all_seen(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Warsini")
    library = load_default()
    bands = {age_band(2012, demo.clock().date()), age_band(2021, demo.clock().date())}
    pool = library.candidates(audience="carer", bands=bands, region="indramayu")  # type: ignore[arg-type]
    seen: list[str] = []
    for _ in range(len(pool)):
        demo.say("Warsini", "TIPS")
        with session_scope(demo.db) as session:
            ids = set(session.exec(select(TipSeen.tip_id)
                                   .where(TipSeen.member_id == demo.ids["Warsini"])).all())
        new = ids - set(seen)
        assert len(new) == 1, "a tip repeated before the cycle ended"
        seen.extend(new)
    assert set(seen) == set(pool)
    demo.say("Warsini", "TIPS")  # the cycle starts again
    with session_scope(demo.db) as session:
        assert len(session.exec(select(TipSeen)
                                .where(TipSeen.member_id == demo.ids["Warsini"])).all()) == 1


def test_parent_gets_parent_tips(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Rina")
    demo.say("Rina", "TIPS")
    with session_scope(demo.db) as session:
        (seen,) = session.exec(select(TipSeen)).all()
    tip = load_default().get(seen.tip_id, "id")
    assert tip is not None and tip.audience == "parent"


# --- safety --------------------------------------------------------------------------------


def test_tolong_reaches_the_coordinator_in_one_step(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Dimas")
    reply = demo.say("Dimas", "TOLONG")[-1]
    assert "SAPA 129" in reply and "Darto" in reply and "?" not in reply  # never questioned
    (alert_msg,) = _texts(demo, "Darto", "alert")
    assert "Dimas" in alert_msg and "ACK" in alert_msg
    rows = [r for r in demo.inbox("Darto") if r.kind == "alert"]
    assert rows[0].priority == 0 and rows[0].next_attempt_at == demo.clock()
    demo.say("Dimas", "tolong")  # twice: no second alert
    with session_scope(demo.db) as session:
        (alert,) = session.exec(select(Alert)).all()
    demo.say("Darto", f"ACK {alert.id}")
    with session_scope(demo.db) as session:
        acked = session.get(Alert, alert.id)
        assert acked is not None and acked.status == "acknowledged"


def test_risky_words_in_any_message_alert_with_a_way_out(make_family: Callable[..., Demo]
                                                         ) -> None:
    demo = make_family()
    _ready(demo, "Dimas")
    replies = demo.say("Dimas", "KABAR aku dipukulin paman tadi malam")
    assert any("SAPA 129" in r for r in replies) and any("BUKAN" in r for r in replies)
    assert _texts(demo, "Darto", "alert")
    demo.say("Dimas", "BUKAN")
    with session_scope(demo.db) as session:
        (alert,) = session.exec(select(Alert)).all()
        assert alert.status == "retracted" and alert.kind == "word"
    assert len(_texts(demo, "Darto", "alert")) == 2
    # Harmless look-alikes raise nothing.
    demo.say("Warsini", "KABAR hp ku mati, baterai habis")
    with session_scope(demo.db) as session:
        assert len(session.exec(select(Alert)).all()) == 1


def test_safety_comes_before_consent(make_family: Callable[..., Demo]) -> None:
    demo = make_family(consent=False)
    replies = demo.say("Dimas", "TOLONG")
    assert any("SAPA 129" in r for r in replies)
    assert _texts(demo, "Darto", "alert")


def test_unacknowledged_alert_goes_to_the_district(make_family: Callable[..., Demo]) -> None:
    from handlers.safety import escalate_alerts
    from storage.repo import create_coordinator

    demo = make_family()
    with session_scope(demo.db) as session:
        district, _ = create_coordinator(session, name="Bu Kab", village="Kenanga",
                                         level="district", district="Indramayu",
                                         now=demo.clock())
        district_member = district.member_id
    _ready(demo, "Dimas")
    demo.say("Dimas", "SOS")
    cfg = demo.engine.config
    with session_scope(demo.db) as session:
        assert escalate_alerts(session, demo.clock(), cfg) == []
        later = demo.clock.advance(minutes=cfg.scheduler.alert_escalation_minutes + 1)
        out = escalate_alerts(session, later, cfg)
        assert [o.member_id for o in out] == [district_member]
        assert escalate_alerts(session, later, cfg) == []  # once


def test_extra_child_in_family(make_family: Callable[..., Demo]) -> None:
    demo = make_family(extra=[MemberSpec(role="child", name="Bayu", birth_year=2010)])
    _ready(demo, "Rina")
    demo.say("Rina", "KABAR halo anak-anak")
    assert "Bayu" in demo.say("Rina", "KABAR lagi")[-1]


# --- data rights ---------------------------------------------------------------------------


def test_data_shows_what_is_stored(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    _ready(demo, "Rina")
    reply = demo.say("Rina", "DATA")[-1]
    assert "Rina" in reply and "Asia/Hong_Kong" in reply and "HAPUS" in reply


def test_hapus_erases_the_member(make_family: Callable[..., Demo]) -> None:
    from storage.models import ChannelIdentity, Member

    demo = make_family()
    _ready(demo, "Rina", "Warsini")
    demo.say("Rina", "KABAR halo")
    assert "1" in demo.say("Rina", "HAPUS")[-1]
    demo.say("Rina", "BATAL")
    with session_scope(demo.db) as session:
        assert session.get(Member, demo.ids["Rina"]) is not None
    demo.say("Rina", "HAPUS")
    assert demo.say("Rina", "1") == []  # the goodbye goes to the chat address: see below
    with session_scope(demo.db) as session:
        assert session.get(Member, demo.ids["Rina"]) is None
        assert session.exec(select(ChannelIdentity).where(
            ChannelIdentity.member_id == demo.ids["Rina"])).first() is None
        goodbye = session.exec(select(Outbox).where(
            Outbox.address == f"sim-{demo.ids['Rina']}").order_by(col(Outbox.id).desc())).first()
        assert goodbye is not None and goodbye.member_id is None
        assert session.exec(select(AuditLog).where(AuditLog.action == "member.erase")).first()
    # The chat is no longer linked.
    assert "DAFTAR" in demo.say("x", "MENU", address=f"sim-{demo.ids['Rina']}")[-1]


def test_guardian_withdraws_consent_and_children_are_erased(make_family: Callable[..., Demo]
                                                             ) -> None:
    from storage.models import Family, Member

    demo = make_family()
    _ready(demo, "Warsini", "Dimas")
    demo.say("Warsini", "HAPUS")
    assert "2" in demo.say("Warsini", "2")[-1]
    with session_scope(demo.db) as session:
        assert session.get(Member, demo.ids["Dimas"]) is None
        assert session.get(Member, demo.ids["Sari"]) is None
        fam = session.exec(select(Family)).first()
        assert fam is not None and fam.consent_status == "withdrawn"
        assert session.get(Member, demo.ids["Warsini"]) is not None


def test_news_at_night_says_when_it_arrives(make_family: Callable[..., Demo]) -> None:
    from datetime import timedelta

    demo = make_family()
    _ready(demo, "Rina")
    demo.clock.now = demo.clock.now.replace(hour=17)  # 00:00 in Jakarta, 01:00 in Hong Kong
    replies = demo.say("Rina", "KABAR selamat tidur")
    assert "Warsini" in replies[-1] and "pagi" in replies[-1]
    relay = [r for r in demo.inbox("Warsini") if r.kind == "relay"][0]
    # 07:00 in Jakarta the next morning is 00:00 UTC.
    assert relay.next_attempt_at == demo.clock.now.replace(hour=0, minute=0) + timedelta(days=1)
