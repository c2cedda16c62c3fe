"""Hostile input at the webhooks: random and malformed bodies, headers and encodings.

Hypothesis posts correctly authenticated requests to the Telegram and Twilio webhooks
(random JSON, plausible payloads with mutated fields, raw bytes that are not JSON, not a
form or not UTF-8) and unauthenticated ones. For every example:

- the answer is below 500 and is what the contract says (JSON ``{"error": ...}`` for a
  4xx, ``{"ok": true, ...}`` from Telegram's webhook, empty TwiML from Twilio's), never
  an HTML page or a traceback;
- nothing was logged at ERROR (the app's generic handler logs "unhandled error" before
  its 500; the engine logs a crashed handler before its apology);
- no partial write: a refused request (4xx) changed no row of any table; an accepted
  message left its ``InboundLog`` row (and whatever the engine queued), and delivering
  the same body again changes nothing at all.

Examples are derandomised, so CI runs the same ones every time; each property runs on
SQLite and, with fewer examples, on PostgreSQL.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask, request
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import SQLModel, col, select
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from bot.channels.whatsapp import EMPTY_TWIML
from bot.config import Config
from bot.engine import Engine
from storage.db import session_scope
from storage.models import InboundLog, Outbox
from tests.conftest import Clock, Demo
from tests.fakes import payloads
from tests.fakes.support import PUBLIC_URL, SECRET, link, make_app, use_telegram, use_twilio
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

AUTH_TOKEN = "test-auth-token"  # noqa: S105 - the fake's well-known test token
INBOUND_PATH = "/webhooks/twilio"
STATUS_PATH = "/webhooks/twilio/status"
TELEGRAM_PATH = "/webhooks/telegram"

# Chats and numbers the fuzzed requests come from: linked members, strangers, groups.
PARENT_CHAT = 7770001  # Rina, the parent abroad
CHILD_CHAT = 7770002  # Dimas, 14, consent given
STRANGER_CHAT = 7770003
GROUP_CHAT = -1001234567890
CARER_WA = "whatsapp:+6281211112222"  # Warsini
PARENT_WA = "whatsapp:+85291234567"  # Rina
COORD_WA = "whatsapp:+6281399998888"  # Darto, the village coordinator
STRANGER_WA = "whatsapp:+6285700001111"
UID = 900_001  # the first update id (and message sid) of an example
SENT_SIDS = [f"SM{i:032x}" for i in range(1, 5)]  # outbox rows Twilio may report on

TABLES = SQLModel.metadata.sorted_tables
Snapshot = dict[str, list[tuple[Any, ...]]]


def examples(db_url: str, sqlite: int) -> int:
    """Return how many examples a property gets: fewer on PostgreSQL (slower round trips)."""
    return sqlite if db_url.startswith("sqlite") else max(10, sqlite // 5)


def fuzz_settings(db_url: str, sqlite: int) -> settings:
    """Return reproducible settings for one property (the global profile is untouched)."""
    return settings(max_examples=examples(db_url, sqlite), deadline=None, derandomize=True,
                    database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- the harness ---------------------------------------------------------------------


# Plain SQL, compiled once: a snapshot is taken two or three times per request.
_SELECT_ALL = {t.name: 'SELECT * FROM "{}" ORDER BY {}'.format(
    t.name, ", ".join(f'"{c.name}"' for c in t.primary_key.columns)) for t in TABLES}


def snapshot(db: DbEngine) -> Snapshot:
    """Return every row of every table, in primary-key order."""
    with db.connect() as conn:
        return {name: [tuple(r) for r in conn.exec_driver_sql(sql)]
                for name, sql in _SELECT_ALL.items()}


def changed(before: Snapshot, after: Snapshot) -> dict[str, int]:
    """Return the tables whose rows differ, with the change in their row count."""
    return {name: len(after[name]) - len(before[name])
            for name in before if before[name] != after[name]}


def restore(db: DbEngine, rows: Snapshot) -> None:
    """Put every table back to a snapshot (children emptied first, parents filled first)."""
    mark = "?" if db.dialect.paramstyle == "qmark" else "%s"
    with db.begin() as conn:
        for table in reversed(TABLES):
            conn.exec_driver_sql(f'DELETE FROM "{table.name}"')
        for table in TABLES:
            if rows[table.name]:
                # The database's own column order, which is what SELECT * returned.
                names = conn.exec_driver_sql(f'SELECT * FROM "{table.name}" LIMIT 0').keys()
                conn.exec_driver_sql(
                    'INSERT INTO "{}" ({}) VALUES ({})'.format(
                        table.name, ", ".join(f'"{n}"' for n in names),
                        ", ".join([mark] * len(names))),
                    rows[table.name])


@dataclass
class Harness:
    """A configured app on a database with a linked family, and the checks of one request.

    Every example starts from the same database (restored when an earlier one wrote), so
    an example fails or passes by itself and Hypothesis can shrink and replay it.
    """

    client: FlaskClient
    app: Flask
    db: DbEngine
    caplog: pytest.LogCaptureFixture
    token: str = ""
    baseline: Snapshot = field(default_factory=dict)
    state: Snapshot = field(default_factory=dict)
    dirty: bool = False

    def begin(self) -> None:
        """Start an example: forget earlier log records, start from the baseline."""
        self.caplog.clear()
        if not self.baseline:
            self.baseline = self.state = snapshot(self.db)
        elif self.dirty or self.state != self.baseline:
            restore(self.db, self.baseline)
            self.state, self.dirty = self.baseline, False

    def check(self, send: Callable[[], Any], *, kind: str) -> Any:
        """Send one request, check the answer and the database; redeliver what was taken."""
        before = self.state
        self.dirty = True  # until this check ends well, the database is unknown
        answer = send()
        after = snapshot(self.db)
        self._check_answer(answer, kind)
        self._no_errors_logged()
        if answer.status_code >= 400:
            assert not changed(before, after), ("a refused request wrote", answer.status_code,
                                                answer.get_data()[:200], changed(before, after))
        elif kind == "api":
            assert answer.is_json, answer.get_data()[:200]  # a coordinator's own action
        else:
            self._accepted(before, after, answer, kind)
            again = send()  # the platform redelivers: acknowledged, nothing done twice
            assert again.status_code == answer.status_code, again.get_data()[:300]
            self._check_answer(again, kind)
            self._no_errors_logged()
            final = snapshot(self.db)
            assert not changed(after, final), ("a redelivery wrote", changed(after, final))
            after = final
        self.state, self.dirty = after, False
        return answer

    def _check_answer(self, answer: Any, kind: str) -> None:
        body = answer.get_data()
        assert answer.status_code < 500, body[:500]
        assert b"Traceback" not in body and b"<html" not in body.lower(), body[:500]
        if answer.status_code >= 400:
            data = answer.get_json(silent=True)
            assert answer.is_json and isinstance(data, dict), body[:300]
            assert isinstance(data.get("error"), str) and 0 < len(data["error"]) < 200, data
        elif kind == "telegram":
            data = answer.get_json(silent=True)
            assert answer.is_json and isinstance(data, dict) and data.get("ok") is True, body
            assert isinstance(data.get("outcome"), str), data
        else:
            assert answer.status_code == 200, body
            assert answer.mimetype == "application/xml" and body.decode() == EMPTY_TWIML

    def _no_errors_logged(self) -> None:
        errors = [f"{r.name}: {r.getMessage()}" for r in self.caplog.records
                  if r.levelno >= logging.ERROR]
        assert not errors, errors

    def _accepted(self, before: Snapshot, after: Snapshot, answer: Any, kind: str) -> None:
        """An accepted request left a whole trace: its log row, nothing crashed."""
        logged = len(after["inboundlog"]) - len(before["inboundlog"])
        assert logged in (0, 1), changed(before, after)
        if logged:
            with session_scope(self.db) as session:
                row = session.exec(select(InboundLog).order_by(col(InboundLog.id).desc())
                                   ).first()
                assert row is not None
                # Empty: the engine never finished; "error": a handler crashed.
                assert row.outcome and row.outcome != "error", row
        elif kind == "telegram":
            # Only updates we acknowledge and ignore leave no trace; all else is logged.
            assert answer.get_json()["outcome"] in ("ignored", "duplicate"), (
                answer.get_json(), changed(before, after))
        if kind == "telegram" and answer.get_json()["outcome"] in (
                "processed", "error", "edited", "blocked", "unblocked"):
            assert logged == 1, (answer.get_json(), changed(before, after))
        if kind == "status":
            assert logged == 0  # a delivery report is not a message
        elif not logged:
            assert not changed(before, after), changed(before, after)


@pytest.fixture
def harness(config: Config, db: DbEngine, engine: Engine, clock: Clock, tg: FakeTelegram,
            tw: FakeTwilio, make_family: Callable[..., Demo],
            caplog: pytest.LogCaptureFixture) -> Harness:
    """Return the app with both channels on, a family linked on both, and sent rows."""
    use_twilio(use_telegram(config, tg), tw)
    demo = make_family()
    link(db, demo.ids["Rina"], "telegram", str(PARENT_CHAT))
    link(db, demo.ids["Dimas"], "telegram", str(CHILD_CHAT))
    link(db, demo.ids["Rina"], "whatsapp", PARENT_WA, last_inbound_at=clock())
    link(db, demo.ids["Warsini"], "whatsapp", CARER_WA, last_inbound_at=clock())
    link(db, demo.ids["Darto"], "whatsapp", COORD_WA, last_inbound_at=clock())
    with session_scope(db) as session:
        for i, sid in enumerate(SENT_SIDS):
            address, member = [(PARENT_WA, "Rina"), (CARER_WA, "Warsini")][i % 2]
            session.add(Outbox(member_id=demo.ids[member], channel="whatsapp", address=address,
                               kind="relay", text=f"kabar {i}", status="sent",
                               external_id=sid, next_attempt_at=clock() - timedelta(hours=1),
                               created_at=clock() - timedelta(hours=1)))
    app = make_app(config, db, engine)
    caplog.set_level(logging.INFO)
    return Harness(client=app.test_client(), app=app, db=db, caplog=caplog,
                   token=demo.coordinator_token)


# --- strategies: values --------------------------------------------------------------

HOSTILE = ["Robert'); DROP TABLE member;--", "<script>alert(1)</script>",
           '"><img src=x onerror=alert(1)>', "{{7*7}}", "%s%n", "=HYPERLINK(\"x\")",
           "' OR 1=1 --", "\u202egnp.exe", "👨‍👩‍👧‍👦🇮🇩", "\x00", "\x1b[31m", "\r\n\r\n",
           "\ufeff", "\u200b", "ज़", "مرحبا", "\U0010ffff", "Z̷̢͎a̴l̸g̵o̸"]
KEYWORDS = ["KABAR", "NEWS", "DANA", "FUND", "YA", "YES", "TIDAK", "1", "2", "150rb",
            "Rp 1,5 jt", "TIPS", "BAHASA", "LANG", "en", "jv", "xx", "BATAL", "CANCEL", "STOP",
            "MULAI", "TOLONG", "SOS", "MENU", "HELP", "/help", "/start", "DAFTAR", "JOIN",
            "SETUJU", "TOLAK", "UMUMKAN", "HAPUS", "DATA"]
_weird_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(HOSTILE),
    st.lists(st.sampled_from(KEYWORDS) | st.sampled_from(HOSTILE) | st.text(max_size=8),
             min_size=1, max_size=5).map(" ".join),
    st.integers(1, 20_000).map(lambda n: "KABAR " + "ä" * n),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp",
                                                              "Mn"]), max_size=30),
)
_huge_ints = st.sampled_from([0, -1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63, -(2**63) - 1,
                              2**64, 10**30, -(10**100)])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _huge_ints
    | st.floats(allow_nan=False, allow_infinity=False) | _weird_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=12) | st.sampled_from(["update_id", "message", "text", "chat", "id",
                                                "from", "type", "entities"]),
        inner, max_size=4),
    max_leaves=15)


# --- strategies: Telegram ------------------------------------------------------------

_chat = st.sampled_from([PARENT_CHAT, CHILD_CHAT, STRANGER_CHAT, GROUP_CHAT])


@st.composite
def _plausible_update(draw: st.DrawFn) -> dict[str, Any]:
    """Build a real-looking Update of some kind (update_id 0: the caller numbers it)."""
    chat = draw(_chat)
    kind = draw(st.sampled_from(["text", "command", "start", "sticker", "photo", "voice",
                                 "location", "edited", "blocked", "unblocked", "channel",
                                 "callback"]))
    date = 1772674200  # NOW
    text = draw(_weird_text)
    build: dict[str, Callable[[], dict[str, Any]]] = {
        "text": lambda: payloads.tg_text(0, chat, text, date=date,
                                         first_name=draw(_weird_text) or "x"),
        "command": lambda: payloads.tg_command(0, chat, draw(st.sampled_from(
            ["help", "start", "menu", "kabar", "x" * 70])), text, date=date),
        "start": lambda: payloads.tg_start(0, chat, draw(st.sampled_from(
            ["AB12CD", "", "'; DROP TABLE member;--", "x" * 300]) | st.text(max_size=12)),
            date=date),
        "sticker": lambda: payloads.tg_sticker(0, chat, date=date),
        "photo": lambda: payloads.tg_photo(0, chat, draw(st.none() | _weird_text), date=date),
        "voice": lambda: payloads.tg_voice(0, chat, date=date),
        "location": lambda: payloads.tg_location(0, chat, date=date),
        "edited": lambda: payloads.tg_edited(0, chat, text, date=date),
        "blocked": lambda: payloads.tg_my_chat_member_blocked(0, chat, date=date),
        "unblocked": lambda: payloads.tg_my_chat_member_unblocked(0, chat, date=date),
        "channel": lambda: payloads.tg_channel_post(0, chat, text, date=date),
        "callback": lambda: payloads.tg_callback_query(0, chat, text[:64] or "x", date=date),
    }
    return build[kind]()


def _slots(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Yield the path of every value inside a JSON document (the root excluded)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from _slots(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*path, i)
            yield from _slots(item, (*path, i))


_replacement = st.one_of(
    _huge_ints, st.none(), st.booleans(), st.floats(), _weird_text,
    st.integers().map(str), _json,
    st.integers(1, 12).map(lambda depth: json.loads("[" * depth + "]" * depth)),
)


@st.composite
def mutated_update(draw: st.DrawFn, uid: int) -> dict[str, Any]:
    """Build a plausible Update and break a few of its fields (types, values, presence)."""
    update = draw(_plausible_update())
    update["update_id"] = uid
    for _ in range(draw(st.integers(0, 4))):
        slots = list(_slots(update))
        if not slots:
            break
        path = draw(st.sampled_from(slots))
        parent = update
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "add"]))
        last = path[-1]
        if action == "delete":
            del parent[last]
        elif action == "wrap":
            parent[last] = draw(st.sampled_from([[parent[last]], {"value": parent[last]}]))
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(_replacement)
        else:
            parent[last] = draw(_replacement)
    return update


_LONE = ["\\ud800", "\\udfff", "\\udc00\\ud800", "\\ud83d", "\\u0000", "\\ud83d\\ude00",
         "\\u202e", "\\uffff"]


@dataclass
class RawBody:
    """A raw request body of some kind, shown short when Hypothesis reports an example."""

    kind: str
    body: bytes
    content_type: str | None

    def __repr__(self) -> str:
        head = self.body[:160] + (b"..." if len(self.body) > 160 else b"")
        return f"RawBody({self.kind!r}, {head!r}, {self.content_type!r})"


_UPDATE_CONTENT_TYPES = st.sampled_from([
    None, "application/json", "text/plain", "application/x-www-form-urlencoded",
    "application/json; charset=latin-1", "multipart/form-data; boundary=x", "gzip"])


@st.composite
def raw_update_bodies(draw: st.DrawFn, uid: int) -> list[RawBody]:
    """Return one body of each kind that is not quite a JSON Update, with Content-Types."""
    marker = "@@MARK@@"
    base = payloads.tg_text(uid, draw(_chat), marker, first_name=marker, date=1772674200)
    text = json.dumps(base).replace(marker, "".join(draw(st.lists(
        st.sampled_from(_LONE) | st.sampled_from(KEYWORDS), min_size=1, max_size=4))))
    valid = text.encode()
    bodies = {
        "escapes": valid,  # lone surrogates, NUL, RTL override... as JSON escapes
        "latin1": text.replace("KABAR", "KABÄR").encode("latin-1", "replace") + b"\xff\xfe",
        "binary": draw(st.binary(max_size=200)),
        "truncated": valid[: draw(st.integers(0, max(0, len(valid) - 1)))],
        "gzip": gzip.compress(valid),
        "empty": b"",
        "utf16": text.encode("utf-16"),
        "deep": b'{"update_id": 1, "message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "bom": b"\xef\xbb\xbf" + valid,
        "nan": valid.replace(b'"date": 1772674200', b'"date": NaN'),
        "duplicate-keys": valid[:-1] + b', "update_id": "x", "message": null}',
        "form": b"update_id=1&message=hello",
        "huge-number": valid.replace(str(uid).encode(), b"1" + b"0" * 5000, 1),
        "too-large": valid[:-2] + b' ' * (1024 * 1024) + b"}}",  # over MAX_CONTENT_LENGTH
    }
    return [RawBody(kind, body, draw(_UPDATE_CONTENT_TYPES)) for kind, body in bodies.items()]


_secret = st.one_of(
    st.none(), st.just(""), st.just(SECRET.lower()), st.just(SECRET + " "),
    st.just(" " + SECRET), st.just(SECRET[:-1]), st.just(SECRET + SECRET),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300),
)


# --- Telegram properties -------------------------------------------------------------


def post_json(h: Harness, data: Any, secret: str | None = SECRET) -> Any:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    return h.client.post(TELEGRAM_PATH, json=data, headers=headers)


def post_raw(h: Harness, path: str, raw: RawBody, headers: dict[str, str]) -> Any:
    return h.client.post(path, data=raw.body, headers=headers,
                         **({"content_type": raw.content_type} if raw.content_type else {}))


# Random values under the keys of an Update, so that not every example stops at update_id.
_random_update = st.fixed_dictionaries(
    {"update_id": st.integers(0, 2**40) | _huge_ints},
    optional={kind: _json for kind in ("message", "edited_message", "my_chat_member",
                                       "channel_post", "callback_query", "poll")})


def test_telegram_random_json_values(harness: Harness, db_url: str) -> None:
    @fuzz_settings(db_url, 150)
    @given(data=_json | _random_update)
    def check(data: Any) -> None:
        harness.begin()
        harness.check(lambda: post_json(harness, data), kind="telegram")

    check()


def test_telegram_plausible_updates_with_broken_fields(harness: Harness, db_url: str) -> None:
    @fuzz_settings(db_url, 200)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        harness.begin()
        # A few in a row, so that a flow one message starts meets the next one.
        for uid in range(UID, UID + data.draw(st.integers(1, 3), label="updates")):
            update = data.draw(mutated_update(uid))
            harness.check(lambda: post_json(harness, update), kind="telegram")  # noqa: B023

    check()


def test_telegram_raw_bodies_not_json(harness: Harness, db_url: str) -> None:
    @fuzz_settings(db_url, 25)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        harness.begin()
        for raw in data.draw(raw_update_bodies(UID)):
            harness.check(lambda: post_raw(harness, TELEGRAM_PATH, raw,  # noqa: B023
                                           {"X-Telegram-Bot-Api-Secret-Token": SECRET}),
                          kind="telegram")

    check()


def test_telegram_without_the_secret_is_refused_and_nothing_stored(harness: Harness,
                                                                    db_url: str) -> None:
    @fuzz_settings(db_url, 80)
    @given(secret=_secret, data=st.data())
    def check(secret: str | None, data: st.DataObject) -> None:
        harness.begin()
        update = data.draw(mutated_update(UID) | _plausible_update())
        answer = harness.check(lambda: post_json(harness, update, secret), kind="telegram")
        assert answer.status_code == 403, answer.get_data()[:200]

    check()


# --- strategies: Twilio --------------------------------------------------------------

_from = st.one_of(
    st.sampled_from([CARER_WA, PARENT_WA, COORD_WA, STRANGER_WA, "whatsapp:", "whatsapp:+",
                     "whatsapp:++", "whatsapp:+" + "9" * 200, "whatsapp:" + "1" * 20,
                     "whatsapp:abc", "whatsapp:+62 812-1111-2222", "WHATSAPP:+6281211112222",
                     "+6281211112222", "messenger:123", " whatsapp:+6281211112222 ",
                     "whatsapp:+62812\x00", "whatsapp:+٦٢٨١٢٣٤٥٦٧٨", "whatsapp:+62812<script>",
                     "whatsapp:" + "+" * 70, "whatsapp:\u202e+6281211112222"]),
    st.text(max_size=30).map(lambda s: "whatsapp:" + s),
    st.text(max_size=30),
)
_sid_weird = st.sampled_from(["", "SM", "SM" + "f" * 78, "SM" + "f" * 200, "SM\x00x",
                              "SM'; DROP TABLE inboundlog;--", "SM<b>", "SM\u202e", "ŠM1",
                              " SM1 ", "SM\n1"]) | st.text(max_size=20)
_num_media = st.sampled_from(["0", "1", "2", "-1", "abc", "", "9" * 40, "1e3", " 2 ", "٣",
                              "0x10", "1.5", "+1", "1_000"]) | st.integers().map(str)
_status = st.sampled_from(["queued", "sent", "delivered", "read", "failed", "undelivered",
                           "FAILED", "Failed ", "", "unknown", "<x>"]) | st.text(max_size=12)
_error_code = st.sampled_from(["63016", "21610", "21211", "63018", "30008", "0", "", "-1",
                               "abc", "6" * 40, "63016.0", "1e5", " 21610 ", "٦٣٠١٦"]) \
    | st.integers().map(str)


def _fields(draw: st.DrawFn, base: dict[str, str], extra: dict[str, st.SearchStrategy[str]]
            ) -> list[tuple[str, str]]:
    """Mutate a real form: drop, replace or repeat fields; return it as (key, value) pairs."""
    form = dict(base)
    for key, strategy in extra.items():
        if draw(st.booleans()):
            form[key] = draw(strategy)
    for key in draw(st.lists(st.sampled_from(sorted(form)), max_size=3, unique=True)):
        del form[key]
    pairs = list(form.items())
    for key, value in draw(st.lists(st.tuples(
            st.sampled_from(sorted(base) + ["X"]) | st.text(max_size=8),
            st.text(max_size=12) | _weird_text), max_size=3)):
        pairs.insert(draw(st.integers(0, len(pairs))), (key, value))  # repeated or new keys
    return pairs


@st.composite
def inbound_form(draw: st.DrawFn, sid: str) -> list[tuple[str, str]]:
    """Build a Twilio WhatsApp inbound form with some fields wrong, missing or repeated."""
    num_media = draw(st.integers(0, 2))
    base = payloads.twilio_inbound(draw(_weird_text), from_=CARER_WA, message_sid=sid,
                                   num_media=num_media, profile_name=draw(_weird_text))
    return _fields(draw, base, {
        "From": _from, "MessageSid": _sid_weird, "SmsMessageSid": _sid_weird,
        "NumMedia": _num_media, "MediaContentType0": st.sampled_from(
            ["image/webp", "audio/ogg", "", "x" * 300, "text/html"]) | st.text(max_size=10),
        "MessageType": st.sampled_from(["text", "reaction", "location", "button",
                                        "interactive", "x" * 100, ""]) | st.text(max_size=10),
        "Latitude": st.sampled_from(["22.3", "abc", "", "1e999"]),
        "ButtonText": _weird_text, "Body": _weird_text,
    })


@st.composite
def status_form(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Build a Twilio status callback form with some fields wrong, missing or repeated."""
    sid = draw(st.sampled_from(SENT_SIDS) | _sid_weird)
    base = payloads.twilio_status(sid, draw(st.sampled_from(["failed", "undelivered",
                                                             "delivered"])),
                                  error_code=draw(st.none() | st.sampled_from(
                                      ["63016", "21610", "21211", "30008"])),
                                  to=draw(st.sampled_from([PARENT_WA, CARER_WA])))
    return _fields(draw, base, {"MessageStatus": _status, "SmsStatus": _status,
                                "ErrorCode": _error_code, "MessageSid": _sid_weird,
                                "SmsSid": _sid_weird, "To": _from})


