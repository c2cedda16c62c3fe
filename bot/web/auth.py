"""Who a coordinator is and what they may see: API tokens, dashboard sessions, scopes.

A village coordinator sees their own village; a district coordinator every village of
their district. Everything the API and the dashboard read goes through a ``Scope``, and a
record outside it answers 404 as if it did not exist (no probing other villages' ids).

Dashboard sessions are Flask's signed cookie (HttpOnly, SameSite=Lax, Secure when the
public URL is https, scoped to ``/dashboard``), with a CSRF token per session checked on
every POST and a login rate limit kept in the database (``LoginAttempt``), so it holds
across gunicorn workers. The signing key is ``server.secret_key``; when it is empty and
the database is a SQLite file, a key is generated once and kept beside the database
(``secret_key``, mode 600) so every worker shares it; with PostgreSQL and no key the
dashboard refuses to log anyone in and says why.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, abort, current_app, request, session
from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from bot.config import Config, sqlite_path
from bot.i18n import N_
from bot.web.passwords import check_password, hash_password
from storage.models import Coordinator, LoginAttempt, Village
from storage.repo import coordinator_by_token, coordinator_village_ids, hash_token

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

MAX_ID = 2**31 - 1  # ids above this exist in no table (and overflow SQLite/PostgreSQL ints)
LOGIN_WINDOW = timedelta(minutes=15)
LOGIN_MAX_FAILURES = 5  # per name and address in the window
LOGIN_MAX_FAILURES_PER_IP = 30  # any names from one address in the window
SESSION_HOURS = 12
# A hash to check against when the name is unknown, so both cases take as long.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Scope:
    """A coordinator and the villages they may see."""

    coordinator_id: int
    member_id: int | None
    name: str
    level: str
    district: str
    home_village_id: int
    village_ids: frozenset[int]

    @property
    def actor(self) -> str:
        """Return the audit-log actor for this coordinator."""
        return f"coordinator:{self.coordinator_id}"

    def sees(self, village_id: int | None) -> bool:
        """Tell whether a village is within this coordinator's reach."""
        return village_id is not None and village_id in self.village_ids


def scope_for(session: Session, coord: Coordinator) -> Scope:
    """Return the villages a coordinator may see."""
    ids = coordinator_village_ids(session, coord)
    return Scope(coordinator_id=coord.id or 0, member_id=coord.member_id, name=coord.name,
                 level=coord.level, district=coord.district, home_village_id=coord.village_id,
                 village_ids=ids)


def scoped_villages(session: Session, scope: Scope) -> list[Village]:
    """Return the villages of a scope, by name."""
    if not scope.village_ids:
        return []
    return list(session.exec(select(Village).where(col(Village.id).in_(scope.village_ids))
                             .order_by(col(Village.name))).all())


def may_create_in(session: Session, scope: Scope, village_name: str, district: str
                  ) -> tuple[bool, Village | None]:
    """Tell whether a coordinator may register families in a village (by name).

    A village coordinator: only their own village. A district coordinator: any village of
    their district, including a new one named with their district.
    """
    village = session.exec(select(Village).where(Village.name == village_name.strip())).first()
    if village is not None:
        return scope.sees(village.id), village
    ok = scope.level == "district" and bool(scope.district) and (
        not district or district.strip() == scope.district)
    return ok, None


# --- the API: bearer tokens -------------------------------------------------------------


def bearer_token() -> str | None:
    """Return the token of an ``Authorization: Bearer`` header, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def api_scope(session: Session) -> Scope:
    """Return the scope of the request's API token, or answer 401."""
    token = bearer_token()
    if token is None:
        abort(401, description="missing Authorization: Bearer token")
    if len(token) > 200:
        abort(401, description="invalid token")
    coord = coordinator_by_token(session, token)
    if coord is None:
        abort(401, description="invalid token")
    return scope_for(session, coord)


# --- the dashboard: secret key, sessions, CSRF, login ----------------------------------


class DashboardUnavailable(RuntimeError):
    """The dashboard cannot sign sessions (no secret key)."""


def _secret_file(config: Config) -> Path | None:
    db_file = sqlite_path(config.database.url)
    return db_file.parent / "secret_key" if db_file is not None else None


