"""The coordinators' JSON API: families, fund requests and broadcasts.

Every request carries ``Authorization: Bearer TOKEN`` (``desmigratif coordinator add``
prints one). A coordinator sees their own villages only: a record of another village
answers 404, exactly like one that does not exist. Errors are ``{"error": "..."}`` with
400 (malformed request), 401 (no or bad token), 404, 409 (conflicts: a number registered
to someone else, a fund request already decided) or 422 (a field that is wrong, named).

Lists take ``?page=`` (from 1) and ``?per_page=`` (1-500, default 100) and keep their
body a plain JSON list; the total is in ``X-Total-Count`` and the neighbouring pages in
``Link`` (``rel="next"``, ``"prev"``, ``"first"``, ``"last"``), as GitHub does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from werkzeug.exceptions import HTTPException

from bot.app import services
from bot.broadcast import (
    BroadcastError,
    check_age_band,
    check_roles,
    check_text,
    check_translations,
    create_broadcast,
    parse_send_at,
    progress,
)
from bot.config import Config
from bot.outbox import queue_messages
from bot.privacy import normalise_e164
from bot.web.auth import MAX_ID, Scope, api_scope, may_create_in
from storage.db import session_scope
from storage.export import erase_family, export_family
from storage.models import (
    FUND_STATUSES,
    AuditLog,
    Broadcast,
    ChannelIdentity,
    Consent,
    Family,
    FundRequest,
    Member,
    Village,
)
from storage.repo import FamilySpec, MemberSpec, ValidationError, create_family, is_chat_id

bp = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 500
_TZ_RE = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")



class ApiError(HTTPException):
    """An error answered as ``{"error": message}`` with its status code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(description=message)
        self.code = code


def fail(code: int, message: str) -> NoReturn:
    """Answer with an error now."""
    raise ApiError(code, message)


@bp.errorhandler(HTTPException)
def _error(exc: HTTPException) -> Any:
    res = jsonify(error=exc.description or exc.name)
    res.status_code = exc.code or 500
    if exc.code == 401:
        res.headers["WWW-Authenticate"] = 'Bearer realm="desmigratif"'
    return res


def _now() -> datetime:
    return services(current_app).engine.clock()


def _config() -> Config:
    return services(current_app).config


@bp.before_request
def _authenticate() -> None:
    # Who is asking comes first: without a valid token nothing else is looked at.
    with session_scope(services(current_app).db) as session:
        g.api_scope = api_scope(session)
    if any("\x00" in v for v in request.args.values()):
        fail(400, "query parameters must not contain NUL characters")


def _scope() -> Scope:
    scope: Scope = g.api_scope
    return scope


@bp.after_request
def _no_store(res: Response) -> Response:
    # Personal data: no caching by browsers or proxies.
    res.headers["Cache-Control"] = "no-store"
    return res


