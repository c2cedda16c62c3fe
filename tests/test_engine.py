"""The engine end to end in-process: real database, fixed clock, simulator channel."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlmodel import col, func, select

from bot.engine import Context, Engine, Next
from bot.messages import Inbound
from bot.router import Flow, Registry
from storage.db import session_scope
from storage.models import ConversationState, InboundLog, Outbox
from tests.conftest import Clock, Demo


def test_first_message_says_it_is_an_automated_service(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    replies = demo.say("Warsini", "MENU")
    assert "SAPA 129" in replies[0]
    assert "bukan layanan darurat" in replies[0] or "not an emergency" in replies[0]
    # ...only the first time.
    assert all("SAPA 129" not in r for r in demo.say("Warsini", "MENU"))


def test_menu_differs_by_role(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    demo.say("Warsini", "MENU")
    demo.say("Darto", "MENU")
    carer = demo.say("Warsini", "menu")[0]
    coordinator = demo.say("Darto", "MENU")[0]
    assert "BAHASA" in carer and "BAHASA" in coordinator
    assert carer != coordinator


def test_unknown_text_gets_a_short_menu_never_silence(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    demo.say("Warsini", "MENU")
    replies = demo.say("Warsini", "apa kabar semuanya")
    assert len(replies) == 1
    assert "MENU" in replies[0]


def test_language_switch_and_back(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    demo.say("Warsini", "MENU")
    assert "English" in demo.say("Warsini", "BAHASA en")[0]
    assert demo.member("Warsini").language == "en"
    menu_en = demo.say("Warsini", "MENU")[0]
    assert "What you can do" in menu_en
    demo.say("Warsini", "lang jawa")
    assert demo.member("Warsini").language == "jv"
    assert demo.say("Warsini", "BAHASA xx")[0]  # unknown code: asked again, nothing changed
    assert demo.member("Warsini").language == "jv"


def test_typos_in_keywords_are_tolerated(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    demo.say("Warsini", "MENU")
    menu = demo.say("Warsini", "MENU")[0]
    assert demo.say("Warsini", "bantuuan")[0] == menu
    assert demo.say("Warsini", "  Menu  ")[0] == menu
    assert demo.say("Warsini", "/help")[0] == menu


def test_stop_is_never_guessed_from_a_typo(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    demo.say("Rina", "stok")
    assert demo.member("Rina").opted_out is False
    demo.say("Rina", "STOP")
    assert demo.member("Rina").opted_out is True
    demo.say("Rina", "MULAI")
    assert demo.member("Rina").opted_out is False


def test_stop_cancels_queued_unasked_messages(make_family: Callable[..., Demo], engine: Engine,
                                              clock: Clock) -> None:
    demo = make_family()
    with session_scope(demo.db) as session:
        session.add(Outbox(member_id=demo.ids["Rina"], channel="simulator", address="x",
                           kind="reminder", text="reminder", next_attempt_at=clock(),
                           created_at=clock()))
    demo.say("Rina", "STOP")
    rows = demo.inbox("Rina")
    reminder = [r for r in rows if r.kind == "reminder"][0]
    assert reminder.status == "cancelled"
    # Replies the member asked for still come.
    assert any(r.kind == "reply" and r.status == "queued" for r in rows)


def test_redelivered_message_is_processed_once(make_family: Callable[..., Demo],
                                               engine: Engine, clock: Clock) -> None:
    demo = make_family()
    msg = Inbound(channel="simulator", address=f"sim-{demo.ids['Rina']}", text="MENU",
                  external_id="same-id", received_at=clock())
    first = engine.handle(msg)
    second = engine.handle(msg)
    assert not first.duplicate and first.outbox_ids
    assert second.duplicate and not second.outbox_ids
    with session_scope(demo.db) as session:
        assert session.exec(select(func.count()).select_from(InboundLog)).one() == 1


def test_unlinked_chat_is_told_how_to_link(make_family: Callable[..., Demo]) -> None:
    demo = make_family(link=False)
    replies = demo.say("stranger", "halo", address="sim-stranger")
    assert "DAFTAR" in replies[0]
    replies = demo.say("stranger", "DAFTAR ZZZZZZ", address="sim-stranger")
    assert "ZZZZZZ" in replies[0]


def test_daftar_links_the_chat(make_family: Callable[..., Demo]) -> None:
    demo = make_family(link=False)
    code = demo.codes["Rina"]
    replies = demo.say("stranger", f"daftar {code.lower()}", address="sim-new-rina")
    assert any("Rina" in r for r in replies)
    # The chat now speaks as Rina: MENU works and shows the parent's menu.
    menu = demo.say("stranger", "MENU", address="sim-new-rina")
    assert menu and "DAFTAR" not in menu[0]
    # A second link attempt from the same chat with another code is refused.
    demo.say("stranger", f"JOIN {demo.codes['Warsini']}", address="sim-new-rina")
    with session_scope(demo.db) as session:
        from storage.models import ChannelIdentity

        linked = session.exec(select(ChannelIdentity).where(
            ChannelIdentity.address == "sim-new-rina")).one()
        assert linked.member_id == demo.ids["Rina"]


def test_telegram_start_code_links(make_family: Callable[..., Demo], engine: Engine,
                                   clock: Clock) -> None:
    demo = make_family(link=False)
    result = engine.handle(Inbound(channel="telegram", address="555", text="/start",
                                   kind="start", start_code=demo.codes["Warsini"],
                                   external_id="u1", received_at=clock()))
    assert result.member_id is None and result.outbox_ids
    with session_scope(demo.db) as session:
        rows = session.exec(select(Outbox).where(col(Outbox.id).in_(result.outbox_ids))).all()
        assert all(r.member_id == demo.ids["Warsini"] for r in rows)
        assert all(r.channel == "telegram" and r.address == "555" for r in rows)


def test_child_under_13_cannot_link(make_family: Callable[..., Demo]) -> None:
    demo = make_family(link=False)
    replies = demo.say("x", f"DAFTAR {demo.codes['Sari']}", address="sim-sari")
    assert "13" in replies[0]
    assert demo.say("x", "MENU", address="sim-sari")[0].find("DAFTAR") >= 0


def test_child_waits_for_guardian_consent(make_family: Callable[..., Demo]) -> None:
    demo = make_family(consent=False, link=False)
    # The carer links first and is asked for consent.
    replies = demo.say("w", f"DAFTAR {demo.codes['Warsini']}", address="sim-w")
    assert any("YA" in r for r in replies)
    # The child tries to link: told a guardian must agree; the carer is asked.
    replies = demo.say("d", f"DAFTAR {demo.codes['Dimas']}", address="sim-d")
    assert replies and "DAFTAR" not in replies[0]
    assert demo.say("d", "MENU", address="sim-d")[0].find("DAFTAR") >= 0  # still not linked
    # The carer agrees; the child can now link.
    demo.say("w", "ya", address="sim-w")
    with session_scope(demo.db) as session:
        from storage.models import Consent, Family

        fam = session.exec(select(Family)).first()
        assert fam is not None and fam.consent_status == "given"
        consent = session.exec(select(Consent)).first()
        assert consent is not None and consent.method == "chat" and consent.agreed
    replies = demo.say("d", f"DAFTAR {demo.codes['Dimas']}", address="sim-d")
    assert any("Dimas" in r for r in replies)


def test_consent_refused_keeps_children_out(make_family: Callable[..., Demo]) -> None:
    demo = make_family(consent=False)
    demo.say("Warsini", "MENU")  # asked for consent first
    demo.say("Warsini", "TIDAK")
    with session_scope(demo.db) as session:
        from storage.models import Family

        fam = session.exec(select(Family)).first()
        assert fam is not None and fam.consent_status == "refused"
    replies = demo.say("Dimas", "MENU")
    assert replies  # the child gets an answer, and a guardian-must-agree one
    assert demo.say("Dimas", "TIPS")[0] == demo.say("Dimas", "KABAR halo")[0]


def _test_registry() -> Registry:
    """A registry with a two-step flow, to test the state machine on its own."""
    reg = Registry()

    @reg.command("ask", "tanya")
    def ask(ctx: Context) -> Next | None:
        ctx.reply("What is your name?")
        return Next("name", flow="ask")

    @reg.command("cancel", "batal", global_=True, fuzzy=False)
    def cancel(ctx: Context) -> Next | None:
        ctx.reply("test-cancelled")
        return None

    @reg.command("menu", "menu", global_=True)
    def menu(ctx: Context) -> Next | None:
        ctx.reply("menu")
        return None

    def name(ctx: Context) -> Next | None:
        if not ctx.text.strip():
            ctx.reply("Name please")
            return Next("name")
        ctx.reply("How old?")
        return Next("age", {"name": ctx.text})

    def age(ctx: Context) -> Next | None:
        ctx.reply(f"{ctx.data['name']} is {ctx.text}")
        return None

    reg.flow(Flow("ask", {"name": name, "age": age}, start="name"))
    return reg


def test_flow_state_is_persisted_and_expires(make_family: Callable[..., Demo], db: object,
                                             config: object, clock: Clock) -> None:
    demo = make_family()
    demo.engine = Engine(demo.db, demo.engine.config, reg=_test_registry(), clock=clock)
    demo.say("Rina", "tanya")
    # A new engine (another process) continues the same flow from the database.
    demo.engine = Engine(demo.db, demo.engine.config, reg=_test_registry(), clock=clock)
    assert demo.say("Rina", "Rina")[-1] == "How old?"
    assert demo.say("Rina", "30")[-1] == "Rina is 30"
    with session_scope(demo.db) as session:
        assert session.get(ConversationState, demo.ids["Rina"]) is None
    # Left half-way, the flow expires after the configured time.
    demo.say("Rina", "tanya")
    clock.advance(minutes=demo.engine.config.bot.flow_timeout_minutes + 1)
    replies = demo.say("Rina", "Rina")
    # The expiry notice, then "Rina" is read as new text (a short menu), not as an answer.
    assert "terlalu lama" in replies[0] and "How old?" not in replies
    with session_scope(demo.db) as session:
        assert session.get(ConversationState, demo.ids["Rina"]) is None


def test_global_keywords_work_inside_a_flow(make_family: Callable[..., Demo],
                                            clock: Clock) -> None:
    demo = make_family()
    demo.engine = Engine(demo.db, demo.engine.config, reg=_test_registry(), clock=clock)
    demo.say("Rina", "tanya")
    assert demo.say("Rina", "BATAL")[-1] == "test-cancelled"
    with session_scope(demo.db) as session:
        assert session.get(ConversationState, demo.ids["Rina"]) is None
    demo.say("Rina", "tanya")
    assert demo.say("Rina", "menu")[-1] == "menu"
    # Free text inside a flow is an answer, even when it looks like a typo of a keyword.
    demo.say("Rina", "tanya")
    assert demo.say("Rina", "menus")[-1] == "How old?"


def test_bad_input_gets_an_answer_and_loses_nothing(make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    demo.say("Warsini", "MENU")
    for text in ["", "   ", "😀" * 10_000, "\x00\x07MENU\x1b", "BAHASA", "DAFTAR", "\u202eUNEM",
                 "'; DROP TABLE member; --", "<script>alert(1)</script>", "MENU \ud800\udfff"]:
        replies = demo.say("Warsini", text)
        assert replies, f"no answer to {text[:20]!r}"
    assert demo.member("Warsini").name == "Warsini"
    with session_scope(demo.db) as session:
        assert "error" not in {r.outcome for r in session.exec(select(InboundLog)).all()}


def test_handler_crash_is_answered_and_recorded(make_family: Callable[..., Demo],
                                                clock: Clock) -> None:
    demo = make_family()
    reg = Registry()

    @reg.command("boom", "boom")
    def boom(ctx: Context) -> Next | None:
        ctx.reply("half-way")
        raise RuntimeError("bug")

    demo.engine = Engine(demo.db, demo.engine.config, reg=reg, clock=clock)
    replies = demo.say("Rina", "boom")
    assert len(replies) == 1 and "half-way" not in replies[0]
    with session_scope(demo.db) as session:
        log = session.exec(select(InboundLog)).all()
        assert [r.outcome for r in log] == ["error"]


def test_quiet_hours_hold_unasked_messages_not_replies(make_family: Callable[..., Demo],
                                                       engine: Engine, clock: Clock) -> None:
    from bot.messages import Outbound, Raw
    from bot.outbox import queue_messages

    demo = make_family()
    late = clock.now.replace(hour=15, minute=0)  # 22:00 in Jakarta, 23:00 in Hong Kong
    with session_scope(demo.db) as session:
        rows = queue_messages(session, [
            Outbound([Raw("tip")], member_id=demo.ids["Warsini"], kind="tip"),
            Outbound([Raw("reply")], member_id=demo.ids["Warsini"], kind="reply", urgent=True),
        ], now=late, config=engine.config)
        tip, reply = rows
        assert reply.next_attempt_at == late
        # Held until 07:00 the next morning in Jakarta (00:00 UTC).
        assert tip.next_attempt_at.isoformat() == "2026-03-06T00:00:00+00:00"


def test_messages_to_unlinked_members_are_held_then_released(
        make_family: Callable[..., Demo], engine: Engine) -> None:
    from bot.messages import Outbound, Raw
    from bot.outbox import queue_messages

    demo = make_family(link=False)
    with session_scope(demo.db) as session:
        (row,) = queue_messages(session, [Outbound([Raw("hello mum")], member_id=demo.ids["Rina"],
                                                   kind="relay")],
                                now=demo.clock(), config=engine.config)
        assert row.status == "held" and row.channel == ""
    demo.say("x", f"DAFTAR {demo.codes['Rina']}", address="sim-rina-phone")
    relay = [r for r in demo.inbox("Rina") if r.kind == "relay"][0]
    assert relay.status == "queued" and relay.address == "sim-rina-phone"


def test_engine_runs_with_unique_ids_under_many_messages(make_family: Callable[..., Demo],
                                                         engine: Engine, clock: Clock) -> None:
    demo = make_family()
    for _ in range(30):
        engine.handle(Inbound(channel="simulator", address=f"sim-{demo.ids['Rina']}",
                              text="MENU", external_id=uuid.uuid4().hex, received_at=clock()))
    with session_scope(demo.db) as session:
        assert session.exec(select(func.count()).select_from(InboundLog)).one() == 30