def load_or_create_secret(path: Path) -> str:
    """Return the key stored at path, creating it (mode 600) if there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(50):
        try:
            key = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            key = ""
        if key:
            return key
        # Write a temporary file, then link it into place: link fails if another worker
        # got there first, so every worker ends up with the same key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_urlsafe(48).encode("ascii"))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        time.sleep(0.01)
    raise DashboardUnavailable(f"could not read the session key at {path}")


def init_app(app: Flask, config: Config) -> None:
    """Configure session signing and cookies for the dashboard."""
    if not app.config.get("SECRET_KEY"):
        path = _secret_file(config)
        if path is not None:
            try:
                app.config["SECRET_KEY"] = load_or_create_secret(path)
            except OSError as exc:
                log.warning("dashboard disabled: cannot keep a session key at %s (%s)", path,
                            exc.strerror)
        else:
            log.warning("dashboard disabled: set [server] secret_key "
                        "(DESMIGRATIF_SERVER_SECRET_KEY) to sign its sessions")
    if app.config.get("SESSION_COOKIE_NAME", "session") == "session":
        app.config["SESSION_COOKIE_NAME"] = "desmigratif_session"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_SECURE"] = config.server.public_url.startswith("https://")
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=SESSION_HOURS)


def dashboard_ready() -> bool:
    """Tell whether sessions can be signed."""
    return bool(current_app.config.get("SECRET_KEY"))


def _fingerprint(coord: Coordinator) -> str:
    # Changing the password (or the token) ends every session opened with the old one.
    basis = f"{coord.password_hash or ''}|{coord.token_hash}"
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


def csrf_token() -> str:
    """Return this session's CSRF token, creating it on first use."""
    if not dashboard_ready():
        return ""  # no sessions at all: the page says why
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 20:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """Refuse a POST whose form does not carry the session's CSRF token."""
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf")
    if not isinstance(expected, str) or not sent or not hmac.compare_digest(
            sent.encode(), expected.encode()):
        abort(400, description=N_("The form expired or came from another site: reload the "
                                   "page and try again."))


def start_session(coord: Coordinator) -> None:
    """Log a coordinator in (a fresh session: no fixation)."""
    session.clear()
    session.permanent = True
    session["cid"] = coord.id
    session["fp"] = _fingerprint(coord)
    session["csrf"] = secrets.token_urlsafe(32)


def end_session() -> None:
    """Log out."""
    session.clear()


def session_coordinator(db: Session) -> Coordinator | None:
    """Return the logged-in coordinator, if the session is still valid."""
    cid = session.get("cid")
    if not isinstance(cid, int) or not 0 < cid <= MAX_ID:
        return None
    coord = db.get(Coordinator, cid)
    if coord is None or not hmac.compare_digest(str(session.get("fp", "")),
                                                _fingerprint(coord)):
        return None
    return coord


def client_address() -> str:
    """Return the client's address (the proxy's view when behind_proxy is set)."""
    return (request.remote_addr or "unknown")[:45]


def login_blocked(db: Session, username: str, now: datetime) -> bool:
    """Tell whether too many logins failed lately for this name here, or from here."""
    since = now - LOGIN_WINDOW
    ip = client_address()
    key = _attempt_key(username, ip)
    per_key = db.exec(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.key == key, col(LoginAttempt.at) > since)).one()
    if per_key >= LOGIN_MAX_FAILURES:
        return True
    per_ip = db.exec(select(func.count()).select_from(LoginAttempt).where(
        col(LoginAttempt.key).like(f"%|{ip}"), col(LoginAttempt.at) > since)).one()
    return bool(per_ip >= LOGIN_MAX_FAILURES_PER_IP)


def record_failure(db: Session, username: str, now: datetime) -> None:
    """Count a failed login (and forget failures older than a day)."""
    db.add(LoginAttempt(key=_attempt_key(username, client_address()), at=now))
    db.exec(delete(LoginAttempt).where(col(LoginAttempt.at) < now - timedelta(days=1)))  # type: ignore[call-overload]


def clear_failures(db: Session, username: str) -> None:
    """Forget the failures of a name from here after a successful login."""
    db.exec(delete(LoginAttempt).where(  # type: ignore[call-overload]
        col(LoginAttempt.key) == _attempt_key(username, client_address())))


def _attempt_key(username: str, ip: str) -> str:
    return f"{username.strip().lower()[:60]}|{ip}"


def authenticate(db: Session, username: str, secret: str) -> Coordinator | None:
    """Return the coordinator for a name (or number) and password (or API token)."""
    name = username.strip()
    secret = secret[:1024]
    if not name or not secret:
        check_password(secret or "x", _DUMMY_HASH)
        return None
    ident = name.lstrip("#")
    if ident.isdecimal() and int(ident) <= MAX_ID:
        candidates = [c for c in [db.get(Coordinator, int(ident))] if c is not None]
    else:
        candidates = list(db.exec(select(Coordinator).where(
            func.lower(Coordinator.name) == name.lower()).limit(10)).all())
    found: Coordinator | None = None
    checked = False
    for coord in candidates[:10]:
        if coord.password_hash:
            checked = True
            if check_password(secret, coord.password_hash) and found is None:
                found = coord
        if hmac.compare_digest(hash_token(secret), coord.token_hash) and found is None:
            found = coord
    if not checked:
        check_password(secret, _DUMMY_HASH)  # same time whether or not the name exists
    return found


def login_required(view: F) -> F:
    """Send visitors who are not logged in to the login page."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from flask import g, redirect, url_for

        if getattr(g, "scope", None) is None:
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
