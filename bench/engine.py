"""Benchmark: inbound messages per second through the engine, against a bare SQL loop.

The engine does parse → route → state → outbox rows, one transaction per message, on
SQLite (WAL, synchronous=NORMAL). The baseline, measured in the same run on the same
kind of file, writes the same rows (the inbound record, the identity's and member's
last-seen times, one outbox row) with plain sqlite3 and one commit per message: the
unavoidable cost. The last line is one JSON object.

    python bench/engine.py [--messages N]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

import handlers  # noqa: E402,F401
from bot.channels.simulator import address_for  # noqa: E402
from bot.config import load_config  # noqa: E402
from bot.engine import Engine  # noqa: E402
from bot.messages import Inbound  # noqa: E402
from storage.db import make_engine, session_scope, upgrade  # noqa: E402
from storage.repo import FamilySpec, MemberSpec, create_family, link_identity  # noqa: E402

TEXTS = ["MENU", "BAHASA id", "apa kabar", "BATAL", "help"]


def _family(path: Path, languages: list[str]) -> tuple[Any, list[int], datetime]:
    """Migrate a new database file with one family of ten linked carers."""
    db = make_engine(f"sqlite:///{path}")
    upgrade(db)
    now = datetime.now(UTC)
    with session_scope(db) as session:
        _f, members = create_family(session, FamilySpec(
            village="Bench", members=[MemberSpec(role="carer", name=f"C{i}") for i in range(10)],
            consent_given_by="C0", consent_method="signed form"), now=now,
            languages=languages)
        ids = [m.id or 0 for m in members]
        for m in members:
            link_identity(session, m, "simulator", address_for(m.id or 0), now=now)
    return db, ids, now


def bench_engine(path: Path, n: int) -> float:
    """Return messages per second through the engine."""
    cfg = load_config(env={})
    cfg.database.url = f"sqlite:///{path}"
    db, ids, now = _family(path, cfg.bot.languages)
    engine = Engine(db, cfg)
    for i, mid in enumerate(ids):  # warm-up: the first-contact notice, caches
        engine.handle(Inbound("simulator", address_for(mid), "MENU", f"w{i}", now))
    start = time.perf_counter()
    for i in range(n):
        mid = ids[i % len(ids)]
        engine.handle(Inbound("simulator", address_for(mid), TEXTS[i % len(TEXTS)],
                              uuid.uuid4().hex, now))
    elapsed = time.perf_counter() - start
    db.dispose()
    return n / elapsed


_LOOKUP = ("SELECT channelidentity.id, member.id FROM channelidentity JOIN member ON "
           "member.id = channelidentity.member_id LEFT JOIN family ON family.id = "
           "member.family_id LEFT JOIN conversationstate ON conversationstate.member_id = "
           "member.id WHERE channelidentity.channel = 'simulator' AND "
           "channelidentity.address = ?")
_INBOUND = ("INSERT INTO inboundlog (channel, external_id, member_id, kind, outcome, "
            "received_at) VALUES ('simulator', ?, NULL, 'text', '', ?)")
_OUTBOX = ("INSERT INTO outbox (member_id, channel, address, kind, priority, text, "
           "template, template_vars, status, attempts, next_attempt_at, idempotency_key, "
           "external_id, error, broadcast_id, claimed_by, claimed_until, created_at, "
           "sent_at) VALUES (?, 'simulator', ?, 'reply', 0, ?, NULL, NULL, 'queued', 0, ?, "
           "NULL, NULL, NULL, NULL, NULL, NULL, ?, NULL)")


def bench_bare(path: Path, n: int) -> float:
    """Return messages per second writing the same rows with plain SQL.

    Same file settings (WAL, synchronous=NORMAL, foreign keys), same tables and indexes
    (the real schema, migrated before timing), same rows: the inbound record, the sender
    lookup, both last-seen times, one outbox row with every column the engine fills.
    """
    setup, ids, now = _family(path, ["id"])
    setup.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   "busy_timeout=30000"):
        conn.execute(f"PRAGMA {pragma}")
    stamp = now.isoformat(sep=" ")
    start = time.perf_counter()
    for i in range(n):
        address = address_for(ids[i % len(ids)])
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_INBOUND, (uuid.uuid4().hex, stamp))
        identity_id, member_id = conn.execute(_LOOKUP, (address,)).fetchone()
        conn.execute("UPDATE channelidentity SET last_inbound_at=? WHERE id=?",
                     (stamp, identity_id))
        conn.execute("UPDATE member SET last_inbound_at=? WHERE id=?", (stamp, member_id))
        conn.execute(_OUTBOX, (member_id, address, "x" * 200, stamp, stamp))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def bench_core(path: Path, n: int) -> float:
    """Return messages per second writing the same rows through SQLAlchemy Core.

    The same statements as the bare loop, on the project's own engine (its connection
    pool, its BEGIN IMMEDIATE, one transaction per message), with no ORM and no
    conversation: what the fixed stack costs before the engine does anything.
    """
    db, ids, now = _family(path, ["id"])
    stamp = now.isoformat(sep=" ")
    lookup = text(_LOOKUP.replace("?", ":address"))
    inbound = text(_INBOUND.replace("?, NULL", ":xid, NULL").replace("'', ?", "'', :at"))
    touch_identity = text("UPDATE channelidentity SET last_inbound_at=:at WHERE id=:iid")
    touch_member = text("UPDATE member SET last_inbound_at=:at WHERE id=:mid")
    outbox = text(_OUTBOX.replace("(?, 'simulator', ?, 'reply', 0, ?,", "(:mid, 'simulator', "
                                  ":address, 'reply', 0, :text,")
                  .replace("'queued', 0, ?,", "'queued', 0, :at,")
                  .replace("NULL, ?, NULL)", "NULL, :at, NULL)"))
    start = time.perf_counter()
    for i in range(n):
        address = address_for(ids[i % len(ids)])
        with db.begin() as conn:
            conn.execute(inbound, {"xid": uuid.uuid4().hex, "at": stamp})
            identity_id, member_id = conn.execute(lookup, {"address": address}).one()
            conn.execute(touch_identity, {"at": stamp, "iid": identity_id})
            conn.execute(touch_member, {"at": stamp, "mid": member_id})
            conn.execute(outbox, {"mid": member_id, "address": address, "text": "x" * 200,
                                  "at": stamp})
    elapsed = time.perf_counter() - start
    db.dispose()
    return n / elapsed


def main() -> None:
    """Run both loops and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bare = bench_bare(Path(tmp) / "bare.db", args.messages)
        core = bench_core(Path(tmp) / "core.db", args.messages)
        engine = bench_engine(Path(tmp) / "engine.db", args.messages)
    ratio = engine / bare
    print(f"engine: {engine:8.0f} messages/s (parse, route, state, outbox; 1 commit each)")
    print(f"bare:   {bare:8.0f} messages/s (same rows, plain SQL)")
    print(f"core:   {core:8.0f} messages/s (same rows, same statements, SQLAlchemy Core: "
          f"{core / bare:.2f} of bare)")
    print(f"ratio:  {ratio:8.2f} (target >= 0.33; engine target >= 1000/s); "
          f"engine / core {engine / core:.2f}")
    print(json.dumps({"engine_msgs_per_s": round(engine, 1), "bare_msgs_per_s": round(bare, 1),
                      "core_msgs_per_s": round(core, 1), "ratio": round(ratio, 3),
                      "engine_core_ratio": round(engine / core, 3)}))


if __name__ == "__main__":
    main()
