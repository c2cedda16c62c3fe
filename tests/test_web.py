"""The web layer through Flask's test client: health, simulator, JSON errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bot.app import create_app
from bot.config import Config
from bot.engine import Engine
from tests.conftest import Demo


@pytest.fixture
def app(config: Config, db: object, engine: Engine) -> Flask:
    return create_app(config, db=db, engine=engine)  # type: ignore[arg-type]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_healthz(client: FlaskClient) -> None:
    res = client.get("/healthz")
    assert res.status_code == 200 and res.get_json() == {"status": "ok"}


def test_healthz_reports_a_dead_database(config: Config, engine: Engine) -> None:
    from storage.db import make_engine

    dead = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    app = create_app(config, db=dead, engine=engine)
    res = app.test_client().get("/healthz")
    assert res.status_code == 503 and res.get_json()["status"] != "ok"


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    res = client.get("/nope")
    assert res.status_code == 404 and "error" in res.get_json()


def test_simulator_page_and_chat(client: FlaskClient, make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    page = client.get("/simulator/")
    assert page.status_code == 200 and b"simulator" in page.data
    assert b"https://" not in page.data  # no CDN: the page works offline
    members = client.get("/simulator/api/members").get_json()
    assert {m["name"] for m in members} >= {"Warsini", "Rina", "Dimas"}
    wid = demo.ids["Warsini"]
    res = client.post("/simulator/api/send", json={"member_id": wid, "text": "MENU"})
    assert res.status_code == 200 and res.get_json()["queued"] >= 1
    msgs = client.get(f"/simulator/api/messages?member_id={wid}").get_json()
    assert any("BAHASA" in m["text"] for m in msgs)
    last = max(m["id"] for m in msgs)
    assert client.get(f"/simulator/api/messages?member_id={wid}&after={last}").get_json() == []


@pytest.mark.parametrize(("body", "status"), [
    (None, 400), ({"member_id": "x", "text": "hi"}, 422), ({"member_id": 1}, 422),
    ({"member_id": 999999, "text": "hi"}, 404), ({"member_id": 1, "text": "x" * 10_001}, 422),
])
def test_simulator_bad_input_is_4xx(client: FlaskClient, body: object, status: int) -> None:
    res = client.post("/simulator/api/send", json=body) if body is not None else client.post(
        "/simulator/api/send", data="not json", content_type="application/json")
    assert res.status_code == status
    assert "error" in res.get_json()


def test_simulator_messages_bad_query(client: FlaskClient) -> None:
    assert client.get("/simulator/api/messages?member_id=abc").status_code == 400
    assert client.get("/simulator/api/messages?member_id=424242").status_code == 404


def test_simulator_can_be_turned_off(config: Config, db: object, engine: Engine) -> None:
    config.server.simulator = False
    app = create_app(config, db=db, engine=engine)  # type: ignore[arg-type]
    assert app.test_client().get("/simulator/").status_code == 404
