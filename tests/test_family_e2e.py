"""Family features end to end: real webhooks in, real adapters out, loopback fakes.

A parent on WhatsApp in Hong Kong, a child and a carer on Telegram, a coordinator on
Telegram: what each of them receives is read from the fakes of the platforms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import select

from bot.channels.telegram import TelegramChannel
from bot.channels.whatsapp import WhatsAppChannel
from bot.config import Config
from bot.engine import Engine
from bot.sender import Sender
from storage.db import session_scope
from storage.models import FundRequest
from tests.conftest import Clock, Demo
from tests.fakes import payloads
from tests.fakes.support import (
    drain,
    link,
    make_app,
    post_twilio,
    post_update,
    rows,
    running_clock,
    use_telegram,
    use_twilio,
)
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

RINA = "whatsapp:+85291234567"
DIMAS, WARSINI, DARTO = "7001", "7002", "7003"


@pytest.fixture
def fakes() -> Iterator[tuple[FakeTelegram, FakeTwilio]]:
    with FakeTelegram() as tg, FakeTwilio() as tw:
        yield tg, tw


@pytest.fixture
def world(fakes: tuple[FakeTelegram, FakeTwilio], config: Config, db: DbEngine,
          engine: Engine, clock: Clock, make_family: Callable[..., Demo]
          ) -> Iterator[tuple[Demo, FlaskClient, Sender]]:
    tg, tw = fakes
    use_telegram(config, tg)
    use_twilio(config, tw)
    demo = make_family(link=False)
    # Rina wrote an hour ago: her 24-hour WhatsApp window is open (tests/test_whatsapp.py
    # covers a closed one: templates, held messages, the nudge).
    link(db, demo.ids["Rina"], "whatsapp", RINA, last_inbound_at=clock() - timedelta(hours=1))
    link(db, demo.ids["Dimas"], "telegram", DIMAS)
    link(db, demo.ids["Warsini"], "telegram", WARSINI)
    link(db, demo.ids["Darto"], "telegram", DARTO)
    client = make_app(config, db, engine).test_client()
    channels = {"telegram": TelegramChannel(config), "whatsapp": WhatsAppChannel(config)}
    sender = Sender(db, config, channels, clock=running_clock(clock))  # type: ignore[arg-type]
    yield demo, client, sender
    for channel in channels.values():
        close = getattr(channel, "close", None)
        if close is not None:
            close()


class Chat:
    """Posts what people type through the webhooks and delivers the outbox."""

    def __init__(self, client: FlaskClient, sender: Sender, db: DbEngine) -> None:
        self.client, self.sender, self.db, self.n = client, sender, db, 0

    def telegram(self, chat: str, text: str) -> None:
        self.n += 1
        assert post_update(self.client, payloads.tg_text(self.n, int(chat), text)).status_code \
            == 200
        self.deliver()

    def whatsapp(self, number: str, text: str) -> None:
        self.n += 1
        form = payloads.twilio_inbound(text, from_=number, message_sid=f"SM{self.n:032d}")
        assert post_twilio(self.client, form).status_code == 200
        self.deliver()

    def deliver(self) -> None:
        drain(self.sender, lambda: not rows(self.db, status="queued")
              and not rows(self.db, status="sending"))


def test_parent_in_hong_kong_and_child_on_telegram_exchange_news(
        world: tuple[Demo, FlaskClient, Sender], fakes: tuple[FakeTelegram, FakeTwilio],
        db: DbEngine) -> None:
    demo, client, sender = world
    tg, tw = fakes
    chat = Chat(client, sender, db)
    chat.whatsapp(RINA, "KABAR Ibu kangen, jaga adik ya")
    assert any("Ibu kangen" in t and "Rina" in t for t in tg.texts_for(DIMAS))
    assert any("Ibu kangen" in t for t in tg.texts_for(WARSINI))
    assert any("Dimas" in b for b in tw.bodies_for(RINA))  # "sent to Dimas, Warsini"
    chat.telegram(DIMAS, "kabar Aku juara kelas bu!")
    assert any("juara kelas" in b and "Dimas" in b for b in tw.bodies_for(RINA))


def test_fund_request_from_pending_to_paid_with_everyone_told(
        world: tuple[Demo, FlaskClient, Sender], fakes: tuple[FakeTelegram, FakeTwilio],
        db: DbEngine) -> None:
    demo, client, sender = world
    tg, tw = fakes
    chat = Chat(client, sender, db)
    for text in ("DANA", "1", "1", "Rp 250.000", "-", "YA"):
        chat.telegram(WARSINI, text)
    with session_scope(db) as session:
        (request,) = session.exec(select(FundRequest)).all()
    rid = request.id
    assert any("Rp250.000" in b and f"KIRIM {rid}" in b for b in tw.bodies_for(RINA))
    assert any(f"SETUJU {rid}" in t for t in tg.texts_for(DARTO))
    chat.whatsapp(RINA, f"KIRIM {rid}")
    chat.telegram(DARTO, f"SETUJU {rid}")
    chat.whatsapp(RINA, f"LUNAS {rid}")
    with session_scope(db) as session:
        final = session.get(FundRequest, rid)
        assert final is not None and final.status == "paid"
    carer_updates = [t for t in tg.texts_for(WARSINI) if f"#{rid}" in t]
    assert len(carer_updates) >= 4  # created, pledged, approved, paid


def test_tolong_reaches_the_coordinator_in_one_step(
        world: tuple[Demo, FlaskClient, Sender], fakes: tuple[FakeTelegram, FakeTwilio],
        db: DbEngine) -> None:
    demo, client, sender = world
    tg, _ = fakes
    chat = Chat(client, sender, db)
    chat.telegram(DIMAS, "TOLONG")
    alerts = [t for t in tg.texts_for(DARTO) if "Dimas" in t and "ACK" in t]
    assert len(alerts) == 1
    assert any("SAPA 129" in t for t in tg.texts_for(DIMAS))


def test_stop_empties_that_members_queue(
        world: tuple[Demo, FlaskClient, Sender], fakes: tuple[FakeTelegram, FakeTwilio],
        db: DbEngine, config: Config, clock: Clock) -> None:
    from bot.messages import Outbound, Raw
    from bot.outbox import queue_messages

    demo, client, sender = world
    _, tw = fakes
    with session_scope(db) as session:
        queue_messages(session, [Outbound([Raw(f"reminder {i}")], member_id=demo.ids["Rina"],
                                          kind="reminder") for i in range(3)],
                       now=clock(), config=config)
    form = payloads.twilio_inbound("STOP", from_=RINA, message_sid="SM" + "9" * 32)
    assert post_twilio(client, form).status_code == 200
    Chat(client, sender, db).deliver()
    assert not any("reminder" in b for b in tw.bodies_for(RINA))
    assert all(r.status == "cancelled" for r in rows(db, kind="reminder"))
