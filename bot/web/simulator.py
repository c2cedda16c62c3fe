"""The simulator: chat as any member through the real engine, and watch the family's phones.

It is a channel like the others (``simulator``), so what it shows is exactly what the
engine queued. It acts as any member without a password: turn it off in production
(``[server] simulator = false``).
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, render_template, request
from sqlmodel import col, select

from bot.app import services
from bot.channels.simulator import address_for
from bot.engine import utcnow
from bot.messages import Inbound
from storage.db import session_scope
from storage.models import Family, Member, Outbox, Village
from storage.repo import link_identity

bp = Blueprint("simulator", __name__, url_prefix="/simulator")
MAX_TEXT = 10_000


@bp.get("/")
def page() -> Any:
    """Serve the simulator page."""
    return render_template("simulator.html")


@bp.get("/api/members")
def members() -> Any:
    """List members to act as, grouped by family."""
    with session_scope(services(current_app).db) as session:
        rows = session.exec(
            select(Member, Village.name).join(Village, col(Village.id) == Member.village_id)
            .order_by(col(Member.village_id), col(Member.family_id), col(Member.id))
            .limit(500)
        ).all()
        return jsonify([
            {"id": m.id, "name": m.name, "role": m.role, "family_id": m.family_id,
             "village": vname, "language": m.language, "timezone": m.timezone}
            for m, vname in rows
        ])


def ensure_simulator_identity(member_id: int) -> str:
    """Link a simulator chat to the member (idempotent) and return its address."""
    svc = services(current_app)
    with session_scope(svc.db) as session:
        member = session.get(Member, member_id)
        if member is None:
            abort(404, description="no such member")
        link_identity(session, member, "simulator", address_for(member_id), now=utcnow())
    return address_for(member_id)


@bp.post("/api/send")
def send() -> Any:
    """Process a message typed in the simulator as the chosen member."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the parser goes: not a message either
        body = None
    if not isinstance(body, dict):
        abort(400, description="expected a JSON object with member_id and text")
    member_id = body.get("member_id")
    text = body.get("text")
    if not isinstance(member_id, int) or not isinstance(text, str):
        abort(422, description="member_id must be a number and text a string")
    if len(text) > MAX_TEXT:
        abort(422, description=f"text: at most {MAX_TEXT} characters")
    address = ensure_simulator_identity(member_id)
    inbound = Inbound(channel="simulator", address=address, text=text,
                      external_id=f"sim-{uuid.uuid4().hex}", received_at=utcnow())
    result = services(current_app).engine.handle(inbound)
    return jsonify(outcome=result.outcome, queued=len(result.outbox_ids))


@bp.get("/api/messages")
def messages() -> Any:
    """Return what the family (and its village coordinators) were sent, newest last."""
    try:
        member_id = int(request.args.get("member_id", ""))
        after = int(request.args.get("after", "0"))
    except ValueError:
        abort(400, description="member_id and after must be numbers")
    with session_scope(services(current_app).db) as session:
        member = session.get(Member, member_id)
        if member is None:
            abort(404, description="no such member")
        ids: list[int] = [member_id]
        if member.family_id:
            fam = session.get(Family, member.family_id)
            if fam is not None:
                ids = [i for i in session.exec(select(Member.id).where(
                    Member.family_id == fam.id)).all() if i is not None]
        coord_ids = [i for i in session.exec(select(Member.id).where(
            Member.village_id == member.village_id, Member.role == "coordinator")).all()
            if i is not None]
        rows = session.exec(
            select(Outbox, Member.name, Member.role)
            .join(Member, col(Member.id) == Outbox.member_id)
            .where(col(Outbox.member_id).in_(ids + coord_ids), col(Outbox.id) > after)
            .order_by(col(Outbox.id)).limit(200)
        ).all()
        return jsonify([
            {"id": o.id, "member_id": o.member_id, "name": name, "role": role,
             "channel": o.channel or "(not linked)", "kind": o.kind, "status": o.status,
             "text": o.text, "at": o.created_at.isoformat()}
            for o, name, role in rows
        ])
