"""The coordinators' dashboard: server-rendered pages under /dashboard/, usable on a phone.

Families and members (add, edit, consent, invite codes and links), the fund-request
queue, safety alerts, announcements with a preview and live progress, charts, import and
export. Every page is plain HTML with one small stylesheet and one small script, both
served from here (no CDN), under a strict Content-Security-Policy. Every change is
written to the audit log as ``coordinator:<id>``. Labels come from the same catalogs as
the chat, in the coordinator's language (Indonesian by default; a switch in the footer).

Sessions, CSRF and the login rate limit are in bot/web/auth.py.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlparse
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from werkzeug.exceptions import HTTPException

from bot.app import services
from bot.broadcast import (
    AGE_BANDS,
    FAMILY_ROLES,
    BroadcastError,
    check_age_band,
    check_roles,
    check_text,
    check_translations,
    create_broadcast,
    estimate_seconds,
    parse_send_at,
    plan,
    progress,
    render,
)
from bot.config import Config
from bot.i18n import N_, babel_locale, format_rupiah, language_name, translator
from bot.privacy import normalise_e164
from bot.web import auth, charts
from bot.web.auth import MAX_ID, Scope, csrf_token, login_required
from storage.db import session_scope
from storage.export import erase_family, erase_member, export_family
from storage.models import (
    FUND_STATUSES,
    Alert,
    AuditLog,
    Broadcast,
    ChannelIdentity,
    Consent,
    Coordinator,
    Family,
    FundRequest,
    Member,
    Village,
)
from storage.repo import (
    FamilySpec,
    MemberSpec,
    ValidationError,
    create_family,
    is_chat_id,
    link_identity,
    new_invite_code,
)

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
PER_PAGE = 50
MEMBER_ROWS = 6  # blank member rows on the new-family form

ROLE_LABELS = {"child": N_("child"), "carer": N_("carer"), "parent": N_("parent abroad"),
               "coordinator": N_("coordinator")}
CONSENT_LABELS = {"pending": N_("waiting for a guardian"), "given": N_("given"),
                  "refused": N_("refused"), "withdrawn": N_("withdrawn")}
FUND_LABELS = {"pending": N_("waiting"), "pledged": N_("pledged by a parent"),
               "approved": N_("approved"), "rejected": N_("rejected"), "paid": N_("paid"),
               "cancelled": N_("cancelled")}
BROADCAST_LABELS = {"scheduled": N_("scheduled"), "sending": N_("sending"), "done": N_("done"),
                    "cancelled": N_("cancelled")}
ALERT_LABELS = {"open": N_("open"), "acknowledged": N_("in hand"), "retracted": N_("retracted"),
                "closed": N_("closed")}
BAND_LABELS = {"0-23m": N_("0-23 months"), "2-9": N_("2-9 years"), "10-17": N_("10-17 years")}



@bp.record_once
def _setup(state: Any) -> None:
    auth.init_app(state.app, services(state.app).config)


def _db() -> Any:
    return services(current_app).db


def _config() -> Config:
    return services(current_app).config


def _now() -> datetime:
    return services(current_app).engine.clock()


# --- language and formatting ------------------------------------------------------------


def gettext(msgid: str, **params: Any) -> str:
    """Translate a dashboard label into the coordinator's language."""
    text = translator(g.get("lang", "id")).gettext(msgid)
    if not params:
        return text
    try:
        return text.format(**params)
    except (KeyError, IndexError, ValueError):
        return msgid.format(**params)


def _tz() -> ZoneInfo:
    try:
        return ZoneInfo(g.get("tz") or "Asia/Jakarta")
    except Exception:
        return ZoneInfo("Asia/Jakarta")


def fmt_when(value: datetime | None) -> str:
    """Format an instant in the coordinator's time zone and language."""
    if value is None:
        return "–"
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return format_datetime(value, "d MMM y HH:mm", tzinfo=_tz(),
                           locale=babel_locale(g.get("lang", "id")))


def fmt_day(value: Any) -> str:
    """Format a date (or the day of an instant) in the coordinator's language."""
    if value is None:
        return "–"
    if isinstance(value, datetime):
        value = value.astimezone(_tz()).date()
    return format_date(value, "d MMM y", locale=babel_locale(g.get("lang", "id")))


def _label(labels: dict[str, str], key: str | None) -> str:
    return gettext(labels[key]) if key in labels else (key or "")


@bp.context_processor
def _template_helpers() -> dict[str, Any]:
    return {
        "_": gettext, "csrf_token": csrf_token, "when": fmt_when, "day": fmt_day,
        "rupiah": lambda amount: format_rupiah(int(amount or 0), g.get("lang", "id")),
        "role_label": lambda r: _label(ROLE_LABELS, r),
        "consent_label": lambda s: _label(CONSENT_LABELS, s),
        "fund_label": lambda s: _label(FUND_LABELS, s),
        "broadcast_label": lambda s: _label(BROADCAST_LABELS, s),
        "alert_label": lambda s: _label(ALERT_LABELS, s),
        "band_label": lambda b: _label(BAND_LABELS, b) if b else gettext("everyone"),
        "language_name": language_name, "scope": g.get("scope"),
        "coordinator_name": g.get("coordinator_name", ""), "lang": g.get("lang", "id"),
        "languages": _config().bot.languages,
    }


