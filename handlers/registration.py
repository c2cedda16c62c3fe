"""Linking a chat to a member (DAFTAR code) and a guardian's consent.

    (unlinked) --DAFTAR code / JOIN code / /start code--> linked
    (linked adult, family consent pending) --any text--> consent.answer
    consent.answer --YA--> consent given (children may now use the bot)
    consent.answer --TIDAK--> consent refused (nothing about a child is processed)

Until a guardian agrees, a child is told that a guardian must agree first, and nothing
about the child is processed beyond the registration record (UU 27/2022, PP 17/2025).
"""

from __future__ import annotations

import re

from sqlmodel import select

from bot.engine import Context, Handled, Next
from bot.i18n import N_
from bot.messages import t
from bot.outbox import release_held
from bot.router import Flow, registry
from handlers.parsing import normalise_yes_no
from storage.models import ChannelIdentity, Consent, Family, Member
from storage.repo import family_members, link_identity

_CODE_RE = re.compile(r"^[A-Za-z0-9]{4,16}$")
CONSENT_VERSION = "v1"
KEYWORD_ALIASES = (N_("keywords:register"),)


def _consent_question(ctx: Context) -> None:
    ctx.reply(N_("Before we start, your agreement as the children's guardian: to help your "
                 "family this service stores the children's first names and birth years, "
                 "your village, and the messages you send through it. Only your family and "
                 "your village coordinator see them. You can see your data (DATA) or delete "
                 "it (HAPUS) at any time. Do you agree? Reply YA or TIDAK."))


@registry.command("register", "daftar", "join", "link", needs_member=False, needs_consent=False,
                  global_=True)
def register(ctx: Context) -> Next | None:
    """Link this chat to the member holding the invite code."""
    code = ctx.args.strip().split(" ")[0].upper() if ctx.args.strip() else ""
    if not code:
        if ctx.member is not None:
            ctx.reply(N_("This chat is already linked to {name}. Reply MENU to see what you "
                         "can do."), name=ctx.member.name)
        else:
            ctx.reply(N_("Please send DAFTAR and the invite code from your village "
                         "coordinator, for example: DAFTAR AB12CD"))
        return None
    target = None
    if _CODE_RE.match(code):
        target = ctx.session.exec(select(Member).where(Member.invite_code == code)).first()
    if target is None:
        ctx.reply(N_("I could not find the code {code}. Please check it with your village "
                     "coordinator and send DAFTAR and the code again."), code=code[:16])
        return None
    if ctx.member is not None:
        if ctx.member.id == target.id:
            ctx.reply(N_("This chat is already linked to {name}. Reply MENU to see what you "
                         "can do."), name=target.name)
        else:
            ctx.reply(N_("This chat is already linked to someone else. Ask your village "
                         "coordinator for help."))
        return None
    family = ctx.session.get(Family, target.family_id) if target.family_id else None
    if target.role == "child":
        age = ctx.now.year - target.birth_year if target.birth_year else None
        if age is not None and age < ctx.config.bot.child_account_min_age:
            ctx.reply(N_("Children under {age} do not have their own account here. Your carer "
                         "can use the service for you."), age=ctx.config.bot.child_account_min_age)
            return None
        if family is None or family.consent_status != "given":
            ctx.reply(N_("Hello {name}! A parent or guardian must agree first before you can use "
                         "this service. We have asked your family; try again later."),
                      name=target.name)
            _ask_guardians(ctx, family)
            return None
    identity = link_identity(ctx.session, target, ctx.inbound.channel, ctx.inbound.address,
                             now=ctx.now)
    identity.last_inbound_at = ctx.now
    target.last_inbound_at = ctx.now
    target.welcomed = True
    ctx.member = target
    ctx.audit("identity.link", f"member:{target.id}", channel=ctx.inbound.channel)
    ctx.reply(N_("Welcome, {name}! This is the automated service of the Desmigratif village "
                 "programme. It is not an emergency service: in danger call SAPA 129 "
                 "(WhatsApp 08111-129-129)."), name=target.name)
    held = release_held(ctx.session, target.id or 0, identity, ctx.now)
    if family is not None and family.consent_status != "given" and target.role in ("carer",
                                                                                    "parent"):
        _consent_question(ctx)
        return Next("answer", flow="consent")
    if held:
        ctx.reply(N_("You have {count} message(s) waiting; they follow now."), count=held)
    ctx.reply(N_("Reply MENU to see what you can do."))
    return None


