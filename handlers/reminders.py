"""Reminders in each person's own time: the parents' check-in, WAKTU and LIBUR.

    (any) --WAKTU 20:00--> reminder time changed (in the member's own time zone), the
                           next reminder shown; WAKTU alone shows the next reminder
    (any) --LIBUR Jumat--> (parents) the weekly check-in moves to their day off
Both recompute the member's schedule rows at once (bot.scheduler.reschedule), in the
same transaction. The check-in itself is a reminder kind: the scheduler asks the database
who is due, each in their own time zone, and calls ``_checkin`` for each of them.
"""

from __future__ import annotations

from datetime import datetime, time

from babel.dates import get_day_names
from sqlmodel import Session

from bot.config import Config
from bot.engine import Context, Next
from bot.i18n import N_, babel_locale, format_when
from bot.messages import Outbound, t
from bot.router import registry
from bot.scheduler import (
    ReminderKind,
    parse_hhmm,
    parse_schedule,
    reminder_kind,
    reschedule,
    schedule_for,
    upcoming_for,
)
from handlers.parsing import parse_time_of_day, parse_weekday
from storage.models import Member

KEYWORD_ALIASES = (N_("keywords:reminder_time"), N_("keywords:rest_day"))
TIME_ROLES = frozenset({"parent", "carer"})


# --- the parents' weekly check-in -------------------------------------------------------


def _checkin(session: Session, member: Member, at: datetime, config: Config) -> list[Outbound]:
    """A warm nudge to send news home, in the parent's language."""
    text = t(N_("Hello {name}, time for news from you! Send KABAR and a message for your "
                "children, for example: KABAR All is well here, I miss you all."),
             name=member.name)
    # Outside WhatsApp's 24-hour window this goes as the approved "reminder" template.
    return [Outbound([text], member_id=member.id, kind="reminder", template="reminder",
                     template_vars={"1": member.name})]


PARENT_CHECKIN = reminder_kind(ReminderKind(
    name="parent_checkin",
    roles=frozenset({"parent"}),
    schedule=lambda config: config.scheduler.parent_checkin,
    build=_checkin,
    use_rest_day=True,
))


# --- WAKTU and LIBUR ------------------------------------------------------------------


def _when(ctx: Context, instant: datetime) -> str:
    """Format an instant for the member who asked, in their language and time zone."""
    return format_when(instant, ctx.m.language, ctx.m.timezone)


def _day_name(weekday: int, lang: str) -> str:
    return str(get_day_names("wide", locale=babel_locale(lang))[weekday])


def _quiet(at: time, config: Config) -> bool:
    """Tell whether a local time of day falls in the configured quiet hours."""
    start = parse_hhmm(config.scheduler.quiet_hours_start)
    end = parse_hhmm(config.scheduler.quiet_hours_end)
    if start is None or end is None or start == end:
        return False
    return (start <= at or at < end) if start > end else (start <= at < end)


@registry.command("reminder_time", "waktu", "time", roles=TIME_ROLES,
                  help_msgid=N_("WAKTU 20:00 — choose the time of your reminders"),
                  menu_order=70)
def reminder_time(ctx: Context) -> Next | None:
    """Change the local time of the member's reminders: WAKTU 20:00."""
    if not ctx.args.strip():
        upcoming = upcoming_for(ctx.m, ctx.now, ctx.config)
        if upcoming:
            ctx.reply(N_("Your next reminder: {when}. To choose another time, reply WAKTU and "
                         "the time, for example: WAKTU 20:00"),
                      when=_when(ctx, min(upcoming.values())))
        else:
            ctx.reply(N_("To choose the time of your reminders, reply WAKTU and the time, for "
                         "example: WAKTU 20:00"))
        return None
    at = parse_time_of_day(ctx.args)
    if at is None:
        ctx.reply(N_("I could not read that time. Reply WAKTU and the time, for example: "
                     "WAKTU 20:00 or WAKTU 8pm"))
        return None
    sc = ctx.config.scheduler
    if _quiet(at, ctx.config):
        ctx.reply(N_("Reminders do not come at night, from {start} to {end}. Please choose a "
                     "time between {end} and {start}, for example: WAKTU 20:00"),
                  start=sc.quiet_hours_start, end=sc.quiet_hours_end)
        return None
    ctx.m.reminder_time = at.strftime("%H:%M")
    ctx.session.add(ctx.m)
    ctx.session.flush()
    upcoming = reschedule(ctx.session, ctx.m, ctx.now, ctx.config)
    ctx.audit("member.reminder_time", f"member:{ctx.m.id}", time=ctx.m.reminder_time)
    if upcoming:
        ctx.reply(N_("Done: your reminders will come at {time}, your time. The next one: "
                     "{when}."), time=ctx.m.reminder_time,
                  when=_when(ctx, min(upcoming.values())))
    else:
        ctx.reply(N_("Done: your reminders will come at {time}, your time."),
                  time=ctx.m.reminder_time)
    return None


@registry.command("rest_day", "libur", "restday", roles=frozenset({"parent"}),
                  help_msgid=N_("LIBUR Friday — your day off, for the weekly check-in reminder"),
                  menu_order=71)
def rest_day(ctx: Context) -> Next | None:
    """Move a parent's weekly check-in reminder to their day off: LIBUR Jumat."""
    lang = ctx.m.language
    if not ctx.args.strip():
        day = schedule_for(PARENT_CHECKIN, ctx.m, ctx.config).weekday
        if day is None:  # pragma: no cover - a daily check-in has no day to choose
            day = parse_schedule(ctx.config.scheduler.parent_checkin)[0] or 6
        coming = upcoming_for(ctx.m, ctx.now, ctx.config).get(PARENT_CHECKIN.name)
        ctx.reply(N_("Your check-in reminder comes on {day}, next on {when}. If your day off "
                     "is another day, reply LIBUR and the day, for example: LIBUR Friday"),
                  day=_day_name(day, lang), when=_when(ctx, coming) if coming else "-")
        return None
    weekday = parse_weekday(ctx.args)
    if weekday is None:
        ctx.reply(N_("Which day is your day off? Reply LIBUR and the day, for example: "
                     "LIBUR Friday"))
        return None
    ctx.m.rest_day = weekday
    ctx.session.add(ctx.m)
    ctx.session.flush()
    upcoming = reschedule(ctx.session, ctx.m, ctx.now, ctx.config)
    ctx.audit("member.rest_day", f"member:{ctx.m.id}", weekday=weekday)
    nxt = upcoming.get(PARENT_CHECKIN.name)
    ctx.reply(N_("Done: your day off is {day}. Your check-in reminder will come on that day, "
                 "next on {when}."), day=_day_name(weekday, lang),
              when=_when(ctx, nxt) if nxt else "-")
    return None