def signed(h: Harness, path: str, form: Any, query: str = "") -> dict[str, str]:
    """Return the signature header Twilio would send for this form (a MultiDict)."""
    url = PUBLIC_URL + path + (f"?{query}" if query else "")
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, form)}


def post_form(h: Harness, path: str, pairs: list[tuple[str, str]]) -> Any:
    form = MultiDict(pairs)
    return h.client.post(path, data=form, headers=signed(h, path, form))


def form_as_parsed(h: Harness, path: str, raw: RawBody) -> Any:
    """Return the form the app will read from these bytes (what Twilio would have signed)."""
    with h.app.test_request_context(path, method="POST", data=raw.body,
                                    **({"content_type": raw.content_type} if raw.content_type
                                       else {})):
        try:
            return request.form.copy()
        except RequestEntityTooLarge:
            return MultiDict()  # refused before the signature is even looked at


_FORM_CONTENT_TYPES = st.sampled_from([
    "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=latin-1",
    "application/json", None, "text/plain", "multipart/form-data; boundary=x"])


@st.composite
def raw_form_bodies(draw: st.DrawFn, sid: str) -> list[RawBody]:
    """Return one body of each kind that is not a proper UTF-8 form, with Content-Types."""
    form = payloads.twilio_inbound("KABAR halo", from_=draw(st.sampled_from(
        [CARER_WA, STRANGER_WA])), message_sid=sid)
    valid = urlencode(form).encode()
    bodies = {
        "bad-percent": valid.replace(b"KABAR+halo", b"KABAR+%ff%fe%c3%28%ed%a0%80%"),
        "raw-bytes": valid.replace(b"KABAR+halo", b"KABAR+\xff\xfe\xc3\x28"),
        "nul": valid.replace(b"KABAR+halo", b"KABAR+%00").replace(b"SM", b"SM%00", 1),
        "json": json.dumps(form).encode(),
        "binary": draw(st.binary(max_size=200)),
        "empty": b"",
        "gzip": gzip.compress(valid),
        "semicolons": valid.replace(b"&", b";"),
        "no-equals": valid.replace(b"=", b""),
        "utf16": urlencode(form).encode("utf-16"),
        "repeated": valid + b"&" + valid,
        "many-fields": valid + b"".join(b"&F%d=%d" % (i, i) for i in range(2000)),
        "too-large": valid + b"&Pad=" + b"x" * (1024 * 1024),  # over MAX_CONTENT_LENGTH
    }
    return [RawBody(kind, body, draw(_FORM_CONTENT_TYPES)) for kind, body in bodies.items()]