# --- request set-up: who is logged in, CSRF, headers ------------------------------------


@bp.before_request
def _load_session() -> Any:
    g.lang = session.get("lang") if session.get("lang") in _config().bot.languages else None
    g.scope = None
    if not auth.dashboard_ready():
        g.lang = g.lang or _config().bot.default_language
        return render_template("dash_unavailable.html"), 503
    with session_scope(_db()) as db:
        coord = auth.session_coordinator(db)
        if coord is not None:
            g.scope = auth.scope_for(db, coord)
            g.coordinator_name = coord.name
            member = db.get(Member, coord.member_id) if coord.member_id else None
            village = db.get(Village, coord.village_id)
            g.lang = g.lang or (member.language if member else None)
            g.tz = village.timezone if village else None
    g.lang = g.lang or _config().bot.default_language
    if request.method == "POST":
        auth.check_csrf()
    # PostgreSQL refuses NUL in text: answer it here, as a bad request, not deep in a query.
    if any("\x00" in v for v in (*request.args.values(), *request.form.values())):
        abort(400, description=N_("The form has characters that cannot be stored."))
    return None


@bp.after_request
def _headers(res: Response) -> Response:
    res.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    res.headers["X-Frame-Options"] = "DENY"
    res.headers["X-Content-Type-Options"] = "nosniff"
    res.headers["Referrer-Policy"] = "same-origin"
    res.headers["Cache-Control"] = "no-store"
    return res


@bp.errorhandler(HTTPException)
def _error(exc: HTTPException) -> Any:
    if request.path.endswith(".json") or request.accept_mimetypes.best == "application/json":
        return jsonify(error=exc.description or exc.name), exc.code or 500
    if not hasattr(g, "lang"):
        g.lang = _config().bot.default_language
    return render_template("dash_error.html", code=exc.code,
                           message=exc.description or exc.name), exc.code or 500


def _scope() -> Scope:
    scope: Scope = g.scope
    return scope


def _audit(db: Session, action: str, target: str, village_id: int | None, **details: Any) -> None:
    db.add(AuditLog(at=_now(), actor=_scope().actor, action=action, target=target,
                    village_id=village_id, details=json.dumps(details, default=str)))


def _int(value: str | None) -> int | None:
    if value is None or not value.strip().isdecimal() or len(value.strip()) > 9:
        return None
    return int(value)


def _page() -> int:
    return max(1, min(100_000, _int(request.args.get("page")) or 1))


