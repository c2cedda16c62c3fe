"""Help in danger: TOLONG/SOS, and high-risk words in any message.

    TOLONG / SOS           --> coordinators alerted at once; a calm answer with SAPA 129
    a high-risk phrase     --> the same, plus "reply BUKAN if you did not mean that"
    BUKAN (within an hour) --> the word alert is withdrawn; coordinators are told
    coordinator: ACK id    --> the alert is in hand (else, after 30 minutes, the district
                               coordinator is alerted too)

The person is never questioned (UNICEF's guidance for chatbots): the bot hands over to
people at once and always shows the official help line.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from bot.config import Config
from bot.content import load_default_lexicon
from bot.engine import Context, Handled, Next
from bot.i18n import N_
from bot.messages import Outbound, Raw, t
from bot.router import registry
from storage.models import Alert, AuditLog, Coordinator, Member, Village
from storage.repo import (
    coordinator_for_member,
    coordinator_village_ids,
    village_coordinator_members,
)

KEYWORD_ALIASES = (N_("keywords:sos"), N_("keywords:retract"), N_("keywords:ack"))
RETRACT_WINDOW = timedelta(hours=1)


def _where_to_reach(ctx: Context) -> str:
    identity = ctx.identity
    if identity is None:
        return "-"
    if identity.channel == "whatsapp":
        return identity.address.removeprefix("whatsapp:")
    if identity.channel == "telegram":
        return f"Telegram chat {identity.address}"
    return f"{identity.channel} {identity.address}"


def _recent_open_alert(ctx: Context) -> Alert | None:
    """Return the member's open alert of the last ten minutes (pressed twice: no flood)."""
    return ctx.session.exec(
        select(Alert).where(Alert.member_id == ctx.m.id, Alert.status == "open",
                            col(Alert.created_at) > ctx.now - timedelta(minutes=10))
    ).first()


def raise_alert(ctx: Context, *, kind: str, category: str = "") -> Alert:
    """Create an alert, tell the village coordinators at once, and answer with care."""
    member = ctx.m
    alert = Alert(village_id=member.village_id, family_id=member.family_id,
                  member_id=member.id, kind=kind, category=category, created_at=ctx.now)
    ctx.session.add(alert)
    ctx.session.flush()
    ctx.audit("alert.raise", f"alert:{alert.id}", kind=kind, category=category)
    coordinators = village_coordinator_members(ctx.session, member.village_id)
    for coordinator in coordinators:
        ctx.send(coordinator.id or 0, [t(
            N_("SAFETY ALERT #{id}: {name} ({role}, family {family}) needs help ({kind}). "
               "Reach them on {where}. Contact them yourself; do not forward personal "
               "details. Reply ACK {id} when it is in hand."),
            id=alert.id, name=Raw(member.name), role=Raw(member.role),
            family=member.family_id or "-", kind=Raw(category or kind),
            where=Raw(_where_to_reach(ctx)))], kind="alert", urgent=True)
    names = ", ".join(c.name for c in coordinators) or "-"
    ctx.reply(N_("Thank you for telling us. We have let {names} from your village know, and "
                 "they will contact you soon. If you are in danger now, call SAPA 129 or "
                 "WhatsApp 08111-129-129. You are not alone."), names=Raw(names))
    return alert


@registry.command("sos", "tolong", "sos", "help_me", global_=True, keeps_flow=True,
                  needs_consent=False, roles=frozenset({"child", "carer", "parent"}),
                  help_msgid=N_("TOLONG — you or a child is in danger: a person will contact "
                                "you"), menu_order=5)
def sos(ctx: Context) -> Next | None:
    """Alert the village coordinators at once."""
    if _recent_open_alert(ctx) is not None:
        # Pressed twice: answer again, but don't flood the coordinators.
        ctx.reply(N_("Your village coordinator already knows and will contact you soon. If "
                     "you are in danger now, call SAPA 129 or WhatsApp 08111-129-129."))
        return None
    raise_alert(ctx, kind="sos")
    return None


def safeguarding_check(ctx: Context) -> Handled | None:
    """Raise an alert when a message contains a high-risk phrase."""
    member = ctx.member
    if member is None or member.role == "coordinator" or not ctx.text:
        return None
    match = registry.match(ctx.text, fuzzy=False)
    if match is not None and match.command.name in ("sos", "retract"):
        return None
    hit = load_default_lexicon().match(ctx.text)
    if hit is None:
        return None
    if _recent_open_alert(ctx) is None:
        raise_alert(ctx, kind="word", category=hit.category)
    else:
        ctx.reply(N_("Your village coordinator already knows and will contact you soon. If "
                     "you are in danger now, call SAPA 129 or WhatsApp 08111-129-129."))
    ctx.reply(N_("If we misunderstood and you did not mean that, reply BUKAN."))
    return Handled()