# --- Twilio properties ---------------------------------------------------------------


def test_twilio_inbound_forms_with_broken_fields(harness: Harness, db_url: str) -> None:
    @fuzz_settings(db_url, 200)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        harness.begin()
        for uid in range(UID, UID + data.draw(st.integers(1, 3), label="messages")):
            pairs = data.draw(inbound_form(f"SM{uid:032x}"))
            harness.check(lambda: post_form(harness, INBOUND_PATH, pairs),  # noqa: B023
                          kind="twilio")

    check()


def test_twilio_status_callbacks_with_broken_fields(harness: Harness, db_url: str) -> None:
    @fuzz_settings(db_url, 150)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        harness.begin()
        pairs = data.draw(status_form())
        harness.check(lambda: post_form(harness, STATUS_PATH, pairs), kind="status")

    check()


def test_twilio_raw_bodies_not_a_utf8_form(harness: Harness, db_url: str) -> None:
    @fuzz_settings(db_url, 25)
    @given(data=st.data(), path=st.sampled_from([INBOUND_PATH, STATUS_PATH]))
    def check(data: st.DataObject, path: str) -> None:
        harness.begin()
        for raw in data.draw(raw_form_bodies(f"SM{UID:032x}")):
            # Signed as Twilio would sign what the app reads from these bytes.
            headers = signed(harness, path, form_as_parsed(harness, path, raw))
            harness.check(lambda: post_raw(harness, path, raw, headers),  # noqa: B023
                          kind="status" if path == STATUS_PATH else "twilio")

    check()


