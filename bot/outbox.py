"""Turn handlers' Outbound messages into outbox rows, rendered for each recipient.

Runs inside the caller's transaction: the rows commit with the state change that
produced them, or not at all. Rendering happens here, where the recipient is known, so a
message reaches each person in their own language on their own channel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.config import Config
from bot.i18n import translator
from bot.messages import Outbound
from storage.models import ChannelIdentity, Member, Outbox

# Kinds a member asked for: they still arrive after STOP. Everything else is skipped.
ASKED_FOR = frozenset({"reply", "alert", "status"})
PRIORITY = {"reply": 0, "alert": 0, "status": 1, "relay": 2, "notice": 3, "reminder": 5,
            "nudge": 5, "tip": 6, "broadcast": 8}


def preferred_identity(session: Session, member_id: int) -> ChannelIdentity | None:
    """Return the channel to reach a member on: the one they last wrote from."""
    rows = session.exec(
        select(ChannelIdentity).where(ChannelIdentity.member_id == member_id,
                                      col(ChannelIdentity.reachable).is_(True))
    ).all()
    if not rows:
        return None
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return max(rows, key=lambda r: (_aware(r.last_inbound_at) if r.last_inbound_at else epoch,
                                    r.id or 0))


def _parse_hhmm(value: str) -> time:
    hh, mm = value.split(":")
    return time(int(hh), int(mm))


def quiet_until(tz_name: str, now: datetime, config: Config) -> datetime | None:
    """Return when quiet hours end for someone in tz_name, or None if it is not quiet now."""
    start = _parse_hhmm(config.scheduler.quiet_hours_start)
    end = _parse_hhmm(config.scheduler.quiet_hours_end)
    if start == end:
        return None
    try:
        zone = ZoneInfo(tz_name)
    except Exception:
        zone = ZoneInfo(config.bot.default_timezone)
    local = now.astimezone(zone)
    t_now = local.time()
    quiet = (start <= t_now or t_now < end) if start > end else (start <= t_now < end)
    if not quiet:
        return None
    day = local.date() if t_now < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=zone).astimezone(UTC)


def queue_messages(session: Session, items: Sequence[Outbound], *, now: datetime,
                   config: Config, identities: dict[int | None, ChannelIdentity] | None = None
                   ) -> list[Outbox]:
    """Render and add outbox rows for the messages; return the rows added.

    ``identities`` maps member ids to the chat to use, when the caller knows it (a reply
    goes to the chat the person just wrote from).
    """
    rows: list[Outbox] = []
    for item in items:
        row = _row_for(session, item, now, config, identities or {})
        if row is None:
            continue
        if row.idempotency_key:
            # Two schedulers may race for the same occurrence: the unique key decides.
            try:
                with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                continue
        else:
            session.add(row)
        rows.append(row)
    if rows:
        session.flush()
    return rows


def _row_for(session: Session, item: Outbound, now: datetime, config: Config,
             identities: dict[int | None, ChannelIdentity]) -> Outbox | None:
    priority = 0 if item.urgent else PRIORITY.get(item.kind, 5)
    if item.member_id is None:
        if not (item.channel and item.address):
            return None
        text = translator(config.bot.default_language).render_all(item.parts, item.sep)
        return Outbox(channel=item.channel, address=item.address, kind=item.kind,
                      priority=priority, text=text, next_attempt_at=now, created_at=now,
                      idempotency_key=item.idempotency_key, broadcast_id=item.broadcast_id)
    member = session.get(Member, item.member_id)
    if member is None:
        return None
    if member.opted_out and item.kind not in ASKED_FOR:
        return None
    text = translator(member.language).render_all(item.parts, item.sep)
    identity = identities.get(item.member_id) or preferred_identity(session, item.member_id)
    due = now
    if not item.urgent:
        due = quiet_until(member.timezone, now, config) or now
    row = Outbox(member_id=member.id, channel=identity.channel if identity else "",
                 address=identity.address if identity else "", kind=item.kind,
                 priority=priority, text=text, template=item.template,
                 template_vars=json.dumps(item.template_vars) if item.template_vars else None,
                 next_attempt_at=due, idempotency_key=item.idempotency_key,
                 broadcast_id=item.broadcast_id, created_at=now,
                 # Nobody to deliver to yet: keep it until the member links a chat.
                 status="queued" if identity else "held",
                 error=None if identity else "no linked chat yet")
    return row


def release_held(session: Session, member_id: int, identity: ChannelIdentity,
                 now: datetime) -> int:
    """Send a member's held messages to the chat they now use; return how many."""
    held = session.exec(
        select(Outbox).where(Outbox.member_id == member_id, Outbox.status == "held")
        .order_by(col(Outbox.id))
    ).all()
    for row in held:
        row.status, row.channel, row.address = "queued", identity.channel, identity.address
        row.next_attempt_at, row.error = now, None
        session.add(row)
    return len(held)


def cancel_unasked(session: Session, member_id: int, now: datetime) -> int:
    """Cancel a member's queued messages they did not ask for (after STOP)."""
    rows = session.exec(
        select(Outbox).where(Outbox.member_id == member_id,
                             or_(col(Outbox.status) == "queued", col(Outbox.status) == "held"),
                             col(Outbox.kind).not_in(list(ASKED_FOR)))
    ).all()
    for row in rows:
        row.status, row.error, row.sent_at = "cancelled", "member opted out", now
        session.add(row)
    return len(rows)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
