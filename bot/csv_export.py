"""CSV exports for coordinators' spreadsheets: families (one row a member) and fund requests.

The families file starts with the import columns (docs/import.md), so it can be imported
elsewhere as it is; extra columns (ids, invite codes, status) follow and the importer
ignores them. Cells that a spreadsheet would run as a formula are guarded with a quote.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

from sqlmodel import Session, col, select

from bot.importer import family_csv_columns, guard_cell
from storage.models import ChannelIdentity, Consent, Family, FundRequest, Member, Village

FAMILY_EXTRA = ["family_id", "member_id", "invite_code", "consent_status", "channels",
                "opted_out", "created_at"]
FUND_COLUMNS = ["id", "family_id", "village", "child", "requester", "purpose", "amount",
                "currency", "status", "reason", "due_date", "created_at", "updated_at"]
_BATCH = 1000


def write_families(session: Session, village_ids: Iterable[int], out: TextIO) -> int:
    """Write the families of some villages as CSV; return the number of member rows."""
    columns = family_csv_columns() + FAMILY_EXTRA
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    villages = {v.id: v for v in session.exec(select(Village).where(
        col(Village.id).in_(list(village_ids)))).all()}
    if not villages:
        return 0
    count = 0
    last_id = 0
    while True:
        families = list(session.exec(
            select(Family).where(col(Family.village_id).in_(list(villages)),
                                 col(Family.id) > last_id)
            .order_by(col(Family.id)).limit(_BATCH)).all())
        if not families:
            break
        last_id = families[-1].id or 0
        fids = [f.id for f in families]
        members: dict[int, list[Member]] = {}
        for m in session.exec(select(Member).where(col(Member.family_id).in_(fids))
                              .order_by(col(Member.id))).all():
            members.setdefault(m.family_id or 0, []).append(m)
        mids = [m.id for ms in members.values() for m in ms]
        idents: dict[int, list[ChannelIdentity]] = {}
        for i in session.exec(select(ChannelIdentity).where(
                col(ChannelIdentity.member_id).in_(mids))).all():
            idents.setdefault(i.member_id, []).append(i)
        consents: dict[int, Consent] = {}
        for c in session.exec(select(Consent).where(col(Consent.family_id).in_(fids),
                                                    col(Consent.agreed).is_(True),
                                                    col(Consent.withdrawn_at).is_(None))
                              .order_by(col(Consent.id))).all():
            consents[c.family_id] = c
        for f in families:
            v = villages[f.village_id]
            consent = consents.get(f.id or 0)
            for m in members.get(f.id or 0, []):
                ids = idents.get(m.id or 0, [])
                row = {
                    "family_ref": f.id, "village": v.name, "district": v.district,
                    "language": f.language, "role": m.role, "name": m.name,
                    "birth_year": m.birth_year or "",
                    "whatsapp": next((i.address.removeprefix("whatsapp:") for i in ids
                                      if i.channel == "whatsapp"), ""),
                    "telegram_chat_id": next((i.address for i in ids
                                              if i.channel == "telegram"), ""),
                    "timezone": m.timezone,
                    "consent_given_by": consent.given_by if consent else "",
                    "consent_method": consent.method if consent else "",
                    "member_language": m.language if m.language != f.language else "",
                    "family_id": f.id, "member_id": m.id, "invite_code": m.invite_code or "",
                    "consent_status": f.consent_status,
                    "channels": " ".join(sorted({i.channel for i in ids})),
                    "opted_out": "yes" if m.opted_out else "",
                    "created_at": m.created_at.isoformat(),
                }
                writer.writerow([guard_cell(row[c]) for c in columns])
                count += 1
    return count


def write_fund_requests(session: Session, village_ids: Iterable[int], out: TextIO,
                        *, status: str | None = None) -> int:
    """Write the fund requests of some villages as CSV; return how many."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(FUND_COLUMNS)
    ids = list(village_ids)
    villages = dict(session.exec(select(Village.id, Village.name).where(  # type: ignore[call-overload]
        col(Village.id).in_(ids))).all()) if ids else {}
    where: list[Any] = [col(FundRequest.village_id).in_(ids)]
    if status:
        where.append(col(FundRequest.status) == status)
    rows = list(session.exec(select(FundRequest).where(*where)
                             .order_by(col(FundRequest.id))).all())
    people = {i for r in rows for i in (r.child_id, r.requester_id) if i is not None}
    names: dict[int | None, str] = {}
    for start in range(0, len(people), _BATCH):
        chunk = list(people)[start:start + _BATCH]
        for mid, name in session.exec(select(Member.id, Member.name).where(  # type: ignore[call-overload]
                col(Member.id).in_(chunk))).all():
            names[mid] = name
    for r in rows:
        row = {
            "id": r.id, "family_id": r.family_id, "village": villages.get(r.village_id, ""),
            "child": names.get(r.child_id or 0, ""),
            "requester": names.get(r.requester_id or 0, ""), "purpose": r.purpose,
            "amount": r.amount, "currency": "IDR", "status": r.status, "reason": r.reason or "",
            "due_date": r.due_date.isoformat() if r.due_date else "",
            "created_at": r.created_at.isoformat(), "updated_at": r.updated_at.isoformat(),
        }
        writer.writerow([guard_cell(row[c]) for c in FUND_COLUMNS])
    return len(rows)