def test_twilio_without_a_valid_signature_is_refused_and_nothing_stored(
        harness: Harness, db_url: str) -> None:
    @fuzz_settings(db_url, 80)
    @given(data=st.data(), path=st.sampled_from([INBOUND_PATH, STATUS_PATH]),
           how=st.sampled_from(["missing", "garbage", "other-token", "other-url",
                                "other-form", "empty"]))
    def check(data: st.DataObject, path: str, how: str) -> None:
        harness.begin()
        pairs = data.draw(inbound_form(f"SM{UID:032x}") if path == INBOUND_PATH
                          else status_form())
        form = MultiDict(pairs)
        url = PUBLIC_URL + path
        headers = {
            "missing": {},
            "empty": {"X-Twilio-Signature": ""},
            "garbage": {"X-Twilio-Signature": data.draw(st.text(
                alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF),
                max_size=60))},
            "other-token": {"X-Twilio-Signature": RequestValidator(
                "not-our-token").compute_signature(url, form)},
            "other-url": {"X-Twilio-Signature": RequestValidator(
                AUTH_TOKEN).compute_signature("http://localhost" + path, form)},
            "other-form": {"X-Twilio-Signature": RequestValidator(
                AUTH_TOKEN).compute_signature(url, MultiDict([*pairs, ("Body", "x")]))},
        }[how]
        answer = harness.check(lambda: harness.client.post(path, data=form, headers=headers),
                               kind="twilio")
        assert answer.status_code == 403, answer.get_data()[:200]

    check()


