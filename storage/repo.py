"""Repository functions: registration of villages, families, members and coordinators.

They stage changes in the caller's session and never commit, so a family is created
whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import Session, col, select

from storage.models import (
    AuditLog,
    ChannelIdentity,
    Consent,
    Coordinator,
    Family,
    Member,
    Village,
)

INVITE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I: read aloud on the phone
FAMILY_ROLES = ("child", "carer", "parent")

def is_chat_id(value: str) -> bool:
    """Tell whether value is a Telegram chat id (ASCII digits, optional minus)."""
    return re.fullmatch(r"-?[0-9]{1,20}", value) is not None



class ValidationError(ValueError):
    """Input that cannot be stored, with a message for the person who sent it."""


def new_invite_code(session: Session) -> str:
    """Return an unused six-character invite code."""
    while True:
        code = "".join(secrets.choice(INVITE_ALPHABET) for _ in range(6))
        if session.exec(select(Member.id).where(Member.invite_code == code)).first() is None:
            return code


def hash_token(token: str) -> str:
    """Hash an API token for storage (tokens are long and random: SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_timezone(name: str) -> str:
    """Return name if it is an IANA timezone, else raise ValidationError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"unknown timezone {name!r} (use an IANA name like Asia/Taipei)") \
            from exc
    return name


def get_or_create_village(session: Session, name: str, *, district: str = "",
                          region: str | None = None, timezone: str = "Asia/Jakarta",
                          now: datetime) -> Village:
    """Return the village of that name, creating it if needed."""
    name = name.strip()
    if not name:
        raise ValidationError("village: must not be empty")
    village = session.exec(select(Village).where(Village.name == name)).first()
    if village is None:
        village = Village(name=name, district=district, region=region,
                          timezone=check_timezone(timezone), created_at=now)
        session.add(village)
        session.flush()
    return village


@dataclass
class MemberSpec:
    """What a coordinator gives to register one person."""

    role: str
    name: str
    birth_year: int | None = None
    whatsapp: str | None = None
    telegram_chat_id: str | None = None
    timezone: str | None = None
    language: str | None = None


@dataclass
class FamilySpec:
    """A family to register, with its members and optional recorded consent."""

    village: str
    district: str = ""
    language: str = "id"
    members: list[MemberSpec] = field(default_factory=list)
    consent_given_by: str | None = None
    consent_method: str | None = None
    region: str | None = None


def create_family(session: Session, spec: FamilySpec, *, now: datetime,
                  languages: list[str], actor: str = "system",
                  normalise_phone: Any = None) -> tuple[Family, list[Member]]:
    """Register a family and its members; raise ValidationError naming the bad field."""
    if spec.language not in languages:
        raise ValidationError(f"language: expected one of {', '.join(languages)}")
    if not spec.members:
        raise ValidationError("members: a family needs at least one member")
    if len(spec.members) > 30:
        raise ValidationError("members: at most 30 per family")
    village = get_or_create_village(session, spec.village, district=spec.district,
                                    region=spec.region, now=now)
    consent_given = bool(spec.consent_given_by)
    family = Family(village_id=village.id or 0, language=spec.language,
                    consent_status="given" if consent_given else "pending", created_at=now)
    session.add(family)
    session.flush()
    members: list[Member] = []
    for i, ms in enumerate(spec.members):
        where = f"members[{i}]"
        if ms.role not in FAMILY_ROLES:
            raise ValidationError(f"{where}.role: expected child, carer or parent")
        name = (ms.name or "").strip()
        if not name or len(name) > 80:
            raise ValidationError(f"{where}.name: 1 to 80 characters")
        if ms.birth_year is not None and not (1900 <= ms.birth_year <= now.year):
            raise ValidationError(f"{where}.birth_year: expected a year between 1900 and now")
        if ms.role == "child" and ms.birth_year is not None and now.year - ms.birth_year > 18:
            raise ValidationError(f"{where}.birth_year: a child is under 18")
        lang = ms.language or spec.language
        if lang not in languages:
            raise ValidationError(f"{where}.language: expected one of {', '.join(languages)}")
        tz = check_timezone(ms.timezone or village.timezone)
        member = Member(family_id=family.id, village_id=village.id or 0, role=ms.role, name=name,
                        birth_year=ms.birth_year, language=lang, timezone=tz,
                        invite_code=new_invite_code(session), created_at=now)
        session.add(member)
        session.flush()
        if ms.whatsapp:
            number = normalise_phone(ms.whatsapp) if normalise_phone else ms.whatsapp
            if not number:
                raise ValidationError(
                    f"{where}.whatsapp: expected a phone number like +6281234567890")
            link_identity(session, member, "whatsapp", f"whatsapp:{number}", now=now,
                          where=f"{where}.whatsapp")
        if ms.telegram_chat_id:
            chat = str(ms.telegram_chat_id).strip()
            if not is_chat_id(chat):
                raise ValidationError(f"{where}.telegram_chat_id: expected a number")
            link_identity(session, member, "telegram", chat, now=now,
                          where=f"{where}.telegram_chat_id")
        members.append(member)
    if consent_given:
        session.add(Consent(family_id=family.id or 0, given_by=spec.consent_given_by or "",
                            method=(spec.consent_method or "signed form")[:40], at=now))
    session.add(AuditLog(at=now, actor=actor, action="family.create", target=f"family:{family.id}",
                         village_id=village.id,
                         details=json.dumps({"members": len(members),
                                             "consent": family.consent_status})))
    return family, members


def link_identity(session: Session, member: Member, channel: str, address: str, *,
                  now: datetime, where: str = "address") -> ChannelIdentity:
    """Attach a chat address to a member; refuse one that belongs to someone else."""
    existing = session.exec(
        select(ChannelIdentity).where(ChannelIdentity.channel == channel,
                                      ChannelIdentity.address == address)
    ).first()
    if existing is not None:
        if existing.member_id != member.id:
            raise ValidationError(f"{where}: already registered to another member")
        return existing
    identity = ChannelIdentity(member_id=member.id or 0, channel=channel, address=address,
                               created_at=now)
    session.add(identity)
    session.flush()
    return identity


def create_coordinator(session: Session, *, name: str, village: str, now: datetime,
                       whatsapp: str | None = None, telegram_chat_id: str | None = None,
                       password_hash: str | None = None, level: str = "village",
                       district: str = "", language: str = "id",
                       normalise_phone: Any = None) -> tuple[Coordinator, str]:
    """Create a coordinator (and their chat member); return it and its new API token."""
    name = name.strip()
    if not name or len(name) > 80:
        raise ValidationError("name: 1 to 80 characters")
    if level not in ("village", "district"):
        raise ValidationError("level: expected village or district")
    v = get_or_create_village(session, village, district=district, now=now)
    member = Member(village_id=v.id or 0, role="coordinator", name=name, language=language,
                    timezone=v.timezone, created_at=now, welcomed=True)
    session.add(member)
    session.flush()
    if whatsapp:
        number = normalise_phone(whatsapp) if normalise_phone else whatsapp
        if not number:
            raise ValidationError("whatsapp: expected a phone number like +6281234567890")
        link_identity(session, member, "whatsapp", f"whatsapp:{number}", now=now,
                      where="whatsapp")
    if telegram_chat_id:
        if not is_chat_id(str(telegram_chat_id)):
            raise ValidationError("telegram-chat-id: expected a number")
        link_identity(session, member, "telegram", str(telegram_chat_id), now=now,
                      where="telegram-chat-id")
    token = "dm_" + secrets.token_urlsafe(32)
    coord = Coordinator(name=name, village_id=v.id or 0, level=level,
                        district=district or v.district, member_id=member.id,
                        token_hash=hash_token(token), password_hash=password_hash,
                        created_at=now)
    session.add(coord)
    session.flush()
    session.add(AuditLog(at=now, actor="cli", action="coordinator.create",
                         target=f"coordinator:{coord.id}", village_id=v.id, details="{}"))
    return coord, token


def coordinator_by_token(session: Session, token: str) -> Coordinator | None:
    """Find the coordinator holding an API token."""
    if not token:
        return None
    return session.exec(
        select(Coordinator).where(Coordinator.token_hash == hash_token(token))
    ).first()


def coordinator_for_member(session: Session, member_id: int | None) -> Coordinator | None:
    """Return the coordinator record behind a chat member, if any."""
    if member_id is None:
        return None
    return session.exec(select(Coordinator).where(Coordinator.member_id == member_id)).first()


def coordinator_village_ids(session: Session, coord: Coordinator) -> frozenset[int]:
    """Return the villages a coordinator may see: theirs, or their district's."""
    ids = {coord.village_id}
    if coord.level == "district" and coord.district:
        ids.update(i for i in session.exec(
            select(Village.id).where(Village.district == coord.district)).all() if i is not None)
    return frozenset(ids)


def village_coordinator_members(session: Session, village_id: int) -> list[Member]:
    """Return the chat members of a village's coordinators."""
    ids = session.exec(
        select(Coordinator.member_id).where(Coordinator.village_id == village_id,
                                            Coordinator.level == "village")
    ).all()
    ids = [i for i in ids if i is not None]
    if not ids:
        return []
    return list(session.exec(select(Member).where(col(Member.id).in_(ids))).all())


def family_members(session: Session, family_id: int, *, roles: tuple[str, ...] = FAMILY_ROLES
                   ) -> list[Member]:
    """Return a family's members with the given roles, in a stable order."""
    return list(session.exec(
        select(Member).where(Member.family_id == family_id, col(Member.role).in_(roles))
        .order_by(col(Member.id))
    ).all())
