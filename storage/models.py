"""The tables. Store the minimum: a child's first name or nickname and birth year, no IDs.

Timestamps are timezone-aware and stored as UTC (SQLModel's UTCDateTime refuses naive
ones, which keeps local times out of the database); a member's own time zone is applied
only when something is shown to them or scheduled for them.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Index, Text, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

ROLES = ("child", "carer", "parent", "coordinator")
CHANNELS = ("telegram", "whatsapp", "simulator")
OUTBOX_STATUSES = ("queued", "sending", "sent", "failed", "held", "cancelled")
FUND_STATUSES = ("pending", "pledged", "approved", "rejected", "paid", "cancelled")


class Village(SQLModel, table=True):
    """A Desmigratif village."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=120)
    district: str = Field(default="", max_length=120)
    region: str | None = Field(default=None, max_length=60)
    timezone: str = Field(default="Asia/Jakarta", max_length=64)
    created_at: datetime


class Family(SQLModel, table=True):
    """A household: children, their carers and the parents abroad."""

    id: int | None = Field(default=None, primary_key=True)
    village_id: int = Field(foreign_key="village.id", index=True)
    language: str = Field(default="id", max_length=8)
    # pending until a guardian agrees; refused or withdrawn stop all processing of children.
    consent_status: str = Field(default="pending", max_length=16)
    created_at: datetime


class Member(SQLModel, table=True):
    """A person the bot talks to (coordinators too, for their chat keywords)."""

    id: int | None = Field(default=None, primary_key=True)
    family_id: int | None = Field(default=None, foreign_key="family.id", index=True)
    village_id: int = Field(foreign_key="village.id", index=True)
    role: str = Field(max_length=16)
    name: str = Field(max_length=80)
    birth_year: int | None = None
    language: str = Field(default="id", max_length=8)
    timezone: str = Field(default="Asia/Jakarta", max_length=64)
    opted_out: bool = Field(default=False)
    invite_code: str | None = Field(default=None, unique=True, max_length=16)
    # Preferred local time for reminders ("HH:MM") and, for parents, their rest day (0=Mon).
    reminder_time: str | None = Field(default=None, max_length=5)
    rest_day: int | None = None
    tips_opt_in: bool = Field(default=True)
    welcomed: bool = Field(default=False)
    last_inbound_at: datetime | None = None
    created_at: datetime


class ChannelIdentity(SQLModel, table=True):
    """A chat address (Telegram chat id, WhatsApp number, simulator id) of a member."""

    __table_args__ = (UniqueConstraint("channel", "address", name="uq_identity_channel_address"),)

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)
    channel: str = Field(max_length=16)
    address: str = Field(max_length=64)
    reachable: bool = Field(default=True)
    unreachable_reason: str | None = Field(default=None, max_length=120)
    last_inbound_at: datetime | None = None
    created_at: datetime


class Consent(SQLModel, table=True):
    """A guardian's consent for the family's children's data, and its withdrawal."""

    id: int | None = Field(default=None, primary_key=True)
    family_id: int = Field(foreign_key="family.id", index=True)
    given_by: str = Field(max_length=80)
    given_by_member_id: int | None = Field(default=None, foreign_key="member.id")
    method: str = Field(max_length=40)
    agreed: bool = Field(default=True)
    text_version: str = Field(default="v1", max_length=16)
    at: datetime
    withdrawn_at: datetime | None = None


class ConversationState(SQLModel, table=True):
    """Where a member is in a step-by-step flow; gone when the flow ends or expires."""

    member_id: int = Field(foreign_key="member.id", primary_key=True)
    flow: str = Field(max_length=40)
    step: str = Field(max_length=40)
    data: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    expires_at: datetime
    updated_at: datetime