# --- login --------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    # Only back into the dashboard: never an open redirect to another site.
    if target and target.startswith("/dashboard") and not target.startswith("//"):
        parsed = urlparse(target)
        if not parsed.scheme and not parsed.netloc:
            return target
    return url_for("dashboard.home")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Log in with a name (or coordinator number) and password (or API token)."""
    if g.scope is not None and request.method == "GET":
        return redirect(_safe_next(request.args.get("next")))
    error = None
    status = 200
    username = ""
    if request.method == "POST":
        username = request.form.get("username", "")[:80]
        secret = request.form.get("password", "")
        now = _now()
        with session_scope(_db()) as db:
            if auth.login_blocked(db, username, now):
                error, status = N_("Too many failed attempts. Wait 15 minutes and try "
                                   "again."), 429
            else:
                coord = auth.authenticate(db, username, secret)
                if coord is None:
                    auth.record_failure(db, username, now)
                    error, status = N_("Wrong name or password."), 401
                else:
                    auth.clear_failures(db, username)
                    db.add(AuditLog(at=now, actor=f"coordinator:{coord.id}",
                                    action="dashboard.login", target=f"coordinator:{coord.id}",
                                    village_id=coord.village_id))
                    auth.start_session(coord)
                    return redirect(_safe_next(request.form.get("next")))
    return render_template("dash_login.html", error=error, username=username,
                           next=request.values.get("next", "")), status


@bp.post("/logout")
def logout() -> Any:
    """End the session."""
    auth.end_session()
    return redirect(url_for("dashboard.login"))


@bp.post("/language")
def set_language() -> Any:
    """Show the dashboard in another language (for this session)."""
    lang = request.form.get("lang", "")
    if lang in _config().bot.languages:
        session["lang"] = lang
    return redirect(_safe_next(request.form.get("next")))


# --- home: numbers and charts -------------------------------------------------------------


def _village_filter(db: Session) -> tuple[list[Village], list[int], Village | None]:
    villages = auth.scoped_villages(db, _scope())
    chosen = _int(request.args.get("village"))
    one = next((v for v in villages if v.id == chosen), None)
    ids = [one.id] if one is not None and one.id is not None else [
        v.id for v in villages if v.id is not None]
    return villages, ids, one


@bp.get("/")
@login_required
def home() -> Any:
    """Overview: what needs attention, and three charts."""
    now = _now()
    config = _config()
    lang = g.lang
    with session_scope(_db()) as db:
        villages, ids, one = _village_filter(db)
        counts = {
            "families": db.exec(select(func.count()).select_from(Family).where(
                col(Family.village_id).in_(ids))).one(),
            "members": db.exec(select(func.count()).select_from(Member).where(
                col(Member.village_id).in_(ids), col(Member.role) != "coordinator")).one(),
            "linked": db.exec(select(func.count(func.distinct(ChannelIdentity.member_id)))
                              .join(Member, col(Member.id) == ChannelIdentity.member_id).where(
                col(Member.village_id).in_(ids), col(Member.role) != "coordinator")).one(),
            "pending_consent": db.exec(select(func.count()).select_from(Family).where(
                col(Family.village_id).in_(ids), col(Family.consent_status) == "pending")).one(),
            "fund_waiting": db.exec(select(func.count()).select_from(FundRequest).where(
                col(FundRequest.village_id).in_(ids),
                col(FundRequest.status).in_(("pending", "pledged")))).one(),
            "alerts_open": db.exec(select(func.count()).select_from(Alert).where(
                col(Alert.village_id).in_(ids), col(Alert.status) == "open")).one(),
        }
        weeks, parents, home_msgs = charts.relays_per_week(db, ids, now)
        months, by_status = charts.fund_requests_by_month(db, ids, now)
        silent = charts.silent_families(db, ids, now, config.scheduler.silent_parent_days)
    week_labels = [format_date(d, "d MMM", locale=babel_locale(lang)) for d in weeks]
    month_labels = [format_date(d, "MMM y", locale=babel_locale(lang)) for d in months]
    relay_data = charts.ChartData(week_labels, [
        charts.Series(gettext("from parents abroad"), parents, charts.PALETTE[0]),
        charts.Series(gettext("from children and carers"), home_msgs, charts.PALETTE[1])])
    fund_data = charts.ChartData(month_labels, [
        charts.Series(gettext(FUND_LABELS[s]), by_status[s], charts.STATUS_COLOURS[s])
        for s in FUND_STATUSES])
    days = config.scheduler.silent_parent_days
    svg = {
        "relays": charts.stacked_columns(
            relay_data, cid="c-relays",
            title=gettext("Messages between parents and children, per week"),
            desc=gettext("{total} messages in the last 12 weeks", total=relay_data.total())),
        "funds": charts.stacked_columns(
            fund_data, cid="c-funds",
            title=gettext("School-fund requests per month, by status"),
            desc=gettext("{total} requests in the last 6 months", total=fund_data.total())),
        "silent": charts.horizontal_bars(
            silent, cid="c-silent", part_name=gettext("silent"),
            whole_name=gettext("families with a parent abroad"),
            title=gettext("Families whose parent abroad has been silent for {days} days",
                          days=days),
            desc=gettext("{silent} of {total} families",
                         silent=sum(r[1] for r in silent), total=sum(r[2] for r in silent))),
    }
    return render_template("dash_home.html", counts=counts, svg=svg, villages=villages,
                           one=one, relay_data=relay_data, fund_data=fund_data, silent=silent,
                           days=days)


# --- families and members -----------------------------------------------------------------


def _scoped_family(db: Session, family_id: int) -> Family:
    family = db.get(Family, family_id) if 0 < family_id <= MAX_ID else None
    if family is None or not _scope().sees(family.village_id):
        abort(404, description=gettext("No such family."))
    return family


def _scoped_member(db: Session, member_id: int) -> Member:
    member = db.get(Member, member_id) if 0 < member_id <= MAX_ID else None
    if member is None or member.family_id is None or not _scope().sees(member.village_id):
        abort(404, description=gettext("No such member."))
    return member


@bp.get("/families")
@login_required
def families() -> Any:
    """List families, with a name search and a village filter."""
    page = _page()
    q = request.args.get("q", "").strip()[:80]
    with session_scope(_db()) as db:
        villages, ids, one = _village_filter(db)
        where: list[Any] = [col(Family.village_id).in_(ids)]
        if q:
            like = f"%{q.lower()}%"
            where.append(col(Family.id).in_(select(Member.family_id).where(
                func.lower(Member.name).like(like), col(Member.village_id).in_(ids))))
        status = request.args.get("consent")
        if status in CONSENT_LABELS:
            where.append(col(Family.consent_status) == status)
        total = db.exec(select(func.count()).select_from(Family).where(*where)).one()
        rows = list(db.exec(select(Family).where(*where).order_by(col(Family.id).desc())
                            .offset((page - 1) * PER_PAGE).limit(PER_PAGE)).all())
        members: dict[int, list[Member]] = {}
        if rows:
            for m in db.exec(select(Member).where(col(Member.family_id).in_(
                    [f.id for f in rows])).order_by(col(Member.id))).all():
                members.setdefault(m.family_id or 0, []).append(m)
        names = {v.id: v.name for v in villages}
    pages = max(1, -(-total // PER_PAGE))
    return render_template("dash_families.html", families=rows, members=members, names=names,
                           villages=villages, one=one, q=q, page=page, pages=pages, total=total,
                           consent=status if status in CONSENT_LABELS else "")


def _member_from_form(prefix: str, *, required: bool) -> tuple[MemberSpec | None, list[str]]:
    """Read one member's fields from a form (prefix ``m0_``...); return it or errors."""
    form = request.form
    role = form.get(prefix + "role", "").strip()
    name = form.get(prefix + "name", "").strip()
    year = form.get(prefix + "birth_year", "").strip()
    whatsapp = form.get(prefix + "whatsapp", "").strip()
    telegram = form.get(prefix + "telegram_chat_id", "").strip()
    tz = form.get(prefix + "timezone", "").strip()
    language = form.get(prefix + "language", "").strip()
    if not required and not (name or year or whatsapp or telegram):
        return None, []
    errors = []
    if role not in FAMILY_ROLES:
        errors.append(gettext("Role: choose child, carer or parent abroad."))
    if not name or len(name) > 80:
        errors.append(gettext("Name: 1 to 80 characters."))
    birth_year = None
    if year:
        if not year.isdecimal() or not 1900 <= int(year) <= _now().year:
            errors.append(gettext("Birth year: a year like 2012."))
        else:
            birth_year = int(year)
    if whatsapp and normalise_e164(whatsapp) is None:
        errors.append(gettext("WhatsApp: a phone number like 0812-3456-7890."))
    if telegram and (len(telegram) > 20 or not is_chat_id(telegram)):
        errors.append(gettext("Telegram: the chat number, digits only."))
    if tz and not _valid_tz(tz):
        errors.append(gettext("Time zone: a name like Asia/Taipei."))
    if language and language not in _config().bot.languages:
        errors.append(gettext("Language: choose one from the list."))
    if errors:
        return None, [f"{name or '?'}: {e}" for e in errors]
    return MemberSpec(role=role, name=name, birth_year=birth_year,
                      whatsapp=normalise_e164(whatsapp) if whatsapp else None,
                      telegram_chat_id=telegram or None, timezone=tz or None,
                      language=language or None), []


