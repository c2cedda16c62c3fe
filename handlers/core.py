"""The keywords every member has: MENU, BAHASA, BATAL, STOP and MULAI.

    (any state) --MENU/HELP--> menu shown, flow ended
    (any state) --BAHASA xx--> language switched, flow kept
    (in a flow) --BATAL------> flow ended
    (any state) --STOP-------> opted out, unasked messages cancelled
    (opted out) --MULAI------> opted back in
"""

from __future__ import annotations

from bot.engine import Context, Next
from bot.i18n import N_, language_name
from bot.messages import Outbound, Part, t
from bot.outbox import cancel_unasked
from bot.router import registry

# Names people type instead of codes: BAHASA jawa, LANG english.
LANGUAGE_NAMES = {
    "indonesia": "id", "indonesian": "id", "bahasa": "id", "ind": "id", "in": "id",
    "english": "en", "inggris": "en", "eng": "en",
    "jawa": "jv", "javanese": "jv", "jowo": "jv", "jw": "jv",
    "sunda": "su", "sundanese": "su",
}


# Extra words per language live in the catalogs (comma-separated), e.g. jv "MANDEG".
KEYWORD_ALIASES = (N_("keywords:menu"), N_("keywords:language"), N_("keywords:cancel"),
                   N_("keywords:stop"), N_("keywords:start"))


def menu_parts(ctx: Context, *, short: bool = False) -> list[Part]:
    """Return the menu for the member's role, one part a line (short: after unknown text)."""
    role = ctx.member.role if ctx.member else "child"
    commands = [c for c in registry.menu_commands(role) if c.help_msgid]
    if short:
        words = ", ".join(cmd.keywords[0].upper() for cmd in commands[:5])
        return [t(N_("Sorry, I did not understand that. Reply with one of: {words}, or MENU "
                     "for everything."), words=words)]
    parts: list[Part] = [t(N_("What you can do here (reply with the word in capitals):"))]
    parts.extend(t(cmd.help_msgid) for cmd in commands if cmd.help_msgid)
    return parts


@registry.command("menu", "menu", "bantuan", "help", "?", global_=True, needs_consent=False)
def menu(ctx: Context) -> Next | None:
    """Show what this member can do, in their language."""
    ctx.outbox.append(Outbound(menu_parts(ctx), member_id=ctx.m.id, kind="reply", urgent=True,
                               sep="\n"))
    return None


@registry.command("language", "bahasa", "lang", "language", global_=True, keeps_flow=True,
                  needs_consent=False, help_msgid=N_("BAHASA id / en / jv — change the language"),
                  menu_order=80)
def language(ctx: Context) -> Next | None:
    """Switch the member's language: BAHASA xx."""
    wanted = ctx.args.strip().lower().split(" ")[0] if ctx.args.strip() else ""
    code = LANGUAGE_NAMES.get(wanted, wanted)
    available = ctx.config.bot.languages
    if code not in available:
        choices = ", ".join(f"{c} ({language_name(c)})" for c in available)
        ctx.reply(N_("Which language? Reply BAHASA and a code: {choices}"), choices=choices)
        return None
    ctx.m.language = code
    ctx.session.add(ctx.m)
    ctx.reply(N_("Done: I will write to you in English from now on. Reply MENU to see what "
                 "you can do."))
    return None


@registry.command("cancel", "batal", "cancel", global_=True, fuzzy=False, needs_consent=False)
def cancel(ctx: Context) -> Next | None:
    """Leave the current flow (BATAL with a number cancels a fund request instead)."""
    if ctx.args.strip().lstrip("#").isdecimal() and "fund_cancel" in registry.commands:
        return registry.commands["fund_cancel"].handler(ctx)
    if ctx.flow is None:
        ctx.reply(N_("There is nothing to cancel. Reply MENU to see what you can do."))
    else:
        ctx.reply(N_("Cancelled. Nothing was sent. Reply MENU to see what you can do."))
    return None


@registry.command("stop", "stop", "berhenti", "unsubscribe", "mandeg", global_=True, fuzzy=False,
                  needs_consent=False,
                  help_msgid=N_("STOP — no more messages you did not ask for (MULAI to resume)"),
                  menu_order=90)
def stop(ctx: Context) -> Next | None:
    """Opt out of every message the member did not ask for, queued ones included."""
    ctx.m.opted_out = True
    ctx.session.add(ctx.m)
    cancelled = cancel_unasked(ctx.session, ctx.m.id or 0, ctx.now)
    ctx.audit("member.opt_out", f"member:{ctx.m.id}", cancelled=cancelled)
    ctx.reply(N_("You will get no more messages you did not ask for. Reply MULAI to start "
                 "again. TOLONG still reaches a person if you need help."))
    return None


@registry.command("start", "mulai", "start", "resume", global_=True, fuzzy=False,
                  needs_member=False, needs_consent=False)
def start(ctx: Context) -> Next | None:
    """Opt back in (MULAI); Telegram's /start with a code links the chat instead."""
    if ctx.args.strip() or ctx.member is None:
        return registry.commands["register"].handler(ctx)
    ctx.m.opted_out = False
    ctx.session.add(ctx.m)
    ctx.audit("member.opt_in", f"member:{ctx.m.id}")
    ctx.reply(N_("Welcome back! You will get messages from your family and village again. "
                 "Reply MENU to see what you can do."))
    return None
