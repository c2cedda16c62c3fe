"""Turn handlers' Outbound messages into outbox rows, rendered for each recipient.

Runs inside the caller's transaction: the rows commit with the state change that
produced them, or not at all. Rendering happens here, where the recipient is known, so a
message reaches each person in their own language on their own channel.

WhatsApp's 24-hour window is decided here too. WhatsApp lets a business send free text
only within 24 hours of the person's last message; after that only pre-approved
templates. A message for a WhatsApp member whose window is closed (at the moment it is
due, quiet hours included) goes out as the template configured for its kind
(``[twilio.templates]``, optionally per language: ``reminder.jv`` before ``reminder``);
where no template fits it goes to the member's Telegram chat if they have one, and
otherwise it is held, and one template nudge a day ("you have a message from your
family, reply BACA") tells the member to write. Their next message, whatever it says,
releases everything held for them (``release_held``, called by the engine).

::

    queue_messages ──window open / Telegram──▶ queued ──sender──▶ sent
          │                                      ▲  │
          │ window closed, no template           │  └─63016 (REST or status callback)─┐
          ▼                                      │                                    ▼
        held ◀───────────────────────────────────┼──────────────────────────────── held
          │  + one nudge a day (template)        │
          └──── the member writes (release_held) ┘
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, insert, or_
from sqlmodel import Session, col, select

from bot.channels.base import MAX_LENGTH
from bot.config import Config
from bot.i18n import N_, translator
from bot.messages import Outbound, Text
from storage.db import dialect_insert
from storage.models import ChannelIdentity, Member, Outbox

# Kinds a member asked for: they still arrive after STOP. Everything else is skipped.
ASKED_FOR = frozenset({"reply", "alert", "status"})
PRIORITY = {"reply": 0, "alert": 0, "status": 1, "relay": 2, "notice": 3, "reminder": 5,
            "nudge": 5, "tip": 6, "broadcast": 8}

WINDOW = timedelta(hours=24)
# A message due this close to the end of the window may reach Twilio after it closed.
WINDOW_MARGIN = timedelta(minutes=2)
WINDOW_ERROR = "outside the 24-hour window"
NO_CHAT_ERROR = "no linked chat yet"
# Shown in the simulator and dashboard for a nudge; the template registered at Twilio
# says the same (docs/platforms.md).
NUDGE_TEXT = N_("Hello {name}, you have a new message from your family. Reply READ to "
                "read it.")
# Channels whose messages are split to the platform's length when queued.
_SPLIT_CHANNELS = frozenset({"telegram", "whatsapp"})


def split_text(text: str, limit: int) -> list[str]:
    """Split a long message at word (or line) boundaries into pieces of at most limit."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = rest.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit  # one enormous word: cut it
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


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


def _zone(tz_name: str, config: Config) -> ZoneInfo:
    try:
        return ZoneInfo(tz_name)
    except Exception:
        return ZoneInfo(config.bot.default_timezone)


def quiet_until(tz_name: str, now: datetime, config: Config) -> datetime | None:
    """Return when quiet hours end for someone in tz_name, or None if it is not quiet now."""
    start = _parse_hhmm(config.scheduler.quiet_hours_start)
    end = _parse_hhmm(config.scheduler.quiet_hours_end)
    if start == end:
        return None
    zone = _zone(tz_name, config)
    local = now.astimezone(zone)
    t_now = local.time()
    quiet = (start <= t_now or t_now < end) if start > end else (start <= t_now < end)
    if not quiet:
        return None
    day = local.date() if t_now < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=zone).astimezone(UTC)


# --- the WhatsApp window ----------------------------------------------------------------


def window_open(identity: ChannelIdentity, at: datetime) -> bool:
    """Tell whether free text may reach this WhatsApp chat at `at` (24 h since they wrote)."""
    if identity.last_inbound_at is None:
        return False
    return _aware(identity.last_inbound_at) + WINDOW - WINDOW_MARGIN > at


def template_key(config: Config, kind: str | None, language: str) -> str | None:
    """Return the configured template key for a message kind in a language, or None."""
    if not kind:
        return None
    templates = config.twilio.templates
    for key in (f"{kind}.{language}", kind):
        if templates.get(key):
            return key
    return None


def first_name(member: Member) -> str:
    """Return the name a template greets the member with."""
    parts = (member.name or "").split()
    return parts[0] if parts else ""


