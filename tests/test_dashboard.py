"""The dashboard through Flask's test client: login, CSRF, scope, pages, changes, audit."""

from __future__ import annotations

import io
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import col, select

from bot.app import create_app
from bot.config import Config
from bot.engine import Engine
from bot.web.passwords import hash_password
from storage.db import session_scope
from storage.models import (
    Alert,
    AuditLog,
    Broadcast,
    ChannelIdentity,
    Consent,
    Coordinator,
    Family,
    FundRequest,
    LoginAttempt,
    Member,
    Relay,
    Village,
)
from storage.repo import create_coordinator
from tests.conftest import Clock, Demo

PASSWORD = "kata sandi panjang"
_HASH = hash_password(PASSWORD)  # scrypt is slow on purpose: hash once


@pytest.fixture
def app(config: Config, db: DbEngine, engine: Engine) -> Flask:
    config.server.secret_key = "test-secret-key"
    config.telegram.bot_username = "desmigratif_bot"
    return create_app(config, db=db, engine=engine)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def csrf(client: FlaskClient, path: str = "/dashboard/login") -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def add_coordinator(db: DbEngine, clock: Clock, name: str, village: str, *,
                    level: str = "village", district: str = "Indramayu") -> int:
    with session_scope(db) as session:
        coord, _token = create_coordinator(session, name=name, village=village, now=clock(),
                                           password_hash=_HASH, level=level, district=district)
        return coord.id or 0


def login(client: FlaskClient, name: str, password: str = PASSWORD) -> str:
    token = csrf(client)
    res = client.post("/dashboard/login", data={"username": name, "password": password,
                                                "csrf_token": token})
    assert res.status_code == 302, res.get_data(as_text=True)[:300]
    return csrf(client, "/dashboard/families")


@pytest.fixture
def darto(make_family: Callable[..., Demo], db: DbEngine, clock: Clock) -> Demo:
    """The test family, with its coordinator Darto able to log in with a password."""
    demo = make_family()
    with session_scope(db) as session:
        coord = session.exec(select(Coordinator).where(Coordinator.name == "Darto")).one()
        coord.password_hash = _HASH
        session.add(coord)
    return demo


def family_id(db: DbEngine, demo: Demo) -> int:
    with session_scope(db) as session:
        member = session.get(Member, demo.ids["Dimas"])
        assert member is not None and member.family_id is not None
        return member.family_id


def test_pages_need_a_login(client: FlaskClient) -> None:
    for path in ("/dashboard/", "/dashboard/families", "/dashboard/families/1",
                 "/dashboard/fund-requests", "/dashboard/alerts", "/dashboard/broadcasts",
                 "/dashboard/import", "/dashboard/audit", "/dashboard/export/families.csv"):
        res = client.get(path)
        assert res.status_code == 302 and "/dashboard/login?next=" in res.headers["Location"]
    page = client.get("/dashboard/login")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and 'name="viewport"' in body
    assert "https://" not in body and "http://" not in body  # no CDN
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_login_logout_and_cookie_flags(client: FlaskClient, darto: Demo, db: DbEngine) -> None:
    token = csrf(client)
    res = client.post("/dashboard/login", data={"username": "darto", "password": PASSWORD,
                                                "csrf_token": token, "next": "/dashboard/alerts"})
    assert res.status_code == 302 and res.headers["Location"] == "/dashboard/alerts"
    cookie = res.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    home = client.get("/dashboard/")
    assert home.status_code == 200 and "Darto" in home.get_data(as_text=True)
    token = csrf(client, "/dashboard/")
    assert client.post("/dashboard/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/dashboard/").status_code == 302
    with session_scope(db) as session:
        assert session.exec(select(AuditLog).where(AuditLog.action == "dashboard.login")).one()