class InboundLog(SQLModel, table=True):
    """One row per platform message id, so a redelivery is recognised (not its text)."""

    __table_args__ = (UniqueConstraint("channel", "external_id", name="uq_inbound_external"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    external_id: str = Field(max_length=80)
    member_id: int | None = Field(default=None, index=True)
    kind: str = Field(default="text", max_length=24)
    outcome: str = Field(default="", max_length=40)
    received_at: datetime = Field(index=True)


class InboundQueue(SQLModel, table=True):
    """A message a webhook accepted and the worker has not processed yet (bot/inbox.py).

    Written before the webhook answers 200 and deleted once the engine has handled it, so
    it holds a message's text for seconds, not days. Only the oldest row of a chat can be
    claimed, which keeps each chat's messages in order across any number of workers.
    """

    __table_args__ = (
        UniqueConstraint("channel", "external_id", name="uq_inboundqueue_external"),
        Index("ix_inboundqueue_chat", "chat_key", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    external_id: str = Field(max_length=80)
    chat_key: str = Field(max_length=100)  # channel and chat: the unit of ordering
    payload: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime
    available_at: datetime  # claimable from then on (a lease or a retry pushes it later)
    attempts: int = 0


class Outbox(SQLModel, table=True):
    """A message to send: written in the transaction that produced it, sent after commit."""

    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_recipient", "channel", "address", "status"),
        # A member's unfinished rows (held, queued) among years of sent ones: looked up on
        # every inbound message, so by member and status, not member alone.
        Index("ix_outbox_member_status", "member_id", "status"),
        # The sender's claim walks this in order and stops after a batch (bot/sender.py).
        Index("ix_outbox_claim", "status", "priority", "next_attempt_at", "id"),
        UniqueConstraint("idempotency_key", name="uq_outbox_idempotency"),
    )

    id: int | None = Field(default=None, primary_key=True)
    member_id: int | None = Field(default=None)
    channel: str = Field(max_length=16)
    address: str = Field(max_length=64)
    kind: str = Field(default="reply", max_length=24)
    # 0 = a reply or a safety alert, sent first; larger numbers wait behind.
    priority: int = Field(default=5)
    text: str = Field(sa_column=Column(Text, nullable=False))
    template: str | None = Field(default=None, max_length=40)
    template_vars: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status: str = Field(default="queued", max_length=16)
    attempts: int = Field(default=0)
    next_attempt_at: datetime
    idempotency_key: str | None = Field(default=None, max_length=120)
    external_id: str | None = Field(default=None, max_length=64, index=True)
    error: str | None = Field(default=None, max_length=300)
    broadcast_id: int | None = Field(default=None, index=True)
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: datetime | None = None
    created_at: datetime
    sent_at: datetime | None = None


class Coordinator(SQLModel, table=True):
    """A village or district coordinator: API token, dashboard password, chat member."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=80)
    village_id: int = Field(foreign_key="village.id", index=True)
    level: str = Field(default="village", max_length=16)
    district: str = Field(default="", max_length=120)
    member_id: int | None = Field(default=None, foreign_key="member.id")
    token_hash: str = Field(unique=True, max_length=128)
    password_hash: str | None = Field(default=None, max_length=255)
    created_at: datetime


class AuditLog(SQLModel, table=True):
    """Who did what, when: every coordinator change and every safety alert."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(index=True)
    actor: str = Field(max_length=64)
    action: str = Field(max_length=64)
    target: str = Field(default="", max_length=64)
    village_id: int | None = Field(default=None, index=True)
    details: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))


class Relay(SQLModel, table=True):
    """A message relayed within a family (KABAR), kept for the family's export."""

    id: int | None = Field(default=None, primary_key=True)
    family_id: int = Field(foreign_key="family.id", index=True)
    from_member_id: int | None = Field(default=None, foreign_key="member.id")
    from_role: str = Field(max_length=16)
    text: str = Field(sa_column=Column(Text, nullable=False))
    recipients: int = Field(default=0)
    at: datetime = Field(index=True)


class FundRequest(SQLModel, table=True):
    """A school-fund request from a child or carer to the parents."""

    id: int | None = Field(default=None, primary_key=True)
    family_id: int = Field(foreign_key="family.id", index=True)
    village_id: int = Field(foreign_key="village.id", index=True)
    requester_id: int | None = Field(default=None, foreign_key="member.id")
    child_id: int | None = Field(default=None, foreign_key="member.id")
    purpose: str = Field(max_length=200)
    amount: int
    due_date: date | None = None
    status: str = Field(default="pending", max_length=16, index=True)
    reason: str | None = Field(default=None, max_length=300)
    created_at: datetime
    updated_at: datetime


class Alert(SQLModel, table=True):
    """A safety alert raised by TOLONG or a high-risk phrase."""

    id: int | None = Field(default=None, primary_key=True)
    village_id: int = Field(foreign_key="village.id", index=True)
    family_id: int | None = Field(default=None, foreign_key="family.id")
    member_id: int | None = Field(default=None, foreign_key="member.id")
    kind: str = Field(max_length=24)
    category: str = Field(default="", max_length=40)
    status: str = Field(default="open", max_length=16, index=True)
    escalated: bool = Field(default=False)
    created_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: int | None = None


class TipSeen(SQLModel, table=True):
    """A tip a member has received in the current cycle."""

    __table_args__ = (UniqueConstraint("member_id", "tip_id", name="uq_tipseen"),)

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)
    tip_id: str = Field(max_length=80)
    at: datetime