# --- request parsing ------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    """Yield every string in a JSON value, keys included (iteratively: no recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def json_body(*, optional: bool = False) -> dict[str, Any]:
    """Return the request's JSON object, or answer 400/422 with the reason."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if optional:
            return {}
        fail(400, "expected a JSON object in the request body")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        fail(400, "malformed JSON")
    if not isinstance(body, dict):
        fail(400, "expected a JSON object in the request body")
    for s in _strings(body):
        if "\x00" in s:
            fail(422, "strings must not contain NUL characters")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            fail(422, "strings must be valid Unicode (no lone surrogates)")
    return body


def _str(body: dict[str, Any], key: str, *, where: str = "", required: bool = False,
         max_len: int = 200, default: str | None = None) -> str | None:
    name = f"{where}{key}"
    value = body.get(key)
    if value is None:
        if required:
            fail(422, f"{name}: required")
        return default
    if not isinstance(value, str):
        fail(422, f"{name}: expected a string")
    value = value.strip()
    if required and not value:
        fail(422, f"{name}: must not be empty")
    if len(value) > max_len:
        fail(422, f"{name}: at most {max_len} characters")
    return value


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdecimal() or len(raw) > 9 or not lo <= int(raw) <= hi:
        fail(400, f"{name}: expected a whole number from {lo} to {hi}")
    return int(raw)


def page_args() -> tuple[int, int]:
    """Return (page, per_page) from the query string."""
    return (_int_arg("page", 1, 1, 1_000_000),
            _int_arg("per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE))


def paginated(items: list[Any], *, total: int, page: int, per_page: int) -> Response:
    """Answer a JSON list with X-Total-Count and Link headers."""
    res = jsonify(items)
    res.headers["X-Total-Count"] = str(total)
    res.headers["X-Page"] = str(page)
    res.headers["X-Per-Page"] = str(per_page)
    last = max(1, -(-total // per_page))
    links = []
    base = request.base_url
    args = {k: v for k, v in request.args.items() if k not in ("page", "per_page")}

    def url(p: int) -> str:
        return base + "?" + urlencode({**args, "page": p, "per_page": per_page})

    if page < last:
        links.append(f'<{url(page + 1)}>; rel="next"')
    if page > 1:
        links.append(f'<{url(min(page - 1, last))}>; rel="prev"')
    links.append(f'<{url(1)}>; rel="first"')
    links.append(f'<{url(last)}>; rel="last"')
    res.headers["Link"] = ", ".join(links)
    return res


def valid_timezone(name: str) -> bool:
    """Tell whether name is an IANA timezone (checked safely: no paths, bounded length)."""
    if not _TZ_RE.match(name) or ".." in name or name.startswith("/"):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _id_ok(value: int) -> bool:
    return 0 < value <= MAX_ID


# --- shapes ---------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def telegram_link(config: Config, code: str | None) -> str | None:
    """Return the Telegram deep link that links a chat with an invite code."""
    if not code or not config.telegram.bot_username:
        return None
    return f"https://t.me/{config.telegram.bot_username.lstrip('@')}?start={code}"


def member_json(m: Member, identities: list[ChannelIdentity], config: Config) -> dict[str, Any]:
    """Return a member as the API shows it to their coordinator."""
    whatsapp = next((i.address.removeprefix("whatsapp:") for i in identities
                     if i.channel == "whatsapp"), None)
    telegram = next((i.address for i in identities if i.channel == "telegram"), None)
    return {
        "id": m.id, "role": m.role, "name": m.name, "birth_year": m.birth_year,
        "language": m.language, "timezone": m.timezone, "invite_code": m.invite_code,
        "whatsapp": whatsapp, "telegram_chat_id": telegram,
        "linked": bool(identities), "channels": sorted({i.channel for i in identities}),
        "opted_out": m.opted_out, "last_inbound_at": _iso(m.last_inbound_at),
        "telegram_link": telegram_link(config, m.invite_code),
    }


def families_json(session: Session, families: list[Family], config: Config
                  ) -> list[dict[str, Any]]:
    """Return families with their members, loading everything in a few queries."""
    if not families:
        return []
    fids = [f.id for f in families]
    villages = {v.id: v for v in session.exec(select(Village).where(
        col(Village.id).in_({f.village_id for f in families}))).all()}
    members: dict[int, list[Member]] = {}
    for m in session.exec(select(Member).where(col(Member.family_id).in_(fids))
                          .order_by(col(Member.id))).all():
        members.setdefault(m.family_id or 0, []).append(m)
    mids = [m.id for ms in members.values() for m in ms]
    idents: dict[int, list[ChannelIdentity]] = {}
    if mids:
        for i in session.exec(select(ChannelIdentity).where(
                col(ChannelIdentity.member_id).in_(mids)).order_by(col(ChannelIdentity.id))):
            idents.setdefault(i.member_id, []).append(i)
    consents: dict[int, Consent] = {}
    for c in session.exec(select(Consent).where(col(Consent.family_id).in_(fids))
                          .order_by(col(Consent.id))).all():
        consents[c.family_id] = c  # the latest wins
    out = []
    for f in families:
        v = villages.get(f.village_id)
        latest = consents.get(f.id or 0)
        out.append({
            "id": f.id, "village": v.name if v else None, "district": v.district if v else None,
            "language": f.language, "consent_status": f.consent_status,
            "consent": None if latest is None else {
                "given_by": latest.given_by, "method": latest.method, "agreed": latest.agreed,
                "at": _iso(latest.at), "withdrawn_at": _iso(latest.withdrawn_at)},
            "created_at": _iso(f.created_at),
            "members": [member_json(m, idents.get(m.id or 0, []), config)
                        for m in members.get(f.id or 0, [])],
        })
    return out


def fund_requests_json(session: Session, rows: list[FundRequest]) -> list[dict[str, Any]]:
    """Return fund requests in the contract's shape (plus a few extra keys)."""
    ids = {i for r in rows for i in (r.child_id, r.requester_id) if i is not None}
    names = dict(session.exec(select(Member.id, Member.name).where(  # type: ignore[call-overload]
        col(Member.id).in_(ids))).all()) if ids else {}
    villages = dict(session.exec(select(Village.id, Village.name).where(  # type: ignore[call-overload]
        col(Village.id).in_({r.village_id for r in rows}))).all()) if rows else {}
    return [{
        "id": r.id, "family_id": r.family_id, "child": names.get(r.child_id),
        "purpose": r.purpose, "amount": int(r.amount), "currency": "IDR", "status": r.status,
        "created_at": _iso(r.created_at),
        "child_id": r.child_id, "requester_id": r.requester_id,
        "requester": names.get(r.requester_id), "village": villages.get(r.village_id),
        "due_date": r.due_date.isoformat() if r.due_date else None, "reason": r.reason,
        "updated_at": _iso(r.updated_at),
    } for r in rows]