def test_open_redirects_are_refused(client: FlaskClient, darto: Demo) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/simulator/", "javascript:x"):
        token = csrf(client)
        res = client.post("/dashboard/login", data={"username": "Darto", "password": PASSWORD,
                                                    "csrf_token": token, "next": target})
        assert res.headers["Location"] == "/dashboard/", target
        client.post("/dashboard/logout", data={"csrf_token": csrf(client, "/dashboard/")})


def test_api_token_logs_in_too(client: FlaskClient, darto: Demo) -> None:
    token = csrf(client)
    res = client.post("/dashboard/login", data={"username": "Darto",
                                                "password": darto.coordinator_token,
                                                "csrf_token": token})
    assert res.status_code == 302


def test_login_rate_limit(client: FlaskClient, darto: Demo, db: DbEngine) -> None:
    token = csrf(client)
    for _ in range(5):
        res = client.post("/dashboard/login", data={"username": "Darto", "password": "wrong!",
                                                    "csrf_token": token})
        assert res.status_code == 401
        assert "Nama atau kata sandi salah" in res.get_data(as_text=True)
    # Now even the right password waits.
    res = client.post("/dashboard/login", data={"username": "Darto", "password": PASSWORD,
                                                "csrf_token": token})
    assert res.status_code == 429
    # Another name from the same place is not blocked by Darto's failures.
    res = client.post("/dashboard/login", data={"username": "Nobody", "password": "x",
                                                "csrf_token": token})
    assert res.status_code == 401
    with session_scope(db) as session:
        assert len(session.exec(select(LoginAttempt)).all()) == 6


def test_csrf_is_checked_on_every_post(client: FlaskClient, darto: Demo, db: DbEngine) -> None:
    res = client.post("/dashboard/login", data={"username": "Darto", "password": PASSWORD})
    assert res.status_code == 400
    login(client, "Darto")
    fid = family_id(db, darto)
    for path in (f"/dashboard/families/{fid}/delete", "/dashboard/broadcasts",
                 "/dashboard/logout", f"/dashboard/families/{fid}/consent"):
        for token in (None, "forged"):
            data = {"confirm": "yes"} | ({"csrf_token": token} if token else {})
            res = client.post(path, data=data)
            assert res.status_code == 400, path
    with session_scope(db) as session:
        assert session.get(Family, fid) is not None


def test_another_village_is_404(client: FlaskClient, darto: Demo, db: DbEngine,
                                clock: Clock) -> None:
    fid = family_id(db, darto)
    add_coordinator(db, clock, "Bu Sri", "Kuripan", district="Wonosobo")
    token = login(client, "Bu Sri")
    with session_scope(db) as session:
        fr = FundRequest(family_id=fid, village_id=session.get(Family, fid).village_id,  # type: ignore[union-attr]
                         purpose="books", amount=1000, created_at=clock(), updated_at=clock())
        session.add(fr)
        session.flush()
        rid = fr.id
    for path in (f"/dashboard/families/{fid}", f"/dashboard/members/{darto.ids['Rina']}/edit",
                 f"/dashboard/families/{fid}/export.json"):
        assert client.get(path).status_code == 404, path
    for path in (f"/dashboard/families/{fid}/delete", f"/dashboard/fund-requests/{rid}/approve",
                 f"/dashboard/families/{fid}/consent"):
        assert client.post(path, data={"csrf_token": token, "confirm": "yes",
                                       "action": "give", "given_by": "x"}).status_code == 404
    body = client.get("/dashboard/families").get_data(as_text=True)
    assert "Dimas" not in body
    with session_scope(db) as session:
        assert session.get(Family, fid) is not None
        assert session.get(FundRequest, rid).status == "pending"  # type: ignore[union-attr]


