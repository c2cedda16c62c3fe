"""SQL, markup and spreadsheet formulas in names and messages: stored as typed, shown inert.

A family is registered through the JSON API with hostile names; its members then send
hostile news (KABAR) and school-fund purposes (DANA) through the real Telegram and Twilio
webhooks. The rows keep every byte, every table is still there, the JSON API gives the
exact strings back, every dashboard page shows them escaped and never as markup, and the
CSV exports defuse the cells a spreadsheet would run as formulas.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import SQLModel, col, select

from bot.config import Config
from bot.engine import Engine
from bot.web.passwords import hash_password
from storage.db import session_scope
from storage.models import Alert, FundRequest, Member, Relay
from storage.repo import create_coordinator
from tests.conftest import Clock
from tests.fakes import payloads
from tests.fakes.support import make_app, post_twilio, post_update, use_telegram, use_twilio
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

PASSWORD = "kata sandi panjang"  # noqa: S105 - a test password

SQL = "Robert'); DROP TABLE member;--"
SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(1)>'
TEMPLATE = "{{7*7}} {% raw %}${7*7}"
PRINTF = "%s%n%x %(name)s {0} {name!r}"
FORMULA = '=HYPERLINK("http://evil.example","x")'
AT_FORMULA = "@SUM(1+1)*cmd|' /C calc'!A0"
PLUS_FORMULA = "+1-1+cmd|' /C calc'!A0"
MINUS_FORMULA = "-2+3+cmd|' /C calc'!A0"
# Each member's name is one of them; the parent and the older child chat on Telegram,
# the carer on WhatsApp.
NAMES = {"child": SCRIPT, "child2": FORMULA, "carer": SQL, "parent": ATTRIBUTE,
         "parent2": f"{TEMPLATE} {PRINTF}", "carer2": AT_FORMULA, "child3": PLUS_FORMULA,
         "carer3": MINUS_FORMULA}
VILLAGE = "Kenanga\"><script>alert('village')</script>"
DISTRICT = "Indramayu <img src=x onerror=alert(1)>"
PARENT_CHAT = 7771001
CHILD_CHAT = 7771002
CARER_WA = "+6281211112222"
NEWS_FROM_PARENT = f"{SCRIPT} {SQL} {TEMPLATE} {PRINTF} &amp; &lt;b&gt;"
NEWS_FROM_CARER = f"{ATTRIBUTE} '; DELETE FROM relay; -- \" <b onmouseover=x>"
PURPOSE_FROM_CARER = f"{SCRIPT} ' OR '1'='1"
PURPOSE_FROM_CHILD = FORMULA
EXPECTED_ROWS = {"member", "relay", "fundrequest", "family", "inboundlog", "outbox"}


@pytest.fixture
def client(config: Config, db: DbEngine, engine: Engine, tg: FakeTelegram,
           tw: FakeTwilio) -> FlaskClient:
    use_twilio(use_telegram(config, tg), tw)
    config.server.secret_key = "test-secret-key"
    return make_app(config, db, engine).test_client()


@pytest.fixture
def token(db: DbEngine, clock: Clock) -> str:
    """Create Kenanga's coordinator (API token and dashboard password)."""
    with session_scope(db) as session:
        _coord, api_token = create_coordinator(session, name="Darto", village=VILLAGE,
                                               district=DISTRICT, now=clock(),
                                               password_hash=hash_password(PASSWORD))
    return api_token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(client: FlaskClient, token: str) -> dict[str, Any]:
    """Register the family with the hostile names through the API."""
    members: list[dict[str, Any]] = [
        {"role": "child", "name": NAMES["child"], "birth_year": 2012,
         "telegram_chat_id": CHILD_CHAT},
        {"role": "child", "name": NAMES["child2"], "birth_year": 2014},
        {"role": "child", "name": NAMES["child3"], "birth_year": 2016},
        {"role": "carer", "name": NAMES["carer"], "birth_year": 1960, "whatsapp": CARER_WA},
        {"role": "carer", "name": NAMES["carer2"], "birth_year": 1962},
        {"role": "carer", "name": NAMES["carer3"], "birth_year": 1964},
        {"role": "parent", "name": NAMES["parent"], "telegram_chat_id": PARENT_CHAT,
         "timezone": "Asia/Hong_Kong"},
        {"role": "parent", "name": NAMES["parent2"], "timezone": "Asia/Taipei"},
    ]
    res = client.post("/api/families", headers=bearer(token), json={
        "village": VILLAGE, "district": DISTRICT, "language": "id", "members": members,
        "guardian_consent": {"given_by": SQL, "method": SCRIPT[:40]}})
    assert res.status_code == 201, res.get_json()
    body: dict[str, Any] = res.get_json()
    assert [m["name"] for m in body["members"]] == [m["name"] for m in members]
    assert body["village"] == VILLAGE
    return body


