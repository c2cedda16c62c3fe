"""The member's data rights in chat: DATA (what is stored) and HAPUS (erasure).

    DATA  --> a summary of what is stored about the member (the full export is JSON,
              through the coordinator or the API)
    HAPUS --> data_rights.confirm: child: YA erases them; carer/parent: 1 = erase me,
              2 = withdraw consent for the children (their data is erased), BATAL
"""

from __future__ import annotations

from sqlmodel import select

from bot.engine import Context, Next
from bot.i18n import N_
from bot.messages import Outbound, Raw, t
from bot.router import Flow, registry
from handlers.parsing import normalise_yes_no
from storage.export import erase_member, export_member
from storage.models import Consent, ConversationState, Family
from storage.repo import family_members

KEYWORD_ALIASES = (N_("keywords:data"), N_("keywords:erase"))
ADULTS = ("carer", "parent")


@registry.command("data", "data", "dataku", global_=True, needs_consent=False, fuzzy=False,
                  roles=frozenset({"child", "carer", "parent", "coordinator"}),
                  help_msgid=N_("DATA — see what is stored about you (HAPUS to delete it)"),
                  menu_order=85)
def data(ctx: Context) -> Next | None:
    """Send the member a summary of what is stored about them."""
    exported = export_member(ctx.session, ctx.m.id or 0)
    member = exported.get("member", {})
    channels = ", ".join(f"{i.get('channel')}" for i in exported.get("identities", [])) or "-"
    counts = {k: len(v) for k, v in exported.items() if isinstance(v, list)}
    ctx.reply(N_("What is stored about you: name {name}, role {role}, birth year {year}, "
                 "language {lang}, time zone {tz}, chats: {channels}. Records kept: {counts}. "
                 "Your village coordinator can give you a full copy. To delete your data, "
                 "reply HAPUS."),
              name=Raw(str(member.get("name", ""))), role=Raw(str(member.get("role", ""))),
              year=Raw(str(member.get("birth_year") or "-")),
              lang=Raw(str(member.get("language", ""))), tz=Raw(str(member.get("timezone", ""))),
              channels=Raw(channels),
              counts=Raw(", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "-"))
    return None


@registry.command("erase", "hapus", "delete", global_=True, needs_consent=False, fuzzy=False,
                  roles=frozenset({"child", "carer", "parent"}))
def erase(ctx: Context) -> Next | None:
    """Ask what to erase, and for confirmation."""
    if ctx.m.role in ADULTS:
        ctx.reply(N_("What should be deleted? Reply 1 = my own data, 2 = withdraw my consent "
                     "for the children (their data is deleted), or BATAL."))
    else:
        ctx.reply(N_("Delete all your data from this service? Reply YA to delete, or BATAL."))
    return Next("confirm", flow="data_rights")


def confirm(ctx: Context) -> Next | None:
    """Erase what the member chose."""
    text = ctx.text.strip()
    member = ctx.m
    choice = text if member.role in ADULTS else ("1" if normalise_yes_no(text) else "")
    if choice not in ("1", "2"):
        ctx.reply(N_("Please reply with the number of your choice, or BATAL."))
        return Next("confirm")
    if choice == "2":
        return _withdraw_consent(ctx)
    address = Outbound([t(N_("Your data has been deleted. Thank you for using the service. "
                             "To come back, ask your village coordinator for a new code."))],
                       channel=ctx.inbound.channel, address=ctx.inbound.address, kind="reply",
                       urgent=True)
    _drop_state(ctx)
    erase_member(ctx.session, member.id or 0, now=ctx.now, actor=f"member:{member.id}")
    ctx.outbox = [o for o in ctx.outbox if o.member_id != member.id] + [address]
    return None


def _withdraw_consent(ctx: Context) -> Next | None:
    family = ctx.session.get(Family, ctx.m.family_id) if ctx.m.family_id else None
    if family is None:
        return None
    children = family_members(ctx.session, family.id or 0, roles=("child",))
    for child in children:
        erase_member(ctx.session, child.id or 0, now=ctx.now, actor=f"member:{ctx.m.id}")
    family.consent_status = "withdrawn"
    ctx.session.add(family)
    for consent in ctx.session.exec(select(Consent).where(Consent.family_id == family.id)).all():
        if consent.withdrawn_at is None:
            consent.withdrawn_at = ctx.now
            ctx.session.add(consent)
    ctx.audit("consent.withdrawn", f"family:{family.id}", children=len(children))
    ctx.reply(N_("Your consent is withdrawn and the children's data ({count}) has been "
                 "deleted. Your village coordinator has been told."), count=len(children))
    return None


def _drop_state(ctx: Context) -> None:
    state = ctx.session.get(ConversationState, ctx.m.id)
    if state is not None:
        ctx.session.delete(state)
        ctx.session.flush()
    ctx.state_row = None


registry.flow(Flow("data_rights", {"confirm": confirm}, start="confirm"))
