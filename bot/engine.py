"""The conversation engine: one inbound message in, state and outbox rows out, one commit.

Handlers never send and never commit. The engine opens the transaction, records the
platform's message id (so a redelivery is recognised), finds the member, routes the
text, lets the handler stage its changes and messages, renders each message in its
recipient's language into the outbox, saves the flow state, and commits once. A sender
delivers the outbox afterwards. Time is a parameter, so tests are exact.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, exists, insert, update
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from bot.config import Config
from bot.i18n import N_
from bot.messages import Inbound, Outbound, Part, Text, t
from bot.outbox import queue_messages, release_held, waiting_for
from bot.privacy import mask_phone
from bot.router import Command, Match, Registry, registry
from storage.db import session_scope
from storage.models import (
    AuditLog,
    ChannelIdentity,
    ConversationState,
    Family,
    InboundLog,
    Member,
)

log = logging.getLogger(__name__)

# Control characters, invisible direction marks, and lone surrogates (no database can
# store one; a channel that lets one through must not crash the message).
_CONTROL_RE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")


# Built once: constructing statements costs more than running them on SQLite.
_INSERT_INBOUND = insert(InboundLog)
_TOUCH_IDENTITY = (update(ChannelIdentity).where(col(ChannelIdentity.id) == bindparam("iid"))
                   .values(last_inbound_at=bindparam("now")))
_TOUCH_MEMBER = (update(Member).where(col(Member.id) == bindparam("mid"))
                 .values(last_inbound_at=bindparam("now")))
_WAITING = exists().where(waiting_for(Member.id))
_FIND_SENDER = (
    select(ChannelIdentity, Member, Family, ConversationState)
    .add_columns(_WAITING.label("waiting"))
    .join(Member, col(Member.id) == ChannelIdentity.member_id)
    .outerjoin(Family, col(Family.id) == Member.family_id)
    .outerjoin(ConversationState, col(ConversationState.member_id) == Member.id)
    .where(col(ChannelIdentity.channel) == bindparam("channel"),
           col(ChannelIdentity.address) == bindparam("address"))
)


def utcnow() -> datetime:
    """Return the current instant, timezone-aware UTC."""
    return datetime.now(UTC)


def clean_text(text: str) -> str:
    """Normalise what a person typed: Unicode form, control characters, outer spaces."""
    text = unicodedata.normalize("NFC", text or "")
    return _CONTROL_RE.sub("", text).replace("\r\n", "\n").strip()


@dataclass
class Next:
    """Where the conversation goes after a handler: a step of a flow, with its data."""

    step: str
    data: dict[str, Any] = field(default_factory=dict)
    flow: str | None = None  # None: stay in the current flow


@dataclass
class Handled:
    """An interceptor's answer: the message is dealt with (optionally with a next step)."""

    next: Next | None = None


@dataclass
class Context:
    """What a handler sees: the member, the message, the time, and where to put replies."""

    session: Session
    config: Config
    inbound: Inbound
    member: Member | None
    text: str
    now: datetime
    args: str = ""
    flow: str | None = None
    step: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    outbox: list[Outbound] = field(default_factory=list)
    command: Command | None = None
    _family: Family | None = None
    identity: ChannelIdentity | None = None
    state_row: ConversationState | None = None

    @property
    def m(self) -> Member:
        """Return the member (handlers declared with needs_member always have one)."""
        assert self.member is not None
        return self.member

    @property
    def family(self) -> Family | None:
        """Return the member's family, loaded once."""
        if self._family is None and self.member is not None and self.member.family_id:
            self._family = self.session.get(Family, self.member.family_id)
        return self._family

    def reply(self, msgid: str, /, **params: Any) -> None:
        """Queue a message to the person who wrote (in their language, never held)."""
        self.reply_parts([Text(msgid, params)])

    def reply_parts(self, parts: list[Part]) -> None:
        """Queue several parts as one reply to the person who wrote."""
        if self.member is not None:
            self.outbox.append(Outbound(parts, member_id=self.member.id, kind="reply", urgent=True))
        else:
            self.outbox.append(Outbound(parts, channel=self.inbound.channel,
                                        address=self.inbound.address, kind="reply", urgent=True))

    def send(self, member_id: int, parts: list[Part], *, kind: str, urgent: bool = False,
             template: str | None = None, template_vars: dict[str, str] | None = None,
             idempotency_key: str | None = None) -> None:
        """Queue a message to another member."""
        self.outbox.append(Outbound(parts, member_id=member_id, kind=kind, urgent=urgent,
                                    template=template, template_vars=template_vars,
                                    idempotency_key=idempotency_key))

    def audit(self, action: str, target: str = "", **details: Any) -> None:
        """Record an action in the audit log (same transaction)."""
        actor = f"member:{self.member.id}" if self.member else f"{self.inbound.channel}:anonymous"
        village = self.member.village_id if self.member else None
        self.session.add(AuditLog(at=self.now, actor=actor, action=action, target=target,
                                  village_id=village, details=json.dumps(details, default=str)))


