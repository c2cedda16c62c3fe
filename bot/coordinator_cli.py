"""The coordinators' commands: ``broadcast``, ``import`` and ``export`` (see bot/cli.py).

Progress goes to stderr, results to stdout, and bad input ends in one ``CliError`` line.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sqlalchemy import func
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import Session, col, select

from bot.cli import CliError, _config, _db
from bot.config import Config
from bot.progress import ProgressBar
from storage.db import session_scope
from storage.models import Broadcast, Outbox, Village

ACTOR = "cli"


def _now() -> datetime:
    return datetime.now(UTC)


def _translations(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        lang, sep, text = item.partition("=")
        if not sep or not lang.strip():
            raise CliError(f"--translation: expected LANG=TEXT, got {item[:30]!r}")
        out[lang.strip()] = text
    return out


def broadcast(args: argparse.Namespace) -> int:
    """Create a broadcast to a village and send it to the end, with a progress bar."""
    from bot.broadcast import (
        BroadcastError,
        check_age_band,
        check_roles,
        check_text,
        check_translations,
        create_broadcast,
        parse_send_at,
        progress,
    )

    config = _config(args)
    engine = _db(config)
    now = _now()
    try:
        text = check_text(args.text, "--text", config)
        roles = check_roles(args.roles)
        age_band = check_age_band(args.age_band)
        translations = check_translations(_translations(args.translation), config)
    except BroadcastError as exc:
        raise CliError(str(exc).replace("roles:", "--roles:")) from exc
    with session_scope(engine) as session:
        village = session.exec(select(Village).where(Village.name == args.village)).first()
        if village is None:
            raise CliError(f"--village: no village named {args.village!r}")
        try:
            send_at = parse_send_at(args.send_at, village.timezone, now)
        except BroadcastError as exc:
            raise CliError(str(exc).replace("send_at:", "--send-at:")) from exc
        b = create_broadcast(session, village=village, text=text, now=now, config=config,
                             actor=ACTOR, roles=roles, age_band=age_band,
                             translations=translations, send_at=send_at)
        bid = b.id or 0
        p = progress(session, b, config)
    print(f"broadcast {bid} to {village.name}: {p['recipients']} recipients, "
          f"{p['opted_out']} opted out, {p['held']} without a linked chat; "
          f"about {p['eta_s']} s to send", file=sys.stderr)
    if p["status"] == "scheduled":
        print(f"broadcast {bid} scheduled for {p['send_at']}; the worker sends it then")
        return 0
    if args.no_wait:
        print(f"broadcast {bid} queued; the worker sends it")
        return 0
    summary = _send_with_progress(engine, config, bid)
    print(summary)
    return 0


def _send_with_progress(engine: DbEngine, config: Config, bid: int) -> str:
    """Run a sender until the broadcast's rows are settled or cannot go from here."""
    from bot.broadcast import progress
    from bot.channels import build_channels
    from bot.sender import Sender

    channels = build_channels(config)
    sender = Sender(engine, config, channels)
    with session_scope(engine) as session:
        b = session.get(Broadcast, bid)
        assert b is not None
        total = b.recipients
    bar = ProgressBar(f"broadcast {bid}", total)
    note = ""
    while True:
        sent_now = sender.run_once()
        with session_scope(engine) as session:
            b = session.get(Broadcast, bid)
            assert b is not None
            p = progress(session, b, config)
            extra = f"sent {p['sent']}  failed {p['failed']}  opted out {p['opted_out']}"
            bar.update(total - p["queued"], extra=extra)
            if p["queued"] == 0:
                break
            if sent_now == 0:
                note = _why_waiting(session, bid, list(channels))
                if note:
                    break
        if sent_now == 0:
            time.sleep(0.2)
    bar.finish(complete=not note)
    held = f", {p['held']} kept until they link a chat" if p["held"] else ""
    return (f"broadcast {bid}: {p['status']}; sent {p['sent']}, failed {p['failed']}, "
            f"opted out {p['opted_out']}{held}{note}")


def _why_waiting(s: Session, bid: int, channels: list[str]) -> str:
    """Explain queued rows this process cannot send now (quiet hours, other channels)."""
    now = _now()
    base = [col(Outbox.broadcast_id) == bid, col(Outbox.status) == "queued"]
    ready = s.exec(select(func.count()).select_from(Outbox).where(
        *base, col(Outbox.channel).in_(channels), col(Outbox.next_attempt_at) <= now)).one()
    in_flight = s.exec(select(func.count()).select_from(Outbox).where(
        col(Outbox.broadcast_id) == bid, col(Outbox.status) == "sending")).one()
    if ready or in_flight:
        return ""
    later = s.exec(select(func.count()).select_from(Outbox).where(
        *base, col(Outbox.channel).in_(channels), col(Outbox.next_attempt_at) > now)).one()
    elsewhere = s.exec(select(Outbox.channel, func.count()).where(
        *base, col(Outbox.channel).not_in(channels)).group_by(col(Outbox.channel))).all()
    parts = []
    if later:
        parts.append(f"{later} wait for quiet hours or a retry (the worker sends them)")
    if elsewhere:
        names = ", ".join(f"{n} on {ch}" for ch, n in elsewhere)
        parts.append(f"{names}: that channel is not configured here")
    return "; " + "; ".join(parts) if parts else ""


def import_file(args: argparse.Namespace) -> int:
    """Import families from a CSV file with a progress bar; errors are listed by line."""
    from bot.importer import import_families

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from exc
    config = _config(args)
    engine = _db(config)
    bar = ProgressBar("import" + (" (dry run)" if args.dry_run else ""), 0)
    started = time.monotonic()
    with session_scope(engine) as session:
        report = import_families(session, data, now=_now(), config=config, actor=ACTOR,
                                 dry_run=args.dry_run,
                                 progress=lambda done, total: bar.update(done, total))
    if report.errors:
        for error in report.errors:
            print(error)
        first = report.errors[0]
        raise CliError(f"{len(report.errors)} error(s) in {path.name}, nothing imported "
                       f"(first: {first})")
    bar.finish()
    took = f"{time.monotonic() - started:.1f} s"
    if args.dry_run:
        print(f"dry run: {report.families} families ({report.members} members) would be "
              f"imported; no errors ({took})")
    else:
        print(f"imported {report.families} families ({report.members} members) in {took}")
    return 0


def export(args: argparse.Namespace) -> int:
    """Write families or fund requests as CSV to a file or standard output."""
    from bot.csv_export import write_families, write_fund_requests
    from storage.models import FUND_STATUSES

    if args.status and (args.what != "fund-requests" or args.status not in FUND_STATUSES):
        raise CliError(f"--status: expected one of {', '.join(FUND_STATUSES)} "
                       "(fund requests only)")
    config = _config(args)
    engine = _db(config)
    out: TextIO
    with session_scope(engine) as session:
        query = select(Village.id)
        if args.village:
            query = query.where(Village.name == args.village)
        ids = [i for i in session.exec(query).all() if i is not None]
        if args.village and not ids:
            raise CliError(f"--village: no village named {args.village!r}")
        try:
            out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
        except OSError as exc:
            raise CliError(f"--out: {exc.strerror or exc}") from exc
        try:
            if args.what == "families":
                n = write_families(session, ids, out)
            else:
                n = write_fund_requests(session, ids, out, status=args.status)
        finally:
            if out is not sys.stdout:
                out.close()
    if args.out:
        print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    return 0
