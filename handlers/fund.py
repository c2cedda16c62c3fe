"""School-fund requests (DANA): a step-by-step request, and everyone told of each change.

    DANA --(several children)--> child --> purpose --> amount --> due --> confirm
    confirm --YA--> request #id pending; parents and coordinators told at once
    parent:      KIRIM id (pledged) · TIDAK id (cannot send: rejected)
    coordinator: SETUJU id (approved) · TOLAK id reason (rejected)
    anyone involved: LUNAS id (paid) · requester: BATAL id (cancelled)

The bot never moves money. Before confirming it points to the free routes: public
schools may not charge mandatory fees (BOS), and PIP pays eligible pupils every year.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlmodel import Session, col, select

from bot.config import Config
from bot.engine import Context, Next
from bot.i18n import N_
from bot.messages import Money, Outbound, Part, Raw, Text, t
from bot.router import Flow, registry
from handlers.parsing import normalise_yes_no, parse_amount_detail, parse_due_date
from storage.models import AuditLog, FundRequest, Member
from storage.repo import (
    coordinator_for_member,
    coordinator_village_ids,
    family_members,
    village_coordinator_members,
)

KEYWORD_ALIASES = (N_("keywords:fund"), N_("keywords:fund_pledge"), N_("keywords:fund_decline"),
                   N_("keywords:fund_approve"), N_("keywords:fund_reject"),
                   N_("keywords:fund_paid"))

# (menu number, stored purpose code, label msgid)
PURPOSES = [
    ("1", "school_fees", N_("school fees")),
    ("2", "uniform", N_("uniform")),
    ("3", "books", N_("books and school supplies")),
    ("4", "transport", N_("transport to school")),
    ("5", "exam_trip", N_("exam or school trip")),
    ("6", "other", N_("something else")),
]
PURPOSE_LABEL = {code: label for _, code, label in PURPOSES}
STATUS_LABEL = {
    "pending": N_("waiting for an answer"), "pledged": N_("promised by a parent"),
    "approved": N_("approved by the coordinator"), "rejected": N_("declined"),
    "paid": N_("paid"), "cancelled": N_("cancelled"),
}
# Who may move a request from one status to another.
TRANSITIONS: dict[str, set[str]] = {
    "pending": {"pledged", "approved", "rejected", "cancelled"},
    "pledged": {"approved", "paid", "rejected", "cancelled"},
    "approved": {"paid", "cancelled", "pledged"},
    "rejected": set(), "paid": set(), "cancelled": set(),
}


class FundError(Exception):
    """A request that cannot change as asked; status_code is for the API."""

    def __init__(self, message: str, status_code: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def purpose_text(purpose: str) -> Part:
    """Return a purpose as readers see it: a menu label, translated, or free words."""
    label = PURPOSE_LABEL.get(purpose)
    return t(label) if label else Raw(purpose)


# --- the flow ---------------------------------------------------------------------------


@registry.command("fund", "dana", "fund", roles=frozenset({"child", "carer"}),
                  help_msgid=N_("DANA — ask the parents for school money, step by step"),
                  menu_order=20)
def fund(ctx: Context) -> Next | None:
    """Start a school-fund request."""
    member = ctx.m
    if member.role == "child":
        return _ask_purpose(ctx, {"child_id": member.id})
    children = family_members(ctx.session, member.family_id or 0, roles=("child",))
    if not children:
        ctx.reply(N_("There is no child registered in your family. Ask your village "
                     "coordinator to add them."))
        return None
    if len(children) == 1:
        return _ask_purpose(ctx, {"child_id": children[0].id})
    lines = "\n".join(f"{i}. {c.name}" for i, c in enumerate(children, 1))
    ctx.reply(N_("Which child is it for? Reply with the number:\n{children}"),
              children=Raw(lines))
    return Next("child", {"children": [c.id for c in children]}, flow="fund")


def step_child(ctx: Context) -> Next | None:
    """Take the child's number."""
    ids: list[int] = ctx.data["children"]
    choice = ctx.text.strip().rstrip(".")
    if choice.isdecimal() and 1 <= int(choice) <= len(ids):
        return _ask_purpose(ctx, {"child_id": ids[int(choice) - 1]})
    children = [ctx.session.get(Member, i) for i in ids]
    by_name = [c for c in children if c and c.name.lower() == choice.lower()]
    if by_name:
        return _ask_purpose(ctx, {"child_id": by_name[0].id})
    ctx.reply(N_("Please reply with a number from 1 to {n}, or BATAL to stop."), n=len(ids))
    return Next("child", ctx.data)


