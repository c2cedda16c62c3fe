"""Announcements: one text to a village (some roles, an age band), now or at a time.

A broadcast is fanned out into outbox rows in one bulk insert, inside the caller's
transaction: each recipient's text is rendered once per language (the coordinator's own
translation when given, under a header in the reader's language), on the chat they last
wrote from, after their quiet hours. Members who opted out are counted, not queued.
Children are reached only once a guardian has agreed, and only those old enough to hold
an account. The sender then delivers the rows at each channel's rate.

Progress comes from the rows themselves: queued (or being sent), held (no chat linked
yet, or WhatsApp's 24-hour window closed), sent, failed, and opted out (skipped at
fan-out, or cancelled by a STOP after). A broadcast is done when nothing is queued.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from bot.channels.base import MAX_LENGTH
from bot.config import Config
from bot.content import BANDS
from bot.i18n import N_, translator
from bot.messages import Outbound, Raw, t
from bot.outbox import (
    NO_CHAT_ERROR,
    PRIORITY,
    WINDOW,
    WINDOW_ERROR,
    WINDOW_MARGIN,
    queue_nudge,
    quiet_until,
    split_text,
    template_key,
)
from storage.models import AuditLog, Broadcast, ChannelIdentity, Family, Member, Outbox, Village

FAMILY_ROLES = ("child", "carer", "parent")
AGE_BANDS: tuple[str, ...] = tuple(BANDS)
MAX_AHEAD = timedelta(days=366)
_CHUNK = 5_000
HEADER = N_("Announcement from the village coordinator of {village}:")
# The simulator delivers at once; it has no configured rate.
SIMULATOR_RATE = 1000.0


class BroadcastError(ValueError):
    """A broadcast that cannot be made as asked; the message names the field."""


@dataclass
class Plan:
    """Who a broadcast reaches: recipients by language and channel, and who is skipped."""

    members: list[tuple[int, str, str]] = field(default_factory=list)  # id, language, tz
    identities: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> chat
    # When each member last wrote from that chat (WhatsApp's 24-hour window).
    last_inbound: dict[int, datetime | None] = field(default_factory=dict)
    telegram: dict[int, tuple[str, str]] = field(default_factory=dict)  # fallback chat
    names: dict[int, str] = field(default_factory=dict)
    opted_out: int = 0

    @property
    def recipients(self) -> int:
        """Return everyone the broadcast is for, opted-out members included."""
        return len(self.members) + self.opted_out

    def by_language(self) -> dict[str, int]:
        """Count the recipients who will read each language."""
        out: dict[str, int] = {}
        for _mid, lang, _tz in self.members:
            out[lang] = out.get(lang, 0) + 1
        return out

    def by_channel(self) -> dict[str, int]:
        """Count the recipients per channel ("" for those with no chat linked yet)."""
        out: dict[str, int] = {}
        for mid, _lang, _tz in self.members:
            ch = self.identities.get(mid, ("", ""))[0]
            out[ch] = out.get(ch, 0) + 1
        return out


# --- validation ---------------------------------------------------------------------------


def check_text(value: Any, field_name: str, config: Config) -> str:
    """Return a broadcast text, or raise BroadcastError naming the field."""
    if not isinstance(value, str) or not value.strip():
        raise BroadcastError(f"{field_name}: a non-empty string is required")
    value = value.strip()
    if len(value) > config.bot.max_text_length:
        raise BroadcastError(f"{field_name}: at most {config.bot.max_text_length} characters")
    if "\x00" in value:
        raise BroadcastError(f"{field_name}: contains a NUL character")
    return value


def check_roles(value: Any) -> list[str]:
    """Return a list of family roles (empty: everyone), or raise BroadcastError."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise BroadcastError("roles: expected a list of child, carer or parent")
    bad = [r for r in value if r not in FAMILY_ROLES]
    if bad:
        raise BroadcastError(f"roles: {bad[0][:20]!r} is not one of child, carer, parent")
    return sorted(set(value), key=FAMILY_ROLES.index)