def queue_nudge(session: Session, member: Member, address: str, now: datetime,
                config: Config) -> Queued | None:
    """Queue today's template nudge for a member with held messages (at most one a day)."""
    if member.opted_out or member.id is None:
        return None
    key = template_key(config, "nudge", member.language)
    if key is None:
        return None  # no approved nudge: the held messages wait until they write anyway
    day = now.astimezone(_zone(member.timezone, config)).date()
    name = first_name(member)
    values = _row(member_id=member.id, channel="whatsapp", address=address, kind="nudge",
                  priority=PRIORITY["nudge"],
                  text=translator(member.language).render(Text(NUDGE_TEXT, {"name": name})),
                  template=key, template_vars=json.dumps({"1": name}),
                  next_attempt_at=quiet_until(member.timezone, now, config) or now,
                  idempotency_key=f"nudge:{member.id}:{day.isoformat()}", created_at=now,
                  broadcast_id=None)
    rid = session.connection().execute(_insert_once(session), values).scalar()
    return None if rid is None else Queued(id=rid, **values)  # None: already nudged today


def hold_for_window(session: Session, row: Outbox, now: datetime, config: Config) -> None:
    """Hold a row WhatsApp refused outside the window (63016) and nudge its member."""
    row.claimed_by, row.claimed_until = None, None
    member = session.get(Member, row.member_id) if row.member_id else None
    if member is None or row.kind == "nudge":
        # Nobody to release it to later, or a template refused: nothing more to try.
        row.status, row.error, row.sent_at = "failed", WINDOW_ERROR, now
        session.add(row)
        return
    row.status, row.error, row.template = "held", WINDOW_ERROR, None
    session.add(row)
    queue_nudge(session, member, row.address, now, config)


# --- queueing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """One outbox row as it was written by ``queue_messages``."""

    id: int
    member_id: int | None
    channel: str
    address: str
    kind: str
    priority: int
    text: str
    template: str | None
    template_vars: str | None
    status: str
    error: str | None
    next_attempt_at: datetime
    idempotency_key: str | None
    broadcast_id: int | None
    created_at: datetime


# Every row carries the same columns (see _row), so each statement compiles once.
_INSERT = insert(Outbox).returning(col(Outbox.id))


def _insert_once(session: Session) -> Any:
    """Return an INSERT that skips a row whose idempotency key is already there."""
    return (dialect_insert(session, Outbox.__table__)  # type: ignore[attr-defined]
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(col(Outbox.id)))


def queue_messages(session: Session, items: Sequence[Outbound], *, now: datetime,
                   config: Config, identities: dict[int | None, ChannelIdentity] | None = None
                   ) -> list[Queued]:
    """Render and insert outbox rows for the messages; return the rows written.

    ``identities`` maps member ids to the chat to use, when the caller knows it (a reply
    goes to the chat the person just wrote from). A text longer than its platform allows
    becomes several rows, split at word boundaries, sent in order. A message whose
    idempotency key is already in the outbox is skipped (two schedulers raced for it).
    """
    # Written with Core INSERTs, not ORM objects: this runs for every message the bot
    # sends, and the unit of work cost more than the writes. Rows staged through the ORM
    # before this call keep their place in the order (they are flushed first).
    if session.new:
        session.flush()
    conn = session.connection()
    rows: list[Queued] = []
    for item in items:
        pieces, nudge = _rows_for(session, item, now, config, identities or {})
        if not pieces:
            continue
        written: list[Queued] = []
        for i, values in enumerate(pieces):
            if i == 0 and values["idempotency_key"]:
                found = conn.execute(_insert_once(session), values).scalar()
                if found is None:
                    break  # already queued by someone else: skip the whole message
                rid = found
            else:
                rid = conn.execute(_INSERT, values).scalar_one()
            written.append(Queued(id=rid, **values))
        rows.extend(written)
        if written and nudge is not None:
            # The held message first, then (at most) today's nudge.
            queue_nudge(session, nudge, written[0].address, now, config)
    return rows


def _split(values: dict[str, Any]) -> list[dict[str, Any]]:
    limit = MAX_LENGTH.get(values["channel"])
    text = values["text"]
    if values["template"] or values["channel"] not in _SPLIT_CHANNELS or limit is None \
            or len(text) <= limit:
        return [values]
    pieces = split_text(text, limit)
    # The first piece keeps the idempotency key.
    return [{**values, "text": piece, "idempotency_key": values["idempotency_key"] if i == 0
             else None} for i, piece in enumerate(pieces)]


def _row(*, member_id: int | None, channel: str, address: str, kind: str, priority: int,
         text: str, next_attempt_at: datetime, created_at: datetime,
         idempotency_key: str | None, broadcast_id: int | None, template: str | None = None,
         template_vars: str | None = None, status: str = "queued",
         error: str | None = None) -> dict[str, Any]:
    """Return one outbox row's values, every column queue_messages fills."""
    return {"member_id": member_id, "channel": channel, "address": address, "kind": kind,
            "priority": priority, "text": text, "template": template,
            "template_vars": template_vars, "status": status, "error": error,
            "next_attempt_at": next_attempt_at, "idempotency_key": idempotency_key,
            "broadcast_id": broadcast_id, "created_at": created_at}