def test_home_shows_charts(client: FlaskClient, darto: Demo, db: DbEngine,
                           clock: Clock) -> None:
    fid = family_id(db, darto)
    with session_scope(db) as session:
        vid = session.get(Family, fid).village_id  # type: ignore[union-attr]
        for days, role in ((1, "parent"), (2, "carer"), (9, "child"), (30, "parent")):
            session.add(Relay(family_id=fid, from_role=role, text="x", at=clock() -
                              __import__("datetime").timedelta(days=days)))
        for status in ("pending", "approved", "rejected"):
            session.add(FundRequest(family_id=fid, village_id=vid, purpose="books",
                                    amount=50_000, status=status, created_at=clock(),
                                    updated_at=clock()))
        session.add(Alert(village_id=vid, family_id=fid, kind="sos", created_at=clock()))
    login(client, "Darto")
    res = client.get("/dashboard/")
    body = res.get_data(as_text=True)
    assert res.status_code == 200
    assert body.count("<svg") == 3 and 'role="img"' in body
    assert "Pesan antara orang tua dan anak" in body  # Indonesian by default
    assert "<title id=\"c-funds-t\">" in body
    # The parent Rina never wrote: her family counts as silent.
    assert "1 / 1" in body
    assert re.search(r"<b>1</b>peringatan keselamatan terbuka", body)
    assert "https://" not in body


def test_add_a_family_through_the_form(client: FlaskClient, darto: Demo, db: DbEngine) -> None:
    token = login(client, "Darto")
    with session_scope(db) as session:
        vid = session.exec(select(Village.id)).one()
    form = {"csrf_token": token, "village_id": str(vid), "language": "jv",
            "m0_role": "child", "m0_name": "Bagus", "m0_birth_year": "2012",
            "m1_role": "carer", "m1_name": "Mbah Darmi", "m1_whatsapp": "0812-7777-0001",
            "m2_role": "parent", "m2_name": "Pak Slamet", "m2_timezone": "Asia/Taipei",
            "m2_telegram_chat_id": "777001", "consent_given_by": "Mbah Darmi"}
    res = client.post("/dashboard/families/new", data=form)
    assert res.status_code == 302, res.get_data(as_text=True)[:2000]
    page = client.get(res.headers["Location"]).get_data(as_text=True)
    assert "Bagus" in page and "Pak Slamet" in page and "diberikan" in page
    with session_scope(db) as session:
        bagus = session.exec(select(Member).where(Member.name == "Bagus")).one()
        assert bagus.language == "jv"
        assert f"https://t.me/desmigratif_bot?start={bagus.invite_code}" in page
        assert f"DAFTAR {bagus.invite_code}" in page
        audit = session.exec(select(AuditLog).where(AuditLog.action == "family.create",
                                                    AuditLog.target == f"family:{bagus.family_id}")
                             ).one()
        assert audit.actor.startswith("coordinator:")
    # Errors are shown, per person, and nothing is stored.
    bad = dict(form, m0_name="Bagus 2", m0_birth_year="1980", m1_whatsapp="nomor",
               m2_timezone="Mars/Base")
    res = client.post("/dashboard/families/new", data=bad)
    body = res.get_data(as_text=True)
    assert res.status_code == 422
    assert "Mbah Darmi: WhatsApp" in body and "Pak Slamet: Zona waktu" in body
    same = dict(form, m0_name="Bagus 3")  # the numbers are already registered
    res = client.post("/dashboard/families/new", data=same)
    assert res.status_code == 422
    with session_scope(db) as session:
        assert len(session.exec(select(Member).where(Member.name == "Bagus 3")).all()) == 0


