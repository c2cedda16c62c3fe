"""The dashboard in a real browser: Playwright driving Debian's Chromium, headless.

A real HTTP server (werkzeug, in a thread) serves the app on a temporary SQLite database,
and a real sender delivers through the simulator channel, so an announcement's progress
moves on the page. No browser is downloaded: the test uses /usr/bin/chromium (installed
by `.ci/run` with apt) and skips with the reason when it is missing, except in CI where
that fails. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from bot.app import create_app
from bot.channels.simulator import SimulatorChannel, address_for
from bot.config import load_config
from bot.engine import Engine
from bot.sender import Sender
from bot.web.passwords import hash_password
from storage.db import make_engine, session_scope
from storage.models import Alert, FundRequest, Member, Outbox, Relay
from storage.repo import (
    FamilySpec,
    MemberSpec,
    create_coordinator,
    create_family,
    link_identity,
)

CHROMIUM = os.environ.get("DESMIGRATIF_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "rahasia desa 2026"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-sync"]


def _require_browser() -> Any:
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
        sync_playwright = None  # type: ignore[assignment]
    if missing is None and not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need a browser in CI: {missing}")
        pytest.skip(missing)
    return sync_playwright


@dataclass
class Site:
    """The running server, its database, and the ids the tests use."""

    url: str
    db: Any
    fund_ids: list[int]


def _seed(db: Any, now: datetime) -> list[int]:
    """Three villages of one district, a dozen families, months of activity."""
    rng = random.Random(7)
    fund_ids: list[int] = []
    with session_scope(db) as session:
        families = []
        for i, village in enumerate(["Kenanga"] * 6 + ["Juntikebon"] * 4 + ["Tulungagung"] * 3):
            spec = FamilySpec(
                village=village, district="Indramayu", language=("id", "jv")[i % 2],
                members=[MemberSpec(role="child", name=("Dimas", "Ayu", "Bagus", "Sari",
                                                        "Tono", "Lestari")[i % 6],
                                    birth_year=2011 + i % 5),
                         MemberSpec(role="carer", name=("Mbah Warsini", "Bu Lastri",
                                                        "Mbok Sri")[i % 3], birth_year=1958),
                         MemberSpec(role="parent", name=("Ibu Rina", "Pak Joko", "Ibu Tini",
                                                         "Pak Darmo")[i % 4],
                                    timezone=("Asia/Hong_Kong", "Asia/Taipei",
                                              "Asia/Kuala_Lumpur")[i % 3])],
                consent_given_by="Mbah Warsini" if i % 5 else None,
                consent_method="signed form" if i % 5 else None)
            fam, members = create_family(session, spec, now=now - timedelta(days=200),
                                         languages=["id", "en", "jv"])
            families.append((fam, members))
            for m in members:
                if m.role != "child" or i % 2:
                    link_identity(session, m, "simulator", address_for(m.id or 0), now=now)
            parent = members[2]
            if i % 3:
                parent.last_inbound_at = now - timedelta(days=rng.randint(0, 10))
                session.add(parent)
            for week in range(12):
                for _ in range(rng.randint(0, 2 + week // 3)):
                    at = now - timedelta(weeks=week, hours=rng.randint(0, 150))
                    session.add(Relay(family_id=fam.id or 0, from_role=rng.choice(
                        ["parent", "parent", "carer", "child"]), text="…", at=at))
        statuses = ["pending", "pledged", "approved", "paid", "rejected", "cancelled"]
        for k in range(30):
            fam, members = families[k % len(families)]
            status = "pending" if k < 3 else rng.choice(statuses)
            created = now - timedelta(days=rng.randint(0, 170)) if k >= 3 else now
            fr = FundRequest(family_id=fam.id or 0, village_id=fam.village_id,
                             requester_id=members[1].id, child_id=members[0].id,
                             purpose=rng.choice(["uniform", "books", "school_fees",
                                                 "transport"]),
                             amount=rng.choice([75_000, 150_000, 250_000, 400_000]),
                             status=status, created_at=created, updated_at=created)
            session.add(fr)
            session.flush()
            if k < 3:
                fund_ids.append(fr.id or 0)
        fam, members = families[1]
        session.add(Alert(village_id=fam.village_id, family_id=fam.id,
                          member_id=members[0].id, kind="sos", created_at=now))
        create_coordinator(session, name="Bu Kabupaten", village="Kenanga", now=now,
                           level="district", district="Indramayu",
                           password_hash=hash_password(PASSWORD))
    return fund_ids


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _require_browser()
    from werkzeug.serving import make_server

    from storage.db import upgrade

    folder = tmp_path_factory.mktemp("browser")
    config = load_config(env={})
    config.database.url = f"sqlite:///{folder / 'site.db'}"
    config.scheduler.quiet_hours_start = config.scheduler.quiet_hours_end = "00:00"
    config.telegram.bot_username = "desmigratif_bot"
    config.sender.poll_interval_s = 0.05
    db = make_engine(config.database.url)
    upgrade(db)
    fund_ids = _seed(db, datetime.now(UTC))
    app = create_app(config, db=db, engine=Engine(db, config))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    web = threading.Thread(target=server.serve_forever, daemon=True)
    web.start()
    sender = Sender(db, config, {"simulator": SimulatorChannel()})
    sending = threading.Thread(target=sender.run_forever, daemon=True)
    sending.start()
    try:
        yield Site(url=f"http://127.0.0.1:{server.server_port}", db=db, fund_ids=fund_ids)
    finally:
        sender.stop()
        server.shutdown()
        sending.join(timeout=5)
        db.dispose()


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="id-ID")
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    pg.on("dialog", lambda dialog: dialog.accept())  # the "are you sure?" prompts
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    _login(pg, site)
    yield pg
    context.close()
    assert not errors, errors  # no script errors, no CSP violations


def _login(pg: Any, site: Site) -> None:
    pg.goto(site.url + "/dashboard/")
    assert "/dashboard/login" in pg.url
    pg.fill("#username", "Bu Kabupaten")
    pg.fill("#password", PASSWORD)
    pg.click("button[type=submit]")
    pg.wait_for_url(site.url + "/dashboard/")


def _shot(pg: Any, name: str, **kw: Any) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    pg.screenshot(path=str(path), **kw)
    return path


def test_overview_and_charts(page: Any, site: Site) -> None:
    assert page.locator("h1").first.inner_text().startswith("Ringkasan")
    assert page.locator("svg.chart").count() == 3
    assert page.locator("#c-silent-t").count() == 1
    assert "Tulungagung" in page.locator("section[aria-labelledby=h-silent]").inner_text()
    _shot(page, "dashboard.png", full_page=True)
    page.locator("section[aria-labelledby=h-relays]").screenshot(
        path=str(ARTIFACTS / "chart-messages.png"))
    page.locator("section[aria-labelledby=h-funds]").screenshot(
        path=str(ARTIFACTS / "chart-funds.png"))
    # On a phone: no sideways scrolling of the page itself.
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 392, width
    _shot(page, "dashboard-phone.png", full_page=True)


def test_add_a_family(page: Any, site: Site) -> None:
    page.click("nav.main >> text=Keluarga")
    page.click("text=Tambah keluarga")
    page.select_option("#village_id", label="Juntikebon")
    page.fill("#m0_name", "Rahmat")
    page.fill("#m0_birth_year", "2012")
    page.select_option("#m1_role", "carer")
    page.fill("#m1_name", "Mbah Kasih")
    page.fill("#m1_whatsapp", "0812-9999-0001")
    page.select_option("#m2_role", "parent")
    page.fill("#m2_name", "Bu Wati")
    page.fill("#m2_timezone", "Asia/Taipei")
    page.fill("#consent_given_by", "Mbah Kasih")
    page.click("text=Daftarkan keluarga")
    page.wait_for_selector("text=Keluarga terdaftar")
    assert "Rahmat" in page.inner_text("main") and "Bu Wati" in page.inner_text("main")
    codes = page.locator("code.invite").all_inner_texts()
    assert len(codes) == 3 and all(len(c) == 6 for c in codes)
    link = page.locator("a", has_text="Tautan Telegram").first.get_attribute("href")
    assert link == f"https://t.me/desmigratif_bot?start={codes[0]}"
    _shot(page, "family.png", full_page=True)


def test_approve_a_fund_request(page: Any, site: Site) -> None:
    rid = site.fund_ids[0]
    page.click("nav.main >> text=Dana sekolah")
    card = page.locator(f"#request-{rid}")
    card.locator("button", has_text="Setujui").click()
    page.wait_for_selector(f"text=Permintaan #{rid} disetujui")
    assert page.locator(f"#request-{rid}").count() == 0  # it left the waiting queue
    with session_scope(site.db) as session:
        fr = session.get(FundRequest, rid)
        assert fr is not None and fr.status == "approved"
    other = site.fund_ids[1]
    card = page.locator(f"#request-{other}")
    card.locator("input[name=reason]").fill("Sudah ditanggung PIP")
    card.locator("button", has_text="Tolak").click()
    page.wait_for_selector(f"text=Permintaan #{other} ditolak")


def test_send_an_announcement_and_watch_it(page: Any, site: Site) -> None:
    page.click("nav.main >> text=Pengumuman")
    page.select_option("#village_id", label="Kenanga")
    page.fill("#text", "Posyandu hari Sabtu jam 08.00 di balai desa.")
    page.click("text=Terjemahan")
    page.fill("#tr_jv", "Posyandu dina Setu jam 08.00 ing bale desa.")
    page.click("button:has-text('Pratinjau')")
    page.wait_for_selector("text=Pratinjau: pengumuman untuk Kenanga")
    recipients = int(page.inner_text("[data-testid=preview-recipients]"))
    assert recipients > 5
    assert "Posyandu dina Setu" in page.inner_text("main")
    _shot(page, "announcement-preview.png", full_page=True)
    page.click("button:has-text('Kirim')")
    page.wait_for_selector("[data-progress-url]")
    # The real sender delivers through the simulator; the page follows without a reload.
    page.wait_for_selector("[data-progress-url][data-status=done]", timeout=20_000)
    assert page.inner_text("[data-field=status]") == "selesai"
    sent = int(page.inner_text("[data-field=sent]"))
    held = int(page.inner_text("[data-field=held]"))  # no chat linked yet: kept for later
    assert sent > 0 and sent + held == recipients
    assert page.evaluate("document.querySelector('progress').value") == recipients
    _shot(page, "announcement-progress.png", full_page=True)
    with session_scope(site.db) as session:  # each read it in their own language
        texts = {m.language: o.text for o, m in session.exec(
            select(Outbox, Member).join(Member, col(Member.id) == Outbox.member_id)
            .where(Outbox.kind == "broadcast", Outbox.status == "sent")).all()}
    assert texts["jv"].endswith("Posyandu dina Setu jam 08.00 ing bale desa.")
    assert texts["id"].endswith("Posyandu hari Sabtu jam 08.00 di balai desa.")