# --- families -------------------------------------------------------------------------


def _member_spec(raw: Any, i: int) -> MemberSpec:
    where = f"members[{i}]."
    if not isinstance(raw, dict):
        fail(422, f"members[{i}]: expected an object with role and name")
    role = _str(raw, "role", where=where, required=True, max_len=20) or ""
    name = _str(raw, "name", where=where, required=True, max_len=80) or ""
    birth_year = raw.get("birth_year")
    if birth_year is not None and (not isinstance(birth_year, int)
                                   or isinstance(birth_year, bool)):
        fail(422, f"{where}birth_year: expected a whole number like 2012")
    whatsapp = _str(raw, "whatsapp", where=where, max_len=40) or None
    chat = raw.get("telegram_chat_id")
    if chat is not None:
        if isinstance(chat, bool) or not isinstance(chat, int | str):
            fail(422, f"{where}telegram_chat_id: expected a number")
        chat = str(chat).strip()
        if len(chat) > 20 or not is_chat_id(chat):
            fail(422, f"{where}telegram_chat_id: expected a number")
    tz = _str(raw, "timezone", where=where, max_len=64) or None
    if tz is not None and not valid_timezone(tz):
        fail(422, f"{where}timezone: unknown timezone (use an IANA name like Asia/Taipei)")
    lang = _str(raw, "language", where=where, max_len=8) or None
    return MemberSpec(role=role, name=name, birth_year=birth_year, whatsapp=whatsapp,
                      telegram_chat_id=chat or None, timezone=tz, language=lang)


def family_spec(body: dict[str, Any], config: Config) -> FamilySpec:
    """Turn a POST /api/families body into a FamilySpec, or answer 422 naming the field."""
    village = _str(body, "village", required=True, max_len=120) or ""
    district = _str(body, "district", max_len=120) or ""
    language = _str(body, "language", max_len=8) or config.bot.default_language
    raw_members = body.get("members")
    if not isinstance(raw_members, list) or not raw_members:
        fail(422, "members: expected a list of at least one member")
    if len(raw_members) > 30:
        fail(422, "members: at most 30 per family")
    members = [_member_spec(m, i) for i, m in enumerate(raw_members)]
    consent = body.get("guardian_consent")
    given_by = method = None
    if consent is not None:
        if not isinstance(consent, dict):
            fail(422, "guardian_consent: expected an object with given_by and method")
        given_by = _str(consent, "given_by", where="guardian_consent.", required=True,
                        max_len=80)
        method = _str(consent, "method", where="guardian_consent.", max_len=40,
                      default="signed form") or "signed form"
    return FamilySpec(village=village, district=district, language=language, members=members,
                      consent_given_by=given_by, consent_method=method)


def _scoped_family(session: Session, scope: Scope, family_id: int) -> Family:
    family = session.get(Family, family_id) if _id_ok(family_id) else None
    if family is None or not scope.sees(family.village_id):
        fail(404, f"no family {family_id}")
    return family


@bp.post("/families")
def create_family_view() -> Any:
    """Register a family with its members (and a guardian's consent, if recorded)."""
    config = _config()
    body = json_body()
    spec = family_spec(body, config)
    now = _now()
    try:
        with session_scope(services(current_app).db) as session:
            scope = _scope()
            allowed, village = may_create_in(session, scope, spec.village, spec.district)
            if not allowed:
                fail(422, "village: not one of your villages")
            if village is not None:
                if spec.district and village.district and spec.district != village.district:
                    fail(422, f"district: {village.name} is in {village.district}")
                spec.district = village.district
            elif not spec.district:
                spec.district = scope.district
            try:
                family, _members = create_family(session, spec, now=now,
                                                 languages=config.bot.languages,
                                                 actor=scope.actor,
                                                 normalise_phone=normalise_e164)
            except ValidationError as exc:
                message = str(exc)
                fail(409 if "already registered" in message else 422, message)
            session.flush()
            data = families_json(session, [family], config)[0]
    except IntegrityError:
        # Two requests registered the same number at once: the second one loses.
        fail(409, "a WhatsApp number or Telegram chat is already registered to another member")
    res = jsonify(data)
    res.status_code = 201
    res.headers["Location"] = f"/api/families/{data['id']}"
    return res


