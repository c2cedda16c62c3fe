"""The coordinators' JSON API, as a client sees it: auth, scope, validation, pagination."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import col, select

from bot.app import create_app
from bot.broadcast import run_due_broadcasts
from bot.channels.simulator import SimulatorChannel
from bot.config import Config
from bot.engine import Engine
from bot.sender import Sender
from storage.db import session_scope
from storage.models import (
    AuditLog,
    ChannelIdentity,
    Family,
    FundRequest,
    Member,
    Outbox,
    Relay,
    Village,
)
from storage.repo import create_coordinator
from tests.conftest import Clock, Demo


@pytest.fixture
def app(config: Config, db: DbEngine, engine: Engine) -> Flask:
    return create_app(config, db=db, engine=engine)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def coordinator(db: DbEngine, clock: Clock, village: str, *, level: str = "village",
                district: str = "Indramayu") -> str:
    with session_scope(db) as session:
        _c, token = create_coordinator(session, name=f"Coord {village}", village=village,
                                       now=clock(), level=level, district=district)
    return token


FAMILY = {
    "village": "Kenanga", "district": "Indramayu", "language": "id",
    "members": [
        {"role": "child", "name": "Ayu", "birth_year": 2011},
        {"role": "carer", "name": "Mbah Sumi", "birth_year": 1955,
         "whatsapp": "0812-1111-2222"},
        {"role": "parent", "name": "Bu Tini", "telegram_chat_id": 424242,
         "timezone": "Asia/Taipei"},
    ],
    "guardian_consent": {"given_by": "Mbah Sumi", "method": "signed form"},
}


def post_family(client: FlaskClient, token: str, body: dict[str, Any] | None = None) -> Any:
    return client.post("/api/families", json=body or FAMILY, headers=bearer(token))


def fund_request(db: DbEngine, demo: Demo, clock: Clock, *, amount: int = 150_000,
                 status: str = "pending") -> int:
    with session_scope(db) as session:
        child = session.get(Member, demo.ids["Dimas"])
        assert child is not None
        fr = FundRequest(family_id=child.family_id or 0, village_id=child.village_id,
                         requester_id=demo.ids["Warsini"], child_id=child.id,
                         purpose="uniform", amount=amount, status=status,
                         created_at=clock(), updated_at=clock())
        session.add(fr)
        session.flush()
        return fr.id or 0


ENDPOINTS = [
    ("get", "/api/families"), ("post", "/api/families"), ("get", "/api/families/1"),
    ("get", "/api/families/1/export"), ("delete", "/api/families/1"),
    ("get", "/api/fund-requests"), ("post", "/api/fund-requests/1/approve"),
    ("post", "/api/fund-requests/1/reject"), ("post", "/api/broadcasts"),
    ("get", "/api/broadcasts/1"), ("get", "/api/broadcasts"),
]


def test_every_endpoint_needs_a_valid_token(client: FlaskClient,
                                            make_family: Callable[..., Demo],
                                            db: DbEngine) -> None:
    make_family()
    for method, path in ENDPOINTS:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eA=="},
                        {"Authorization": "Bearer " + "x" * 5000}, {"Authorization": "Bearer"}):
            res = getattr(client, method)(path, headers=headers, json={"text": "x"})
            assert res.status_code == 401, (method, path, headers)
            assert res.get_json()["error"], (method, path)
            assert res.headers["WWW-Authenticate"].startswith("Bearer")
    with session_scope(db) as session:  # nothing was changed by the refused requests
        assert len(session.exec(select(Family.id)).all()) == 1
        assert session.exec(select(Outbox).where(Outbox.kind == "broadcast")).first() is None


def test_create_family_with_consent(client: FlaskClient, make_family: Callable[..., Demo],
                                    db: DbEngine) -> None:
    demo = make_family()
    res = post_family(client, demo.coordinator_token)
    assert res.status_code == 201, res.get_json()
    body = res.get_json()
    assert res.headers["Location"] == f"/api/families/{body['id']}"
    assert body["village"] == "Kenanga" and body["consent_status"] == "given"
    assert body["consent"]["given_by"] == "Mbah Sumi"
    assert [m["role"] for m in body["members"]] == ["child", "carer", "parent"]
    for m in body["members"]:
        assert isinstance(m["id"], int) and len(m["invite_code"]) == 6
    carer, parent = body["members"][1], body["members"][2]
    assert carer["whatsapp"] == "+6281211112222" and carer["linked"]
    assert parent["telegram_chat_id"] == "424242" and parent["timezone"] == "Asia/Taipei"
    assert body["members"][0]["linked"] is False
    with session_scope(db) as session:
        audit = session.exec(select(AuditLog).where(AuditLog.action == "family.create",
                                                    AuditLog.target == f"family:{body['id']}")
                             ).one()
        assert audit.actor.startswith("coordinator:")
        assert "Ayu" not in audit.details and "0812" not in audit.details
        ident = session.exec(select(ChannelIdentity).where(
            ChannelIdentity.address == "whatsapp:+6281211112222")).one()
        assert ident.member_id == carer["id"]
    # The same family is what GET returns.
    got = client.get(f"/api/families/{body['id']}", headers=bearer(demo.coordinator_token))
    assert got.status_code == 200 and got.get_json() == body


def test_create_family_without_consent_is_pending(client: FlaskClient,
                                                  make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    body = {k: v for k, v in FAMILY.items() if k != "guardian_consent"}
    res = post_family(client, demo.coordinator_token, body)
    assert res.status_code == 201
    assert res.get_json()["consent_status"] == "pending"
    assert res.get_json()["consent"] is None


def _with(**changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(FAMILY))
    for key, value in changes.items():
        if key[0] == "m" and key[1].isdigit():  # m0_name=...: a member's field
            index, field = key[1:].split("_", 1)
            if value is _DROP:
                body["members"][int(index)].pop(field, None)
            else:
                body["members"][int(index)][field] = value
        elif value is _DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


_DROP = object()

INVALID: list[tuple[dict[str, Any], str]] = [
    (_with(village=_DROP), "village: required"),
    (_with(village=""), "village"),
    (_with(village=12), "village: expected a string"),
    (_with(village="x" * 121), "village: at most 120"),
    (_with(village="Kuripan"), "village: not one of your villages"),
    (_with(district="Cilacap"), "district: Kenanga is in Indramayu"),
    (_with(language="fr"), "language"),
    (_with(members=[]), "members"),
    (_with(members="Ayu"), "members"),
    (_with(members=[{"role": "child", "name": "A"}] * 31), "members: at most 30"),
    (_with(members=["Ayu"]), "members[0]"),
    (_with(m0_role="grandchild"), "members[0].role"),
    (_with(m0_role=_DROP), "members[0].role: required"),
    (_with(m1_name=_DROP), "members[1].name: required"),
    (_with(m1_name="  "), "members[1].name"),
    (_with(m1_name="x" * 81), "members[1].name"),
    (_with(m0_birth_year="2011"), "members[0].birth_year"),
    (_with(m0_birth_year=True), "members[0].birth_year"),
    (_with(m0_birth_year=2011.5), "members[0].birth_year"),
    (_with(m0_birth_year=1990), "members[0].birth_year: a child is under 18"),
    (_with(m0_birth_year=3000), "members[0].birth_year"),
    (_with(m1_whatsapp="not a number"), "members[1].whatsapp"),
    (_with(m1_whatsapp=81234), "members[1].whatsapp: expected a string"),
    (_with(m2_telegram_chat_id="abc"), "members[2].telegram_chat_id"),
    (_with(m2_telegram_chat_id=10**40), "members[2].telegram_chat_id"),
    (_with(m2_telegram_chat_id=[1]), "members[2].telegram_chat_id"),
    (_with(m2_timezone="Mars/Olympus"), "members[2].timezone"),
    (_with(m2_timezone="../../etc/passwd"), "members[2].timezone"),
    (_with(m2_timezone="A" * 300), "members[2].timezone"),
    (_with(guardian_consent="yes"), "guardian_consent"),
    (_with(guardian_consent={"method": "signed form"}), "guardian_consent.given_by"),
    (_with(guardian_consent={"given_by": "x" * 81}), "guardian_consent.given_by"),
]


def test_create_family_validation_names_the_field(client: FlaskClient,
                                                  make_family: Callable[..., Demo],
                                                  db: DbEngine) -> None:
    demo = make_family()
    with session_scope(db) as session:
        before = len(session.exec(select(Family.id)).all())
    for body, message in INVALID:
        res = post_family(client, demo.coordinator_token, body)
        assert res.status_code == 422, (message, res.get_json())
        assert message in res.get_json()["error"], (message, res.get_json())
    with session_scope(db) as session:  # nothing half-created
        assert len(session.exec(select(Family.id)).all()) == before


MALFORMED = [
    ("not json", "application/json", 400),
    ("[1, 2]", "application/json", 400),
    ('"text"', "application/json", 400),
    ("", "application/json", 400),
    ("[" * 100_000 + "]" * 100_000, "application/json", 400),
    ('{"village": "Ken\\u0000anga", "members": []}', "application/json", 422),
    ('{"village": "\\ud800", "members": []}', "application/json", 422),
    ('{"village": 1' + "0" * 5000 + "}", "application/json", 400),
    ('{"village": "Kenanga"}', "text/plain", 422),
    ("x" * (2 * 1024 * 1024), "application/json", 413),
]


def test_malformed_bodies_are_4xx_json(client: FlaskClient,
                                       make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    for data, content_type, status in MALFORMED:
        for path in ("/api/families", "/api/broadcasts", "/api/fund-requests/1/reject"):
            if path.endswith("/reject") and status == 422:
                continue  # its body has no village; covered by its own tests
            res = client.post(path, data=data, content_type=content_type,
                              headers=bearer(demo.coordinator_token))
            expected = status
            if path.endswith("/reject") and data == "":
                expected = 422  # an empty body is allowed there; the reason is missing
            assert res.status_code == expected, (path, data[:40], res.get_json())
            assert "error" in res.get_json()


def test_a_number_registered_twice_is_a_conflict(client: FlaskClient,
                                                 make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    assert post_family(client, demo.coordinator_token).status_code == 201
    again = post_family(client, demo.coordinator_token)
    assert again.status_code == 409
    assert "members[1].whatsapp" in again.get_json()["error"]


def test_district_coordinator_scope(client: FlaskClient, make_family: Callable[..., Demo],
                                    db: DbEngine, clock: Clock) -> None:
    demo = make_family()  # Kenanga, district Indramayu
    other = coordinator(db, clock, "Kuripan", district="Wonosobo")
    district = coordinator(db, clock, "Dinas Indramayu", level="district")
    # A district coordinator registers families anywhere in the district, new villages too.
    for village in ("Kenanga", "Juntikebon"):
        res = post_family(client, district, _with(village=village, district=_DROP,
                                                  m1_whatsapp=_DROP, m2_telegram_chat_id=_DROP))
        assert res.status_code == 201, res.get_json()
        assert res.get_json()["district"] == "Indramayu"
    # ...but not in another district.
    res = post_family(client, district, _with(village="Kuripan", m1_whatsapp=_DROP,
                                              m2_telegram_chat_id=_DROP))
    assert res.status_code == 422 and "not one of your villages" in res.get_json()["error"]
    # It sees Kenanga's families and the new village's; Kenanga's coordinator sees Kenanga's.
    seen = client.get("/api/families", headers=bearer(district)).get_json()
    assert {f["village"] for f in seen} == {"Kenanga", "Juntikebon"}
    kenanga = client.get("/api/families", headers=bearer(demo.coordinator_token)).get_json()
    assert {f["village"] for f in kenanga} == {"Kenanga"}
    assert client.get("/api/families", headers=bearer(other)).get_json() == []


def test_another_village_is_404(client: FlaskClient, make_family: Callable[..., Demo],
                                db: DbEngine, clock: Clock) -> None:
    demo = make_family()
    other = coordinator(db, clock, "Kuripan", district="Wonosobo")
    with session_scope(db) as session:
        fid = session.get(Member, demo.ids["Dimas"]).family_id  # type: ignore[union-attr]
    rid = fund_request(db, demo, clock)
    bid = client.post("/api/broadcasts", json={"text": "Rapat", "village": "Kenanga"},
                      headers=bearer(demo.coordinator_token)).get_json()["id"]
    refused = [
        client.get(f"/api/families/{fid}", headers=bearer(other)),
        client.get(f"/api/families/{fid}/export", headers=bearer(other)),
        client.delete(f"/api/families/{fid}", headers=bearer(other)),
        client.post(f"/api/fund-requests/{rid}/approve", headers=bearer(other)),
        client.post(f"/api/fund-requests/{rid}/reject", json={"reason": "x"},
                    headers=bearer(other)),
        client.get(f"/api/broadcasts/{bid}", headers=bearer(other)),
    ]
    for res in refused:
        assert res.status_code == 404 and "error" in res.get_json()
    # Exactly what an id that does not exist answers.
    for path in ("/api/families/999999", "/api/families/999999/export",
                 "/api/broadcasts/999999", "/api/families/99999999999999999999999",
                 "/api/broadcasts/0"):
        assert client.get(path, headers=bearer(demo.coordinator_token)).status_code == 404
    assert client.post("/api/fund-requests/99999999999999999999/approve",
                       headers=bearer(demo.coordinator_token)).status_code == 404
    assert client.get("/api/fund-requests", headers=bearer(other)).get_json() == []
    res = client.post("/api/broadcasts", json={"text": "x", "village": "Kenanga"},
                      headers=bearer(other))
    assert res.status_code == 422 and "village" in res.get_json()["error"]
    with session_scope(db) as session:  # nothing changed
        assert session.get(Family, fid) is not None
        assert session.get(FundRequest, rid).status == "pending"  # type: ignore[union-attr]


def test_families_pagination(client: FlaskClient, make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    token = demo.coordinator_token
    for i in range(4):
        body = _with(m1_whatsapp=f"+62812000000{i:02d}", m2_telegram_chat_id=1000 + i)
        assert post_family(client, token, body).status_code == 201
    first = client.get("/api/families?per_page=2", headers=bearer(token))
    assert first.status_code == 200
    assert len(first.get_json()) == 2 and first.headers["X-Total-Count"] == "5"
    assert 'rel="next"' in first.headers["Link"] and 'rel="prev"' not in first.headers["Link"]
    assert "page=3" in first.headers["Link"]  # last
    ids = [f["id"] for f in first.get_json()]
    for page in (2, 3):
        res = client.get(f"/api/families?per_page=2&page={page}", headers=bearer(token))
        ids += [f["id"] for f in res.get_json()]
    assert ids == sorted(ids) and len(set(ids)) == 5
    last = client.get("/api/families?per_page=2&page=3", headers=bearer(token))
    assert 'rel="next"' not in last.headers["Link"] and 'rel="prev"' in last.headers["Link"]
    beyond = client.get("/api/families?per_page=2&page=9", headers=bearer(token))
    assert beyond.status_code == 200 and beyond.get_json() == []
    assert client.get("/api/families?village=Kenanga&consent_status=given",
                      headers=bearer(token)).headers["X-Total-Count"] == "5"
    for bad in ("page=0", "page=x", "per_page=0", "per_page=501", "page=-1",
                "per_page=99999999999999", "consent_status=maybe"):
        res = client.get(f"/api/families?{bad}", headers=bearer(token))
        assert res.status_code == 400 and "error" in res.get_json(), bad


def test_export_has_everything_stored(client: FlaskClient, make_family: Callable[..., Demo],
                                      db: DbEngine, clock: Clock) -> None:
    demo = make_family()
    demo.say("Warsini", "MENU")
    rid = fund_request(db, demo, clock)
    with session_scope(db) as session:
        fid = session.get(Member, demo.ids["Dimas"]).family_id  # type: ignore[union-attr]
        session.add(Relay(family_id=fid or 0, from_member_id=demo.ids["Rina"],
                          from_role="parent", text="Ibu kangen", recipients=3, at=clock()))
    res = client.get(f"/api/families/{fid}/export", headers=bearer(demo.coordinator_token))
    assert res.status_code == 200
    data = res.get_json()
    assert data["family"]["id"] == fid and data["family"]["village"] == "Kenanga"
    assert {m["name"] for m in data["members"]} == {"Dimas", "Sari", "Warsini", "Rina"}
    assert any(i["address"].startswith("sim-") for i in data["identities"])
    assert data["consents"][0]["given_by"] == "Warsini"
    assert data["relays"][0]["text"] == "Ibu kangen"
    assert data["fund_requests"][0]["id"] == rid
    assert any("BAHASA" in m["text"] or m["text"] for m in data["messages"])
    assert data["inbound_messages"] and "exported_at" in data
    with session_scope(db) as session:
        assert session.exec(select(AuditLog).where(AuditLog.action == "family.export")).first()


def test_delete_erases_the_family(client: FlaskClient, make_family: Callable[..., Demo],
                                  db: DbEngine, clock: Clock) -> None:
    demo = make_family()
    demo.say("Warsini", "MENU")
    fund_request(db, demo, clock)
    with session_scope(db) as session:
        fid = session.get(Member, demo.ids["Dimas"]).family_id  # type: ignore[union-attr]
    token = demo.coordinator_token
    res = client.delete(f"/api/families/{fid}", headers=bearer(token))
    assert res.status_code == 204 and res.data == b""
    assert client.get(f"/api/families/{fid}", headers=bearer(token)).status_code == 404
    assert client.delete(f"/api/families/{fid}", headers=bearer(token)).status_code == 404
    with session_scope(db) as session:
        ids = [demo.ids[n] for n in ("Dimas", "Sari", "Warsini", "Rina")]
        assert session.exec(select(Member).where(col(Member.id).in_(ids))).all() == []
        assert session.exec(select(Outbox).where(col(Outbox.member_id).in_(ids))).all() == []
        assert session.exec(select(ChannelIdentity).where(
            col(ChannelIdentity.member_id).in_(ids))).all() == []
        assert session.exec(select(FundRequest)).all() == []
        audit = session.exec(select(AuditLog).where(AuditLog.action == "family.erase")).one()
        assert audit.actor.startswith("coordinator:")
        assert "Warsini" not in audit.details and json.loads(audit.details)["members"] == 4
        # The coordinator is still there.
        assert session.get(Member, demo.ids["Darto"]) is not None


def test_fund_requests_list(client: FlaskClient, make_family: Callable[..., Demo],
                            db: DbEngine, clock: Clock) -> None:
    demo = make_family()
    first = fund_request(db, demo, clock, amount=150_000)
    fund_request(db, demo, clock, amount=75_000, status="paid")
    fund_request(db, demo, clock, amount=20_000)
    token = demo.coordinator_token
    res = client.get("/api/fund-requests?status=pending", headers=bearer(token))
    assert res.status_code == 200 and res.headers["X-Total-Count"] == "2"
    items = res.get_json()
    assert isinstance(items, list) and [i["amount"] for i in items] == [150_000, 20_000]
    item = items[0]
    assert {"id", "family_id", "child", "purpose", "amount", "currency", "status",
            "created_at"} <= set(item)
    assert item["id"] == first and item["child"] == "Dimas" and item["currency"] == "IDR"
    assert item["status"] == "pending" and item["purpose"] == "uniform"
    assert item["created_at"].startswith("2026-03-05T01:30:00")
    assert len(client.get("/api/fund-requests", headers=bearer(token)).get_json()) == 3
    page = client.get("/api/fund-requests?per_page=1&page=2", headers=bearer(token))
    assert len(page.get_json()) == 1 and page.headers["X-Total-Count"] == "3"
    assert 'rel="next"' in page.headers["Link"] and "status" not in page.headers["Link"]
    filtered = client.get(f"/api/fund-requests?family_id={item['family_id']}&status=paid",
                          headers=bearer(token))
    assert [i["amount"] for i in filtered.get_json()] == [75_000]
    for bad in ("status=lost", "family_id=x", "page=0"):
        assert client.get(f"/api/fund-requests?{bad}", headers=bearer(token)).status_code == 400


def test_approve_and_reject(client: FlaskClient, make_family: Callable[..., Demo],
                            db: DbEngine, clock: Clock) -> None:
    demo = make_family()
    token = demo.coordinator_token
    rid = fund_request(db, demo, clock)
    res = client.post(f"/api/fund-requests/{rid}/approve", headers=bearer(token))
    assert res.status_code == 200, res.get_json()
    assert res.get_json()["status"] == "approved"
    # The requester and the parent are told, in their language.
    assert any("#" + str(rid) in r.text for r in demo.inbox("Warsini"))
    assert any("#" + str(rid) in r.text for r in demo.inbox("Rina"))
    again = client.post(f"/api/fund-requests/{rid}/approve", headers=bearer(token))
    assert again.status_code == 409 and "approved" in again.get_json()["error"]
    other = fund_request(db, demo, clock)
    no_reason = client.post(f"/api/fund-requests/{other}/reject", json={},
                            headers=bearer(token))
    assert no_reason.status_code == 422 and "reason" in no_reason.get_json()["error"]
    for bad in ({"reason": 5}, {"reason": "x" * 301}):
        res = client.post(f"/api/fund-requests/{other}/reject", json=bad, headers=bearer(token))
        assert res.status_code == 422 and "reason" in res.get_json()["error"]
    rejected = client.post(f"/api/fund-requests/{other}/reject",
                           json={"reason": "PIP covers the uniform"}, headers=bearer(token))
    assert rejected.status_code == 200
    assert rejected.get_json()["status"] == "rejected"
    assert rejected.get_json()["reason"] == "PIP covers the uniform"
    assert any("PIP covers the uniform" in r.text for r in demo.inbox("Rina"))
    with session_scope(db) as session:
        actions = session.exec(select(AuditLog.action).where(
            col(AuditLog.target).in_([f"fund_request:{rid}", f"fund_request:{other}"]))).all()
        assert {"fund.approved", "fund.rejected"} <= set(actions)


def test_broadcast_to_a_village(client: FlaskClient, make_family: Callable[..., Demo],
                                db: DbEngine, config: Config, clock: Clock) -> None:
    clock.now = clock.now.replace(hour=3)  # 10:00 in Jakarta, 11:00 in Hong Kong
    demo = make_family()
    demo.say("Warsini", "BAHASA en")
    demo.say("Rina", "STOP")
    token = demo.coordinator_token
    res = client.post("/api/broadcasts", json={
        "text": "Posyandu hari Sabtu jam 08.00", "village": "Kenanga",
        "translations": {"en": "Health post on Saturday at 08:00"}}, headers=bearer(token))
    assert res.status_code == 202, res.get_json()
    assert res.get_json() == {"id": res.get_json()["id"]}
    bid = res.get_json()["id"]
    status = client.get(f"/api/broadcasts/{bid}", headers=bearer(token)).get_json()
    # Dimas (14, consent given), Sari is 5: no account; Warsini; Rina opted out.
    assert status["status"] == "sending"
    assert (status["recipients"], status["opted_out"], status["sent"], status["failed"]) == (
        3, 1, 0, 0)
    assert status["queued"] == 2 and status["held"] == 0 and status["eta_s"] >= 1
    sender = Sender(db, config, {"simulator": SimulatorChannel()}, clock=clock)
    sender.drain(timeout=10)
    done = client.get(f"/api/broadcasts/{bid}", headers=bearer(token)).get_json()
    assert done["status"] == "done" and done["sent"] == 2 and done["queued"] == 0
    assert done["text"] == "Posyandu hari Sabtu jam 08.00" and done["village"] == "Kenanga"
    texts = {r.member_id: r.text for r in demo.inbox("Warsini") + demo.inbox("Dimas")
             if r.kind == "broadcast"}
    assert "Health post on Saturday" in texts[demo.ids["Warsini"]]
    assert "Posyandu hari Sabtu" in texts[demo.ids["Dimas"]]
    assert "Kenanga" in texts[demo.ids["Dimas"]]
    assert not [r for r in demo.inbox("Rina") if r.kind == "broadcast"]
    listed = client.get("/api/broadcasts", headers=bearer(token))
    assert [b["id"] for b in listed.get_json()] == [bid] and listed.headers["X-Total-Count"] == "1"


def test_broadcast_roles_and_schedule(client: FlaskClient, make_family: Callable[..., Demo],
                                      db: DbEngine, config: Config, clock: Clock) -> None:
    demo = make_family()
    token = demo.coordinator_token
    res = client.post("/api/broadcasts", json={
        "text": "Pertemuan orang tua", "village": "Kenanga", "roles": ["parent"],
        "send_at": "2026-03-06T19:00:00+07:00"}, headers=bearer(token))
    assert res.status_code == 202
    bid = res.get_json()["id"]
    got = client.get(f"/api/broadcasts/{bid}", headers=bearer(token)).get_json()
    assert got["status"] == "scheduled" and got["recipients"] == 0
    assert got["send_at"] == "2026-03-06T12:00:00+00:00"
    with session_scope(db) as session:
        assert run_due_broadcasts(session, clock(), config) == []  # not yet
    clock.advance(days=2)
    with session_scope(db) as session:
        run_due_broadcasts(session, clock(), config)
    got = client.get(f"/api/broadcasts/{bid}", headers=bearer(token)).get_json()
    assert got["status"] == "sending" and got["recipients"] == 1
    assert [r.kind for r in demo.inbox("Rina")].count("broadcast") == 1
    assert not [r for r in demo.inbox("Warsini") if r.kind == "broadcast"]
    # Naive times are the village's local time; the past means now.
    local = client.post("/api/broadcasts", json={"text": "x", "village": "Kenanga",
                                                  "send_at": "2026-03-05T08:00:00"},
                        headers=bearer(token))
    assert local.status_code == 202
    got = client.get(f"/api/broadcasts/{local.get_json()['id']}", headers=bearer(token))
    assert got.get_json()["status"] in ("sending", "done")


BAD_BROADCASTS: list[tuple[dict[str, Any], str]] = [
    ({"village": "Kenanga"}, "text"),
    ({"text": "", "village": "Kenanga"}, "text"),
    ({"text": 5, "village": "Kenanga"}, "text"),
    ({"text": "x" * 4001, "village": "Kenanga"}, "text: at most"),
    ({"text": "x"}, "village: required"),
    ({"text": "x", "village": ["Kenanga"]}, "village"),
    ({"text": "x", "village": "Atlantis"}, "village: not one of your villages"),
    ({"text": "x", "village": "Kenanga", "roles": ["coordinator"]}, "roles"),
    ({"text": "x", "village": "Kenanga", "roles": "everyone"}, "roles"),
    ({"text": "x", "village": "Kenanga", "roles": [1]}, "roles"),
    ({"text": "x", "village": "Kenanga", "send_at": "tomorrow"}, "send_at"),
    ({"text": "x", "village": "Kenanga", "send_at": 1700000000}, "send_at"),
    ({"text": "x", "village": "Kenanga", "send_at": "2030-01-01T00:00:00Z"}, "send_at"),
    ({"text": "x", "village": "Kenanga", "translations": {"fr": "y"}}, "translations"),
    ({"text": "x", "village": "Kenanga", "translations": ["en"]}, "translations"),
    ({"text": "x", "village": "Kenanga", "translations": {"en": 3}}, "translations.en"),
    ({"text": "x", "village": "Kenanga", "age_band": "teens"}, "age_band"),
]


def test_broadcast_validation(client: FlaskClient, make_family: Callable[..., Demo],
                              db: DbEngine) -> None:
    demo = make_family()
    for body, message in BAD_BROADCASTS:
        res = client.post("/api/broadcasts", json=body, headers=bearer(demo.coordinator_token))
        assert res.status_code == 422, (body, res.get_json())
        assert message in res.get_json()["error"], (body, res.get_json())
    with session_scope(db) as session:
        assert session.exec(select(Village).where(Village.name == "Atlantis")).first() is None


def test_wrong_methods_and_paths_are_json(client: FlaskClient,
                                          make_family: Callable[..., Demo]) -> None:
    demo = make_family()
    token = demo.coordinator_token
    assert client.put("/api/families", headers=bearer(token)).status_code == 405
    assert client.get("/api/families/abc", headers=bearer(token)).status_code == 404
    assert client.get("/api/nothing", headers=bearer(token)).status_code == 404
    res = client.get("/api/families", headers=bearer(token))
    assert res.headers["Cache-Control"] == "no-store"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
_member = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["child", "carer", "parent", "x"]) | _json,
    "name": st.text(max_size=90) | _json, "birth_year": st.integers(1800, 2100) | _json,
    "whatsapp": st.text(max_size=20) | _json, "telegram_chat_id": st.integers() | _json,
    "timezone": st.sampled_from(["Asia/Taipei", "Asia/../x", ""]) | _json,
    "language": st.sampled_from(["id", "en", "xx"]) | _json})
_family = st.fixed_dictionaries({}, optional={
    "village": st.sampled_from(["Kenanga", "Kuripan", ""]) | st.text(max_size=130) | _json,
    "district": st.text(max_size=10) | _json, "language": st.sampled_from(["id", "jv"]) | _json,
    "members": st.lists(_member, max_size=4) | _json,
    "guardian_consent": st.fixed_dictionaries({}, optional={
        "given_by": st.text(max_size=90) | _json, "method": st.text(max_size=50)}) | _json})
_broadcast = st.fixed_dictionaries({}, optional={
    "text": st.text(max_size=50) | _json, "village": st.sampled_from(["Kenanga", 1]) | _json,
    "roles": st.lists(st.sampled_from(["child", "parent", "boss"]), max_size=3) | _json,
    "send_at": st.sampled_from(["2026-03-06T08:00:00", "2026-13-01", ""]) | _json,
    "translations": st.dictionaries(st.sampled_from(["en", "jv", "fr"]), _json, max_size=2)
    | _json, "age_band": st.sampled_from(["2-9", "old"]) | _json})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(family=_family, broadcast=_broadcast, reason=_json, page=st.text(max_size=8),
       path_id=st.integers(-5, 2**70))
def test_fuzzed_requests_never_fail_on_our_side(client: FlaskClient,
                                                make_family: Callable[..., Demo],
                                                family: Any, broadcast: Any, reason: Any,
                                                page: str, path_id: int) -> None:
    token = getattr(test_fuzzed_requests_never_fail_on_our_side, "token", None)
    if token is None or client.get("/api/families", headers=bearer(token)).status_code != 200:
        token = make_family(village=f"V{id(client)}").coordinator_token
        test_fuzzed_requests_never_fail_on_our_side.token = token  # type: ignore[attr-defined]
    h = bearer(token)
    responses = [
        client.post("/api/families", json=family, headers=h),
        client.post("/api/broadcasts", json=broadcast, headers=h),
        client.post(f"/api/fund-requests/{abs(path_id)}/reject", json={"reason": reason},
                    headers=h),
        client.get(f"/api/families/{abs(path_id)}", headers=h),
        client.get("/api/families", query_string={"page": page, "village": page}, headers=h),
        client.get("/api/fund-requests", query_string={"status": page, "per_page": page},
                   headers=h),
    ]
    for res in responses:
        assert res.status_code < 500, res.get_json()
        assert res.is_json and (res.status_code < 400 or "error" in res.get_json())