def _ask_purpose(ctx: Context, data: dict[str, object]) -> Next:
    menu: list[Part] = [t(N_("What is the money for? Reply with a number, or write it in your own "
                 "words:"))]
    menu.extend(Text("{n}. {label}", {"n": n, "label": t(label)}) for n, _, label in PURPOSES)
    ctx.outbox.append(Outbound(menu, member_id=ctx.m.id, kind="reply", urgent=True, sep="\n"))
    return Next("purpose", data, flow="fund")


def step_purpose(ctx: Context) -> Next | None:
    """Take the purpose: a menu number or free words."""
    text = ctx.text.strip()
    chosen = next((code for n, code, _ in PURPOSES if text.rstrip(".") == n), None)
    if chosen is None:
        if len(text) < 3 or text.isdecimal():
            ctx.reply(N_("Please reply with a number from 1 to 6, or describe what the money "
                         "is for."))
            return Next("purpose", ctx.data)
        chosen = text[:200]
    ctx.reply(N_("How much is needed? For example: 150rb, 150.000 or 1,5 jt"))
    return Next("amount", {**ctx.data, "purpose": chosen})


def step_amount(ctx: Context) -> Next | None:
    """Take the amount in rupiah; explain and re-ask when it cannot be read."""
    result = parse_amount_detail(ctx.text)
    if result.amount is None:
        if result.reason == "too_small":
            ctx.reply(N_("That amount looks too small. Please write it like 150rb or 150.000."))
        elif result.reason == "too_large":
            ctx.reply(N_("That amount looks too large for one request. Please check it and "
                         "write it like 1,5 jt or 1.500.000."))
        else:
            ctx.reply(N_("I could not read that amount. Please write it like 150rb, 150.000 "
                         "or 1,5 jt."))
        return Next("amount", ctx.data)
    ctx.reply(N_("When is it needed? For example 15/1, or reply - if there is no date."))
    return Next("due", {**ctx.data, "amount": result.amount})


def step_due(ctx: Context) -> Next | None:
    """Take an optional due date, then show the summary."""
    text = ctx.text.strip().lower()
    due = None
    if text not in ("-", "tidak", "tdk", "no", "none", "skip", "lewati", "ora", "0"):
        due = parse_due_date(ctx.text, ctx.now.date())
        if due is None:
            ctx.reply(N_("I could not read that date. Write it like 15/1 or 15 Januari, or "
                         "reply - if there is no date."))
            return Next("due", ctx.data)
    data = {**ctx.data, "due": due.isoformat() if due else None}
    _summary(ctx, data)
    return Next("confirm", data)


def _summary(ctx: Context, data: dict[str, object]) -> None:
    child = ctx.session.get(Member, int(str(data["child_id"])))
    parts: list[Part] = [t(N_("Please check: {amount} for {purpose} for {child}{due}."),
                           amount=Money(int(str(data["amount"]))),
                           purpose=purpose_text(str(data["purpose"])),
                           child=Raw(child.name if child else "?"),
                           due=_due_part(data.get("due")))]
    if data["purpose"] in ("school_fees", "books", "uniform", "exam_trip"):
        # Free routes first: a family should not pay what the state already covers.
        parts.append(t(N_("Good to know: public schools are funded by BOS and may not charge "
                          "mandatory fees. Pupils from families in need can get PIP (Kartu "
                          "Indonesia Pintar) every year; ask the school or your village "
                          "coordinator.")))
    parts.append(t(N_("Send this request to the parents? Reply YA to send or BATAL to stop.")))
    ctx.reply_parts(parts)


def _due_part(due: object) -> Part:
    if not due:
        return Raw("")
    return t(N_(", needed by {date}"), date=date.fromisoformat(str(due)))


