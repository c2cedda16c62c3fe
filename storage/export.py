"""A family's or a member's data: everything stored about them, and its erasure.

UU 27/2022 gives people the right to see and delete their data, and PP 17/2025 says that
withdrawing a guardian's consent means deleting the child's data. ``export_*`` returns
every row that is about the family or member; ``erase_*`` removes them, and what stays is
only what is about nobody: an alert's village and time (its person unlinked), the
consent record of a guardian who stays, and an audit entry with counts, no names.

Tables added later by other features are covered too: any column that references a
member or a family is found from the metadata; a required reference deletes the row, an
optional one is cleared. Both functions stage changes in the caller's session.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from sqlalchemy import Table, delete, or_, select, tuple_, update
from sqlmodel import Session, SQLModel, col

from storage.models import (
    Alert,
    AuditLog,
    ChannelIdentity,
    Consent,
    ConversationState,
    Coordinator,
    Family,
    FundRequest,
    InboundLog,
    Member,
    Outbox,
    Relay,
    ReminderSchedule,
    TipSeen,
    Village,
    WeeklyAnswer,
)

__all__ = ["NotFound", "erase_family", "erase_member", "export_family", "export_member"]

# Columns that hold JSON text: shown as JSON in an export, not as a string of JSON.
_JSON_COLUMNS = {"details", "answers", "data", "template_vars", "translations", "roles"}
# Tables this module handles by name; any other table referencing member or family is
# handled from the metadata.
_KNOWN = {"member", "family", "channelidentity", "consent", "conversationstate", "inboundlog",
          "outbox", "coordinator", "relay", "fundrequest", "alert", "tipseen",
          "reminderschedule", "weeklyanswer", "auditlog", "village", "broadcast"}


class NotFound(LookupError):
    """No family or member with that id."""


def _value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _row(obj: SQLModel, *, drop: Iterable[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.model_dump().items():
        if key in drop:
            continue
        if key in _JSON_COLUMNS and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        out[key] = _value(value)
    return out


def _mapping(row: Any) -> dict[str, Any]:
    return {k: _value(v) for k, v in dict(row._mapping).items()}


def _other_references(target: str) -> list[tuple[Table, Any]]:
    """Return (table, column) pairs outside the known tables that reference target.id."""
    found = []
    for table in SQLModel.metadata.sorted_tables:
        if table.name in _KNOWN:
            continue
        for fk in table.foreign_keys:
            if fk.column.table.name == target and fk.column.name == "id":
                found.append((table, fk.parent))
    return found


def _other_rows(session: Session, target: str, ids: list[int]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    if not ids:
        return out
    for table, column in _other_references(target):
        rows = session.execute(select(table).where(column.in_(ids))).all()
        if rows:
            out.setdefault(table.name, []).extend(_mapping(r) for r in rows)
    return out


def _family_or_raise(session: Session, family_id: int) -> Family:
    family = session.get(Family, family_id)
    if family is None:
        raise NotFound(f"no family {family_id}")
    return family


def _member_or_raise(session: Session, member_id: int) -> Member:
    member = session.get(Member, member_id)
    if member is None:
        raise NotFound(f"no member {member_id}")
    return member


def _identity_pairs(session: Session, member_ids: list[int]) -> list[tuple[str, str]]:
    if not member_ids:
        return []
    return [(c, a) for c, a in session.execute(
        select(col(ChannelIdentity.channel), col(ChannelIdentity.address))
        .where(col(ChannelIdentity.member_id).in_(member_ids))).all()]


def _messages_to(session: Session, member_ids: list[int]) -> list[Outbox]:
    """Return outbox rows to the members, and to their chats before they were linked."""
    if not member_ids:
        return []
    pairs = _identity_pairs(session, member_ids)
    cond: Any = col(Outbox.member_id).in_(member_ids)
    if pairs:
        cond = or_(cond, (col(Outbox.member_id).is_(None))
                   & tuple_(col(Outbox.channel), col(Outbox.address)).in_(pairs))
    return list(session.execute(select(Outbox).where(cond).order_by(col(Outbox.id))).scalars())


def _audit_about(session: Session, targets: list[str]) -> list[AuditLog]:
    if not targets:
        return []
    return list(session.execute(select(AuditLog).where(col(AuditLog.target).in_(targets))
                                .order_by(col(AuditLog.id))).scalars())


def _all(session: Session, stmt: Any) -> list[Any]:
    return list(session.execute(stmt).scalars())


# --- export -----------------------------------------------------------------------------


def export_family(session: Session, family_id: int) -> dict[str, Any]:
    """Return everything stored about a family and its members, as JSON-ready data."""
    family = _family_or_raise(session, family_id)
    village = session.get(Village, family.village_id)
    members = _all(session, select(Member).where(col(Member.family_id) == family_id)
                   .order_by(col(Member.id)))
    ids = [m.id for m in members if m.id is not None]
    targets = [f"family:{family_id}"] + [f"member:{i}" for i in ids]
    return {
        "family": {**_row(family), "village": village.name if village else None,
                   "district": village.district if village else None},
        "members": [_row(m) for m in members],
        "identities": [_row(i) for i in _all(session, select(ChannelIdentity).where(
            col(ChannelIdentity.member_id).in_(ids)).order_by(col(ChannelIdentity.id)))],
        "consents": [_row(c) for c in _all(session, select(Consent).where(
            col(Consent.family_id) == family_id).order_by(col(Consent.id)))],
        "relays": [_row(r) for r in _all(session, select(Relay).where(
            col(Relay.family_id) == family_id).order_by(col(Relay.id)))],
        "fund_requests": [_row(f) for f in _all(session, select(FundRequest).where(
            col(FundRequest.family_id) == family_id).order_by(col(FundRequest.id)))],
        "alerts": [_row(a) for a in _all(session, select(Alert).where(or_(
            col(Alert.family_id) == family_id, col(Alert.member_id).in_(ids))).order_by(
            col(Alert.id)))],
        "weekly_answers": [_row(w) for w in _all(session, select(WeeklyAnswer).where(
            col(WeeklyAnswer.family_id) == family_id).order_by(col(WeeklyAnswer.id)))],
        "tips_seen": [_row(t) for t in _all(session, select(TipSeen).where(
            col(TipSeen.member_id).in_(ids)).order_by(col(TipSeen.id)))],
        "reminders": [_row(r) for r in _all(session, select(ReminderSchedule).where(
            col(ReminderSchedule.member_id).in_(ids)).order_by(col(ReminderSchedule.id)))],
        "conversation_states": [_row(s) for s in _all(session, select(ConversationState).where(
            col(ConversationState.member_id).in_(ids)))],
        "messages": [_row(o, drop=("claimed_by", "claimed_until"))
                     for o in _messages_to(session, ids)],
        "inbound_messages": [_row(i) for i in _all(session, select(InboundLog).where(
            col(InboundLog.member_id).in_(ids)).order_by(col(InboundLog.id)))],
        "audit_log": [_row(a) for a in _audit_about(session, targets)],
        "other": {**_other_rows(session, "family", [family_id]),
                  **_other_rows(session, "member", ids)},
    }


def export_member(session: Session, member_id: int) -> dict[str, Any]:
    """Return everything stored about one member, as JSON-ready data."""
    member = _member_or_raise(session, member_id)
    village = session.get(Village, member.village_id)
    ids = [member_id]
    return {
        "member": {**_row(member), "village": village.name if village else None},
        "identities": [_row(i) for i in _all(session, select(ChannelIdentity).where(
            col(ChannelIdentity.member_id) == member_id).order_by(col(ChannelIdentity.id)))],
        "consents_given": [_row(c) for c in _all(session, select(Consent).where(
            col(Consent.given_by_member_id) == member_id).order_by(col(Consent.id)))],
        "relays_sent": [_row(r) for r in _all(session, select(Relay).where(
            col(Relay.from_member_id) == member_id).order_by(col(Relay.id)))],
        "fund_requests": [_row(f) for f in _all(session, select(FundRequest).where(or_(
            col(FundRequest.requester_id) == member_id, col(FundRequest.child_id) == member_id))
            .order_by(col(FundRequest.id)))],
        "alerts": [_row(a) for a in _all(session, select(Alert).where(
            col(Alert.member_id) == member_id).order_by(col(Alert.id)))],
        "weekly_answers": [_row(w) for w in _all(session, select(WeeklyAnswer).where(or_(
            col(WeeklyAnswer.member_id) == member_id, col(WeeklyAnswer.child_id) == member_id))
            .order_by(col(WeeklyAnswer.id)))],
        "tips_seen": [_row(t) for t in _all(session, select(TipSeen).where(
            col(TipSeen.member_id) == member_id).order_by(col(TipSeen.id)))],
        "reminders": [_row(r) for r in _all(session, select(ReminderSchedule).where(
            col(ReminderSchedule.member_id) == member_id))],
        "conversation_states": [_row(s) for s in _all(session, select(ConversationState).where(
            col(ConversationState.member_id) == member_id))],
        "messages": [_row(o, drop=("claimed_by", "claimed_until"))
                     for o in _messages_to(session, ids)],
        "inbound_messages": [_row(i) for i in _all(session, select(InboundLog).where(
            col(InboundLog.member_id) == member_id).order_by(col(InboundLog.id)))],
        "audit_log": [_row(a) for a in _audit_about(session, [f"member:{member_id}"])],
        "other": _other_rows(session, "member", ids),
    }


# --- erasure ----------------------------------------------------------------------------


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _erase_members(session: Session, ids: list[int]) -> dict[str, int]:
    """Delete the members and every row about them; return counts by kind."""
    counts: dict[str, int] = {}
    if not ids:
        return counts
    ex = session.execute
    pairs = _identity_pairs(session, ids)
    msg_cond: Any = col(Outbox.member_id).in_(ids)
    if pairs:
        msg_cond = or_(msg_cond, (col(Outbox.member_id).is_(None))
                       & tuple_(col(Outbox.channel), col(Outbox.address)).in_(pairs))
    counts["messages"] = _count(ex(delete(Outbox).where(msg_cond)))
    ex(update(InboundLog).where(col(InboundLog.member_id).in_(ids)).values(member_id=None))
    for model in (ConversationState, TipSeen, ReminderSchedule):
        ex(delete(model).where(col(model.member_id).in_(ids)))  # type: ignore[attr-defined]
    counts["relays"] = _count(ex(delete(Relay).where(col(Relay.from_member_id).in_(ids))))
    counts["fund_requests"] = _count(ex(delete(FundRequest).where(or_(
        col(FundRequest.requester_id).in_(ids), col(FundRequest.child_id).in_(ids)))))
    counts["weekly_answers"] = _count(ex(delete(WeeklyAnswer).where(or_(
        col(WeeklyAnswer.member_id).in_(ids), col(WeeklyAnswer.child_id).in_(ids)))))
    # An alert stays as a fact about the village (for safeguarding statistics), unlinked.
    ex(update(Alert).where(col(Alert.member_id).in_(ids)).values(member_id=None))
    ex(update(Consent).where(col(Consent.given_by_member_id).in_(ids))
       .values(given_by_member_id=None))
    ex(update(Coordinator).where(col(Coordinator.member_id).in_(ids)).values(member_id=None))
    _erase_other(session, "member", ids)
    ex(delete(ChannelIdentity).where(col(ChannelIdentity.member_id).in_(ids)))
    counts["members"] = _count(ex(delete(Member).where(col(Member.id).in_(ids))))
    return counts


def _erase_other(session: Session, target: str, ids: list[int]) -> None:
    """Clear or delete rows of tables this module does not know that reference target."""
    for table, column in _other_references(target):
        if column.nullable:
            session.execute(update(table).where(column.in_(ids)).values({column.name: None}))
        else:
            session.execute(delete(table).where(column.in_(ids)))


def erase_member(session: Session, member_id: int, *, now: datetime, actor: str) -> None:
    """Delete a member and everything about them; keep an audit entry without names."""
    member = _member_or_raise(session, member_id)
    village_id, role, family_id = member.village_id, member.role, member.family_id
    session.flush()
    counts = _erase_members(session, [member_id])
    session.add(AuditLog(at=now, actor=actor[:64], action="member.erase",
                         target=f"member:{member_id}", village_id=village_id,
                         details=json.dumps({"role": role, "family_id": family_id, **counts})))


def erase_family(session: Session, family_id: int, *, now: datetime, actor: str) -> None:
    """Delete a family, its people and their messages; keep counts in the audit log."""
    family = _family_or_raise(session, family_id)
    village_id = family.village_id
    session.flush()
    ids = [i for i in session.execute(select(col(Member.id)).where(
        col(Member.family_id) == family_id)).scalars() if i is not None]
    ex = session.execute
    counts = _erase_members(session, ids)
    counts["relays"] = counts.get("relays", 0) + _count(
        ex(delete(Relay).where(col(Relay.family_id) == family_id)))
    counts["fund_requests"] = counts.get("fund_requests", 0) + _count(
        ex(delete(FundRequest).where(col(FundRequest.family_id) == family_id)))
    counts["weekly_answers"] = counts.get("weekly_answers", 0) + _count(
        ex(delete(WeeklyAnswer).where(col(WeeklyAnswer.family_id) == family_id)))
    ex(delete(Consent).where(col(Consent.family_id) == family_id))
    ex(update(Alert).where(col(Alert.family_id) == family_id).values(family_id=None))
    _erase_other(session, "family", [family_id])
    ex(delete(Family).where(col(Family.id) == family_id))
    session.add(AuditLog(at=now, actor=actor[:64], action="family.erase",
                         target=f"family:{family_id}", village_id=village_id,
                         details=json.dumps(counts)))
