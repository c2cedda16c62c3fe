"""News between parent and child (KABAR), and reading what waited (BACA).

    KABAR text --> relayed: a parent's to the children (13+) and carers; a child's or a
                   carer's to the parents; each on their own channel, in their language
    KABAR      --> news.text: "what is your message?" --> relayed
    BACA       --> messages held while a WhatsApp window was closed are sent now
"""

from __future__ import annotations

from sqlmodel import col, func, select

from bot.engine import Context, Next
from bot.i18n import N_
from bot.messages import Raw, t
from bot.outbox import quiet_until
from bot.router import Flow, registry
from storage.models import Member, Outbox, Relay
from storage.repo import family_members

KEYWORD_ALIASES = (N_("keywords:news"), N_("keywords:read"))
FAMILY = frozenset({"parent", "carer", "child"})
ROLE_LABEL = {"parent": N_("parent"), "carer": N_("carer"), "child": N_("child")}


def recipients_for(ctx: Context) -> list[Member]:
    """Return who a member's news goes to."""
    member = ctx.m
    if member.role == "parent":
        min_age = ctx.config.bot.child_account_min_age
        people = family_members(ctx.session, member.family_id or 0, roles=("child", "carer"))
        # Children under 13 have no account: their carers read for them.
        return [p for p in people if p.role == "carer" or (
            p.birth_year is not None and ctx.now.year - p.birth_year >= min_age)]
    return family_members(ctx.session, member.family_id or 0, roles=("parent",))


def relay(ctx: Context, text: str) -> None:
    """Relay text to the member's family and log it for the family's export."""
    member = ctx.m
    if len(text) > ctx.config.bot.max_text_length:
        ctx.reply(N_("That message is too long ({length} characters). Please send at most "
                     "{limit} characters at a time."), length=len(text),
                  limit=ctx.config.bot.max_text_length)
        return
    people = recipients_for(ctx)
    if not people:
        ctx.reply(N_("There is nobody in your family to send this to yet. Ask your village "
                     "coordinator to register them."))
        return
    frame = t(N_("Message from {name} ({role}):\n{text}"), name=Raw(member.name),
              role=t(ROLE_LABEL.get(member.role, member.role)), text=Raw(text))
    answer = t(N_("To answer, reply KABAR and your message."))
    for person in people:
        ctx.send(person.id or 0, [frame, answer], kind="relay", template="relay",
                 template_vars={"1": member.name})
    ctx.session.add(Relay(family_id=member.family_id or 0, from_member_id=member.id,
                          from_role=member.role, text=text, recipients=len(people), at=ctx.now))
    names = ", ".join(p.name for p in people)
    ctx.reply(N_("Sent to {names}. Reply MENU to see what else you can do."), names=Raw(names))
    asleep = [p.name for p in people if quiet_until(p.timezone, ctx.now, ctx.config)]
    if asleep:
        # Quiet hours hold news until morning where they live: say so, or it looks lost.
        ctx.reply(N_("It is night where {names} live(s): it will arrive in their morning."),
                  names=Raw(", ".join(asleep)))


@registry.command("news", "kabar", "news", "pesan", roles=FAMILY,
                  help_msgid=N_("KABAR message — send news to your family"), menu_order=10)
def news(ctx: Context) -> Next | None:
    """Relay the text after KABAR, or ask for it."""
    text = ctx.args.strip()
    if not text:
        ctx.reply(N_("What is your message? Write it now (or BATAL to stop)."))
        return Next("text", flow="news")
    relay(ctx, text)
    return None


def step_text(ctx: Context) -> Next | None:
    """Take the message asked for by a bare KABAR."""
    if not ctx.text.strip():
        ctx.reply(N_("What is your message? Write it now (or BATAL to stop)."))
        return Next("text")
    relay(ctx, ctx.text.strip())
    return None


registry.flow(Flow("news", {"text": step_text}, start="text"))


@registry.command("read", "baca", "read", global_=True, keeps_flow=True, needs_consent=False)
def read(ctx: Context) -> Next | None:
    """Tell the member their waiting messages follow (writing opened their window)."""
    waiting = ctx.session.exec(
        select(func.count()).select_from(Outbox).where(
            Outbox.member_id == ctx.m.id, col(Outbox.status).in_(("queued", "held")),
            Outbox.kind != "reply")
    ).one()
    if waiting:
        ctx.reply(N_("You have {count} message(s) waiting; they follow now."), count=waiting)
    else:
        ctx.reply(N_("There are no new messages for you. Reply MENU to see what you can do."))
    return None
