"""Demo data: one village, one family (a child, a carer, a parent abroad), one coordinator."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from bot.channels.simulator import address_for
from bot.config import Config
from bot.web.passwords import hash_password
from storage.models import Member, Village
from storage.repo import FamilySpec, MemberSpec, create_coordinator, create_family, link_identity

DEMO_VILLAGE = "Kenanga"
# Printed by `desmigratif demo`: only for the demo database, never for real coordinators.
DEMO_PASSWORD = "kenanga-demo"  # noqa: S105


def seed_demo(session: Session, config: Config, now: datetime) -> tuple[list[Member], str | None]:
    """Create the demo data unless it exists; return the members and a new API token."""
    if session.exec(select(Village).where(Village.name == DEMO_VILLAGE)).first() is not None:
        members = list(session.exec(select(Member).order_by(Member.id)).all())  # type: ignore[arg-type]
        return members, None
    spec = FamilySpec(
        village=DEMO_VILLAGE, district="Indramayu", region="indramayu", language="id",
        members=[
            MemberSpec(role="child", name="Dimas", birth_year=now.year - 14),
            MemberSpec(role="child", name="Sari", birth_year=now.year - 5),
            MemberSpec(role="carer", name="Mbah Warsini", birth_year=1958),
            MemberSpec(role="parent", name="Ibu Rina", timezone="Asia/Hong_Kong"),
        ],
        consent_given_by="Mbah Warsini", consent_method="signed form",
    )
    _family, members = create_family(session, spec, now=now, languages=config.bot.languages,
                                     actor="demo")
    coordinator, token = create_coordinator(session, name="Pak Darto", village=DEMO_VILLAGE,
                                            now=now, password_hash=hash_password(DEMO_PASSWORD))
    coord_member = session.get(Member, coordinator.member_id)
    if coord_member is not None:
        members.append(coord_member)
    for member in members:
        if member.role == "child" and (now.year - (member.birth_year or now.year)
                                       < config.bot.child_account_min_age):
            continue  # under 13: the carer speaks for them (no account of their own)
        # Linked to the simulator, so the demo works with no tokens at all.
        link_identity(session, member, "simulator", address_for(member.id or 0), now=now)
    return members, token
