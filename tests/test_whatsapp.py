"""WhatsApp through Twilio end to end: signed forms in, twilio-python out to the fake.

Every test runs on SQLite and PostgreSQL. Covers the signature rule, the form, the
24-hour window (templates, held messages, the daily nudge, release on the next message),
delivery reports, and how Twilio's errors are recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine as DbEngine

from bot.channels.whatsapp import EMPTY_TWIML, WhatsAppChannel
from bot.config import Config
from bot.engine import Engine
from bot.messages import Outbound, Raw
from bot.outbox import NUDGE_TEXT, WINDOW_ERROR, queue_messages
from bot.sender import Sender
from storage.db import session_scope
from storage.models import Member
from tests.conftest import Clock, Demo
from tests.fakes import payloads
from tests.fakes.support import (
    PUBLIC_URL,
    TEMPLATE_SID,
    concurrently,
    drain,
    identity,
    inbound_count,
    link,
    make_app,
    post_twilio,
    rows,
    running_clock,
    say,
    use_twilio,
)
from tests.fakes.twilio_api import FakeTwilio

# Checks of logic that does not depend on the database run on SQLite only.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

RINA = payloads.WHATSAPP_USER  # whatsapp:+85291234567
NOT_TEXT = "I can only read text messages for now. Reply MENU to see what I can do."


@pytest.fixture
def tw() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake
    assert fake.errors == []


@pytest.fixture
def wa_config(config: Config, tw: FakeTwilio) -> Config:
    return use_twilio(config, tw)


@pytest.fixture
def app(wa_config: Config, db: DbEngine, engine: Engine) -> Flask:
    return make_app(wa_config, db, engine)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def sender(db: DbEngine, wa_config: Config, clock: Clock) -> Iterator[Sender]:
    channel = WhatsAppChannel(wa_config)
    yield Sender(db, wa_config, {"whatsapp": channel}, clock=running_clock(clock))
    channel.close()


@pytest.fixture
def family(make_family: Callable[..., Demo]) -> Demo:
    return make_family(link=False)


def _send_all(sender: Sender, db: DbEngine) -> None:
    drain(sender, lambda: not rows(db, status="queued") and not rows(db, status="sending"))


def _queue(db: DbEngine, config: Config, now: datetime, member_id: int, *texts: str,
           kind: str = "relay") -> None:
    with session_scope(db) as session:
        queue_messages(session, [Outbound([Raw(t)], member_id=member_id, kind=kind)
                                 for t in texts], now=now, config=config)


# --- inbound ------------------------------------------------------------------------


def test_a_message_is_answered_with_empty_twiml_and_through_the_rest_api(
        client: FlaskClient, family: Demo, db: DbEngine, sender: Sender,
        tw: FakeTwilio) -> None:
    link(db, family.ids["Rina"], "whatsapp", RINA)
    answer = post_twilio(client, payloads.twilio_inbound("menu", profile_name="Rina W"))
    assert answer.status_code == 200
    assert answer.mimetype == "application/xml" and answer.get_data(as_text=True) == EMPTY_TWIML
    assert "<Response" in EMPTY_TWIML and "<Message" not in EMPTY_TWIML
    assert tw.sent == []
    _send_all(sender, db)
    (sent,) = tw.sent
    assert (sent["to"], sent["from"]) == (RINA, "whatsapp:+14155238886")
    assert sent["status_callback"] == PUBLIC_URL + "/webhooks/twilio/status"
    assert sent["body"] and sent["content_sid"] is None
    (row,) = rows(db)
    assert (row.status, row.external_id) == ("sent", sent["sid"])
    ident = identity(db, "whatsapp", RINA)
    assert ident is not None and ident.last_inbound_at is not None


@SQLITE_ONLY
def test_an_unknown_number_is_told_how_to_link(client: FlaskClient, db: DbEngine,
                                               sender: Sender, tw: FakeTwilio) -> None:
    stranger = "whatsapp:+6281299990000"
    post_twilio(client, payloads.twilio_inbound("halo", from_=stranger))
    _send_all(sender, db)
    assert tw.bodies_for(stranger) == [say(
        "Hello! This chat is not linked yet. Send DAFTAR and the invite code from your "
        "village coordinator, for example: DAFTAR AB12CD")]


@SQLITE_ONLY
@pytest.mark.parametrize("path", ["/webhooks/twilio", "/webhooks/twilio/status"])
@pytest.mark.parametrize("case", ["missing", "forged", "other-url", "other-token", "garbage"])
def test_unsigned_or_forged_requests_are_refused_and_nothing_stored(
        client: FlaskClient, db: DbEngine, path: str, case: str) -> None:
    form = (payloads.twilio_inbound("MENU") if path == "/webhooks/twilio"
            else payloads.twilio_status("SM" + "1" * 32, "failed", error_code=63016))
    kwargs: dict[str, object] = {"path": path}
    if case == "missing":
        kwargs["signature"] = None
    elif case == "forged":
        good = payloads.twilio_signature("test-auth-token", PUBLIC_URL + path, form)
        form = {**form, "Body": "TOLONG", "MessageStatus": "delivered"}
        kwargs["signature"] = good
    elif case == "other-url":  # what the app sees behind a proxy is not what Twilio signed
        kwargs["signed_url"] = "http://127.0.0.1:8080" + path
    elif case == "other-token":
        kwargs["token"] = "not-our-token"
    else:
        kwargs["signature"] = "bm90IGEgc2lnbmF0dXJl"
    answer = post_twilio(client, form, **kwargs)  # type: ignore[arg-type]
    assert answer.status_code == 403
    assert "signature" in answer.get_json()["error"]
    assert inbound_count(db) == 0 and rows(db) == []


@SQLITE_ONLY
def test_behind_a_proxy_the_public_url_is_what_counts(wa_config: Config, db: DbEngine,
                                                      engine: Engine) -> None:
    wa_config.server.behind_proxy = True
    client = make_app(wa_config, db, engine).test_client()
    form = payloads.twilio_inbound("MENU")
    signature = payloads.twilio_signature("test-auth-token", PUBLIC_URL + "/webhooks/twilio",
                                          form)
    answer = client.post("/webhooks/twilio", data=form, base_url="http://10.0.0.7:8080",
                         headers={"X-Twilio-Signature": signature,
                                  "X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.test"})
    assert answer.status_code == 200
    # A webhook URL configured with a query string is signed with it.
    query = post_twilio(client, payloads.twilio_inbound("MENU"), query="source=wa")
    assert query.status_code == 200
    assert inbound_count(db) == 2


@SQLITE_ONLY
@pytest.mark.parametrize("change", [
    {"MessageSid": "", "SmsMessageSid": ""}, {"From": ""}, {"NumMedia": "lots"},
    {"MessageSid": "SM" + "9" * 100, "SmsMessageSid": ""},
], ids=["no-sid", "no-from", "bad-num-media", "long-sid"])
def test_malformed_forms_get_a_short_4xx(client: FlaskClient, db: DbEngine,
                                         change: dict[str, str]) -> None:
    form = {**payloads.twilio_inbound("MENU"), **change}
    answer = post_twilio(client, form)
    assert answer.status_code == 400 and 0 < len(answer.get_json()["error"]) < 80
    assert inbound_count(db) == 0 and rows(db) == []
    bad_status = post_twilio(client, {"MessageSid": "SM1"}, path="/webhooks/twilio/status")
    assert bad_status.status_code == 400


@SQLITE_ONLY
@pytest.mark.parametrize("form", [
    payloads.twilio_inbound("", num_media=1, media_content_type="image/jpeg"),
    payloads.twilio_inbound("caption", num_media=1, media_content_type="audio/ogg"),
    payloads.twilio_inbound("", latitude=22.3, longitude=114.17, address="Mong Kok"),
], ids=["photo", "voice-note", "location"])
def test_media_and_locations_get_the_text_only_answer(
        client: FlaskClient, family: Demo, db: DbEngine, sender: Sender, tw: FakeTwilio,
        form: dict[str, str]) -> None:
    link(db, family.ids["Rina"], "whatsapp", RINA)
    assert post_twilio(client, form).status_code == 200
    _send_all(sender, db)
    assert tw.bodies_for(RINA) == [say(NOT_TEXT)]
    assert inbound_count(db) == 1


@SQLITE_ONLY
def test_reactions_and_sms_are_acknowledged_only(client: FlaskClient, db: DbEngine) -> None:
    reaction = {**payloads.twilio_inbound(""), "MessageType": "reaction"}
    sms = payloads.twilio_inbound("MENU", from_="+85291234567", to="+14155238886")
    for form in (reaction, sms):
        answer = post_twilio(client, form)
        assert answer.status_code == 200 and answer.get_data(as_text=True) == EMPTY_TWIML
    assert inbound_count(db) == 0 and rows(db) == []


def test_a_repeated_message_sid_is_processed_once(app: Flask, family: Demo,
                                                  db: DbEngine) -> None:
    link(db, family.ids["Rina"], "whatsapp", RINA)
    form = payloads.twilio_inbound("MENU")
    for _ in range(2):
        assert post_twilio(app.test_client(), form).status_code == 200
    assert inbound_count(db) == 1 and len(rows(db)) == 1
    # Two gunicorn workers given the same redelivery at the same instant.
    again = payloads.twilio_inbound("MENU")
    answers = concurrently(4, lambda: post_twilio(app.test_client(), again))
    assert [a.status_code for a in answers] == [200] * 4
    assert inbound_count(db) == 2 and len(rows(db)) == 2


# --- the 24-hour window -------------------------------------------------------------


def test_outside_the_window_templates_go_and_the_rest_waits_for_the_member(
        client: FlaskClient, family: Demo, db: DbEngine, wa_config: Config, clock: Clock,
        sender: Sender, tw: FakeTwilio) -> None:
    rina = family.ids["Rina"]
    link(db, rina, "whatsapp", RINA, last_inbound_at=clock() - timedelta(hours=30))
    tw.outside_window(RINA)  # Twilio would refuse free text, as WhatsApp does
    _queue(db, wa_config, clock(), rina, "kabar satu")
    _queue(db, wa_config, clock(), rina, "Jangan lupa telepon", kind="reminder")
    _queue(db, wa_config, clock() + timedelta(hours=1), rina, "kabar dua")
    by_kind = {(r.kind, r.text): r for r in rows(db)}
    assert [(r.kind, r.status) for r in rows(db)] == [
        ("relay", "held"), ("nudge", "queued"), ("reminder", "queued"), ("relay", "held")]
    assert by_kind[("relay", "kabar satu")].error == WINDOW_ERROR
    nudge = rows(db, kind="nudge")[0]
    assert nudge.text == say(NUDGE_TEXT, name="Rina")
    assert (nudge.template, json.loads(nudge.template_vars or "")) == ("nudge", {"1": "Rina"})
    _send_all(sender, db)
    assert tw.bodies_for(RINA) == []  # no free text was even tried
    assert [(m["content_sid"], json.loads(m["content_variables"])) for m in tw.sent] == [
        (TEMPLATE_SID["nudge"], {"1": "Rina"}), (TEMPLATE_SID["reminder"], {"1": "Rina"})]

    # Rina answers the nudge: whatever she writes, what was held for her follows.
    tw.inside_window(RINA)
    clock.advance(hours=2)
    post_twilio(client, payloads.twilio_inbound("BACA"))
    assert not rows(db, status="held")
    _send_all(sender, db)
    bodies = tw.bodies_for(RINA)
    assert bodies[-2:] == ["kabar satu", "kabar dua"] and len(bodies) == 3
    assert all(r.status == "sent" for r in rows(db))


def test_one_nudge_a_day_in_the_members_language(family: Demo, db: DbEngine,
                                                 wa_config: Config, clock: Clock) -> None:
    warsini = family.ids["Warsini"]
    with session_scope(db) as session:
        member = session.get(Member, warsini)
        assert member is not None
        member.language = "jv"
        session.add(member)
    link(db, warsini, "whatsapp", "whatsapp:+6281234567890")
    for hours in (0, 3, 6):
        _queue(db, wa_config, clock() + timedelta(hours=hours), warsini, f"kabar {hours}")
    nudges = rows(db, kind="nudge")
    assert len(nudges) == 1 and nudges[0].template == "nudge.jv"
    assert nudges[0].text == say(NUDGE_TEXT, "jv", name="Warsini")
    _queue(db, wa_config, clock() + timedelta(days=1), warsini, "besok")
    assert len(rows(db, kind="nudge")) == 2
    # A member who stopped unasked messages is not nudged.
    with session_scope(db) as session:
        member = session.get(Member, warsini)
        assert member is not None
        member.opted_out = True
        session.add(member)
    _queue(db, wa_config, clock() + timedelta(days=2), warsini, "lusa", kind="reply")
    assert len(rows(db, kind="nudge")) == 2


@SQLITE_ONLY
def test_without_a_nudge_template_messages_just_wait(family: Demo, db: DbEngine,
                                                     wa_config: Config, clock: Clock) -> None:
    wa_config.twilio.templates = {}
    link(db, family.ids["Rina"], "whatsapp", RINA)  # never wrote: no window at all
    _queue(db, wa_config, clock(), family.ids["Rina"], "kabar", "pengingat")
    assert [(r.status, r.error) for r in rows(db)] == [("held", WINDOW_ERROR)] * 2


@SQLITE_ONLY
def test_a_telegram_chat_takes_what_whatsapp_may_not(family: Demo, db: DbEngine,
                                                     wa_config: Config, clock: Clock) -> None:
    rina = family.ids["Rina"]
    link(db, rina, "telegram", "5550001", last_inbound_at=clock() - timedelta(days=3))
    link(db, rina, "whatsapp", RINA, last_inbound_at=clock() - timedelta(days=2))
    _queue(db, wa_config, clock(), rina, "kabar")
    (row,) = rows(db)
    assert (row.channel, row.address, row.status) == ("telegram", "5550001", "queued")


@SQLITE_ONLY
def test_quiet_hours_count_towards_the_window(family: Demo, db: DbEngine, wa_config: Config,
                                              clock: Clock) -> None:
    rina = family.ids["Rina"]  # Hong Kong: 22:00 there is 14:00 UTC
    evening = clock().replace(hour=14, minute=0)
    link(db, rina, "whatsapp", RINA, last_inbound_at=evening - timedelta(hours=20))
    _queue(db, wa_config, evening, rina, "kabar malam")
    # Open now, but the message would wait for 07:00, 29 hours after Rina wrote.
    assert [r.status for r in rows(db, kind="relay")] == ["held"]
    _queue(db, wa_config, evening - timedelta(hours=4), rina, "kabar sore")
    assert [r.status for r in rows(db, kind="relay")] == ["held", "queued"]


def test_writing_back_cancels_a_nudge_not_yet_sent(client: FlaskClient, family: Demo,
                                                   db: DbEngine, wa_config: Config,
                                                   clock: Clock) -> None:
    rina = family.ids["Rina"]
    clock.now = clock().replace(hour=14, minute=0)  # 22:00 in Hong Kong: quiet hours
    link(db, rina, "whatsapp", RINA, last_inbound_at=clock() - timedelta(days=2))
    _queue(db, wa_config, clock(), rina, "kabar")
    nudge = rows(db, kind="nudge")[0]
    assert nudge.status == "queued" and nudge.next_attempt_at.hour == 23  # 07:00 there
    post_twilio(client, payloads.twilio_inbound("halo"))
    assert [(r.kind, r.status) for r in rows(db) if r.kind != "reply"] == [
        ("relay", "queued"), ("nudge", "cancelled")]


def test_twilio_refusing_free_text_holds_the_message_and_nudges(
        family: Demo, db: DbEngine, wa_config: Config, clock: Clock, sender: Sender,
        tw: FakeTwilio) -> None:
    link(db, family.ids["Rina"], "whatsapp", RINA, last_inbound_at=clock())
    tw.outside_window(RINA)  # we think the window is open; WhatsApp does not (63016)
    _queue(db, wa_config, clock(), family.ids["Rina"], "kabar")
    _send_all(sender, db)
    relay, nudge = rows(db)
    assert (relay.status, relay.error) == ("held", WINDOW_ERROR)
    assert (nudge.kind, nudge.status) == ("nudge", "sent")
    assert [m["content_sid"] for m in tw.sent] == [TEMPLATE_SID["nudge"]]
    assert tw.rejected == {"63016": 1}


# --- delivery reports ---------------------------------------------------------------


def test_status_callbacks_update_the_message_they_report_on(
        client: FlaskClient, family: Demo, db: DbEngine, wa_config: Config, clock: Clock,
        sender: Sender, tw: FakeTwilio) -> None:
    numbers = {"Rina": RINA, "Warsini": "whatsapp:+6281234567890",
               "Dimas": "whatsapp:+6281234567891"}
    for name, number in numbers.items():
        link(db, family.ids[name], "whatsapp", number, last_inbound_at=clock())
        _queue(db, wa_config, clock(), family.ids[name], f"untuk {name}")
    _send_all(sender, db)
    sid = {r.address: r.external_id for r in rows(db)}
    assert all(sid.values())

    def report(number: str, status: str, code: int | None = None) -> int:
        form = payloads.twilio_status(sid[number] or "", status, error_code=code, to=number)
        return int(post_twilio(client, form, path="/webhooks/twilio/status").status_code)

    assert report(RINA, "delivered") == 200 and report(RINA, "read") == 200
    assert rows(db, address=RINA)[0].status == "sent"
    assert report(RINA, "failed", 63016) == 200  # the late form of "outside the window"
    assert [(r.kind, r.status) for r in rows(db, address=RINA)] == [
        ("relay", "held"), ("nudge", "queued")]
    assert report(numbers["Warsini"], "undelivered", 30008) == 200
    (failed,) = rows(db, address=numbers["Warsini"])
    assert (failed.status, failed.error) == ("failed", "twilio undelivered 30008")
    assert report(numbers["Dimas"], "failed", 21610) == 200
    assert family.member("Dimas").opted_out
    ident = identity(db, "whatsapp", numbers["Dimas"])
    assert ident is not None and not ident.reachable
    unknown = payloads.twilio_status("SM" + "f" * 32, "failed", error_code=30008)
    assert post_twilio(client, unknown, path="/webhooks/twilio/status").status_code == 200
    assert len(rows(db)) == 4


# --- REST errors --------------------------------------------------------------------


def test_rest_errors_are_recorded_without_the_number(
        family: Demo, db: DbEngine, wa_config: Config, clock: Clock, sender: Sender,
        tw: FakeTwilio, caplog: pytest.LogCaptureFixture) -> None:
    numbers = {"Rina": RINA, "Warsini": "whatsapp:+6281234567890",
               "Dimas": "whatsapp:+6281234567891"}
    for name, number in numbers.items():
        link(db, family.ids[name], "whatsapp", number, last_inbound_at=clock())
    tw.invalid(numbers["Warsini"])
    tw.opted_out(numbers["Dimas"])
    tw.inject("429")
    tw.inject("500")
    for name in numbers:
        _queue(db, wa_config, clock(), family.ids[name], f"untuk {name}", "lagi")
    with caplog.at_level(logging.DEBUG, logger="bot"):
        _send_all(sender, db)
    assert tw.bodies_for(RINA) == ["untuk Rina", "lagi"]
    warsini = rows(db, member_id=family.ids["Warsini"])
    assert (warsini[0].status, warsini[0].error) == (
        "failed", "twilio 21211: not a reachable WhatsApp number")
    assert warsini[1].status == "held"
    # Opted out at WhatsApp: what Dimas did not ask for is cancelled, like after STOP.
    assert [r.status for r in rows(db, member_id=family.ids["Dimas"])] == ["failed", "cancelled"]
    assert family.member("Dimas").opted_out
    for number in numbers.values():
        digits = number.removeprefix("whatsapp:+")
        assert digits not in caplog.text
        assert all(digits not in (r.error or "") for r in rows(db))
    assert "untuk" not in caplog.text
