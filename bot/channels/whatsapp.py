"""WhatsApp through Twilio: the only module that imports twilio.

Inbound, Twilio posts a form to ``/webhooks/twilio``; its ``X-Twilio-Signature`` is
checked against ``server.public_url`` (the address Twilio called, which is not what a
reverse proxy hands us), then the form becomes a neutral ``Inbound``. The answer is an
empty TwiML ``<Response/>``: replies go through the outbox and the REST API like every
other message, so they are paced, retried and ordered the same way.

Outbound, ``client.messages.create`` against ``twilio.api_base_url``: free text inside
the 24-hour window, a template (Content SID and variables) outside it (the outbox
decides which, see bot/outbox.py). Delivery reports arrive at
``/webhooks/twilio/status``: a late 63016 holds the message for the member's next
message (and nudges them), 21610 records that they opted out, other failures are final.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import requests
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import select
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from bot.channels.base import MAX_LENGTH, PACE, SendResult
from bot.channels.twilio_wire import (  # noqa: F401  (re-exported for callers)
    EMPTY_TWIML,
    INBOUND_PATH,
    SIGNATURE_HEADER,
    MalformedForm,
    _sid,
    parse_inbound,
    public_url,
    signature_ok,
)
from bot.config import Config
from bot.outbox import cancel_unasked, hold_address, hold_for_window
from bot.privacy import mask_phone
from storage.db import is_postgres, session_scope
from storage.models import ChannelIdentity, Member, Outbox

log = logging.getLogger(__name__)
# The client logs every request, numbers included, at INFO.
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)

STATUS_PATH = "/webhooks/twilio/status"
WINDOW_CLOSED = 63016
OPTED_OUT = 21610
# Not a (WhatsApp) number we can ever reach: invalid, not mobile, not on WhatsApp.
UNREACHABLE = frozenset({21211, 21614, 63003})
RATE_LIMITED = frozenset({20429, 63018})


def utcnow() -> datetime:
    """Return the current instant in UTC."""
    return datetime.now(UTC)


# --- inbound ---------------------------------------------------------------------------


def record_status(db: DbEngine, config: Config, form: Any, now: datetime) -> str:
    """Apply a status callback to the message it reports on; return what was done."""
    raw_sid = form.get("MessageSid") or form.get("SmsSid")
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if not raw_sid or not status:
        raise MalformedForm("MessageSid and MessageStatus are required")
    sid = _sid(raw_sid)
    if status not in ("failed", "undelivered"):
        return "ok"  # queued, sent, delivered, read: the row already says "sent"
    try:
        code = int(form.get("ErrorCode") or 0)
    except ValueError as exc:
        raise MalformedForm("ErrorCode: expected a number") from exc
    with session_scope(db) as session:
        query = select(Outbox).where(Outbox.channel == "whatsapp", Outbox.external_id == sid)
        if is_postgres(db):
            query = query.with_for_update()
        row = session.exec(query).first()
        if row is None:
            return "unknown"
        if row.status != "sent":
            return "ignored"  # already held, failed or resent
        if code == WINDOW_CLOSED:
            hold_for_window(session, row, now, config)
            outcome = "held"
        else:
            row.status, row.error = "failed", f"twilio {status} {code or ''}".strip()
            session.add(row)
            outcome = "failed"
            if code == OPTED_OUT or code in UNREACHABLE:
                _mark_address(session, row, code, now)
    log.info("twilio reports message %s to %s %s (%s): %s", row.id, mask_phone(row.address),
             status, code or "-", outcome)
    return outcome


def _mark_address(session: Any, row: Outbox, code: int, now: datetime) -> None:
    """Record that a number opted out (21610) or cannot be reached."""
    identity = session.exec(select(ChannelIdentity).where(
        ChannelIdentity.channel == "whatsapp", ChannelIdentity.address == row.address)).first()
    reason = "opted out at WhatsApp" if code == OPTED_OUT else f"twilio {code}"
    if identity is not None:
        identity.reachable, identity.unreachable_reason = False, reason
        session.add(identity)
    if code == OPTED_OUT and row.member_id:
        member = session.get(Member, row.member_id)
        if member is not None:
            member.opted_out = True
            session.add(member)
            cancel_unasked(session, member.id or 0, now)
    hold_address(session, "whatsapp", row.address, f"chat unreachable: {reason}")


# --- sending ---------------------------------------------------------------------------


class WhatsAppChannel:
    """Sends outbox rows with Twilio's Messages API; several in flight at once."""

    name = "whatsapp"
    max_length = MAX_LENGTH["whatsapp"]
    burst = 1.5  # absorbs a late wake-up; still under the limit in any second (see sender)
    rate_per_address_per_s: float | None = None

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rate_per_s = config.twilio.rate_per_s * PACE
        self.limit_per_s = config.twilio.rate_per_s  # the sender's guard never exceeds it
        self.max_in_flight = 16
        self.status_url = (public_url(config, STATUS_PATH) if config.twilio.status_callback
                           else None)
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    def _client(self) -> Client:
        """Return this thread's client (requests sessions are not shared across threads)."""
        client: Client | None = getattr(self._local, "client", None)
        if client is None or getattr(self._local, "pid", None) != os.getpid():
            tw = self.config.twilio
            client = Client(tw.account_sid, tw.auth_token,
                            http_client=TwilioHttpClient(timeout=tw.timeout_s))
            client.api.base_url = tw.api_base_url.rstrip("/")
            self._local.client, self._local.pid = client, os.getpid()
        return client

    def submit(self, row: Outbox) -> Future[SendResult]:
        """Start sending one row on a worker thread."""
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=self.max_in_flight,
                                                thread_name_prefix="whatsapp-send")
                self._pool_pid = os.getpid()
            pool = self._pool
        return pool.submit(self.send, row)

    def send(self, row: Outbox) -> SendResult:
        """Send one row (free text, or its template) and map Twilio's answer."""
        tw = self.config.twilio
        kwargs: dict[str, Any] = {"to": row.address, "from_": tw.whatsapp_from}
        content_sid = tw.templates.get(row.template) if row.template else None
        if content_sid:
            kwargs["content_sid"] = content_sid
            if row.template_vars:
                kwargs["content_variables"] = row.template_vars
        else:
            kwargs["body"] = row.text
        if self.status_url:
            kwargs["status_callback"] = self.status_url
        try:
            message = self._client().messages.create(**kwargs)
        except TwilioRestException as exc:
            return result_for(exc)
        except requests.RequestException as exc:  # timeouts escape as requests' own
            return SendResult(ok=False, error=f"twilio: {type(exc).__name__}")
        except TwilioException as exc:
            return SendResult(ok=False, error=f"twilio: {type(exc).__name__}")
        return SendResult(ok=True, external_id=message.sid)

    def close(self) -> None:
        """Stop the worker threads (tests, clean exits)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def result_for(exc: TwilioRestException) -> SendResult:
    """Map Twilio's error to a SendResult (its message may contain the number: not kept)."""
    code, status = exc.code, exc.status
    if code == WINDOW_CLOSED:
        return SendResult(ok=False, window_closed=True,
                          error=f"twilio {code}: outside the 24-hour window")
    if code == OPTED_OUT:
        return SendResult(ok=False, permanent=True, opted_out=True, unreachable=True,
                          error=f"twilio {code}: the recipient opted out")
    if code in UNREACHABLE:
        return SendResult(ok=False, permanent=True, unreachable=True,
                          error=f"twilio {code}: not a reachable WhatsApp number")
    if code in RATE_LIMITED or status == 429:
        return SendResult(ok=False, error=f"twilio {code or status}: too many requests")
    if status is None or status >= 500:
        return SendResult(ok=False, error=f"twilio {status}: server error {code or ''}".strip())
    if status in (401, 403):
        log.error("Twilio refused our credentials: check [twilio] account_sid and auth_token")
        return SendResult(ok=False, error=f"twilio {code or status}: credentials refused")
    return SendResult(ok=False, permanent=True, error=f"twilio {code or status}: refused")