def _valid_tz(name: str) -> bool:
    from bot.web.api import valid_timezone

    return valid_timezone(name)


@bp.route("/families/new", methods=["GET", "POST"])
@login_required
def family_new() -> Any:
    """Register a family with its members."""
    config = _config()
    errors: list[str] = []
    with session_scope(_db()) as db:
        villages = auth.scoped_villages(db, _scope())
        if request.method == "POST":
            vid = _int(request.form.get("village_id"))
            village = next((v for v in villages if v.id == vid), None)
            if village is None:
                errors.append(gettext("Village: choose one of your villages."))
            language = request.form.get("language", config.bot.default_language)
            specs = []
            for i in range(MEMBER_ROWS):
                one_member, errs = _member_from_form(f"m{i}_", required=False)
                errors += errs
                if one_member is not None:
                    specs.append(one_member)
            if not specs and not errors:
                errors.append(gettext("Add at least one member."))
            given_by = request.form.get("consent_given_by", "").strip()[:80] or None
            method = request.form.get("consent_method", "").strip()[:40] or "signed form"
            if not errors and village is not None:
                spec = FamilySpec(village=village.name, district=village.district,
                                  language=language, members=specs, consent_given_by=given_by,
                                  consent_method=method if given_by else None)
                try:
                    with db.begin_nested():
                        family, _ms = create_family(db, spec, now=_now(),
                                                    languages=config.bot.languages,
                                                    actor=_scope().actor)
                except ValidationError as exc:
                    errors.append(_field_message(str(exc), specs))
                except IntegrityError:
                    errors.append(gettext("That WhatsApp number or Telegram chat is already "
                                          "registered to someone else."))
                else:
                    flash(gettext("Family registered. Give each person their invite code."),
                          "ok")
                    return redirect(url_for("dashboard.family", family_id=family.id))
        return render_template("dash_family_new.html", villages=villages, errors=errors,
                               rows=range(MEMBER_ROWS), form=request.form,
                               roles=FAMILY_ROLES), 422 if errors else 200


def _field_message(message: str, specs: list[MemberSpec]) -> str:
    """Turn a repo error (``members[1].whatsapp: ...``) into a line naming the person."""
    if message.startswith("members[") and "]." in message:
        index = message[len("members["):message.index("]")]
        if index.isdecimal() and int(index) < len(specs):
            return f"{specs[int(index)].name}: {message.split('.', 1)[1]}"
    return message


def _links(config: Config, code: str | None) -> dict[str, str | None]:
    from bot.web.api import telegram_link

    whatsapp = None
    if code and config.whatsapp_enabled and config.twilio.whatsapp_from:
        number = config.twilio.whatsapp_from.removeprefix("whatsapp:").lstrip("+")
        whatsapp = f"https://wa.me/{number}?text={quote('DAFTAR ' + code)}"
    return {"telegram": telegram_link(config, code), "whatsapp": whatsapp}


@bp.get("/families/<int:family_id>")
@login_required
def family(family_id: int) -> Any:
    """One family: members, invite codes and links, consent, and what can be done."""
    config = _config()
    with session_scope(_db()) as db:
        fam = _scoped_family(db, family_id)
        village = db.get(Village, fam.village_id)
        members = list(db.exec(select(Member).where(Member.family_id == family_id)
                               .order_by(col(Member.id))).all())
        idents: dict[int, list[ChannelIdentity]] = {}
        for i in db.exec(select(ChannelIdentity).where(col(ChannelIdentity.member_id).in_(
                [m.id for m in members]))).all():
            idents.setdefault(i.member_id, []).append(i)
        consents = list(db.exec(select(Consent).where(Consent.family_id == family_id)
                                .order_by(col(Consent.id).desc())).all())
        requests = list(db.exec(select(FundRequest).where(FundRequest.family_id == family_id)
                                .order_by(col(FundRequest.id).desc()).limit(20)).all())
    links = {m.id: _links(config, m.invite_code) for m in members}
    return render_template("dash_family.html", family=fam, village=village, members=members,
                           idents=idents, consents=consents, requests=requests, links=links,
                           roles=FAMILY_ROLES, bot_username=config.telegram.bot_username)