class Chat:
    """Send texts as the family's members through the real webhooks."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.n = 0

    def telegram(self, chat_id: int, message: str) -> None:
        self.n += 1
        res = post_update(self.client, payloads.tg_text(self.n, chat_id, message,
                                                        date=1772674200))
        assert res.status_code == 200 and res.get_json()["outcome"] == "processed", res.data

    def whatsapp(self, number: str, message: str) -> None:
        self.n += 1
        res = post_twilio(self.client, payloads.twilio_inbound(
            message, from_=f"whatsapp:{number}", message_sid=f"SM{self.n:032d}"))
        assert res.status_code == 200, res.data


def converse(client: FlaskClient) -> None:
    """News both ways, two school-fund requests with hostile purposes, one alert."""
    chat = Chat(client)
    chat.telegram(PARENT_CHAT, f"KABAR {NEWS_FROM_PARENT}")
    chat.whatsapp(CARER_WA, f"KABAR {NEWS_FROM_CARER}")
    for step in ("DANA", "1", PURPOSE_FROM_CARER, "150rb", "-", "YA"):
        chat.whatsapp(CARER_WA, step)  # "1": the first of the three children
    for step in ("DANA", PURPOSE_FROM_CHILD, "200.000", "-", "YA"):
        chat.telegram(CHILD_CHAT, step)
    chat.telegram(PARENT_CHAT, "TOLONG")


def login(client: FlaskClient) -> None:
    page = client.get("/dashboard/login").get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:300]
    res = client.post("/dashboard/login", data={"username": "Darto", "password": PASSWORD,
                                                "csrf_token": found.group(1)})
    assert res.status_code == 302, res.get_data(as_text=True)[:300]


HOSTILE = [SQL, SCRIPT, ATTRIBUTE, TEMPLATE, PRINTF, FORMULA, AT_FORMULA, PLUS_FORMULA,
           MINUS_FORMULA, NEWS_FROM_PARENT, NEWS_FROM_CARER, PURPOSE_FROM_CARER]
# What must never reach a page unescaped: anything that opens a tag or an attribute.
RAW_MARKUP = ["<script>", "<img src=x", '"><img', "onerror=alert(1)>", "<b onmouseover"]


def test_hostile_strings_are_stored_exactly_and_shown_inert(
        client: FlaskClient, token: str, db: DbEngine) -> None:
    family = register(client, token)
    converse(client)
    fid = family["id"]

    # Stored byte for byte, and every table is still there.
    with session_scope(db) as session:
        names = set(session.exec(select(Member.name).where(Member.family_id == fid)).all())
        assert names == set(NAMES.values())
        relays = {r.text for r in session.exec(select(Relay)).all()}
        assert relays == {NEWS_FROM_PARENT, NEWS_FROM_CARER}
        requests = session.exec(select(FundRequest).order_by(col(FundRequest.id))).all()
        assert [r.purpose for r in requests] == [PURPOSE_FROM_CARER, PURPOSE_FROM_CHILD]
        assert session.exec(select(Alert)).one().family_id == fid
        for table in SQLModel.metadata.sorted_tables:
            count = session.connection().execute(
                text(f'SELECT count(*) FROM "{table.name}"')).scalar_one()
            assert count > 0 or table.name not in EXPECTED_ROWS, table.name

    # The JSON API gives back the exact strings.
    api = client.get(f"/api/families/{fid}", headers=bearer(token)).get_json()
    assert {m["name"] for m in api["members"]} == set(NAMES.values())
    export = client.get(f"/api/families/{fid}/export", headers=bearer(token)).get_json()
    assert {r["text"] for r in export["relays"]} == {NEWS_FROM_PARENT, NEWS_FROM_CARER}
    assert export["consents"][0]["given_by"] == SQL
    funds = client.get("/api/fund-requests?status=pending", headers=bearer(token)).get_json()
    items = funds["items"] if isinstance(funds, dict) else funds
    assert [(f["purpose"], f["child"]) for f in items] == [
        (PURPOSE_FROM_CARER, NAMES["child"]), (PURPOSE_FROM_CHILD, NAMES["child"])]

    # Every dashboard page escapes them.
    login(client)
    pages = {path: client.get(path) for path in (
        "/dashboard/", "/dashboard/families", f"/dashboard/families/{fid}",
        "/dashboard/fund-requests", "/dashboard/alerts", "/dashboard/audit",
        "/dashboard/broadcasts", f"/dashboard/families?q={quote(SCRIPT)}",
        f"/dashboard/families?q={quote(SQL)}", f"/dashboard/fund-requests?q={quote(SQL)}")}
    for path, res in pages.items():
        assert res.status_code == 200, path
        body = res.get_data(as_text=True)
        for raw in RAW_MARKUP:
            assert raw not in body, (path, raw)
    family_page = pages[f"/dashboard/families/{fid}"].get_data(as_text=True)
    for name in NAMES.values():
        assert str(escape(name)) in family_page, name
    assert str(escape(SQL)) in family_page  # the consent's given_by
    assert str(escape(VILLAGE)) in family_page
    assert "{{7*7}}" in family_page and "%s%n" in family_page  # not evaluated either
    queue = pages["/dashboard/fund-requests"].get_data(as_text=True)
    assert str(escape(PURPOSE_FROM_CARER)) in queue and str(escape(NAMES["child"])) in queue
    assert str(escape(NAMES["carer"])) in queue  # who asked
    alerts = pages["/dashboard/alerts"].get_data(as_text=True)
    assert str(escape(NAMES["parent"])) in alerts


def test_csv_exports_defuse_formulas_and_keep_the_rest(
        client: FlaskClient, token: str, db: DbEngine) -> None:
    register(client, token)
    converse(client)
    login(client)
    res = client.get("/dashboard/export/families.csv")
    assert res.status_code == 200 and res.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(res.get_data(as_text=True).lstrip("\ufeff"))))
    names = {r["name"] for r in rows}
    formulas = {FORMULA, AT_FORMULA, PLUS_FORMULA, MINUS_FORMULA}
    assert names == {("'" + n if n in formulas else n) for n in NAMES.values()}
    assert {(r["consent_given_by"], r["village"], r["district"]) for r in rows} == {
        (SQL, VILLAGE, DISTRICT)}
    carer = next(r for r in rows if r["name"] == SQL)
    assert carer["whatsapp"] == CARER_WA  # a number is not a formula: left as it is
    # No cell anywhere starts with what a spreadsheet would evaluate.
    for row in rows:
        for cell in row.values():
            assert cell[:1] not in ("=", "@") and not re.match(r"[+-].*[^\d ]", cell), cell

    funds = client.get("/dashboard/export/fund-requests.csv")
    assert funds.status_code == 200
    requests = list(csv.DictReader(io.StringIO(funds.get_data(as_text=True).lstrip("\ufeff"))))
    assert [(r["purpose"], r["child"], r["requester"]) for r in requests] == [
        (PURPOSE_FROM_CARER, SCRIPT, SQL), ("'" + FORMULA, SCRIPT, SCRIPT)]