def check_age_band(value: Any) -> str | None:
    """Return an age band (0-23m, 2-9, 10-17) or None, or raise BroadcastError."""
    if value is None or value == "":
        return None
    if value not in AGE_BANDS:
        raise BroadcastError(f"age_band: expected one of {', '.join(AGE_BANDS)}")
    return str(value)


def check_translations(value: Any, config: Config) -> dict[str, str]:
    """Return {language: text}, or raise BroadcastError."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BroadcastError("translations: expected an object like {\"en\": \"...\"}")
    out: dict[str, str] = {}
    for lang, text in value.items():
        if lang not in config.bot.languages:
            raise BroadcastError(f"translations: {str(lang)[:12]!r} is not one of "
                                 f"{', '.join(config.bot.languages)}")
        if text is None or (isinstance(text, str) and not text.strip()):
            continue
        out[lang] = check_text(text, f"translations.{lang}", config)
    return out


def parse_send_at(value: Any, village_tz: str, now: datetime) -> datetime:
    """Return when to send (UTC): an ISO 8601 instant, naive meaning the village's time."""
    if value is None or value == "":
        return now
    if not isinstance(value, str) or len(value) > 40:
        raise BroadcastError("send_at: expected an ISO 8601 time like 2026-03-06T08:00:00+07:00")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise BroadcastError("send_at: expected an ISO 8601 time like "
                             "2026-03-06T08:00:00+07:00") from exc
    if when.tzinfo is None:
        from zoneinfo import ZoneInfo

        when = when.replace(tzinfo=ZoneInfo(village_tz))
    when = when.astimezone(UTC)
    if when > now + MAX_AHEAD:
        raise BroadcastError("send_at: at most a year ahead")
    return max(when, now)


# --- who it reaches -----------------------------------------------------------------------


def _band_years(band: str, year: int) -> tuple[int, int]:
    # Ages as bot.content.age_band counts them: age = this year - birth year.
    lo_age, hi_age = {"0-23m": (0, 1), "2-9": (2, 9), "10-17": (10, 17)}[band]
    return year - hi_age, year - lo_age


def plan(session: Session, *, village_id: int, roles: Iterable[str], age_band: str | None,
         now: datetime, config: Config) -> Plan:
    """Work out who a broadcast reaches and on which chat."""
    roles = list(roles) or list(FAMILY_ROLES)
    oldest_child_year = now.year - config.bot.child_account_min_age
    where = [col(Member.village_id) == village_id, col(Member.role).in_(roles),
             # Children: only with a guardian's consent, and only those old enough to hold
             # an account (younger ones have none; their carer hears for them).
             or_(col(Member.role) != "child",
                 and_(col(Family.consent_status) == "given",
                      or_(col(Member.birth_year).is_(None),
                          col(Member.birth_year) <= oldest_child_year)))]
    if age_band:
        lo, hi = _band_years(age_band, now.year)
        kids = select(Member.family_id).where(
            col(Member.village_id) == village_id, col(Member.role) == "child",
            col(Member.birth_year) >= lo, col(Member.birth_year) <= hi)
        where.append(col(Member.family_id).in_(kids))
    rows = session.execute(
        sa_select(col(Member.id), col(Member.language), col(Member.timezone),
                  col(Member.opted_out), col(Member.name))
        .join(Family, col(Family.id) == Member.family_id).where(*where)
        .order_by(col(Member.id))).all()
    result = Plan()
    for mid, lang, tz, opted_out, name in rows:
        if opted_out:
            result.opted_out += 1
        else:
            result.members.append((mid, lang, tz))
            result.names[mid] = name
    # The chat each member last wrote from (as the outbox chooses for one message): in
    # this order the last row of each member is the one to use.
    for mid, channel, address, last in session.execute(
            sa_select(col(ChannelIdentity.member_id), col(ChannelIdentity.channel),
                      col(ChannelIdentity.address), col(ChannelIdentity.last_inbound_at))
            .join(Member, col(Member.id) == ChannelIdentity.member_id)
            .where(col(Member.village_id) == village_id, col(Member.role).in_(roles),
                   col(ChannelIdentity.reachable).is_(True))
            .order_by(col(ChannelIdentity.member_id),
                      col(ChannelIdentity.last_inbound_at).asc().nulls_first(),
                      col(ChannelIdentity.id))).all():
        result.identities[mid] = (channel, address)
        result.last_inbound[mid] = last
        if channel == "telegram" and mid not in result.telegram:
            result.telegram[mid] = (channel, address)
    return result