def _rows_for(session: Session, item: Outbound, now: datetime, config: Config,
              identities: dict[int | None, ChannelIdentity]
              ) -> tuple[list[dict[str, Any]], Member | None]:
    """Return the rows for one message, and the member to nudge when it is held."""
    priority = 0 if item.urgent else PRIORITY.get(item.kind, 5)
    if item.member_id is None:
        if not (item.channel and item.address):
            return [], None
        text = translator(config.bot.default_language).render_all(item.parts, item.sep)
        return _split(_row(member_id=None, channel=item.channel, address=item.address,
                           kind=item.kind, priority=priority, text=text, next_attempt_at=now,
                           created_at=now, idempotency_key=item.idempotency_key,
                           broadcast_id=item.broadcast_id)), None
    member = session.get(Member, item.member_id)
    if member is None:
        return [], None
    if member.opted_out and item.kind not in ASKED_FOR:
        return [], None
    text = translator(member.language).render_all(item.parts, item.sep)
    identity = identities.get(item.member_id) or preferred_identity(session, item.member_id)
    due = now
    if not item.urgent:
        due = quiet_until(member.timezone, now, config) or now
    status, error = "queued", None
    template: str | None = None
    template_vars: dict[str, Any] | None = None
    nudge = False
    if identity is None:
        # Nobody to deliver to yet: keep it until the member links a chat.
        status, error = "held", NO_CHAT_ERROR
    elif identity.channel == "whatsapp" and not window_open(identity, due):
        template = template_key(config, item.template or item.kind, member.language)
        if template is not None:
            template_vars = item.template_vars or {"1": first_name(member)}
        else:
            other = _telegram_identity(session, member.id or 0)
            if other is not None:
                identity = other  # no window on Telegram
            else:
                status, error, nudge = "held", WINDOW_ERROR, True
    row = _row(member_id=member.id, channel=identity.channel if identity else "",
               address=identity.address if identity else "", kind=item.kind,
               priority=priority, text=text, template=template,
               template_vars=json.dumps(template_vars) if template_vars else None,
               next_attempt_at=due, idempotency_key=item.idempotency_key,
               broadcast_id=item.broadcast_id, created_at=now, status=status, error=error)
    return _split(row), member if nudge else None


def _telegram_identity(session: Session, member_id: int) -> ChannelIdentity | None:
    return session.exec(
        select(ChannelIdentity).where(ChannelIdentity.member_id == member_id,
                                      ChannelIdentity.channel == "telegram",
                                      col(ChannelIdentity.reachable).is_(True))
        .order_by(col(ChannelIdentity.id))
    ).first()


# --- held messages -----------------------------------------------------------------------


def waiting_for(member_id: Any) -> Any:
    """Return the condition on outbox rows that wait for a member to write.

    Held messages, and a nudge not sent yet. Written "status IN (...)" first so the index
    on (member_id, status) narrows it to the member's few unfinished rows, not all of
    theirs. ``member_id`` is a value or a column (a correlated EXISTS).
    """
    return and_(col(Outbox.member_id) == member_id,
                col(Outbox.status).in_(("held", "queued")),
                or_(col(Outbox.status) == "held", col(Outbox.kind) == "nudge"))


def release_held(session: Session, member_id: int, identity: ChannelIdentity,
                 now: datetime) -> int:
    """Send a member's held messages to the chat they now use; return how many.

    Nudges still waiting (queued or held) are cancelled: the member is here.
    """
    rows = session.exec(
        select(Outbox).where(waiting_for(member_id)).order_by(col(Outbox.id))
    ).all()
    released = 0
    for row in rows:
        if row.kind == "nudge":
            row.status, row.error, row.sent_at = "cancelled", "the member wrote again", now
        else:
            row.status, row.channel, row.address = "queued", identity.channel, identity.address
            # Free text now: the member just wrote (a template was for a closed window).
            row.template, row.template_vars = None, None
            row.next_attempt_at, row.error = now, None
            released += 1
        session.add(row)
    return released


def hold_address(session: Session, channel: str, address: str, reason: str) -> int:
    """Hold what is queued for a chat that cannot receive now (blocked, opted out)."""
    rows = session.exec(
        select(Outbox).where(Outbox.channel == channel, Outbox.address == address,
                             Outbox.status == "queued", col(Outbox.member_id).is_not(None))
    ).all()
    for row in rows:
        row.status, row.error = "held", reason[:300]
        session.add(row)
    return len(rows)


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