# --- the JSON API: bodies in the wrong encoding ---------------------------------------

API_WRITES = [("post", "/api/families"), ("post", "/api/broadcasts"),
              ("post", "/api/fund-requests/1/approve"), ("post", "/api/fund-requests/1/reject")]
_api_headers = st.sampled_from([{}, {"Content-Encoding": "gzip"},
                                {"Content-Type": "application/json; charset=utf-16"},
                                {"Accept": "text/html"}, {"Transfer-Encoding": "chunked"}])


def test_api_raw_bodies_not_json(harness: Harness, db_url: str) -> None:
    # test_api.py fuzzes the JSON values; here the bytes around them are wrong.
    @fuzz_settings(db_url, 10)
    @given(data=st.data(), endpoint=st.sampled_from(API_WRITES))
    def check(data: st.DataObject, endpoint: tuple[str, str]) -> None:
        harness.begin()
        method, path = endpoint
        for raw in data.draw(raw_update_bodies(UID)):
            headers = {**data.draw(_api_headers), "Authorization": f"Bearer {harness.token}"}
            harness.check(lambda: getattr(harness.client, method)(  # noqa: B023
                path, data=raw.body, headers=headers,  # noqa: B023
                **({"content_type": raw.content_type} if raw.content_type else {})),  # noqa: B023
                kind="api")

    check()