def render(text: str, translations: dict[str, str], lang: str, village: str) -> str:
    """Render a broadcast for a reader of one language."""
    body = translations.get(lang) or text
    return translator(lang).render_all([t(HEADER, village=Raw(village)), Raw(body)])


def channel_rates(config: Config) -> dict[str, float]:
    """Return each channel's sending rate (messages per second)."""
    return {"telegram": config.telegram.rate_per_s, "whatsapp": config.twilio.rate_per_s,
            "simulator": SIMULATOR_RATE}


def estimate_seconds(by_channel: dict[str, int], config: Config) -> int:
    """Estimate how long the sender needs for these messages at the channels' rates.

    One sender delivers one message at a time, so the channels' times add up.
    """
    rates = channel_rates(config)
    slowest = min(rates.values())
    total = sum(n / rates.get(ch, slowest) for ch, n in by_channel.items() if ch)
    return int(math.ceil(total))


# --- making and starting ------------------------------------------------------------------


def create_broadcast(session: Session, *, village: Village, text: str, now: datetime,
                     config: Config, actor: str, coordinator_id: int | None = None,
                     roles: Iterable[str] = (), age_band: str | None = None,
                     translations: dict[str, str] | None = None,
                     send_at: datetime | None = None) -> Broadcast:
    """Record a broadcast (validated by the caller) and start it if it is due now."""
    when = max(send_at or now, now)
    role_list = list(roles)
    b = Broadcast(village_id=village.id or 0, coordinator_id=coordinator_id, text=text,
                  translations=json.dumps(translations or {}, ensure_ascii=False),
                  roles=json.dumps(role_list), age_band=age_band, send_at=when,
                  status="scheduled", created_at=now)
    session.add(b)
    session.flush()
    session.add(AuditLog(at=now, actor=actor[:64], action="broadcast.create",
                         target=f"broadcast:{b.id}", village_id=village.id,
                         details=json.dumps({"roles": role_list, "age_band": age_band,
                                             "send_at": when.isoformat(),
                                             "languages": sorted(translations or {}),
                                             "length": len(text)})))
    if when <= now:
        start_broadcast(session, b, now=now, config=config)
    return b