class Broadcast(SQLModel, table=True):
    """An announcement to a village (optionally some roles or an age band), now or later."""

    id: int | None = Field(default=None, primary_key=True)
    village_id: int = Field(foreign_key="village.id", index=True)
    coordinator_id: int | None = Field(default=None, foreign_key="coordinator.id")
    text: str = Field(sa_column=Column(Text, nullable=False))
    # {"en": "...", "jv": "..."}: each recipient reads their own language when given.
    translations: str = Field(default="{}", sa_column=Column(Text, nullable=False,
                                                             server_default="{}"))
    roles: str = Field(default="[]", max_length=120)  # JSON list; empty = every role
    age_band: str | None = Field(default=None, max_length=8)
    send_at: datetime = Field(index=True)
    status: str = Field(default="scheduled", max_length=16, index=True)
    recipients: int = Field(default=0)
    opted_out: int = Field(default=0)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ReminderSchedule(SQLModel, table=True):
    """When a member is next due for a kind of reminder, as a UTC instant (indexed)."""

    __table_args__ = (
        UniqueConstraint("member_id", "kind", name="uq_reminder_member_kind"),
        Index("ix_reminder_due", "kind", "next_due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)
    kind: str = Field(max_length=24)
    next_due_at: datetime
    last_local_date: date | None = None


class SchedulerLease(SQLModel, table=True):
    """Which process schedules now; another takes over when the lease runs out."""

    name: str = Field(primary_key=True, max_length=40)
    holder: str = Field(max_length=80)
    expires_at: datetime


class JobRun(SQLModel, table=True):
    """The last instant a periodic job ran to, for catching up after downtime."""

    kind: str = Field(primary_key=True, max_length=40)
    last_run_at: datetime


class WeeklyAnswer(SQLModel, table=True):
    """A carer's answers to the weekly question, waiting for the parents' digest."""

    id: int | None = Field(default=None, primary_key=True)
    family_id: int = Field(foreign_key="family.id", index=True)
    member_id: int | None = Field(default=None, foreign_key="member.id")
    child_id: int | None = Field(default=None, foreign_key="member.id")
    answers: str = Field(default="{}", sa_column=Column(Text, nullable=False,
                                                        server_default="{}"))
    created_at: datetime
    digested_at: datetime | None = None


class LoginAttempt(SQLModel, table=True):
    """A failed dashboard login, for rate limiting across worker processes."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=120, index=True)
    at: datetime = Field(index=True)