# --- regressions: the minimal examples the fuzzing found ------------------------------


def _message(**fields: Any) -> dict[str, Any]:
    update = payloads.tg_text(UID, PARENT_CHAT, "MENU", date=1772674200)
    update["message"].update(fields)
    return {"update_id": UID, "message": {k: v for k, v in update["message"].items()
                                          if v is not None}}


_BLOCKED = payloads.tg_my_chat_member_blocked(UID, PARENT_CHAT, date=1772674200)
del _BLOCKED["my_chat_member"]["old_chat_member"]

BAD_UPDATES = {
    # A caption (or text) of the wrong type reached the engine, whose handler crashed.
    "caption-list": _message(text=None, caption=[""],
                             photo=payloads.tg_photo(1, 1)["message"]["photo"]),
    "text-number": _message(text=12),
    # A message without a chat, a status change without its old status: 500.
    "no-chat": _message(chat=None),
    "no-old-status": _BLOCKED,
    "chat-id-huge": _message(chat={"id": 10**70, "type": "private"}),
    "entity-garbage": _message(text="/start AB12CD", entities=[{"type": "bot_command"}]),
    "sender-not-object": _message(**{"from": "Rina"}),
}


@pytest.mark.parametrize("update", list(BAD_UPDATES.values()), ids=list(BAD_UPDATES))
def test_updates_of_the_wrong_shape_get_400_and_nothing_stored(harness: Harness,
                                                              update: dict[str, Any]) -> None:
    harness.begin()
    answer = harness.check(lambda: post_json(harness, update), kind="telegram")
    assert answer.status_code == 400


