"""UMUMKAN / ANNOUNCE: a coordinator's announcement to their village, from the chat.

    (coordinator) --UMUMKAN text--> a broadcast to every family member of the village
                                    (opted-out members skipped); the reply says how many
                                    it reaches and how long sending takes

The same broadcast the API and the dashboard make (bot.broadcast): queued in bulk in
this message's transaction, sent by the sender at each channel's rate.
"""

from __future__ import annotations

from sqlmodel import select

from bot.broadcast import BroadcastError, check_text, create_broadcast, progress
from bot.engine import Context, Next
from bot.i18n import N_
from bot.messages import Part, Raw, t
from bot.router import registry
from storage.models import Coordinator, Village

KEYWORD_ALIASES = (N_("keywords:announce"),)


def duration_part(seconds: int) -> Part:
    """Return a rough duration for people: under a minute, or minutes."""
    if seconds < 60:
        return t(N_("under a minute"))
    return t(N_("about {minutes} min"), minutes=-(-seconds // 60))


# No typo tolerance: a mistyped word must not reach a whole village.
@registry.command("announce", "umumkan", "announce", roles=frozenset({"coordinator"}),
                  fuzzy=False,
                  help_msgid=N_("UMUMKAN text — an announcement to every family of your village"),
                  menu_order=15)
def announce(ctx: Context) -> Next | None:
    """Broadcast the text after UMUMKAN to the coordinator's village."""
    coord = ctx.session.exec(select(Coordinator).where(Coordinator.member_id == ctx.m.id)).first()
    village = ctx.session.get(Village, coord.village_id) if coord is not None else None
    if coord is None or village is None:
        ctx.reply(N_("Only a village coordinator can send announcements."))
        return None
    text = ctx.args.strip()
    if not text:
        ctx.reply(N_("Write the announcement after the word, for example: UMUMKAN Posyandu "
                     "on Saturday at 08:00 at the village hall."))
        return None
    try:
        text = check_text(text, "text", ctx.config)
    except BroadcastError:
        ctx.reply(N_("That announcement is too long: at most {limit} characters."),
                  limit=ctx.config.bot.max_text_length)
        return None
    b = create_broadcast(ctx.session, village=village, text=text, now=ctx.now,
                         config=ctx.config, actor=f"coordinator:{coord.id}",
                         coordinator_id=coord.id)
    p = progress(ctx.session, b, ctx.config, now=ctx.now)
    ctx.reply(N_("Announcement #{id} is on its way to {count} people in {village}; sending "
                 "takes {duration}."), id=b.id, count=p["queued"] + p["held"],
              village=Raw(village.name), duration=duration_part(p["eta_s"]))
    if p["waiting_until"]:
        ctx.reply(N_("It is quiet hours for some of them: they get it when their morning "
                     "starts."))
    if p["held"]:
        ctx.reply(N_("{count} of them have not linked a chat yet: they get it when they do."),
                  count=p["held"])
    if p["opted_out"]:
        ctx.reply(N_("{count} people opted out of announcements and will not get it."),
                  count=p["opted_out"])
    return None