def test_edit_add_member_consent_and_delete(client: FlaskClient, darto: Demo,
                                           db: DbEngine) -> None:
    token = login(client, "Darto")
    fid = family_id(db, darto)
    rina = darto.ids["Rina"]
    res = client.post(f"/dashboard/members/{rina}/edit", data={
        "csrf_token": token, "role": "parent", "name": "Ibu Rina", "timezone": "Asia/Taipei",
        "whatsapp": "+886 912 345 678", "language": "en"})
    assert res.status_code == 302
    with session_scope(db) as session:
        m = session.get(Member, rina)
        assert m is not None and (m.name, m.timezone, m.language) == (
            "Ibu Rina", "Asia/Taipei", "en")
        assert session.exec(select(ChannelIdentity.address).where(
            ChannelIdentity.member_id == rina, ChannelIdentity.channel == "whatsapp")
        ).one() == "whatsapp:+886912345678"
        audit = session.exec(select(AuditLog).where(AuditLog.action == "member.edit")).one()
        assert set(json.loads(audit.details)["fields"]) >= {"name", "timezone", "whatsapp"}
        assert "Rina" not in audit.details
    # Adding a member to the family.
    res = client.post(f"/dashboard/families/{fid}/members", data={
        "csrf_token": token, "role": "child", "name": "Tono", "birth_year": "2010"})
    assert res.status_code == 302
    page = client.get(f"/dashboard/families/{fid}").get_data(as_text=True)
    assert "Tono" in page and "Anggota ditambahkan" in page
    # Withdrawing consent deletes the children's data.
    res = client.post(f"/dashboard/families/{fid}/consent",
                      data={"csrf_token": token, "action": "withdraw", "confirm": "yes"})
    assert res.status_code == 302
    with session_scope(db) as session:
        fam = session.get(Family, fid)
        assert fam is not None and fam.consent_status == "withdrawn"
        assert session.exec(select(Member).where(Member.family_id == fid,
                                                 Member.role == "child")).all() == []
    res = client.post(f"/dashboard/families/{fid}/consent", data={
        "csrf_token": token, "action": "give", "given_by": "Ibu Rina", "method": "WhatsApp call"})
    with session_scope(db) as session:
        assert session.get(Family, fid).consent_status == "given"  # type: ignore[union-attr]
        assert session.exec(select(Consent).where(Consent.method == "WhatsApp call")).one()
    export = client.get(f"/dashboard/families/{fid}/export.json")
    assert export.status_code == 200 and export.get_json()["family"]["id"] == fid
    # Deleting needs the box ticked.
    assert client.post(f"/dashboard/families/{fid}/delete",
                       data={"csrf_token": token}).status_code == 302
    with session_scope(db) as session:
        assert session.get(Family, fid) is not None
    client.post(f"/dashboard/families/{fid}/delete", data={"csrf_token": token,
                                                            "confirm": "yes"})
    with session_scope(db) as session:
        assert session.get(Family, fid) is None
        actions = set(session.exec(select(AuditLog.action).where(
            col(AuditLog.actor).startswith("coordinator:"))).all())
    assert {"member.edit", "member.create", "consent.withdraw", "consent.record",
            "family.export", "family.erase"} <= actions


def test_fund_queue_and_alerts(client: FlaskClient, darto: Demo, db: DbEngine,
                               clock: Clock) -> None:
    fid = family_id(db, darto)
    with session_scope(db) as session:
        vid = session.get(Family, fid).village_id  # type: ignore[union-attr]
        ids = []
        for amount in (150_000, 80_000):
            fr = FundRequest(family_id=fid, village_id=vid, requester_id=darto.ids["Warsini"],
                             child_id=darto.ids["Dimas"], purpose="uniform", amount=amount,
                             created_at=clock(), updated_at=clock())
            session.add(fr)
            session.flush()
            ids.append(fr.id)
        alert = Alert(village_id=vid, family_id=fid, member_id=darto.ids["Dimas"], kind="sos",
                      created_at=clock())
        session.add(alert)
        session.flush()
        aid = alert.id
    token = login(client, "Darto")
    page = client.get("/dashboard/fund-requests").get_data(as_text=True)
    assert "Rp150.000" in page and "Rp80.000" in page and "Dimas" in page
    res = client.post(f"/dashboard/fund-requests/{ids[0]}/approve", data={"csrf_token": token})
    assert res.status_code == 302
    res = client.post(f"/dashboard/fund-requests/{ids[1]}/reject", data={"csrf_token": token})
    assert "alasan" in client.get(res.headers["Location"]).get_data(as_text=True).lower()
    client.post(f"/dashboard/fund-requests/{ids[1]}/reject",
                data={"csrf_token": token, "reason": "Sudah dibiayai PIP"})
    again = client.post(f"/dashboard/fund-requests/{ids[0]}/approve",
                        data={"csrf_token": token})
    assert "approved" in client.get(again.headers["Location"]).get_data(as_text=True)
    with session_scope(db) as session:
        assert [session.get(FundRequest, i).status for i in ids] == [  # type: ignore[union-attr]
            "approved", "rejected"]
    assert any("Sudah dibiayai PIP" in r.text for r in darto.inbox("Rina"))
    alerts = client.get("/dashboard/alerts").get_data(as_text=True)
    assert "Dimas" in alerts and "Saya tangani" in alerts
    client.post(f"/dashboard/alerts/{aid}/ack", data={"csrf_token": token})
    with session_scope(db) as session:
        a = session.get(Alert, aid)
        assert a is not None and a.status == "acknowledged" and a.acknowledged_by
    assert client.post("/dashboard/alerts/999999/ack",
                       data={"csrf_token": token}).status_code == 404


