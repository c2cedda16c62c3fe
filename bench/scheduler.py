"""Benchmark: find and queue everyone due at one instant, and the memory it takes.

Two populations, each at 10,000 and 100,000 members on SQLite (and 1,000,000 on
PostgreSQL when a server answers at 127.0.0.1:5432, or $DESMIGRATIF_BENCH_POSTGRES_URL):

- **villages** (the figure in the JSON line): families of four, a parent abroad, a carer
  at home and two children. Parents live where DOMAIN.md says they work: 70 % in UTC+8
  (Taiwan, Malaysia, Hong Kong, Singapore), 12 % in UTC+9, 10 % in Saudi Arabia, 5 % in
  Italy, 3 % in the Gulf; carers in WIB or WITA. The instant is the busiest of the week,
  Sunday 19:00 UTC+8 (11:00 UTC): the check-in is due for every UTC+8 parent (about 17.5 %
  of all members), nobody else's reminder is. Most members are not due, so this shows
  that the cost follows the people due, not the members.
- **everyone due** (worst case): every member a parent in UTC+8, all due at that instant.

Chats and languages are mixed as in the field (WhatsApp outside its 24-hour window, so
the approved template; Telegram; id, jv, en). Everything goes through the real code path
(``run_due``) with the parents' check-in kind alone registered:

- first run: the schedule rows are created (INSERT ... SELECT) and each first occurrence
  computed in the member's own zone (a one-off after members are added);
- **due scan**, the timed figure: claim the due rows in batches, build and render each
  check-in, insert the outbox rows and move each row to next week;
- the same instant again (nothing queued twice) and an instant when nobody is due;
- peak memory (tracemalloc, Python heap) of a due scan, in a separate run a week later so
  that tracing does not slow the timed one.

The last line is one JSON object. Usage: python bench/scheduler.py [--no-postgres]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import socket
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlmodel import col  # noqa: E402

import handlers  # noqa: E402,F401
from bot import scheduler  # noqa: E402
from bot.config import Config, load_config  # noqa: E402
from storage.db import make_engine, session_scope, upgrade  # noqa: E402
from storage.models import ChannelIdentity, Member, Outbox, Village  # noqa: E402

# (zone, weight) of parents abroad; UTC+8 first.
PARENT_ZONES = [("Asia/Taipei", 30), ("Asia/Kuala_Lumpur", 20), ("Asia/Hong_Kong", 15),
                ("Asia/Singapore", 5), ("Asia/Seoul", 7), ("Asia/Tokyo", 5), ("Asia/Riyadh", 10),
                ("Europe/Rome", 5), ("Asia/Dubai", 3)]
UTC8 = {"Asia/Taipei", "Asia/Kuala_Lumpur", "Asia/Hong_Kong", "Asia/Singapore"}
_CYCLE = [zone for zone, weight in PARENT_ZONES for _ in range(weight)]  # 100 entries
LANGS = ["id", "id", "jv", "en"]
SATURDAY = datetime(2026, 3, 21, tzinfo=UTC)
SUNDAY_19_UTC8 = datetime(2026, 3, 22, 11, tzinfo=UTC)
CHUNK = 20_000
REPEAT = 3


def person(i: int, population: str) -> tuple[str, str, str | None]:
    """Return (role, zone, chat channel or None) of member number i."""
    if population == "everyone":
        return "parent", ("Asia/Taipei", "Asia/Hong_Kong", "Asia/Kuala_Lumpur",
                          "Asia/Singapore")[i % 4], "whatsapp" if i % 5 < 3 else "telegram"
    family, place = divmod(i, 4)
    if place == 0:
        return ("parent", _CYCLE[(family * 37) % 100],
                "whatsapp" if family % 10 < 7 else "telegram")
    if place == 1:
        return "carer", "Asia/Makassar" if family % 10 < 3 else "Asia/Jakarta", "whatsapp"
    return "child", "Asia/Jakarta", "telegram" if place == 2 else None


def _config(url: str) -> Config:
    cfg = load_config(env={})
    cfg.database.url = url
    cfg.twilio.templates = {"reminder": "HXbenchreminder"}
    return cfg


def _only_checkin() -> None:
    """Keep the parents' check-in alone: the figure is about the scheduler, not the others."""
    kind = scheduler.REMINDER_KINDS["parent_checkin"]
    scheduler.REMINDER_KINDS.clear()
    scheduler.REMINDER_KINDS[kind.name] = kind
    scheduler.PERIODIC_JOBS.clear()