@bp.get("/families")
def list_families() -> Any:
    """List the families of the coordinator's villages, oldest first, a page at a time."""
    page, per_page = page_args()
    village_name = request.args.get("village")
    consent = request.args.get("consent_status")
    if consent is not None and consent not in ("pending", "given", "refused", "withdrawn"):
        fail(400, "consent_status: expected pending, given, refused or withdrawn")
    with session_scope(services(current_app).db) as session:
        scope = _scope()
        ids: Iterable[int] = scope.village_ids
        if village_name is not None:
            v = session.exec(select(Village).where(Village.name == village_name[:120])).first()
            ids = [v.id] if v is not None and v.id is not None and scope.sees(v.id) else []
        where: list[Any] = [col(Family.village_id).in_(list(ids))]
        if consent is not None:
            where.append(col(Family.consent_status) == consent)
        total = session.exec(select(func.count()).select_from(Family).where(*where)).one()
        families = list(session.exec(select(Family).where(*where).order_by(col(Family.id))
                                     .offset((page - 1) * per_page).limit(per_page)).all())
        items = families_json(session, families, _config())
    return paginated(items, total=total, page=page, per_page=per_page)


@bp.get("/families/<int:family_id>")
def get_family(family_id: int) -> Any:
    """Return one family with its members."""
    with session_scope(services(current_app).db) as session:
        scope = _scope()
        family = _scoped_family(session, scope, family_id)
        return jsonify(families_json(session, [family], _config())[0])


@bp.get("/families/<int:family_id>/export")
def export_family_view(family_id: int) -> Any:
    """Return everything stored about a family (the data subjects' right of access)."""
    now = _now()
    with session_scope(services(current_app).db) as session:
        scope = _scope()
        family = _scoped_family(session, scope, family_id)
        data = export_family(session, family_id)
        session.add(AuditLog(at=now, actor=scope.actor, action="family.export",
                             target=f"family:{family_id}", village_id=family.village_id))
    data["exported_at"] = _iso(now)
    res = jsonify(data)
    res.headers["Content-Disposition"] = f'inline; filename="family-{family_id}.json"'
    return res


@bp.delete("/families/<int:family_id>")
def delete_family(family_id: int) -> Any:
    """Erase a family: its people, their chats and their messages."""
    now = _now()
    with session_scope(services(current_app).db) as session:
        scope = _scope()
        _scoped_family(session, scope, family_id)
        erase_family(session, family_id, now=now, actor=scope.actor)
    return Response(status=204)


# --- fund requests --------------------------------------------------------------------


@bp.get("/fund-requests")
def list_fund_requests() -> Any:
    """List fund requests of the coordinator's villages (``?status=``, ``?family_id=``)."""
    page, per_page = page_args()
    status = request.args.get("status")
    if status is not None and status not in FUND_STATUSES:
        fail(400, f"status: expected one of {', '.join(FUND_STATUSES)}")
    family_id = _int_arg("family_id", 0, 1, MAX_ID) if request.args.get("family_id") else None
    with session_scope(services(current_app).db) as session:
        scope = _scope()
        where: list[Any] = [col(FundRequest.village_id).in_(list(scope.village_ids))]
        if status is not None:
            where.append(col(FundRequest.status) == status)
        if family_id is not None:
            where.append(col(FundRequest.family_id) == family_id)
        total = session.exec(select(func.count()).select_from(FundRequest).where(*where)).one()
        rows = list(session.exec(select(FundRequest).where(*where)
                                 .order_by(col(FundRequest.id))
                                 .offset((page - 1) * per_page).limit(per_page)).all())
        items = fund_requests_json(session, rows)
    return paginated(items, total=total, page=page, per_page=per_page)


def decide_request(session: Session, scope: Scope, request_id: int, *, approve: bool,
                   reason: str | None, now: datetime, config: Config) -> FundRequest:
    """Approve or reject a request of the coordinator's villages; queue who is told."""
    from handlers.fund import FundError, decide

    fr = None
    if _id_ok(request_id):
        # Lock the row, so two coordinators deciding at once get one answer and one 409.
        fr = session.exec(select(FundRequest).where(FundRequest.id == request_id)
                          .with_for_update()).first()
    if fr is None or not scope.sees(fr.village_id):
        fail(404, f"no fund request {request_id}")
    try:
        messages = decide(session, request_id, approve=approve, reason=reason,
                          actor=scope.actor, now=now, config=config,
                          actor_member_id=scope.member_id)
    except FundError as exc:
        fail(exc.status_code if 400 <= exc.status_code < 500 else 409, exc.message)
    queue_messages(session, messages, now=now, config=config)
    return fr