registry.intercept(safeguarding_check, first=True)


@registry.command("retract", "bukan", "salah", "not_me", global_=True, keeps_flow=True,
                  needs_consent=False, fuzzy=False)
def retract(ctx: Context) -> Next | None:
    """Withdraw a recent word alert ("I didn't mean that")."""
    alert = ctx.session.exec(
        select(Alert).where(Alert.member_id == ctx.m.id, Alert.kind == "word",
                            Alert.status == "open",
                            col(Alert.created_at) > ctx.now - RETRACT_WINDOW)
        .order_by(col(Alert.id).desc())
    ).first()
    if alert is None:
        ctx.reply(N_("Reply MENU to see what you can do."))
        return None
    alert.status = "retracted"
    ctx.session.add(alert)
    ctx.audit("alert.retract", f"alert:{alert.id}")
    for coordinator in village_coordinator_members(ctx.session, ctx.m.village_id):
        ctx.send(coordinator.id or 0, [t(N_("Alert #{id}: the person says it was a "
                                            "misunderstanding. A friendly check is still "
                                            "welcome."), id=alert.id)],
                 kind="alert", urgent=True)
    ctx.reply(N_("Thank you, we have noted that. If you ever need help, reply TOLONG."))
    return None


@registry.command("ack", "ack", "tangani", roles=frozenset({"coordinator"}), fuzzy=False,
                  help_msgid=N_("ACK id — you have a safety alert in hand"), menu_order=10)
def ack(ctx: Context) -> Next | None:
    """A coordinator takes an alert in hand."""
    ident = ctx.args.strip().lstrip("#").split(" ")[0]
    alert = ctx.session.get(Alert, int(ident)) if ident.isdecimal() else None
    coord = coordinator_for_member(ctx.session, ctx.m.id)
    if alert is None or coord is None or \
            alert.village_id not in coordinator_village_ids(ctx.session, coord):
        ctx.reply(N_("I could not find alert #{id}."), id=ident or "?")
        return None
    if alert.status == "open":
        acknowledge(ctx.session, alert, coord, ctx.now)
    ctx.reply(N_("Alert #{id} is marked as in hand. Thank you."), id=alert.id)
    return None


def acknowledge(session: Session, alert: Alert, coord: Coordinator, now: datetime) -> None:
    """Mark an alert in hand by a coordinator (chat and dashboard)."""
    alert.status, alert.acknowledged_at, alert.acknowledged_by = "acknowledged", now, coord.id
    session.add(alert)
    session.add(AuditLog(at=now, actor=f"coordinator:{coord.id}", action="alert.ack",
                         target=f"alert:{alert.id}", village_id=alert.village_id))


def escalate_alerts(session: Session, now: datetime, config: Config) -> list[Outbound]:
    """Send alerts nobody acknowledged in time to the district coordinators."""
    limit = now - timedelta(minutes=config.scheduler.alert_escalation_minutes)
    out: list[Outbound] = []
    alerts = session.exec(
        select(Alert).where(Alert.status == "open", col(Alert.escalated).is_(False),
                            col(Alert.created_at) <= limit).limit(500)
    ).all()
    for alert in alerts:
        village = session.get(Village, alert.village_id)
        alert.escalated = True
        session.add(alert)
        if village is None:
            continue
        district = session.exec(
            select(Coordinator).where(Coordinator.level == "district",
                                      Coordinator.district == village.district)
        ).all()
        member = session.get(Member, alert.member_id) if alert.member_id else None
        for coord in district:
            if coord.member_id is None:
                continue
            out.append(Outbound([t(
                N_("SAFETY ALERT #{id} in {village} has not been taken in hand for {minutes} "
                   "minutes ({name}, {kind}). Please make sure someone contacts them. Reply "
                   "ACK {id} when it is in hand."),
                id=alert.id, village=Raw(village.name),
                minutes=config.scheduler.alert_escalation_minutes,
                name=Raw(member.name if member else "-"),
                kind=Raw(alert.category or alert.kind))],
                member_id=coord.member_id, kind="alert", urgent=True,
                idempotency_key=f"escalate:{alert.id}:{coord.id}"))
        session.add(AuditLog(at=now, actor="system", action="alert.escalate",
                             target=f"alert:{alert.id}", village_id=alert.village_id))
    return out