def step_confirm(ctx: Context) -> Next | None:
    """Create the request on YA and tell the parents and coordinators."""
    answer = normalise_yes_no(ctx.text)
    if answer is None:
        ctx.reply(N_("Please reply YA to send the request, or BATAL to stop."))
        return Next("confirm", ctx.data)
    if not answer:
        ctx.reply(N_("Cancelled. Nothing was sent. Reply MENU to see what you can do."))
        return None
    member = ctx.m
    due = ctx.data.get("due")
    request = FundRequest(family_id=member.family_id or 0, village_id=member.village_id,
                          requester_id=member.id, child_id=int(ctx.data["child_id"]),
                          purpose=str(ctx.data["purpose"])[:200],
                          amount=int(ctx.data["amount"]),
                          due_date=date.fromisoformat(due) if due else None,
                          status="pending", created_at=ctx.now, updated_at=ctx.now)
    ctx.session.add(request)
    ctx.session.flush()
    ctx.audit("fund.create", f"fund_request:{request.id}", amount=request.amount)
    ctx.reply(N_("Request #{id} is sent to the parents. You will hear when they answer. "
                 "To cancel it, reply BATAL {id}."), id=request.id)
    child = ctx.session.get(Member, request.child_id)
    for parent in family_members(ctx.session, request.family_id, roles=("parent",)):
        ctx.send(parent.id or 0, [
            t(N_("{name} asks for school money: {amount} for {purpose} for {child}{due} "
                 "(request #{id})."), name=Raw(member.name), amount=Money(request.amount),
              purpose=purpose_text(request.purpose), child=Raw(child.name if child else "?"),
              due=_due_part(due), id=request.id),
            t(N_("Reply KIRIM {id} if you will send it, or TIDAK {id} if you cannot now."),
              id=request.id),
        ], kind="notice", template="fund_request")
    for coordinator in village_coordinator_members(ctx.session, member.village_id):
        ctx.send(coordinator.id or 0, [t(
            N_("New school-fund request #{id}: {amount} for {purpose} (family {family}). "
               "Reply SETUJU {id} or TOLAK {id} and a reason."),
            id=request.id, amount=Money(request.amount), purpose=purpose_text(request.purpose),
            family=request.family_id)], kind="notice")
    return None


registry.flow(Flow("fund", {"child": step_child, "purpose": step_purpose,
                            "amount": step_amount, "due": step_due, "confirm": step_confirm},
                   start="purpose"))


# --- status changes ---------------------------------------------------------------------


def transition(session: Session, request: FundRequest, status: str, *, actor: str,
               actor_member_id: int | None, reason: str | None, now: datetime
               ) -> list[Outbound]:
    """Move a request to a new status; return the messages telling everyone involved."""
    if status not in TRANSITIONS[request.status]:
        raise FundError(f"request {request.id} is {request.status} and cannot become {status}")
    old = request.status
    request.status, request.updated_at = status, now
    if reason:
        request.reason = reason[:300]
    session.add(request)
    session.add(AuditLog(at=now, actor=actor, action=f"fund.{status}",
                         target=f"fund_request:{request.id}", village_id=request.village_id,
                         details=f'{{"from": "{old}"}}'))
    parts: list[Part] = [t(N_("Request #{id} ({amount} for {purpose}) is now: {status}."),
                           id=request.id, amount=Money(request.amount),
                           purpose=purpose_text(request.purpose),
                           status=t(STATUS_LABEL[status]))]
    if reason:
        parts.append(t(N_("Reason: {reason}"), reason=Raw(reason[:300])))
    told: set[int] = set()
    out: list[Outbound] = []
    involved = [m.id for m in family_members(session, request.family_id, roles=("parent",))]
    involved.append(request.requester_id)
    involved.extend(m.id for m in village_coordinator_members(session, request.village_id))
    for member_id in involved:
        if member_id is None or member_id in told or member_id == actor_member_id:
            continue
        told.add(member_id)
        out.append(Outbound(list(parts), member_id=member_id, kind="status",
                            template="fund_status"))
    return out


def decide(session: Session, request_id: int, *, approve: bool, reason: str | None,
           actor: str, now: datetime, config: Config,
           actor_member_id: int | None = None) -> list[Outbound]:
    """Approve or reject a request as a coordinator (API and chat); raise FundError."""
    request = session.get(FundRequest, request_id)
    if request is None:
        raise FundError(f"no fund request {request_id}", 404)
    if not approve and not (reason or "").strip():
        raise FundError("reason: required to reject a request", 422)
    return transition(session, request, "approved" if approve else "rejected", actor=actor,
                      actor_member_id=actor_member_id, reason=reason, now=now)


