"""The weekly family bridge: carers' weekly question, the parents' digest, silent parents.

    (Friday 16:00, carer's time) question sent --> bridge.mood --> bridge.school -->
        bridge.story --> (next child...) --> answers saved; digest to the parents
    a parent silent for 14 days --> a gentle reminder, and the coordinators are told
    a fund request due within 3 days --> the parents are reminded once

The scheduler decides *when* (bot/scheduler.py); this module decides *what is said*.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

from sqlmodel import Session, col, select

from bot.config import Config
from bot.engine import Context, Next
from bot.i18n import N_
from bot.messages import Money, Outbound, Part, Raw, t
from bot.router import Flow, registry
from bot.scheduler import ReminderKind, periodic_job, reminder_kind
from handlers.fund import purpose_text
from handlers.safety import escalate_alerts
from storage.models import ConversationState, Family, FundRequest, Member, WeeklyAnswer
from storage.repo import family_members, village_coordinator_members

QUESTION_HOURS = 48  # the weekly question waits this long for an answer
MOOD = {"1": N_("happy and well"), "2": N_("so-so"), "3": N_("not well")}
SCHOOL = {"1": N_("went to school every day"), "2": N_("missed some days"),
          "3": N_("did not go to school")}
SKIP = {"-", "lewati", "skip", "tidak", "ora", "no"}


def _child(session: Session, child_id: int) -> Member | None:
    return session.get(Member, child_id)


def _ask_mood(child: Member) -> Part:
    return t(N_("This week's question about {child}: how is {child}? Reply 1 = happy and well, "
                "2 = so-so, 3 = not well (or BATAL to skip)."), child=Raw(child.name))


def build_carer_question(session: Session, member: Member, now: datetime,
                         config: Config) -> list[Outbound]:
    """Start the weekly question for a carer (stages the flow state; returns the message)."""
    family = session.get(Family, member.family_id) if member.family_id else None
    if family is None or family.consent_status != "given":
        return []
    children = family_members(session, family.id or 0, roles=("child",))
    if not children:
        return []
    state = session.get(ConversationState, member.id)
    if state is not None and state.expires_at > now:
        return []  # busy in another flow: skip this week rather than interrupt
    if state is not None:
        session.delete(state)
        session.flush()
    data = {"children": [c.id for c in children], "i": 0, "answers": {}}
    session.add(ConversationState(member_id=member.id or 0, flow="bridge", step="mood",
                                  data=json.dumps(data), updated_at=now,
                                  expires_at=now + timedelta(hours=QUESTION_HOURS)))
    return [Outbound([_ask_mood(children[0])], member_id=member.id, kind="reminder",
                     template="weekly_question",
                     template_vars={"1": member.name, "2": children[0].name})]


def _current(ctx: Context) -> Member | None:
    ids: list[int] = ctx.data["children"]
    return _child(ctx.session, ids[ctx.data["i"]])


def step_mood(ctx: Context) -> Next | None:
    """Take how the child is (1-3)."""
    child = _current(ctx)
    choice = ctx.text.strip().rstrip(".")
    if choice not in MOOD or child is None:
        ctx.reply(N_("Please reply 1, 2 or 3 (or BATAL to skip this week)."))
        return Next("mood", ctx.data)
    ctx.data["answers"].setdefault(str(child.id), {})["mood"] = choice
    ctx.reply(N_("Did {child} go to school this week? Reply 1 = every day, 2 = missed some "
                 "days, 3 = did not go."), child=Raw(child.name))
    return Next("school", ctx.data)


def step_school(ctx: Context) -> Next | None:
    """Take school attendance (1-3)."""
    child = _current(ctx)
    choice = ctx.text.strip().rstrip(".")
    if choice not in SCHOOL or child is None:
        ctx.reply(N_("Please reply 1, 2 or 3 (or BATAL to skip this week)."))
        return Next("school", ctx.data)
    ctx.data["answers"][str(child.id)]["school"] = choice
    ctx.reply(N_("One thing {child} did this week, in a few words? (or - to skip)"),
              child=Raw(child.name))
    return Next("story", ctx.data)


def step_story(ctx: Context) -> Next | None:
    """Take one thing the child did; move to the next child or finish."""
    child = _current(ctx)
    if child is None:
        return None
    story = ctx.text.strip()
    if story.lower() not in SKIP and story:
        ctx.data["answers"][str(child.id)]["story"] = story[:300]
    ids: list[int] = ctx.data["children"]
    if ctx.data["i"] + 1 < len(ids):
        ctx.data["i"] += 1
        nxt = _current(ctx)
        if nxt is not None:
            ctx.reply_parts([_ask_mood(nxt)])
            return Next("mood", ctx.data)
    _finish(ctx)
    return None


def _finish(ctx: Context) -> None:
    member = ctx.m
    answers: dict[str, dict[str, str]] = ctx.data["answers"]
    for child_id, answer in answers.items():
        ctx.session.add(WeeklyAnswer(family_id=member.family_id or 0, member_id=member.id,
                                     child_id=int(child_id), answers=json.dumps(answer),
                                     created_at=ctx.now, digested_at=ctx.now))
    parts: list[Part] = [t(N_("This week's news from {carer}:"), carer=Raw(member.name))]
    for child_id, answer in answers.items():
        child = _child(ctx.session, int(child_id))
        if child is None:
            continue
        line = t(N_("{child}: {mood}, {school}."), child=Raw(child.name),
                 mood=t(MOOD[answer["mood"]]), school=t(SCHOOL[answer["school"]]))
        parts.append(line)
        if answer.get("story"):
            parts.append(t(N_("This week: {story}"), story=Raw(answer["story"])))
    parts.append(t(N_("To answer, reply KABAR and your message.")))
    for parent in family_members(ctx.session, member.family_id or 0, roles=("parent",)):
        ctx.outbox.append(Outbound(parts, member_id=parent.id, kind="digest",
                                   template="digest", template_vars={"1": member.name},
                                   sep="\n"))
    ctx.reply(N_("Thank you! The parents will get your news. Reply MENU to see what you can "
                 "do."))


registry.flow(Flow("bridge", {"mood": step_mood, "school": step_school, "story": step_story},
                   start="mood"))


def silent_parents(session: Session, now: datetime, config: Config) -> list[Outbound]:
    """Remind parents silent for N days, once per silence, and tell the coordinators."""
    days = config.scheduler.silent_parent_days
    limit = now - timedelta(days=days)
    out: list[Outbound] = []
    parents = session.exec(
        select(Member).where(Member.role == "parent", col(Member.opted_out).is_(False),
                             col(Member.family_id).is_not(None),
                             col(Member.created_at) <= limit,
                             (col(Member.last_inbound_at).is_(None))
                             | (col(Member.last_inbound_at) <= limit))
        .order_by(col(Member.id)).limit(5000)
    ).all()
    for parent in parents:
        since: date = (parent.last_inbound_at or parent.created_at).date()
        key = f"silent:{parent.id}:{since.isoformat()}"
        out.append(Outbound([t(N_("Your family misses you. Send them a few words this week: "
                                  "reply KABAR and your message."))],
                            member_id=parent.id, kind="reminder", template="reminder",
                            idempotency_key=key))
        for coordinator in village_coordinator_members(session, parent.village_id):
            out.append(Outbound([t(N_("{name} (parent, family {family}) has not written for "
                                      "{days} days. A friendly call may help the family."),
                                   name=Raw(parent.name), family=parent.family_id, days=days)],
                                member_id=coordinator.id, kind="notice",
                                idempotency_key=f"{key}:c{coordinator.id}"))
    return out


def fund_due_reminders(session: Session, now: datetime, config: Config) -> list[Outbound]:
    """Remind the parents of open fund requests due within three days, once each."""
    soon = now.date() + timedelta(days=3)
    out: list[Outbound] = []
    requests = session.exec(
        select(FundRequest).where(col(FundRequest.status).in_(("pending", "pledged")),
                                  col(FundRequest.due_date).is_not(None),
                                  col(FundRequest.due_date) <= soon,
                                  col(FundRequest.due_date) >= now.date())
        .limit(5000)
    ).all()
    for request in requests:
        for parent in family_members(session, request.family_id, roles=("parent",)):
            out.append(Outbound([t(N_("Reminder: request #{id} ({amount} for {purpose}) is "
                                      "needed by {date}. Reply KIRIM {id} if you will send "
                                      "it."),
                                   id=request.id, amount=Money(request.amount),
                                   purpose=purpose_text(request.purpose),
                                   date=request.due_date)],
                                member_id=parent.id, kind="reminder", template="reminder",
                                idempotency_key=f"fund-due:{request.id}:{parent.id}"))
    return out


# --- when: registered with the scheduler --------------------------------------------------


def build_weekly_tip(session: Session, member: Member, now: datetime,
                     config: Config) -> list[Outbound]:
    """Send the weekly tip to a member who opted in."""
    from handlers.tips import pick_tip_for, tip_parts

    tip = pick_tip_for(session, member, now)
    if tip is None:
        return []
    return [Outbound(tip_parts(tip), member_id=member.id, kind="tip", template="tip")]


reminder_kind(ReminderKind(
    name="carer_question", roles=frozenset({"carer"}),
    schedule=lambda c: c.scheduler.carer_question, build=build_carer_question))
reminder_kind(ReminderKind(
    name="weekly_tip", roles=frozenset({"carer", "parent"}),
    schedule=lambda c: c.scheduler.weekly_tip, build=build_weekly_tip,
    applies=lambda m: m.tips_opt_in))
periodic_job("silent_parents", every=timedelta(hours=1))(silent_parents)
periodic_job("fund_due_reminders", every=timedelta(hours=1))(fund_due_reminders)
periodic_job("alert_escalation")(escalate_alerts)
