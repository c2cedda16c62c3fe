"""TIPS: a parenting tip for the family's children's ages, none repeated until all are seen.

    (any) --TIPS--> one tip from the member's audience (carer or parent abroad), the
                    bands of the family's children, the village's region pack first
"""

from __future__ import annotations

import random
from datetime import datetime

from sqlmodel import Session, col, delete, select

from bot.content import Audience, Tip, TipLibrary, age_band, load_default
from bot.engine import Context, Next
from bot.i18n import N_
from bot.messages import Part, Raw, t
from bot.router import registry
from storage.models import Member, TipSeen, Village
from storage.repo import family_members

TIP_ROLES = frozenset({"carer", "parent"})
KEYWORD_ALIASES = (N_("keywords:tips"),)


def pick_tip_for(session: Session, member: Member, now: datetime, *,
                 library: TipLibrary | None = None,
                 rng: random.Random | None = None) -> Tip | None:
    """Choose the member's next tip and record it as seen (in the caller's session)."""
    today = now.date()
    library = library or load_default()
    bands = set()
    if member.family_id:
        for child in family_members(session, member.family_id, roles=("child",)):
            if child.birth_year is not None:
                band = age_band(child.birth_year, today)
                if band is not None:
                    bands.add(band)
    village = session.get(Village, member.village_id)
    region = village.region if village else None
    seen = set(session.exec(select(TipSeen.tip_id).where(TipSeen.member_id == member.id)).all())
    audience: Audience = "parent" if member.role == "parent" else "carer"
    tip, restarted = library.pick(lang=member.language, audience=audience, bands=bands,
                                  region=region, seen=seen, rng=rng)
    if tip is None:
        return None
    if restarted:
        session.exec(delete(TipSeen).where(col(TipSeen.member_id) == member.id))  # type: ignore[call-overload]
    session.add(TipSeen(member_id=member.id or 0, tip_id=tip.id, at=now))
    return tip


@registry.command("tips", "tips", "tip", "saran", roles=TIP_ROLES,
                  help_msgid=N_("TIPS — a parenting tip for your children's ages"), menu_order=30)
def tips(ctx: Context) -> Next | None:
    """Send the member a tip they have not seen yet."""
    tip = pick_tip_for(ctx.session, ctx.m, ctx.now)
    if tip is None:
        ctx.reply(N_("There are no tips in your language yet. Reply MENU to see what you can do."))
        return None
    ctx.reply_parts(tip_parts(tip))
    return None


def tip_parts(tip: Tip) -> list[Part]:
    """Return a tip as the message people read (TIPS and the weekly tip)."""
    return [t(N_("Tip: {title}"), title=Raw(tip.theme_title)), Raw(tip.text),
            t(N_("Reply TIPS for another tip, or MENU."))]