def test_announcement_preview_send_and_progress(client: FlaskClient, darto: Demo,
                                                db: DbEngine, clock: Clock) -> None:
    clock.now = clock.now.replace(hour=3)
    darto.say("Warsini", "BAHASA jv")
    token = login(client, "Darto")
    with session_scope(db) as session:
        vid = session.exec(select(Village.id)).one()
    form = {"csrf_token": token, "village_id": str(vid), "text": "Posyandu <b>Sabtu</b>",
            "tr_jv": "Posyandu dina Setu", "roles": ["carer", "parent"]}
    preview = client.post("/dashboard/broadcasts/preview", data=form)
    body = preview.get_data(as_text=True)
    assert preview.status_code == 200
    assert "Posyandu dina Setu" in body and "Posyandu &lt;b&gt;Sabtu&lt;/b&gt;" in body
    assert re.search(r'data-testid="preview-recipients">2<', body)
    with session_scope(db) as session:
        assert session.exec(select(Broadcast)).all() == []  # a preview sends nothing
    sent = client.post("/dashboard/broadcasts", data=form)
    assert sent.status_code == 302
    page = client.get(sent.headers["Location"]).get_data(as_text=True)
    assert "data-progress-url" in page and "<progress" in page
    with session_scope(db) as session:
        b = session.exec(select(Broadcast)).one()
        assert b.coordinator_id is not None
    progress = client.get(f"/dashboard/broadcasts/{b.id}/progress.json").get_json()
    assert progress["recipients"] == 2 and progress["status"] == "sending"
    assert progress["status_label"] == "sedang dikirim"
    listing = client.get("/dashboard/broadcasts").get_data(as_text=True)
    assert "Posyandu &lt;b&gt;Sabtu" in listing
    bad = client.post("/dashboard/broadcasts/preview", data=dict(form, text=" ",
                                                                  village_id="999"))
    assert bad.status_code == 422 and "Desa: pilih" in bad.get_data(as_text=True)


def test_import_and_export_pages(client: FlaskClient, darto: Demo, db: DbEngine) -> None:
    token = login(client, "Darto")
    sheet = ("family_ref,village,role,name,birth_year\n"
             "A,Kenanga,child,Ani,2014\nA,Kenanga,carer,Bu Ani,1970\n")
    res = client.post("/dashboard/import", data={
        "csrf_token": token, "action": "check",
        "file": (io.BytesIO(sheet.encode()), "families.csv")},
        content_type="multipart/form-data")
    assert res.status_code == 200 and "siap diimpor" in res.get_data(as_text=True)
    res = client.post("/dashboard/import", data={
        "csrf_token": token, "action": "import",
        "file": (io.BytesIO(sheet.encode()), "families.csv")},
        content_type="multipart/form-data")
    assert res.status_code == 200 and "berhasil diimpor" in res.get_data(as_text=True)
    other = sheet.replace("Kenanga", "Kuripan")
    res = client.post("/dashboard/import", data={
        "csrf_token": token, "action": "import",
        "file": (io.BytesIO(other.encode()), "families.csv")},
        content_type="multipart/form-data")
    assert res.status_code == 422 and "line 2: village" in res.get_data(as_text=True)
    with session_scope(db) as session:
        assert session.exec(select(Village).where(Village.name == "Kuripan")).first() is None
    csv_res = client.get("/dashboard/export/families.csv")
    text = csv_res.get_data(as_text=True)
    assert csv_res.status_code == 200 and "Ani" in text and "Dimas" in text
    assert csv_res.headers["Content-Disposition"].startswith("attachment")
    assert client.get("/dashboard/export/fund-requests.csv").status_code == 200
    audit = client.get("/dashboard/audit").get_data(as_text=True)
    assert "families.import" in audit and "families.export" in audit