@bp.post("/families/<int:family_id>/members")
@login_required
def member_add(family_id: int) -> Any:
    """Add a member to a family."""
    with session_scope(_db()) as db:
        fam = _scoped_family(db, family_id)
        spec, errors = _member_from_form("", required=True)
        if spec is not None:
            try:
                with db.begin_nested():
                    member = _add_member(db, fam, spec)
            except ValidationError as exc:
                errors = [str(exc)]
            else:
                _audit(db, "member.create", f"member:{member.id}", fam.village_id,
                       role=member.role)
                flash(gettext("Member added. Their invite code is {code}.",
                              code=member.invite_code or ""), "ok")
        for e in errors:
            flash(e, "error")
    return redirect(url_for("dashboard.family", family_id=family_id))


def _add_member(db: Session, fam: Family, spec: MemberSpec) -> Member:
    now = _now()
    village = db.get(Village, fam.village_id)
    if spec.role == "child" and spec.birth_year and now.year - spec.birth_year > 18:
        raise ValidationError(gettext("Birth year: a child is under 18."))
    member = Member(family_id=fam.id, village_id=fam.village_id, role=spec.role,
                    name=spec.name, birth_year=spec.birth_year,
                    language=spec.language or fam.language,
                    timezone=spec.timezone or (village.timezone if village else "Asia/Jakarta"),
                    invite_code=new_invite_code(db), created_at=now)
    db.add(member)
    db.flush()
    _set_identities(db, member, spec.whatsapp, spec.telegram_chat_id)
    return member


def _set_identities(db: Session, member: Member, whatsapp: str | None,
                    telegram: str | None) -> list[str]:
    """Make a member's WhatsApp and Telegram chats the given ones; return what changed."""
    changed = []
    now = _now()
    current = {i.channel: i for i in db.exec(select(ChannelIdentity).where(
        ChannelIdentity.member_id == member.id)).all()}
    for channel, wanted in (("whatsapp", f"whatsapp:{whatsapp}" if whatsapp else None),
                            ("telegram", telegram)):
        have = current.get(channel)
        if have is not None and have.address == wanted:
            continue
        if have is not None:
            db.delete(have)
            db.flush()
            changed.append(channel)
        if wanted:
            try:
                link_identity(db, member, channel, wanted, now=now, where=channel)
            except ValidationError as exc:
                raise ValidationError(gettext("{channel}: already registered to another "
                                              "member.", channel=channel.title())) from exc
            if channel not in changed:
                changed.append(channel)
    return changed


@bp.route("/members/<int:member_id>/edit", methods=["GET", "POST"])
@login_required
def member_edit(member_id: int) -> Any:
    """Correct a member's details (the right to correct one's data)."""
    errors: list[str] = []
    with session_scope(_db()) as db:
        member = _scoped_member(db, member_id)
        idents = {i.channel: i.address for i in db.exec(select(ChannelIdentity).where(
            ChannelIdentity.member_id == member_id)).all()}
        if request.method == "POST":
            spec, errors = _member_from_form("", required=True)
            if spec is not None and spec.role == "child" and spec.birth_year and \
                    _now().year - spec.birth_year > 18:
                errors.append(gettext("Birth year: a child is under 18."))
            if spec is not None and not errors:
                changed = [f for f, old, new in (
                    ("role", member.role, spec.role), ("name", member.name, spec.name),
                    ("birth_year", member.birth_year, spec.birth_year),
                    ("language", member.language, spec.language or member.language),
                    ("timezone", member.timezone, spec.timezone or member.timezone))
                    if old != new]
                member.role, member.name, member.birth_year = spec.role, spec.name, \
                    spec.birth_year
                member.language = spec.language or member.language
                member.timezone = spec.timezone or member.timezone
                db.add(member)
                try:
                    with db.begin_nested():
                        changed += _set_identities(db, member, spec.whatsapp,
                                                   spec.telegram_chat_id)
                except ValidationError as exc:
                    db.rollback()  # keep nothing of a half-made change
                    errors.append(str(exc))
                else:
                    if "timezone" in changed or "role" in changed:
                        # Reminders follow the member's own time: recompute their instants.
                        from bot.scheduler import reschedule

                        reschedule(db, member, _now(), services(current_app).config)
                    _audit(db, "member.edit", f"member:{member.id}", member.village_id,
                           fields=changed)
                    flash(gettext("Saved."), "ok")
                    return redirect(url_for("dashboard.family", family_id=member.family_id))
        form = request.form if request.method == "POST" else {
            "role": member.role, "name": member.name, "birth_year": member.birth_year or "",
            "whatsapp": idents.get("whatsapp", "").removeprefix("whatsapp:"),
            "telegram_chat_id": idents.get("telegram", ""), "timezone": member.timezone,
            "language": member.language}
        return render_template("dash_member_edit.html", member=member, form=form,
                               errors=errors, roles=FAMILY_ROLES), 422 if errors else 200