def populate(db: Engine, n: int, population: str) -> int:
    """Insert n members with their chats, in bulk; return how many are due on Sunday."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(db) as session:
        village = Village(name="Bench", created_at=now)
        session.add(village)
        session.flush()
        village_id = village.id
    due = 0
    start = 0
    while start < n:
        stop = min(n, start + CHUNK)
        people = [person(i, population) for i in range(start, stop)]
        due += sum(1 for role, zone, _ in people if role == "parent" and zone in UTC8)
        with session_scope(db) as session:
            session.execute(insert(Member), [
                {"village_id": village_id, "role": role, "name": f"Member {start + j}",
                 "language": LANGS[(start + j) % 4], "timezone": zone, "opted_out": False,
                 "tips_opt_in": True, "welcomed": True, "created_at": now}
                for j, (role, zone, _chat) in enumerate(people)])
            first = session.execute(select(func.min(Member.id)).where(
                Member.name == f"Member {start}")).scalar_one()
            session.execute(insert(ChannelIdentity), [
                {"member_id": first + j, "channel": chat,
                 "address": (f"whatsapp:+8869{start + j:08d}" if chat == "whatsapp"
                             else str(700_000_000 + start + j)),
                 "reachable": True, "created_at": now}
                for j, (_role, _zone, chat) in enumerate(people) if chat is not None])
        start = stop
    return due


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def peak_mb(fn: Callable[[], Any]) -> float:
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1e6


def bench(url: str, n: int, population: str, *, memory: bool = True) -> dict[str, float]:
    """Populate, then run the scheduler's instants; return the figures."""
    cfg = _config(url)
    db = make_engine(url)
    upgrade(db)
    t_pop, due = timed(lambda: populate(db, n, population))
    t_first, _ = timed(lambda: scheduler.run_due(db, cfg, SATURDAY))
    scans = []
    for week in range(REPEAT):  # best of REPEAT Sundays: the machine may be shared
        sunday = SUNDAY_19_UTC8 + timedelta(days=7 * week)
        scheduler.run_due(db, cfg, sunday - timedelta(hours=1))  # UTC+9's 19:00 first
        t_due, counts = timed(lambda sunday=sunday: scheduler.run_due(db, cfg, sunday))
        assert counts["parent_checkin"] == due, (counts, due)
        scans.append(t_due)
        if week == 0:
            t_again, again = timed(lambda: scheduler.run_due(db, cfg, SUNDAY_19_UTC8))
            assert again["parent_checkin"] == 0, again
            t_idle, _ = timed(lambda: scheduler.run_due(db, cfg, SUNDAY_19_UTC8
                                                        + timedelta(minutes=30)))
    mem = float("nan")
    if memory:
        sunday = SUNDAY_19_UTC8 + timedelta(days=7 * REPEAT)
        scheduler.run_due(db, cfg, sunday - timedelta(hours=1))
        mem = peak_mb(lambda: scheduler.run_due(db, cfg, sunday))
    with session_scope(db) as session:
        queued = session.execute(select(func.count()).select_from(Outbox)).scalar_one()
        templated = session.execute(select(func.count()).select_from(Outbox)
                                    .where(col(Outbox.template).is_not(None))).scalar_one()
    db.dispose()
    return {"members": n, "due": due, "populate_s": t_pop, "first_run_s": t_first,
            "due_scan_s": min(scans), "again_s": t_again, "idle_s": t_idle, "peak_mb": mem,
            "templated_share": templated / max(1, queued)}


def report(label: str, r: dict[str, float]) -> None:
    n, due = int(r["members"]), int(r["due"])
    print(f"{label}: {n:,} members, {due:,} due at Sunday 19:00 UTC+8")
    print(f"  due scan (find + queue {due:,}; best of {REPEAT}) {r['due_scan_s']:7.2f} s  "
          f"({due / r['due_scan_s']:,.0f} due members/s)")
    print(f"  first run (create + compute rows) {r['first_run_s']:.2f} s; same instant again "
          f"{r['again_s']:.3f} s; instant with nobody due {r['idle_s']:.3f} s")
    if r["peak_mb"] == r["peak_mb"]:
        print(f"  peak Python memory of a due scan {r['peak_mb']:.1f} MB")
    print(f"  ({r['templated_share']:.0%} of rows as WhatsApp template; populating took "
          f"{r['populate_s']:.1f} s)", flush=True)


def _postgres_url() -> str | None:
    url = os.environ.get("DESMIGRATIF_BENCH_POSTGRES_URL",
                         "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return url
    except OSError:
        return None


def bench_postgres(admin_url: str, n: int) -> dict[str, float]:
    """Run the village benchmark in a throwaway PostgreSQL database."""
    name = f"desmigratif_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(admin_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        return bench(admin_url.rsplit("/", 1)[0] + "/" + name, n, "villages", memory=False)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    """Run both populations at both sizes on SQLite, then PostgreSQL; print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--postgres-members", type=int, default=1_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    # Other zones' occurrences are skipped when the benchmark jumps a week: expected.
    logging.getLogger("bot.scheduler").setLevel(logging.ERROR)
    _only_checkin()
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for population in ("villages", "everyone"):
            for n in (args.small, args.members):
                results[population, n] = bench(f"sqlite:///{tmp}/{population}-{n}.db", n,
                                               population)
                report(f"SQLite, {population}", results[population, n])
    for population in ("villages", "everyone"):
        small, big = results[population, args.small], results[population, args.members]
        print(f"{population}, x{args.members / args.small:.0f} members: due scan "
              f"x{big['due_scan_s'] / small['due_scan_s']:.1f} (follows the people due), "
              f"nobody-due instant x{big['idle_s'] / small['idle_s']:.1f}, peak memory "
              f"x{big['peak_mb'] / small['peak_mb']:.2f} (flat: one batch at a time)")
    village, worst = results["villages", args.members], results["everyone", args.members]
    summary: dict[str, Any] = {
        "members": args.members, "due": int(village["due"]),
        "due_scan_s": round(village["due_scan_s"], 3),
        "peak_mb_10k": round(results["villages", args.small]["peak_mb"], 2),
        "peak_mb_100k": round(village["peak_mb"], 2),
        "all_due_scan_s": round(worst["due_scan_s"], 3),
        "all_due_peak_mb": round(worst["peak_mb"], 2)}
    pg = None if args.no_postgres else _postgres_url()
    if pg is not None:
        r = bench_postgres(pg, args.postgres_members)
        report("PostgreSQL, villages", r)
        summary |= {"postgres_members": args.postgres_members, "postgres_due": int(r["due"]),
                    "postgres_due_scan_s": round(r["due_scan_s"], 3)}
    else:
        print("PostgreSQL: no server answers on 127.0.0.1:5432; skipped")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
