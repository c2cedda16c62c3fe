"""Importing the coordinators' spreadsheet, exporting CSV, and the three CLI commands."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import col, select

from bot.config import Config
from bot.csv_export import write_families, write_fund_requests
from bot.importer import ImportScope, import_families
from storage.db import session_scope
from storage.models import (
    AuditLog,
    ChannelIdentity,
    Consent,
    Family,
    FundRequest,
    Member,
    Village,
)
from tests.conftest import NOW, Clock, Demo

ROOT = Path(__file__).resolve().parent.parent

GOOD = """family_ref,village,district,language,role,name,birth_year,whatsapp,telegram_chat_id,\
timezone,consent_given_by,consent_method
K1,Kenanga,Indramayu,id,child,Dimas,2012,,,,Mbah Warsini,signed form
K1,Kenanga,Indramayu,id,carer,Mbah Warsini,1958,0812-1111-0001,,,,
K1,Kenanga,Indramayu,id,parent,Rina,,+852 6123 4567,,Asia/Hong_Kong,,
K2,Kenanga,Indramayu,jv,carer,Mbok Sri,1960,,5550001,,,
K2,Kenanga,Indramayu,jv,parent,Joko,,,,Asia/Taipei,,
"""


def run_import(db: DbEngine, config: Config, data: str | bytes, **kw: object) -> object:
    with session_scope(db) as session:
        return import_families(session, data, now=NOW, config=config, actor="test", **kw)  # type: ignore[arg-type]


def counts(db: DbEngine) -> tuple[int, int]:
    with session_scope(db) as session:
        return (len(session.exec(select(Family.id)).all()),
                len(session.exec(select(Member.id)).all()))


def test_import_a_good_file(db: DbEngine, config: Config) -> None:
    report = run_import(db, config, GOOD)
    assert report.ok and (report.families, report.members, report.rows) == (2, 5, 5)  # type: ignore[attr-defined]
    with session_scope(db) as session:
        families = session.exec(select(Family).order_by(col(Family.id))).all()
        assert [f.consent_status for f in families] == ["given", "pending"]
        assert [f.language for f in families] == ["id", "jv"]
        consent = session.exec(select(Consent)).one()
        assert consent.given_by == "Mbah Warsini" and consent.method == "signed form"
        rina = session.exec(select(Member).where(Member.name == "Rina")).one()
        assert rina.timezone == "Asia/Hong_Kong" and rina.invite_code
        addresses = set(session.exec(select(ChannelIdentity.address)).all())
        assert addresses == {"whatsapp:+6281211110001", "whatsapp:+85261234567", "5550001"}
        actions = session.exec(select(AuditLog.action).where(AuditLog.actor == "test")).all()
        assert actions.count("family.create") == 2 and "families.import" in actions


def test_indonesian_headers_semicolons_and_bom(db: DbEngine, config: Config) -> None:
    sheet = ("\ufeffKeluarga;Desa;Kabupaten;Peran;Nama;Tahun Lahir;No WA\r\n"
             "A;Kuripan;Wonosobo;Anak;Ayu;2013;\r\n"
             "A;Kuripan;Wonosobo;Pengasuh;Bu Lastri;1970;'+6281299990000\r\n"
             "A;Kuripan;;Orang Tua;Pak Darmo;;\r\n"
             ";;;;;;\r\n")
    report = run_import(db, config, sheet.encode("utf-8"))
    assert report.ok, report.errors  # type: ignore[attr-defined]
    with session_scope(db) as session:
        roles = session.exec(select(Member.role).order_by(col(Member.id))).all()
        assert roles == ["child", "carer", "parent"]
        assert session.exec(select(Village.district)).one() == "Wonosobo"


def test_a_bad_row_imports_nothing_and_names_the_line(db: DbEngine, config: Config) -> None:
    bad = GOOD + ("K3,Kenanga,Indramayu,id,grandchild,Nobody,2010,,,,,\n"
                  "K3,Kenanga,Indramayu,fr,child,,1990,not-a-phone,12ab,Mars/Base,,\n"
                  "K1,Juntinyuat,Indramayu,id,child,Sari,2021,,,,,\n"
                  "K4,Kenanga,Indramayu,id,carer,Dup,1970,0812-1111-0001,,,,\n")
    report = run_import(db, config, bad)
    assert not report.ok  # type: ignore[attr-defined]
    text = "\n".join(str(e) for e in report.errors)  # type: ignore[attr-defined]
    assert "line 7: role: 'grandchild'" in text
    for part in ("line 8: name: required", "line 8: language: 'fr'", "line 8: birth_year",
                 "line 8: whatsapp", "line 8: telegram_chat_id", "line 8: timezone",
                 "line 9: village: 'Juntinyuat' differs from 'Kenanga'",
                 "line 10: whatsapp: also on line 3"):
        assert part in text, (part, text)
    assert [e.line for e in report.errors] == sorted(e.line for e in report.errors)  # type: ignore[attr-defined]
    assert counts(db) == (0, 0)


def test_layout_errors(db: DbEngine, config: Config) -> None:
    cases = [
        (b"", "line 1: the file is empty"),
        (b"name,role\nA,child\n", "missing column(s): family_ref, village"),
        (b"family_ref,village,role,name,name\n", "named twice: name"),
        (b"family_ref,village,role,name\n", "line 2: no rows"),
        ("family_ref,village,role,name\nA,Désa,child,Ana\n".encode("latin-1"),
         "line 2: the file is not UTF-8"),
        (b"family_ref,village,role,name\nA,V,child,Ana,extra\n", "line 2: 5 cells but 4"),
    ]
    for data, message in cases:
        report = run_import(db, config, data)
        assert any(message in str(e) for e in report.errors), (message, report.errors)  # type: ignore[attr-defined]
    assert counts(db) == (0, 0)


def test_numbers_already_registered(make_family: Callable[..., Demo], db: DbEngine,
                                    config: Config, clock: Clock) -> None:
    make_family()
    with session_scope(db) as session:
        rina = session.exec(select(Member).where(Member.name == "Rina")).one()
        session.add(ChannelIdentity(member_id=rina.id or 0, channel="whatsapp",
                                    address="whatsapp:+6281211110001", created_at=clock()))
    before = counts(db)
    report = run_import(db, config, GOOD)
    assert [str(e) for e in report.errors] == [  # type: ignore[attr-defined]
        "line 3: whatsapp: already registered to another member"]
    assert counts(db) == before


def test_dry_run_changes_nothing(db: DbEngine, config: Config) -> None:
    report = run_import(db, config, GOOD, dry_run=True)
    assert report.ok and report.dry_run and report.families == 2  # type: ignore[attr-defined]
    assert counts(db) == (0, 0)
    with session_scope(db) as session:
        assert session.exec(select(AuditLog)).all() == []


def test_a_coordinator_imports_into_their_villages_only(db: DbEngine, config: Config,
                                                        clock: Clock) -> None:
    with session_scope(db) as session:
        session.add(Village(name="Kenanga", district="Indramayu", created_at=clock()))
        session.add(Village(name="Kuripan", district="Wonosobo", created_at=clock()))
    with session_scope(db) as session:
        kenanga = session.exec(select(Village).where(Village.name == "Kenanga")).one()
        scope = ImportScope(frozenset({kenanga.id or 0}), None)
    other = GOOD.replace("K2,Kenanga,Indramayu", "K2,Kuripan,Wonosobo")
    report = run_import(db, config, other, scope=scope)
    assert [str(e) for e in report.errors] == [  # type: ignore[attr-defined]
        "line 5: village: 'Kuripan' is not one of your villages"]
    assert run_import(db, config, GOOD, scope=scope).ok  # type: ignore[attr-defined]
    # A district coordinator may add a new village of the district, not of another one.
    district = ImportScope(frozenset({kenanga.id or 0}), "Indramayu")
    new = GOOD.replace("Kenanga", "Juntikebon").replace("0812-1111-0001", "0812-1111-0009")
    new = new.replace("+852 6123 4567", "+852 6123 0000").replace("5550001", "5550009")
    assert run_import(db, config, new, scope=district).ok  # type: ignore[attr-defined]
    far = new.replace("Juntikebon,Indramayu", "Jauh,Cilacap")
    assert not run_import(db, config, far, scope=district).ok  # type: ignore[attr-defined]


def test_export_round_trips_and_guards_formulas(make_family: Callable[..., Demo],
                                                db: DbEngine, config: Config,
                                                clock: Clock) -> None:
    make_family(extra=[])
    with session_scope(db) as session:
        rina = session.exec(select(Member).where(Member.name == "Rina")).one()
        rina.name = "=HYPERLINK(\"http://x\")"
        session.add(rina)
        session.add(FundRequest(family_id=rina.family_id or 0, village_id=rina.village_id,
                                requester_id=rina.id, purpose="@SUM(1)", amount=150_000,
                                created_at=clock(), updated_at=clock()))
        session.add(ChannelIdentity(member_id=rina.id or 0, channel="whatsapp",
                                    address="whatsapp:+85261234567", created_at=clock()))
        ids = list(session.exec(select(Village.id)).all())
        out = io.StringIO()
        assert write_families(session, ids, out) == 4  # the coordinator is in no family
        funds = io.StringIO()
        assert write_fund_requests(session, ids, funds) == 1
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert {r["role"] for r in rows} == {"child", "carer", "parent"}
    rina_row = next(r for r in rows if r["role"] == "parent")
    assert rina_row["name"].startswith("'=") and rina_row["whatsapp"] == "+85261234567"
    assert rina_row["consent_given_by"] == "Warsini" and rina_row["invite_code"]
    fund = next(csv.DictReader(io.StringIO(funds.getvalue())))
    assert fund["purpose"] == "'@SUM(1)" and fund["amount"] == "150000"
    assert fund["currency"] == "IDR" and fund["requester"].startswith("'=")


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("DESMIGRATIF_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=full_env)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "sqlite:///var/t.db"\n')
    return path


def _sheet(n: int) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["family_ref", "village", "district", "role", "name", "birth_year", "whatsapp",
                "timezone", "consent_given_by"])
    for i in range(n):
        fam = i // 4
        role, name, year = (("child", "Anak", "2012"), ("child", "Adik", "2019"),
                            ("carer", "Nenek", "1958"), ("parent", "Ibu", ""))[i % 4]
        w.writerow([f"F{fam}", f"Desa {fam % 10}", "Indramayu", role, f"{name} {fam}", year,
                    f"+62812{i:08d}" if role != "child" else "",
                    "Asia/Hong_Kong" if role == "parent" else "",
                    f"Nenek {fam}" if fam % 2 else ""])
    return out.getvalue()


def test_cli_import_10k_rows_with_progress(conf: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "families.csv"
    sheet.write_text(_sheet(10_000))
    started = time.monotonic()
    res = _cli("import", str(sheet), "--config", str(conf), cwd=tmp_path)
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    assert "imported 2500 families (10000 members)" in res.stdout
    assert "100%" in res.stderr and "2500/2500" in res.stderr
    assert took < 30, f"10,000 rows took {took:.1f} s"
    Path("test-artifacts").mkdir(exist_ok=True)
    Path("test-artifacts/import-10k.txt").write_text(f"{took:.1f} s\n{res.stdout}")
    # Once more: every number is registered now, so nothing at all is imported again.
    again = _cli("import", str(sheet), "--config", str(conf), cwd=tmp_path)
    assert again.returncode == 2
    assert len(again.stderr.strip().splitlines()) <= 2  # the progress bar never started
    assert "nothing imported" in again.stderr and "line 4: whatsapp" in again.stdout


def test_cli_import_errors_and_dry_run(conf: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "f.csv"
    sheet.write_text(GOOD + "K3,Kenanga,Indramayu,id,uncle,X,,,,,,\n")
    res = _cli("import", str(sheet), "--dry-run", "--config", str(conf), cwd=tmp_path)
    assert res.returncode == 2
    assert "line 7: role: 'uncle'" in res.stdout
    assert res.stderr.strip().endswith("nothing imported (first: line 7: role: 'uncle' is not "
                                       "child, carer or parent (anak, pengasuh, orang tua))")
    sheet.write_text(GOOD)
    dry = _cli("import", str(sheet), "--dry-run", "--config", str(conf), cwd=tmp_path)
    assert dry.returncode == 0 and "dry run: 2 families (5 members)" in dry.stdout
    code, err = _in_process("import", str(tmp_path / "nope.csv"), "--config", str(conf))
    assert code == 2 and "nope.csv" in err
    real = _cli("--config", str(conf), "import", str(sheet), cwd=tmp_path)
    assert real.returncode == 0 and "imported 2 families" in real.stdout
    out = tmp_path / "out.csv"
    exported = _cli("export", "families", "--village", "Kenanga", "--out", str(out),
                    "--config", str(conf), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert len(list(csv.DictReader(out.open()))) == 5
    funds = _cli("export", "fund-requests", "--status", "pending", "--config", str(conf),
                 cwd=tmp_path)
    assert funds.returncode == 0 and funds.stdout.startswith("id,family_id,village,child")
    for bad in (["export", "families", "--village", "Atlantis"],
                ["export", "fund-requests", "--status", "lost"]):
        code, err = _in_process(*bad, "--config", str(conf))
        assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_cli_broadcast_sends_to_the_end(conf: Path, tmp_path: Path) -> None:
    # No quiet hours: the test must not depend on the time of day it runs at.
    conf.write_text(conf.read_text() + '[scheduler]\nquiet_hours_start = "00:00"\n'
                    'quiet_hours_end = "00:00"\n')
    assert _cli("demo", "--config", str(conf), cwd=tmp_path).returncode == 0
    res = _cli("broadcast", "--village", "Kenanga", "--text", "Posyandu Sabtu",
               "--translation", "en=Health post on Saturday", "--config", str(conf),
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "100%" in res.stderr
    assert res.stdout.strip().startswith("broadcast 1: done; sent 3, failed 0")
    roles = _cli("broadcast", "--village", "Kenanga", "--text", "x", "--roles", "parent",
                 "--config", str(conf), cwd=tmp_path)
    assert roles.returncode == 0 and "sent 1," in roles.stdout
    for bad in (["--village", "Kenanga", "--text", "x", "--send-at",
                 "2099-01-01T08:00:00+07:00"],
                ["--village", "Atlantis", "--text", "x"],
                ["--village", "Kenanga", "--text", " "],
                ["--village", "Kenanga", "--text", "x", "--roles", "uncle"],
                ["--village", "Kenanga", "--text", "x", "--translation", "fr=y"],
                ["--village", "Kenanga", "--text", "x", "--translation", "nolang"]):
        code, err = _in_process("broadcast", *bad, "--config", str(conf))
        assert code == 2, bad
        assert len(err.strip().splitlines()) == 1 and err.startswith("desmigratif: "), err


def _in_process(*args: str) -> tuple[int, str]:
    """Run the command line in this process (fast), returning its status and stderr."""
    from contextlib import redirect_stderr, redirect_stdout

    from bot.cli import main

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(list(args))
    return code, err.getvalue()