def _ask_guardians(ctx: Context, family: Family | None) -> None:
    """Ask the family's linked adults for consent (once a day at most, by idempotency key)."""
    if family is None:
        return
    for adult in family_members(ctx.session, family.id or 0, roles=("carer", "parent")):
        linked = ctx.session.exec(
            select(ChannelIdentity.id).where(ChannelIdentity.member_id == adult.id)
        ).first()
        if linked is None:
            continue
        ctx.send(adult.id or 0,
                 [t(N_("A child in your family wants to use the Desmigratif service. Reply YA "
                       "to agree as their guardian, or MENU to read more first."))],
                 kind="notice",
                 idempotency_key=f"consent-ask:{family.id}:{adult.id}:{ctx.now.date()}")


@registry.intercept
def consent_gate(ctx: Context) -> Handled | None:
    """Hold back everything about children until a guardian of the family has agreed."""
    member = ctx.member
    if member is None or member.role not in ("child", "carer", "parent"):
        return None
    family = ctx.family
    if family is None or family.consent_status == "given":
        return None
    state_flow = _current_flow(ctx)
    if state_flow == "consent":
        return None
    match = registry.match(ctx.text, fuzzy=False)
    if match is not None and not match.command.needs_consent:
        return None
    if member.role == "child":
        ctx.reply(N_("A parent or guardian must agree first before you can use this service. "
                     "We have asked your family; try again later."))
        _ask_guardians(ctx, family)
        return Handled()
    answer = normalise_yes_no(ctx.text)
    if answer is not None:
        # "YA" straight after the reminder counts as the answer.
        ctx.flow = "consent"
        return Handled(answer_consent(ctx))
    _consent_question(ctx)
    return Handled(Next("answer", flow="consent"))


def _current_flow(ctx: Context) -> str | None:
    return ctx.state_row.flow if ctx.state_row is not None else None


def answer_consent(ctx: Context) -> Next | None:
    """Record the guardian's YA or TIDAK."""
    answer = normalise_yes_no(ctx.text)
    family = ctx.family
    if family is None:
        return None
    if answer is None:
        ctx.reply(N_("Please reply YA to agree or TIDAK to refuse."))
        return Next("answer")
    ctx.session.add(Consent(family_id=family.id or 0, given_by=ctx.m.name,
                            given_by_member_id=ctx.m.id, method="chat", agreed=answer,
                            text_version=CONSENT_VERSION, at=ctx.now))
    family.consent_status = "given" if answer else "refused"
    ctx.session.add(family)
    ctx.audit("consent.given" if answer else "consent.refused", f"family:{family.id}")
    if answer:
        ctx.reply(N_("Thank you, {name}. Your agreement is recorded. Reply MENU to see what "
                     "you can do."), name=ctx.m.name)
        for other in family_members(ctx.session, family.id or 0):
            if other.id != ctx.m.id and other.role in ("child",):
                ctx.send(other.id or 0, [t(N_("Good news: your guardian has agreed. You can "
                                               "now use this service. Reply MENU."))],
                         kind="status")
    else:
        ctx.reply(N_("Understood. Nothing about the children will be processed. If you change "
                     "your mind, reply YA at any time, or talk to your village coordinator."))
    return None


registry.flow(Flow("consent", {"answer": answer_consent}, start="answer"))