def test_everything_is_escaped(client: FlaskClient, darto: Demo, db: DbEngine) -> None:
    evil = '<script>alert("x")</script>'
    with session_scope(db) as session:
        m = session.get(Member, darto.ids["Dimas"])
        assert m is not None
        m.name = evil
        session.add(m)
        v = session.exec(select(Village)).one()
        v.name = "Kenanga <img src=x onerror=alert(1)>"
        session.add(v)
    token = login(client, "Darto")
    fid = family_id(db, darto)
    for path in ("/dashboard/", "/dashboard/families", f"/dashboard/families/{fid}",
                 "/dashboard/broadcasts"):
        body = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in body and "<img src=x" not in body, path
    # What PostgreSQL cannot store is refused at the door, not half-way through a query.
    assert client.get("/dashboard/families?q=a%00b").status_code == 400
    res = client.post(f"/dashboard/families/{fid}/members",
                      data={"csrf_token": token, "role": "child", "name": "A\x00"})
    assert res.status_code == 400


def test_language_switch(client: FlaskClient, darto: Demo) -> None:
    token = login(client, "Darto")
    assert "Keluarga" in client.get("/dashboard/families").get_data(as_text=True)
    client.post("/dashboard/language", data={"csrf_token": token, "lang": "en",
                                              "next": "/dashboard/families"})
    assert "Add a family" in client.get("/dashboard/families").get_data(as_text=True)
    client.post("/dashboard/language", data={"csrf_token": token, "lang": "jv"})
    assert "Tambah kulawarga" in client.get("/dashboard/families").get_data(as_text=True)


def test_district_coordinator_sees_the_district(client: FlaskClient, darto: Demo,
                                                make_family: Callable[..., Demo],
                                                db: DbEngine, clock: Clock) -> None:
    make_family(village="Juntikebon")
    add_coordinator(db, clock, "Pak Kabupaten", "Dinas Indramayu", level="district")
    login(client, "Pak Kabupaten")
    body = client.get("/dashboard/families").get_data(as_text=True)
    assert "Kenanga" in body and "Juntikebon" in body
    assert "petugas kabupaten" in body


def test_secret_key_is_generated_beside_sqlite(config: Config, db: DbEngine, engine: Engine,
                                               tmp_path: Path) -> None:
    if not config.database.url.startswith("sqlite"):
        config.server.secret_key = ""
        app = create_app(config, db=db, engine=engine)
        res = app.test_client().get("/dashboard/login")
        assert res.status_code == 503 and "secret_key" in res.get_data(as_text=True)
        return
    config.server.secret_key = ""
    first = create_app(config, db=db, engine=engine)
    path = Path(config.database.url[len("sqlite:///"):]).parent / "secret_key"
    assert path.exists() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = create_app(config, db=db, engine=engine)
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert first.test_client().get("/dashboard/login").status_code == 200


def test_secure_cookie_behind_https(config: Config, db: DbEngine, engine: Engine) -> None:
    config.server.secret_key = "k" * 32
    config.server.public_url = "https://bot.example.org"
    app = create_app(config, db=db, engine=engine)
    res = app.test_client().get("/dashboard/login")
    assert "Secure" in res.headers["Set-Cookie"]