@bp.post("/families/<int:family_id>/consent")
@login_required
def consent(family_id: int) -> Any:
    """Record a guardian's consent (e.g. a signed form), or its withdrawal."""
    now = _now()
    with session_scope(_db()) as db:
        fam = _scoped_family(db, family_id)
        action = request.form.get("action")
        if action == "give":
            given_by = request.form.get("given_by", "").strip()
            method = request.form.get("method", "").strip() or "signed form"
            if not given_by or len(given_by) > 80 or len(method) > 40:
                flash(gettext("Write who agreed (1 to 80 characters)."), "error")
            else:
                db.add(Consent(family_id=fam.id or 0, given_by=given_by, method=method, at=now))
                fam.consent_status = "given"
                db.add(fam)
                _audit(db, "consent.record", f"family:{fam.id}", fam.village_id, method=method)
                flash(gettext("Consent recorded."), "ok")
        elif action == "withdraw" and request.form.get("confirm") == "yes":
            # Withdrawing consent means deleting the children's data (PP 17/2025).
            children = [m.id for m in db.exec(select(Member).where(
                Member.family_id == fam.id, Member.role == "child")).all()]
            for child_id in children:
                erase_member(db, child_id or 0, now=now, actor=_scope().actor)
            for c in db.exec(select(Consent).where(Consent.family_id == fam.id,
                                                   col(Consent.withdrawn_at).is_(None))).all():
                c.withdrawn_at = now
                db.add(c)
            fam.consent_status = "withdrawn"
            db.add(fam)
            _audit(db, "consent.withdraw", f"family:{fam.id}", fam.village_id,
                   children_erased=len(children))
            flash(gettext("Consent withdrawn; the children's data was deleted."), "ok")
        else:
            flash(gettext("Tick the box to confirm."), "error")
    return redirect(url_for("dashboard.family", family_id=family_id))


@bp.post("/families/<int:family_id>/delete")
@login_required
def family_delete(family_id: int) -> Any:
    """Erase a family: its people, chats and messages."""
    with session_scope(_db()) as db:
        _scoped_family(db, family_id)
        if request.form.get("confirm") != "yes":
            flash(gettext("Tick the box to confirm."), "error")
            return redirect(url_for("dashboard.family", family_id=family_id))
        erase_family(db, family_id, now=_now(), actor=_scope().actor)
    flash(gettext("The family and everything about it was deleted."), "ok")
    return redirect(url_for("dashboard.families"))


@bp.get("/families/<int:family_id>/export.json")
@login_required
def family_export(family_id: int) -> Any:
    """Download everything stored about a family, as JSON."""
    now = _now()
    with session_scope(_db()) as db:
        fam = _scoped_family(db, family_id)
        data = export_family(db, family_id)
        _audit(db, "family.export", f"family:{family_id}", fam.village_id)
    data["exported_at"] = now.isoformat()
    res = Response(json.dumps(data, ensure_ascii=False, indent=2),
                   mimetype="application/json")
    res.headers["Content-Disposition"] = f'attachment; filename="family-{family_id}.json"'
    return res


# --- fund requests --------------------------------------------------------------------------


