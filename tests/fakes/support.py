"""Fixtures and helpers for tests that drive the real adapters against the loopback fakes.

The Flask app is built on the test database with the fixed-clock engine, so inbound
processing is exact; the sender runs on the real clock, because it paces real HTTP
requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import col, func, select

from bot.app import create_app
from bot.config import Config
from bot.engine import Engine
from bot.i18n import translator
from bot.messages import Text
from bot.sender import Sender
from storage.db import session_scope
from storage.models import ChannelIdentity, InboundLog, Member, Outbox
from storage.repo import link_identity
from tests.fakes.payloads import twilio_signature
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

PUBLIC_URL = "https://bot.example.org"
SECRET = "s3cret_-A"
TEMPLATE_SID = {"nudge": "HX" + "a" * 32, "reminder": "HX" + "b" * 32,
                "nudge.jv": "HX" + "c" * 32}


def use_telegram(config: Config, fake: FakeTelegram) -> Config:
    """Point the configuration's Telegram channel at a fake."""
    config.server.public_url = PUBLIC_URL
    config.telegram.token = fake.token
    config.telegram.webhook_secret = SECRET
    config.telegram.api_base_url = fake.base_url
    config.telegram.timeout_s = 2.0
    # Tests of other things need not wait a second between two messages to one chat.
    config.telegram.rate_per_chat_per_s = 50.0
    config.sender.backoff_base_s = 0.05
    config.sender.backoff_max_s = 0.5
    config.sender.poll_interval_s = 0.02
    return config


def use_twilio(config: Config, fake: FakeTwilio, *, templates: bool = True) -> Config:
    """Point the configuration's WhatsApp channel at a fake (with templates, by default)."""
    config.server.public_url = PUBLIC_URL
    config.twilio.account_sid = fake.account_sid
    config.twilio.auth_token = fake.auth_token
    config.twilio.api_base_url = fake.url
    config.twilio.timeout_s = 2.0
    config.twilio.templates = dict(TEMPLATE_SID) if templates else {}
    config.sender.backoff_base_s = 0.05
    config.sender.backoff_max_s = 0.5
    config.sender.poll_interval_s = 0.02
    return config


def make_app(config: Config, db: DbEngine, engine: Engine) -> Flask:
    """Build the WSGI app on the test database and engine."""
    app = create_app(config, db=db, engine=engine)
    app.config["TESTING"] = True
    return app


def post_update(client: FlaskClient, data: Any, *, secret: str | None = SECRET) -> Any:
    """Post a Telegram Update the way Telegram does (JSON, secret header)."""
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    return client.post("/webhooks/telegram", json=data, headers=headers)


def post_twilio(client: FlaskClient, form: dict[str, str], *, path: str = "/webhooks/twilio",
                token: str = "test-auth-token",  # noqa: S107 - the fake's token
                signed_url: str | None = None,
                signature: str | None = "", query: str = "") -> Any:
    """Post a Twilio form, signed for the public URL unless told otherwise."""
    url = signed_url or (PUBLIC_URL + path + (f"?{query}" if query else ""))
    headers = {}
    if signature == "":
        headers["X-Twilio-Signature"] = twilio_signature(token, url, form)
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    return client.post(path + (f"?{query}" if query else ""), data=form, headers=headers)


def concurrently(n: int, action: Callable[[], Any]) -> list[Any]:
    """Run `action` on n threads released at the same instant; return their results."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = action()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def rows(db: DbEngine, **where: Any) -> list[Outbox]:
    """Return outbox rows matching field values, oldest first."""
    with session_scope(db) as session:
        query = select(Outbox).order_by(col(Outbox.id))
        for name, value in where.items():
            query = query.where(getattr(Outbox, name) == value)
        return list(session.exec(query).all())


def inbound_count(db: DbEngine) -> int:
    """Return how many inbound messages were recorded."""
    with session_scope(db) as session:
        return int(session.exec(select(func.count()).select_from(InboundLog)).one())


def identity(db: DbEngine, channel: str, address: str) -> ChannelIdentity | None:
    """Return a chat identity as stored now."""
    with session_scope(db) as session:
        return session.exec(select(ChannelIdentity).where(
            ChannelIdentity.channel == channel, ChannelIdentity.address == address)).first()


def link(db: DbEngine, member_id: int, channel: str, address: str, *, welcomed: bool = True,
         **fields: Any) -> ChannelIdentity:
    """Link a chat to a member (with extra identity fields, e.g. last_inbound_at).

    The member counts as welcomed (so a first message gets only its own answer) unless
    ``welcomed=False``.
    """
    with session_scope(db) as session:
        member = session.get(Member, member_id)
        assert member is not None
        member.welcomed = member.welcomed or welcomed
        session.add(member)
        ident = link_identity(session, member, channel, address,
                              now=fields.pop("now", member.created_at))
        for name, value in fields.items():
            setattr(ident, name, value)
        session.add(ident)
        return ident


def running_clock(start: Callable[[], datetime]) -> Callable[[], datetime]:
    """Return a clock that runs in real time from where `start` says (and jumps with it).

    Senders pace real HTTP requests, so their clock must move; following the tests'
    fixed clock keeps quiet hours and the 24-hour window where the tests put them.
    """
    t0 = time.monotonic()
    return lambda: start() + timedelta(seconds=time.monotonic() - t0)


def drain(sender: Sender, until: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the sender until `until()` holds (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("the sender did not get there in time")
        if sender.run_once() == 0:
            time.sleep(0.01)


def say(msgid: str, lang: str = "id", **params: Any) -> str:
    """Render a catalog message as a member reading `lang` sees it."""
    return translator(lang).render(Text(msgid, params))