@dataclass
class HandleResult:
    """What happened to one inbound message."""

    duplicate: bool = False
    member_id: int | None = None
    outbox_ids: list[int] = field(default_factory=list)
    outcome: str = ""


class Engine:
    """Processes inbound messages with a registry of commands and flows."""

    def __init__(self, db: DbEngine, config: Config, *, reg: Registry | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.config = config
        self.registry = reg or registry
        self.clock = clock

    # --- public -----------------------------------------------------------------------

    def handle(self, inbound: Inbound, *, now: datetime | None = None) -> HandleResult:
        """Process one inbound message in one transaction; a redelivery does nothing."""
        now = now or self.clock()
        try:
            with session_scope(self.db) as session:
                return self._handle(session, inbound, now)
        except _Duplicate:
            return HandleResult(duplicate=True, outcome="duplicate")
        except Exception:
            log.exception("handler failed for a %s message from %s", inbound.channel,
                          mask_phone(inbound.address))
            return self._fail_safe(inbound, now)

    # --- the steps --------------------------------------------------------------------

    def _handle(self, session: Session, inbound: Inbound, now: datetime) -> HandleResult:
        conn = session.connection()
        # One query for everything the routing needs: who, their family, their flow, and
        # whether messages wait for them (held until they wrote).
        found = session.exec(_FIND_SENDER, params={"channel": inbound.channel,  # type: ignore[call-overload]
                                                    "address": inbound.address}).first()
        identity, member, family, state, waiting = found if found else (None,) * 5
        text = clean_text(inbound.text)
        ctx = Context(session=session, config=self.config, inbound=inbound, member=member,
                      text=text, now=now, _family=family, identity=identity)
        ctx.state_row = state
        if identity is not None and member is not None:
            # Last-seen times drive the WhatsApp window and silent-parent alerts. Written
            # with two prepared UPDATEs (the ORM's unit of work costs more than the writes)
            # and set as committed values, so the objects stay right without a dirty flush.
            conn.execute(_TOUCH_IDENTITY, {"iid": identity.id, "now": now})
            conn.execute(_TOUCH_MEMBER, {"mid": member.id, "now": now})
            set_committed_value(identity, "last_inbound_at", now)
            set_committed_value(member, "last_inbound_at", now)
            if not identity.reachable:
                identity.reachable, identity.unreachable_reason = True, None
            if waiting and member.id is not None:
                release_held(session, member.id, identity, now)  # they wrote: send it now
            if not member.welcomed:
                # The first thing anyone hears: an automated service, not an emergency line.
                member.welcomed = True
                ctx.reply(N_("This is the automated service of the Desmigratif village "
                             "programme. It is not an emergency service: in danger call "
                             "SAPA 129 (WhatsApp 08111-129-129)."))
        outcome = self._dispatch(ctx)
        hints = {member.id: identity} if member is not None and identity is not None else None
        outbox = queue_messages(session, ctx.outbox, now=now, config=self.config,
                                identities=hints)
        session.flush()
        # The platform's message id, recorded last in the same transaction: a redelivery
        # fails here and everything above rolls back with it, so nothing happens twice
        # (on PostgreSQL a concurrent duplicate waits for the first one's commit, then
        # fails). Recording it last saves a second write of the outcome on every message.
        try:
            conn.execute(_INSERT_INBOUND, {
                "channel": inbound.channel, "external_id": inbound.external_id[:80],
                "kind": inbound.kind, "outcome": outcome[:40],
                "member_id": member.id if member else None, "received_at": now})
        except IntegrityError as exc:
            raise _Duplicate from exc
        return HandleResult(member_id=member.id if member else None,
                            outbox_ids=[o.id for o in outbox if o.id is not None],
                            outcome=outcome)

    def _dispatch(self, ctx: Context) -> str:
        """Route the message and run its handler; return a short outcome label."""
        reg = self.registry
        if ctx.inbound.kind not in ("text", "start"):
            ctx.reply(N_("I can only read text messages for now. Reply MENU to see what I can "
                         "do."))
            return "non-text"
        text = ctx.text
        if ctx.inbound.kind == "start":
            text = ("/start " + (ctx.inbound.start_code or "")).strip()
            ctx.text = text

        state = self._load_state(ctx)
        if ctx.member is None:
            match = reg.match(text, allow=lambda c: not c.needs_member)
            if match is None:
                ctx.reply(N_("Hello! This chat is not linked yet. Send DAFTAR and the invite "
                             "code from your village coordinator, for example: DAFTAR AB12CD"))
                return "unlinked"
            return self._run_command(ctx, match, state)

        for interceptor in reg.interceptors:
            result = interceptor(ctx)
            if isinstance(result, Handled):
                self._save_state(ctx, state, result.next)
                return "intercepted"

        if state is not None:
            match = reg.match(text, allow=lambda c: c.global_, fuzzy=False)
            if match is not None and self._allowed(ctx, match.command):
                return self._run_command(ctx, match, state)
            flow = reg.flows.get(state.flow)
            handler = flow.steps.get(state.step) if flow else None
            if handler is None:
                # A flow removed or renamed by an upgrade: drop it rather than get stuck.
                self._save_state(ctx, state, None)
                return self._menu_fallback(ctx)
            ctx.flow, ctx.step = state.flow, state.step
            ctx.data = json.loads(state.data or "{}")
            next_ = handler(ctx)
            self._save_state(ctx, state, next_)
            return f"flow:{state.flow}:{state.step}"

        match = reg.match(text, allow=lambda c: self._allowed(ctx, c))
        if match is None:
            return self._menu_fallback(ctx)
        return self._run_command(ctx, match, state)

    def _allowed(self, ctx: Context, cmd: Command) -> bool:
        if ctx.member is None:
            return not cmd.needs_member
        return cmd.roles is None or ctx.member.role in cmd.roles

    def _run_command(self, ctx: Context, match: Match, state: ConversationState | None) -> str:
        ctx.command = match.command
        ctx.args = match.args
        if state is not None:
            ctx.flow, ctx.step = state.flow, state.step
            ctx.data = json.loads(state.data or "{}")
        next_ = match.command.handler(ctx)
        # A global keyword used inside a flow (BAHASA, TOLONG) may leave the flow where it
        # was, so the person can carry on answering; the others (MENU, BATAL) end it.
        keep = next_ is None and state is not None and match.command.keeps_flow
        self._save_state(ctx, state, next_, keep_if_none=keep)
        return f"command:{match.command.name}"

    def _menu_fallback(self, ctx: Context) -> str:
        from handlers.core import menu_parts  # the menu belongs to the core handlers

        ctx.reply_parts(menu_parts(ctx, short=True))
        return "menu"

    # --- state ------------------------------------------------------------------------

    def _load_state(self, ctx: Context) -> ConversationState | None:
        if ctx.member is None:
            return None
        state = ctx.state_row
        if state is not None and _aware(state.expires_at) <= ctx.now:
            ctx.session.delete(state)
            ctx.session.flush()
            ctx.state_row = None
            ctx.reply(N_("Your earlier unfinished step was closed because it waited too long. "
                         "Nothing was sent."))
            return None
        return state

    def _save_state(self, ctx: Context, state: ConversationState | None, next_: Next | None,
                    *, keep_if_none: bool = False) -> None:
        if ctx.member is None:
            return
        if ctx.state_row is None:
            state = None  # a handler removed it already (erasure)
        if next_ is None:
            if state is not None and not keep_if_none:
                ctx.session.delete(state)
            return
        flow = next_.flow or ctx.flow
        if flow is None or flow not in self.registry.flows:
            raise ValueError(f"next step {next_.step} names no declared flow")
        if next_.step not in self.registry.flows[flow].steps:
            raise ValueError(f"flow {flow} has no step {next_.step}")
        expires = ctx.now + timedelta(minutes=self.config.bot.flow_timeout_minutes)
        payload = json.dumps(next_.data, default=str)
        if state is None:
            ctx.session.add(ConversationState(member_id=ctx.member.id or 0, flow=flow,
                                              step=next_.step, data=payload,
                                              expires_at=expires, updated_at=ctx.now))
        else:
            state.flow, state.step, state.data = flow, next_.step, payload
            state.expires_at, state.updated_at = expires, ctx.now
            ctx.session.add(state)

    # --- failure ----------------------------------------------------------------------

    def _fail_safe(self, inbound: Inbound, now: datetime) -> HandleResult:
        """Record a message whose handler crashed and apologise, so it is not redelivered."""
        try:
            with session_scope(self.db) as session:
                session.add(InboundLog(channel=inbound.channel,
                                       external_id=inbound.external_id[:80],
                                       kind=inbound.kind, outcome="error", received_at=now))
                identity = session.exec(
                    select(ChannelIdentity).where(ChannelIdentity.channel == inbound.channel,
                                                  ChannelIdentity.address == inbound.address)
                ).first()
                msg = Outbound([t(N_("Sorry, something went wrong on our side. Please try "
                                     "again in a moment, or reply MENU."))],
                               member_id=identity.member_id if identity else None,
                               channel=None if identity else inbound.channel,
                               address=None if identity else inbound.address,
                               kind="reply", urgent=True)
                rows = queue_messages(session, [msg], now=now, config=self.config)
                session.flush()
                return HandleResult(outbox_ids=[r.id for r in rows if r.id], outcome="error")
        except IntegrityError:
            return HandleResult(duplicate=True, outcome="duplicate")


class _Duplicate(Exception):
    """The platform delivered a message we already processed."""


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
