"""Coordinators' bulk work on SQLite: a 100,000-recipient broadcast and a 10,000-row import.

    .venv/bin/python bench/coordinators.py [--recipients N] [--rows N] [--url URL]

Prints seconds for each; the budgets are 5 s for the broadcast's fan-out into the outbox
and 30 s for the import (with its progress bar, which this leaves out).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, text

from bot.broadcast import create_broadcast
from bot.config import load_config
from bot.importer import import_families
from storage.db import make_engine, session_scope, upgrade
from storage.models import ChannelIdentity, Family, Member, Village


def fan_out(url: str, n: int) -> float:
    """Queue a broadcast to n members of one village; return the seconds it took."""
    config = load_config(env={})
    config.database.url = url
    db = make_engine(url)
    upgrade(db)
    now = datetime.now(UTC)
    with session_scope(db) as session:
        village = Village(name="Bench", district="Indramayu", created_at=now)
        session.add(village)
        session.flush()
        vid = village.id
        session.execute(insert(Family), [{"village_id": vid, "language": "id",
                                          "consent_status": "given", "created_at": now}
                                         for _ in range(max(1, n // 4))])
        fids = [r[0] for r in session.execute(text("SELECT id FROM family")).all()]
        session.execute(insert(Member), [{
            "family_id": fids[i % len(fids)], "village_id": vid,
            "role": ("carer", "parent")[i % 2], "name": f"M{i}",
            "language": ("id", "en", "jv")[i % 3],
            "timezone": ("Asia/Jakarta", "Asia/Hong_Kong")[i % 2], "opted_out": i % 50 == 0,
            "tips_opt_in": True, "welcomed": True, "created_at": now} for i in range(n)])
        mids = [r[0] for r in session.execute(text("SELECT id FROM member")).all()]
        session.execute(insert(ChannelIdentity), [{
            "member_id": m, "channel": ("telegram", "whatsapp")[m % 2],
            "address": str(10_000 + m) if m % 2 == 0 else f"whatsapp:+62812{m:08d}",
            "reachable": True, "created_at": now} for m in mids])
    started = time.perf_counter()
    with session_scope(db) as session:
        v = session.get(Village, vid)
        assert v is not None
        create_broadcast(session, village=v, text="Posyandu hari Sabtu", now=now,
                         config=config, actor="bench",
                         translations={"en": "Health post on Saturday", "jv": "Posyandu Setu"})
    took = time.perf_counter() - started
    db.dispose()
    return took


def sheet(rows: int) -> str:
    """Return a CSV of families of four, as coordinators keep them."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["family_ref", "village", "district", "role", "name", "birth_year", "whatsapp",
                "timezone", "consent_given_by"])
    for i in range(rows):
        fam = i // 4
        role, name, year = (("child", "Anak", "2012"), ("child", "Adik", "2019"),
                            ("carer", "Nenek", "1958"), ("parent", "Ibu", ""))[i % 4]
        w.writerow([f"F{fam}", f"Desa {fam % 20}", "Indramayu", role, f"{name} {fam}", year,
                    f"+62813{i:08d}" if role != "child" else "",
                    "Asia/Hong_Kong" if role == "parent" else "",
                    f"Nenek {fam}" if fam % 2 else ""])
    return out.getvalue()


def import_rows(url: str, rows: int) -> float:
    """Import a sheet of that many rows; return the seconds it took."""
    config = load_config(env={})
    db = make_engine(url)
    upgrade(db)
    data = sheet(rows).encode()
    started = time.perf_counter()
    with session_scope(db) as session:
        report = import_families(session, data, now=datetime.now(UTC), config=config,
                                 actor="bench")
    took = time.perf_counter() - started
    assert report.ok, report.errors[:3]
    db.dispose()
    return took


def main() -> None:
    """Run both measurements on fresh databases and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--url", help="a database URL (default: temporary SQLite files)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url_a = args.url or f"sqlite:///{Path(tmp) / 'a.db'}"
        url_b = args.url or f"sqlite:///{Path(tmp) / 'b.db'}"
        fan = fan_out(url_a, args.recipients)
        print(f"broadcast: {args.recipients} recipients queued in {fan:.2f} s "
              f"({args.recipients / fan:,.0f}/s; budget 5 s)")
        imp = import_rows(url_b, args.rows)
        print(f"import: {args.rows} rows in {imp:.2f} s ({args.rows / imp:,.0f} rows/s; "
              "budget 30 s)")
    print(json.dumps({"queue_100k_s": round(fan, 3), "broadcast_recipients": args.recipients,
                      "import_10k_s": round(imp, 3), "import_rows": args.rows}))


if __name__ == "__main__":
    main()