def _request_for(ctx: Context) -> tuple[FundRequest | None, str]:
    """Find the request named by the first argument, within the member's reach."""
    words = ctx.args.split(maxsplit=1)
    rest = words[1] if len(words) > 1 else ""
    ident = words[0].lstrip("#") if words else ""
    if not ident.isdecimal():
        ctx.reply(N_("Which request? Write the number too, for example: {example}"),
                  example=Raw(f"{(ctx.command.keywords[0] if ctx.command else 'dana').upper()} 12"))
        return None, rest
    request = ctx.session.get(FundRequest, int(ident))
    member = ctx.m
    visible = request is not None and (
        (member.role == "coordinator" and _coordinator_can_see(ctx.session, member, request))
        or (member.role != "coordinator" and request.family_id == member.family_id))
    if request is None or not visible:
        ctx.reply(N_("I could not find request #{id}."), id=int(ident))
        return None, rest
    return request, rest


def _coordinator_can_see(session: Session, member: Member, request: FundRequest) -> bool:
    coord = coordinator_for_member(session, member.id)
    return coord is not None and request.village_id in coordinator_village_ids(session, coord)


def _change(ctx: Context, status: str, *, reason_required: bool = False,
            default_reason: str | None = None) -> Next | None:
    request, rest = _request_for(ctx)
    if request is None:
        return None
    if reason_required and not rest.strip():
        ctx.reply(N_("Please add a reason, for example: TOLAK {id} the school already covers "
                     "it"), id=request.id)
        return None
    try:
        messages = transition(ctx.session, request, status, actor=f"member:{ctx.m.id}",
                              actor_member_id=ctx.m.id, reason=rest.strip() or default_reason,
                              now=ctx.now)
    except FundError:
        ctx.reply(N_("Request #{id} is already {status}; it cannot change now."),
                  id=request.id, status=t(STATUS_LABEL[request.status]))
        return None
    ctx.outbox.extend(messages)
    ctx.reply(N_("Done: request #{id} is now {status}. Everyone involved has been told."),
              id=request.id, status=t(STATUS_LABEL[status]))
    return None


@registry.command("fund_pledge", "kirim", "send", roles=frozenset({"parent"}),
                  help_msgid=N_("KIRIM id — you will send the money asked for"), menu_order=25)
def pledge(ctx: Context) -> Next | None:
    """A parent will send the money."""
    return _change(ctx, "pledged")


@registry.command("fund_decline", "tidak", roles=frozenset({"parent"}), fuzzy=False)
def decline(ctx: Context) -> Next | None:
    """A parent cannot send the money now."""
    if not ctx.args.strip():
        ctx.reply(N_("Reply MENU to see what you can do."))
        return None
    return _change(ctx, "rejected", default_reason="parent cannot send now")


@registry.command("fund_approve", "setuju", "approve", roles=frozenset({"coordinator"}),
                  fuzzy=False, help_msgid=N_("SETUJU id — approve a school-fund request"),
                  menu_order=20)
def approve(ctx: Context) -> Next | None:
    """A coordinator approves a request."""
    return _change(ctx, "approved")


@registry.command("fund_reject", "tolak", "reject", roles=frozenset({"coordinator"}),
                  fuzzy=False, help_msgid=N_("TOLAK id reason — reject a school-fund request"),
                  menu_order=21)
def reject(ctx: Context) -> Next | None:
    """A coordinator rejects a request, with a reason."""
    return _change(ctx, "rejected", reason_required=True)


@registry.command("fund_paid", "lunas", "paid", roles=frozenset({"parent", "carer", "child",
                                                                   "coordinator"}),
                  fuzzy=False, help_msgid=N_("LUNAS id — the money has arrived"), menu_order=26)
def paid(ctx: Context) -> Next | None:
    """Mark a request paid (the money arrived)."""
    return _change(ctx, "paid")


@registry.command("fund_cancel", roles=frozenset({"child", "carer"}))
def cancel_request(ctx: Context) -> Next | None:
    """The requester cancels their request (BATAL id arrives here from the cancel keyword)."""
    request, _ = _request_for(ctx)
    if request is None:
        return None
    if request.requester_id != ctx.m.id:
        ctx.reply(N_("Only the person who asked can cancel request #{id}."), id=request.id)
        return None
    return _change(ctx, "cancelled")


def open_requests(session: Session, family_id: int) -> list[FundRequest]:
    """Return a family's requests that are still open."""
    return list(session.exec(
        select(FundRequest).where(FundRequest.family_id == family_id,
                                  col(FundRequest.status).in_(("pending", "pledged", "approved")))
        .order_by(col(FundRequest.id))).all())