def start_broadcast(session: Session, b: Broadcast, *, now: datetime, config: Config) -> bool:
    """Fan a scheduled broadcast out into the outbox; False if it was started already."""
    claimed = session.execute(
        update(Broadcast).where(col(Broadcast.id) == b.id, col(Broadcast.status) == "scheduled")
        .values(status="sending", started_at=now)
        .execution_options(synchronize_session=False))
    if not getattr(claimed, "rowcount", 0):
        session.refresh(b)
        return False
    village = session.get(Village, b.village_id)
    who = plan(session, village_id=b.village_id, roles=json.loads(b.roles or "[]"),
               age_band=b.age_band, now=now, config=config)
    translations = json.loads(b.translations or "{}")
    texts_by_lang: dict[str, str] = {}
    # (language, channel, as a template?) -> the text's pieces at the channel's length
    texts: dict[tuple[str, str, bool], list[str]] = {}
    quiet: dict[str, datetime] = {}
    priority = PRIORITY["broadcast"]
    rows: list[dict[str, Any]] = []
    name_of_village = village.name if village else ""

    # Core insert on the session's connection (same transaction): the ORM's bulk path
    # costs more than the database itself here.
    table = Outbox.__table__  # type: ignore[attr-defined]
    conn = session.connection()

    def flush_rows() -> None:
        if rows:
            conn.execute(insert(table), rows)
            rows.clear()

    nudges: list[tuple[int, str]] = []
    for mid, lang, tz in who.members:
        due = quiet.get(tz)
        if due is None:
            due = quiet[tz] = quiet_until(tz, now, config) or now
        chat = who.identities.get(mid)
        status, error, template, template_vars = "queued", None, None, None
        if chat is None:
            # Nobody to deliver to yet: kept until the member links a chat.
            status, error = "held", NO_CHAT_ERROR
        elif chat[0] == "whatsapp" and not _window_open(who.last_inbound.get(mid), due):
            # The outbox's rule for WhatsApp outside its 24-hour window: the approved
            # template for broadcasts, else their Telegram chat, else held (and nudged).
            template = template_key(config, "broadcast", lang)
            if template is not None:
                name = (who.names.get(mid) or "").split()
                template_vars = json.dumps({"1": name[0] if name else ""})
            elif mid in who.telegram:
                chat = who.telegram[mid]
            else:
                status, error = "held", WINDOW_ERROR
                nudges.append((mid, chat[1]))
        channel = chat[0] if chat else ""
        key = (lang, channel, template is None)
        pieces = texts.get(key)
        if pieces is None:
            text = texts_by_lang.get(lang)
            if text is None:
                text = texts_by_lang[lang] = render(b.text, translations, lang, name_of_village)
            limit = MAX_LENGTH.get(channel)
            pieces = texts[key] = (
                split_text(text, limit) if channel in ("telegram", "whatsapp") and limit
                and template is None else [text])
        for i, piece in enumerate(pieces):
            rows.append({
                "member_id": mid, "channel": channel, "address": chat[1] if chat else "",
                "kind": "broadcast", "priority": priority, "text": piece,
                "template": template, "template_vars": template_vars, "status": status,
                "attempts": 0, "next_attempt_at": due,
                # The first piece carries the key: a second fan-out could not queue again.
                "idempotency_key": f"broadcast:{b.id}:{mid}" if i == 0 else None,
                "error": error, "broadcast_id": b.id, "created_at": now,
            })
        if len(rows) >= _CHUNK:
            flush_rows()
    flush_rows()
    _nudge(session, nudges, now, config)
    b.status, b.started_at = "sending", now
    b.recipients, b.opted_out = who.recipients, who.opted_out
    if not who.members:
        b.status, b.finished_at = "done", now
    session.add(b)
    session.flush()
    return True


def _window_open(last_inbound: datetime | None, at: datetime) -> bool:
    """Tell whether WhatsApp takes free text at `at` (as bot.outbox.window_open)."""
    return last_inbound is not None and _aware(last_inbound) + WINDOW - WINDOW_MARGIN > at


def _nudge(session: Session, held: list[tuple[int, str]], now: datetime,
           config: Config) -> None:
    """Send today's template nudge to WhatsApp members whose announcement is held."""
    if not held or not any(k == "nudge" or k.startswith("nudge.")
                           for k, v in config.twilio.templates.items() if v):
        return  # no approved nudge: the held announcement waits until they write
    for mid, address in held:
        member = session.get(Member, mid)
        if member is not None:
            queue_nudge(session, member, address, now, config)


# --- progress -----------------------------------------------------------------------------