@pytest.mark.parametrize("body", [
    # json.loads raises RecursionError (not a ValueError): the webhook answered 500.
    b'{"update_id": 1, "message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    # A lone surrogate cannot be stored (SQLite and PostgreSQL both refuse to encode it).
    json.dumps(payloads.tg_text(UID, PARENT_CHAT, "@", date=1772674200)).replace(
        "@", "KABAR \\ud800").encode(),
], ids=["deep", "lone-surrogate"])
def test_json_that_cannot_be_an_update_gets_400(harness: Harness, body: bytes) -> None:
    harness.begin()
    answer = harness.check(lambda: post_raw(harness, TELEGRAM_PATH, RawBody("-", body, None),
                                            {"X-Telegram-Bot-Api-Secret-Token": SECRET}),
                           kind="telegram")
    assert answer.status_code == 400


def test_a_start_code_keeps_only_what_a_deep_link_carries(harness: Harness) -> None:
    # A NUL in the code went into the invite-code query: PostgreSQL refused it.
    harness.begin()
    update = payloads.tg_start(UID, STRANGER_CHAT, "AB\x00CD", date=1772674200)
    answer = harness.check(lambda: post_json(harness, update), kind="telegram")
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "processed"


BAD_FORMS = {
    # Each one reached the database as it was: PostgreSQL refused NUL and a 200-digit
    # address (the column holds 64), the engine logged a crash, the apology failed too: 500.
    "sid-nul": {"MessageSid": "SM\x00x"},
    "sid-space": {"MessageSid": "SM 1"},
    "from-long": {"From": "whatsapp:+" + "9" * 200},
    "from-empty-number": {"From": "whatsapp:+"},
    "from-letters": {"From": "whatsapp:abc"},
    "from-nul": {"From": "whatsapp:+62812\x00"},
}