@bp.get("/fund-requests")
@login_required
def fund_requests() -> Any:
    """The fund-request queue: waiting ones first, with approve and reject."""
    status = request.args.get("status", "open")
    page = _page()
    with session_scope(_db()) as db:
        villages, ids, one = _village_filter(db)
        where: list[Any] = [col(FundRequest.village_id).in_(ids)]
        if status == "open":
            where.append(col(FundRequest.status).in_(("pending", "pledged")))
        elif status in FUND_STATUSES:
            where.append(col(FundRequest.status) == status)
        else:
            status = "all"
        total = db.exec(select(func.count()).select_from(FundRequest).where(*where)).one()
        rows = list(db.exec(select(FundRequest).where(*where).order_by(col(FundRequest.id))
                            .offset((page - 1) * PER_PAGE).limit(PER_PAGE)).all())
        people = {i for r in rows for i in (r.child_id, r.requester_id) if i}
        names = {m.id: m for m in db.exec(select(Member).where(
            col(Member.id).in_(people))).all()} if people else {}
    from handlers.fund import PURPOSE_LABEL

    return render_template("dash_fund_requests.html", rows=rows, names=names, status=status,
                           statuses=FUND_STATUSES, villages=villages, one=one,
                           purpose_label=PURPOSE_LABEL, page=page,
                           pages=max(1, -(-total // PER_PAGE)), total=total)


@bp.post("/fund-requests/<int:request_id>/<any(approve, reject):decision>")
@login_required
def fund_decide(request_id: int, decision: str) -> Any:
    """Approve or reject a request; the requester and the parents are told."""
    from bot.web.api import ApiError, decide_request

    approve = decision == "approve"
    reason = request.form.get("reason", "").strip()[:300] or None
    back = _safe_next(request.form.get("next") or url_for("dashboard.fund_requests"))
    if not approve and not reason:
        flash(gettext("Write a reason: the family is told why."), "error")
        return redirect(back)
    try:
        with session_scope(_db()) as db:
            decide_request(db, _scope(), request_id, approve=approve, reason=reason,
                           now=_now(), config=_config())
    except ApiError as exc:
        if exc.code == 404:
            abort(404, description=gettext("No such request."))
        flash(str(exc.description), "error")
    else:
        flash(gettext("Request #{id} {decision}. The family has been told.", id=request_id,
                      decision=gettext(FUND_LABELS["approved" if approve else "rejected"])),
              "ok")
    return redirect(back)


# --- alerts ---------------------------------------------------------------------------------


@bp.get("/alerts")
@login_required
def alerts() -> Any:
    """Safety alerts: open ones first."""
    status = request.args.get("status", "open")
    with session_scope(_db()) as db:
        villages, ids, one = _village_filter(db)
        where: list[Any] = [col(Alert.village_id).in_(ids)]
        if status in ALERT_LABELS:
            where.append(col(Alert.status) == status)
        else:
            status = "all"
        rows = list(db.exec(select(Alert).where(*where).order_by(col(Alert.id).desc())
                            .limit(200)).all())
        people = {a.member_id for a in rows if a.member_id}
        members = {m.id: m for m in db.exec(select(Member).where(
            col(Member.id).in_(people))).all()} if people else {}
        coords = {c.id: c.name for c in db.exec(select(Coordinator).where(col(Coordinator.id).in_(
            {a.acknowledged_by for a in rows if a.acknowledged_by}))).all()}
        names = {v.id: v.name for v in villages}
    return render_template("dash_alerts.html", rows=rows, members=members, coords=coords,
                           names=names, status=status, villages=villages, one=one)


@bp.post("/alerts/<int:alert_id>/ack")
@login_required
def alert_ack(alert_id: int) -> Any:
    """Mark an alert as in hand."""
    from handlers.safety import acknowledge

    with session_scope(_db()) as db:
        alert = db.get(Alert, alert_id) if 0 < alert_id <= MAX_ID else None
        if alert is None or not _scope().sees(alert.village_id):
            abort(404, description=gettext("No such alert."))
        coord = db.get(Coordinator, _scope().coordinator_id)
        if alert.status == "open" and coord is not None:
            acknowledge(db, alert, coord, _now())
    flash(gettext("Alert #{id} is marked as in hand.", id=alert_id), "ok")
    return redirect(url_for("dashboard.alerts"))


# --- announcements ----------------------------------------------------------------------------


def _broadcast_form(db: Session) -> tuple[dict[str, Any], list[str]]:
    """Read and check the announcement form; return its values and errors."""
    config = _config()
    form = request.form
    errors: list[str] = []
    values: dict[str, Any] = {"text": form.get("text", ""), "roles": form.getlist("roles"),
                              "age_band": form.get("age_band", ""),
                              "send_at": form.get("send_at", "").strip(),
                              "translations": {}, "village": None}
    vid = _int(form.get("village_id"))
    village = db.get(Village, vid) if vid else None
    if village is None or not _scope().sees(village.id):
        errors.append(gettext("Village: choose one of your villages."))
    values["village"] = village
    try:
        values["text"] = check_text(form.get("text"), "text", config)
    except BroadcastError:
        errors.append(gettext("Text: write the announcement (at most {n} characters).",
                              n=config.bot.max_text_length))
    try:
        values["roles"] = check_roles(form.getlist("roles"))
        values["age_band"] = check_age_band(form.get("age_band") or None)
        raw = {lang: form.get(f"tr_{lang}", "") for lang in config.bot.languages}
        values["translations"] = check_translations(raw, config)
    except BroadcastError as exc:
        errors.append(str(exc))
    if village is not None:
        try:
            values["send_at_utc"] = parse_send_at(values["send_at"] or None, village.timezone,
                                                  _now())
        except BroadcastError:
            errors.append(gettext("Time: pick a date and time, or leave it empty for now."))
    return values, errors


@bp.route("/broadcasts", methods=["GET", "POST"])
@login_required
def broadcasts() -> Any:
    """Announcements: the list, the form, and sending (after the preview)."""
    with session_scope(_db()) as db:
        villages = auth.scoped_villages(db, _scope())
        errors: list[str] = []
        values: dict[str, Any] = {}
        if request.method == "POST":
            values, errors = _broadcast_form(db)
            if not errors:
                b = create_broadcast(db, village=values["village"], text=values["text"],
                                     now=_now(), config=_config(), actor=_scope().actor,
                                     coordinator_id=_scope().coordinator_id,
                                     roles=values["roles"], age_band=values["age_band"],
                                     translations=values["translations"],
                                     send_at=values["send_at_utc"])
                return redirect(url_for("dashboard.broadcast", broadcast_id=b.id))
        ids = [v.id for v in villages]
        rows = list(db.exec(select(Broadcast).where(col(Broadcast.village_id).in_(ids))
                            .order_by(col(Broadcast.id).desc()).limit(50)).all())
        stats = {b.id: progress(db, b, _config(), now=_now()) for b in rows}
        names = {v.id: v.name for v in villages}
    return render_template("dash_broadcasts.html", rows=rows, stats=stats, names=names,
                           villages=villages, errors=errors, form=request.form,
                           roles=FAMILY_ROLES, bands=AGE_BANDS), 422 if errors else 200


@bp.post("/broadcasts/preview")
@login_required
def broadcast_preview() -> Any:
    """Show who an announcement reaches, how it reads in each language, and how long."""
    config = _config()
    with session_scope(_db()) as db:
        values, errors = _broadcast_form(db)
        if errors:
            villages = auth.scoped_villages(db, _scope())
            return render_template("dash_broadcasts.html", rows=[], stats={}, names={},
                                   villages=villages, errors=errors, form=request.form,
                                   roles=FAMILY_ROLES, bands=AGE_BANDS), 422
        village = values["village"]
        who = plan(db, village_id=village.id, roles=values["roles"],
                   age_band=values["age_band"], now=_now(), config=config)
    by_lang = who.by_language()
    samples = {lang: render(values["text"], values["translations"], lang, village.name)
               for lang in sorted(set(by_lang) | set(values["translations"])
                                  | {config.bot.default_language})}
    by_channel = who.by_channel()
    return render_template("dash_broadcast_preview.html", v=values, village=village, who=who,
                           by_lang=by_lang, by_channel=by_channel, samples=samples,
                           eta=estimate_seconds(by_channel, config),
                           held=by_channel.get("", 0), form=request.form)


@bp.get("/broadcasts/<int:broadcast_id>")
@login_required
def broadcast(broadcast_id: int) -> Any:
    """One announcement and its live progress."""
    with session_scope(_db()) as db:
        b = _scoped_broadcast(db, broadcast_id)
        village = db.get(Village, b.village_id)
        p = progress(db, b, _config(), now=_now())
    waiting = datetime.fromisoformat(p["waiting_until"]) if p["waiting_until"] else None
    return render_template("dash_broadcast.html", b=b, p=p, village=village, waiting=waiting,
                           translations=json.loads(b.translations or "{}"),
                           roles=json.loads(b.roles or "[]"))


def _scoped_broadcast(db: Session, broadcast_id: int) -> Broadcast:
    b = db.get(Broadcast, broadcast_id) if 0 < broadcast_id <= MAX_ID else None
    if b is None or not _scope().sees(b.village_id):
        abort(404, description=gettext("No such announcement."))
    return b


@bp.get("/broadcasts/<int:broadcast_id>/progress.json")
@login_required
def broadcast_progress(broadcast_id: int) -> Any:
    """The live counts, for the progress page's script."""
    with session_scope(_db()) as db:
        b = _scoped_broadcast(db, broadcast_id)
        p = progress(db, b, _config(), now=_now())
    p["status_label"] = gettext(BROADCAST_LABELS.get(p["status"], p["status"]))
    p["waiting_label"] = gettext("Quiet hours: sending starts at {when}.", when=fmt_when(
        datetime.fromisoformat(p["waiting_until"]))) if p["waiting_until"] else ""
    return jsonify(p)


# --- import, export, audit --------------------------------------------------------------------


@bp.route("/import", methods=["GET", "POST"])
@login_required
def import_page() -> Any:
    """Import families from a CSV file: check first, then import all or nothing."""
    from bot.importer import ImportScope, import_families

    report = None
    if request.method == "POST":
        upload = request.files.get("file")
        data = upload.read() if upload is not None else b""
        if not data:
            flash(gettext("Choose a CSV file first."), "error")
            return redirect(url_for("dashboard.import_page"))
        dry_run = request.form.get("action") != "import"
        scope = _scope()
        with session_scope(_db()) as db:
            report = import_families(
                db, data, now=_now(), config=_config(), actor=scope.actor, dry_run=dry_run,
                scope=ImportScope(scope.village_ids,
                                  scope.district if scope.level == "district" else None))
    return render_template("dash_import.html", report=report), (
        422 if report is not None and report.errors else 200)


def _csv_response(name: str, write: Any) -> Response:
    buffer = io.StringIO()
    write(buffer)
    res = Response("\ufeff" + buffer.getvalue(), mimetype="text/csv; charset=utf-8")
    res.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return res


@bp.get("/export/families.csv")
@login_required
def export_families() -> Any:
    """Download the families (one row a member), in the import's column layout."""
    from bot.csv_export import write_families

    with session_scope(_db()) as db:
        _villages, ids, _one = _village_filter(db)
        res = _csv_response("families.csv", lambda out: write_families(db, ids, out))
        _audit(db, "families.export", "", None, villages=ids)
    return res


@bp.get("/export/fund-requests.csv")
@login_required
def export_fund_requests() -> Any:
    """Download the fund requests."""
    from bot.csv_export import write_fund_requests

    status = request.args.get("status")
    with session_scope(_db()) as db:
        _villages, ids, _one = _village_filter(db)
        res = _csv_response("fund-requests.csv", lambda out: write_fund_requests(
            db, ids, out, status=status if status in FUND_STATUSES else None))
        _audit(db, "fund_requests.export", "", None, villages=ids)
    return res


@bp.get("/audit")
@login_required
def audit() -> Any:
    """The audit log of the coordinator's villages: who changed what, when."""
    page = _page()
    with session_scope(_db()) as db:
        ids = list(_scope().village_ids)
        where = or_(col(AuditLog.village_id).in_(ids), col(AuditLog.actor) == _scope().actor)
        total = db.exec(select(func.count()).select_from(AuditLog).where(where)).one()
        rows = list(db.exec(select(AuditLog).where(where).order_by(col(AuditLog.id).desc())
                            .offset((page - 1) * PER_PAGE).limit(PER_PAGE)).all())
    return render_template("dash_audit.html", rows=rows, page=page,
                           pages=max(1, -(-total // PER_PAGE)))