def progress(session: Session, b: Broadcast, config: Config,
             now: datetime | None = None) -> dict[str, Any]:
    """Return a broadcast's live counts, status and time left.

    With ``now``, ``waiting_until`` tells when queued rows held back by the recipients'
    quiet hours (or a retry) become due, if none is due yet.
    """
    counts: dict[str, int] = {}
    queued_by_channel: dict[str, int] = {}
    unsettled = 0
    # A long text is several rows; its first carries the idempotency key, so counting
    # first rows counts recipients. Every row counts for the time left and for "done".
    is_first_row = col(Outbox.idempotency_key).is_not(None)
    rows = session.execute(
        sa_select(col(Outbox.status), col(Outbox.channel), is_first_row, func.count())
        .where(col(Outbox.broadcast_id) == b.id)
        .group_by(col(Outbox.status), col(Outbox.channel), is_first_row)).all()
    for status, channel, is_first, n in rows:
        if is_first:
            counts[status] = counts.get(status, 0) + n
        if status in ("queued", "sending"):
            queued_by_channel[channel] = queued_by_channel.get(channel, 0) + n
            unsettled += n
    if not rows and b.status == "done" and b.recipients > b.opted_out:
        # Its rows are past the outbox's retention: the counts kept when it finished.
        kept = session.execute(
            select(AuditLog.details).where(col(AuditLog.action) == "broadcast.done",
                                           col(AuditLog.target) == f"broadcast:{b.id}")
            .order_by(col(AuditLog.id).desc()).limit(1)).scalar()
        if kept:
            counts = {k: int(v) for k, v in json.loads(kept).items()
                      if k in ("sent", "failed", "cancelled", "held")}
    queued = counts.get("queued", 0) + counts.get("sending", 0)
    waiting_until = None
    if now is not None and unsettled and not counts.get("sending"):
        first = session.execute(
            select(func.min(Outbox.next_attempt_at)).where(
                col(Outbox.broadcast_id) == b.id, col(Outbox.status) == "queued")).scalar()
        if first is not None and _aware(first) > now:
            waiting_until = _aware(first).isoformat()
    if b.status == "scheduled":
        status = "scheduled"
    elif b.status == "cancelled":
        status = "cancelled"
    else:
        status = "sending" if unsettled else "done"
    return {
        "id": b.id, "status": status, "recipients": b.recipients,
        "sent": counts.get("sent", 0), "failed": counts.get("failed", 0),
        # Skipped when it was queued, or cancelled by a STOP while it waited.
        "opted_out": b.opted_out + counts.get("cancelled", 0),
        "queued": queued, "held": counts.get("held", 0),
        "eta_s": estimate_seconds(queued_by_channel, config), "waiting_until": waiting_until,
        "send_at": _aware(b.send_at).isoformat(),
        "started_at": _aware(b.started_at).isoformat() if b.started_at else None,
        "finished_at": _aware(b.finished_at).isoformat() if b.finished_at else None,
    }


def run_due_broadcasts(session: Session, now: datetime, config: Config) -> list[Outbound]:
    """Start scheduled broadcasts that are due, and mark finished ones done.

    The periodic job: it queues the rows itself (in bulk) and returns no messages.
    """
    due = session.execute(
        select(Broadcast).where(col(Broadcast.status) == "scheduled",
                                col(Broadcast.send_at) <= now)
        .order_by(col(Broadcast.send_at)).limit(20)).scalars().all()
    for b in due:
        start_broadcast(session, b, now=now, config=config)
    sending = session.execute(
        select(Broadcast).where(col(Broadcast.status) == "sending").limit(200)).scalars().all()
    for b in sending:
        unsettled = session.execute(
            select(Outbox.id).where(col(Outbox.broadcast_id) == b.id,
                                    col(Outbox.status).in_(("queued", "sending"))).limit(1)
        ).first()
        if unsettled is None:
            b.status, b.finished_at = "done", now
            session.add(b)
            # The outbox forgets sent rows after its retention period: keep the final
            # counts (no names, no text) where progress() finds them afterwards.
            session.add(AuditLog(at=now, actor="system", action="broadcast.done",
                                 target=f"broadcast:{b.id}", village_id=b.village_id,
                                 details=json.dumps(_row_counts(session, b.id or 0))))
    return []


def _row_counts(session: Session, broadcast_id: int) -> dict[str, int]:
    return {status: n for status, n in session.execute(
        select(Outbox.status, func.count()).where(col(Outbox.broadcast_id) == broadcast_id,
                                                  col(Outbox.idempotency_key).is_not(None))
        .group_by(col(Outbox.status))).all()}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _register_job() -> None:
    """Hand the periodic job to the scheduler, when this build has one."""
    try:
        from bot.scheduler import periodic_job
    except ImportError:  # pragma: no cover - a build without the scheduler
        return
    periodic_job("broadcasts")(run_due_broadcasts)


_register_job()