@pytest.mark.parametrize("change", list(BAD_FORMS.values()), ids=list(BAD_FORMS))
def test_forms_twilio_never_sends_get_400_and_nothing_stored(harness: Harness,
                                                             change: dict[str, str]) -> None:
    harness.begin()
    form = {**payloads.twilio_inbound("KABAR halo", from_=CARER_WA, message_sid=f"SM{UID}"),
            **change}
    answer = harness.check(lambda: post_form(harness, INBOUND_PATH, list(form.items())),
                           kind="twilio")
    assert answer.status_code == 400


def test_an_unknown_message_type_is_answered_as_not_text(harness: Harness) -> None:
    # MessageType became the stored kind as it was (NUL included: PostgreSQL refused it).
    harness.begin()
    form = {**payloads.twilio_inbound("", from_=CARER_WA, message_sid=f"SM{UID}"),
            "MessageType": "x\x00<b>"}
    answer = harness.check(lambda: post_form(harness, INBOUND_PATH, list(form.items())),
                           kind="twilio")
    assert answer.status_code == 200
    with session_scope(harness.db) as session:
        logged = session.exec(select(InboundLog)).one()
        assert (logged.kind, logged.outcome) == ("other", "non-text")


def test_a_status_callback_for_a_sid_twilio_never_sends_gets_400(harness: Harness) -> None:
    harness.begin()
    form = payloads.twilio_status("SM\x00x", "failed", error_code=21610)
    answer = harness.check(lambda: post_form(harness, STATUS_PATH, list(form.items())),
                           kind="status")
    assert answer.status_code == 400


def test_the_simulator_refuses_json_nested_too_deep(harness: Harness) -> None:
    # The same RecursionError as the Telegram webhook's, at the web chat simulator.
    harness.begin()
    body = b'{"member_id": 1, "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = harness.check(lambda: harness.client.post(
        "/simulator/api/send", data=body, content_type="application/json"), kind="api")
    assert answer.status_code == 400