def _decide_view(request_id: int, *, approve: bool) -> Any:
    config = _config()
    body = json_body(optional=True)
    reason = _str(body, "reason", max_len=300) or None
    if not approve and not reason:
        fail(422, "reason: required to reject a request (the family is told why)")
    now = _now()
    with session_scope(services(current_app).db) as session:
        scope = _scope()
        fr = decide_request(session, scope, request_id, approve=approve, reason=reason,
                            now=now, config=config)
        session.flush()
        return jsonify(fund_requests_json(session, [fr])[0])


@bp.post("/fund-requests/<int:request_id>/approve")
def approve_fund_request(request_id: int) -> Any:
    """Approve a fund request; the requester and the parents are told."""
    return _decide_view(request_id, approve=True)


@bp.post("/fund-requests/<int:request_id>/reject")
def reject_fund_request(request_id: int) -> Any:
    """Reject a fund request with a reason; the requester and the parents are told."""
    return _decide_view(request_id, approve=False)


# --- broadcasts -----------------------------------------------------------------------


def _village_for_broadcast(session: Session, scope: Scope, value: Any) -> Village:
    if value is None:
        fail(422, "village: required")
    village = None
    if isinstance(value, int) and not isinstance(value, bool):
        village = session.get(Village, value) if _id_ok(value) else None
    elif isinstance(value, str) and 0 < len(value.strip()) <= 120:
        village = session.exec(select(Village).where(Village.name == value.strip())).first()
    elif not isinstance(value, str):
        fail(422, "village: expected the village's name")
    if village is None or not scope.sees(village.id):
        fail(422, "village: not one of your villages")
    return village


def broadcast_json(session: Session, b: Broadcast, config: Config) -> dict[str, Any]:
    """Return a broadcast's live progress and what it says."""
    village = session.get(Village, b.village_id)
    return {**progress(session, b, config, now=_now()),
            "village": village.name if village else None, "text": b.text,
            "translations": json.loads(b.translations or "{}"),
            "roles": json.loads(b.roles or "[]"), "age_band": b.age_band,
            "created_at": _iso(b.created_at)}


@bp.post("/broadcasts")
def create_broadcast_view() -> Any:
    """Announce something to a village, now or at ``send_at``; answer 202 with the id."""
    config = _config()
    body = json_body()
    now = _now()
    try:
        text = check_text(body.get("text"), "text", config)
        roles = check_roles(body.get("roles"))
        age_band = check_age_band(body.get("age_band"))
        translations = check_translations(body.get("translations"), config)
    except BroadcastError as exc:
        fail(422, str(exc))
    with session_scope(services(current_app).db) as session:
        scope = _scope()
        village = _village_for_broadcast(session, scope, body.get("village"))
        try:
            send_at = parse_send_at(body.get("send_at"), village.timezone, now)
        except BroadcastError as exc:
            fail(422, str(exc))
        b = create_broadcast(session, village=village, text=text, now=now, config=config,
                             actor=scope.actor, coordinator_id=scope.coordinator_id,
                             roles=roles, age_band=age_band, translations=translations,
                             send_at=send_at)
        bid = b.id
    res = jsonify(id=bid)
    res.status_code = 202
    res.headers["Location"] = f"/api/broadcasts/{bid}"
    return res


@bp.get("/broadcasts/<int:broadcast_id>")
def get_broadcast(broadcast_id: int) -> Any:
    """Return a broadcast's status and counts: recipients, sent, failed, opted out."""
    with session_scope(services(current_app).db) as session:
        scope = _scope()
        b = session.get(Broadcast, broadcast_id) if _id_ok(broadcast_id) else None
        if b is None or not scope.sees(b.village_id):
            fail(404, f"no broadcast {broadcast_id}")
        return jsonify(broadcast_json(session, b, _config()))


@bp.get("/broadcasts")
def list_broadcasts() -> Any:
    """List the broadcasts of the coordinator's villages, newest first."""
    page, per_page = page_args()
    with session_scope(services(current_app).db) as session:
        scope = _scope()
        where = col(Broadcast.village_id).in_(list(scope.village_ids))
        total = session.exec(select(func.count()).select_from(Broadcast).where(where)).one()
        rows = list(session.exec(select(Broadcast).where(where).order_by(col(Broadcast.id).desc())
                                 .offset((page - 1) * per_page).limit(per_page)).all())
        items = [broadcast_json(session, b, _config()) for b in rows]
    return paginated(items, total=total, page=page, per_page=per_page)
