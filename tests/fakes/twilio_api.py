"""Loopback fake of the Twilio REST API (Messages resource), for tests.

Point twilio-python 9.x at it with ``client.api.base_url = fake.url``: the client builds
``{base_url}/2010-04-01/Accounts/{sid}/Messages.json`` and POSTs a form with HTTP Basic
auth (account sid + auth token). Errors use Twilio's legacy JSON shape
``{"code", "message", "more_info", "status"}`` which the client turns into
``TwilioRestException`` with ``.code``. Rate enforcement is the sliding window described
in ``telegram_api``.
"""

from __future__ import annotations

import email.utils
import hmac
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.fakes.telegram_api import FakeRequest, FakeResponse, LoopbackFake, SlidingWindow

API_VERSION = "2010-04-01"
_MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/([^/]+)/Messages(?:/([^/]+))?\.json")
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_MAX_BODY_CHARS = 1600


def _error(status: int, code: int, message: str) -> FakeResponse:
    return FakeResponse(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


def _address(value: str) -> str:
    """Strip the channel prefix (``whatsapp:``) so numbers compare across forms."""
    return value.split(":", 1)[1].strip() if ":" in value else value.strip()


def _channel(value: str) -> str:
    return value.split(":", 1)[0] if ":" in value else "sms"


def _segments(body: str, to: str) -> int:
    if _channel(to) != "sms" or not body:
        return 1
    gsm = all(ord(c) < 128 for c in body)
    single, multi = (160, 153) if gsm else (70, 67)
    return 1 if len(body) <= single else -(-len(body) // multi)


class FakeTwilio(LoopbackFake):
    """Fake Twilio REST API server for twilio-python's ``client.messages.create``."""

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "test-auth-token",  # noqa: S107 - a fake's well-known test token
        *,
        keep_alive: bool = False,
        overall_per_s: float | None = None,
    ) -> None:
        super().__init__(keep_alive=keep_alive)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.slow_seconds = 3.0
        self._overall = SlidingWindow(overall_per_s) if overall_per_s else None
        self._outside_window: set[str] = set()
        self._opted_out: set[str] = set()
        self._invalid: set[str] = set()
        self._messages: dict[str, dict[str, Any]] = {}

    # scripting ---------------------------------------------------------------------------

    def outside_window(self, to: str) -> None:
        """Refuse freeform sends to ``to`` with 63016 (templates still pass)."""
        with self._lock:
            self._outside_window.add(_address(to))

    def inside_window(self, to: str) -> None:
        """Let freeform sends to ``to`` pass again (the recipient wrote to us)."""
        with self._lock:
            self._outside_window.discard(_address(to))

    def opted_out(self, to: str) -> None:
        """Refuse every send to ``to`` with 21610 (unsubscribed recipient)."""
        with self._lock:
            self._opted_out.add(_address(to))

    def invalid(self, to: str) -> None:
        """Refuse every send to ``to`` with 21211 (not a valid phone number)."""
        with self._lock:
            self._invalid.add(_address(to))

    # records -----------------------------------------------------------------------------

    def bodies_for(self, to: str) -> list[str]:
        """Return the freeform bodies sent to ``to`` (with or without ``whatsapp:``)."""
        key = _address(to)
        return [m["body"] for m in self.sent if _address(m["to"]) == key and m["body"] is not None]

    def _reset_locked(self) -> None:
        self._outside_window.clear()
        self._opted_out.clear()
        self._invalid.clear()
        self._messages.clear()
        if self._overall:
            self._overall.clear()

    # HTTP --------------------------------------------------------------------------------

    def malformed(self, reason: str) -> FakeResponse:
        """Answer an unparsable body like Twilio does."""
        return _error(400, 20001, f"Invalid request: {reason}")

    def handle(self, request: FakeRequest) -> FakeResponse:
        """Authenticate, then route the Messages resource."""
        creds = request.basic_auth()
        if creds is None or not (
            hmac.compare_digest(creds[0].encode(), self.account_sid.encode())
            and hmac.compare_digest(creds[1].encode(), self.auth_token.encode())
        ):
            response = _error(401, 20003, "Authenticate")
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response
        match = _MESSAGES_PATH.fullmatch(request.path)
        if match is None or match.group(1) != self.account_sid:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        with self._lock:
            self._record_call(f"{request.method} {request.path}", request)
        message_sid = match.group(2)
        if message_sid is None and request.method == "POST":
            response = self._create(request)
            self._record_attempt(request.get("To"), request.get("Body"), response)
            return response
        if message_sid is not None and request.method == "GET":
            with self._lock:
                resource = self._messages.get(message_sid)
            if resource is None:
                return _error(404, 20404, f"The requested resource {request.path} was not found")
            return FakeResponse(200, resource)
        return _error(405, 20004, "Method not allowed")

    def _validate(self, request: FakeRequest) -> FakeResponse | None:
        """Return Twilio's 400 for a request it would refuse outright (lock held)."""
        to = request.get("To")
        from_ = request.get("From")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not from_ and not request.get("MessagingServiceSid"):
            return _error(400, 21603, "A 'From' phone number is required.")
        if from_ and _channel(from_) != _channel(to):
            return _error(
                400, 21910, "Invalid From and To pair. From and To should be of the same channel"
            )
        if not _E164.fullmatch(_address(to)) or _address(to) in self._invalid:
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not (request.get("Body") or request.get("ContentSid") or request.get("MediaUrl")):
            return _error(400, 21619, "A text message body or media urls must be specified.")
        if len(request.get("Body") or "") > _MAX_BODY_CHARS:
            return _error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        variables = request.get("ContentVariables")
        if variables is not None:
            try:
                parsed = json.loads(variables)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                return _error(400, 21656, "The ContentVariables Parameter is invalid.")
        content_sid = request.get("ContentSid")
        if content_sid is not None and not content_sid.startswith("HX"):
            return _error(400, 21655, "The ContentSid is Invalid.")
        return None

    def _create(self, request: FakeRequest) -> FakeResponse:
        delay = 0.0
        with self._changed:
            fault = self._faults.next()
            if fault is not None:
                kind, _ = fault
                self._rejected[kind] += 1
                if kind == "429":
                    return _error(429, 20429, "Too Many Requests")
                if kind == "500":
                    return _error(500, 20500, "Internal Server Error")
                if kind == "drop":
                    return FakeResponse(0, drop=True)
                delay = self.slow_seconds  # "slow": accepted, answered late
            problem = self._validate(request)
            to = request.get("To") or ""
            content_sid = request.get("ContentSid")
            if problem is None and _address(to) in self._opted_out:
                problem = _error(400, 21610, "Attempt to send to unsubscribed recipient")
            if problem is None and content_sid is None and _address(to) in self._outside_window:
                problem = _error(
                    400,
                    63016,
                    "Failed to send freeform message because you are outside the allowed "
                    "window. If you want to send messages outside the allowed window, please "
                    "use a Template.",
                )
            if problem is not None:
                self._rejected[str(problem.payload["code"])] += 1
                return problem
            now = time.monotonic()
            if self._overall is not None:
                if self._overall.retry_after(None, now) is not None:
                    self._rejected["429"] += 1
                    return _error(429, 20429, "Too Many Requests")
                self._overall.record(None, now)
            resource = self._resource(request)
            self._messages[resource["sid"]] = resource
            self._sent.append(
                {
                    "to": to,
                    "from": request.get("From"),
                    "body": request.get("Body"),
                    "content_sid": content_sid,
                    "content_variables": request.get("ContentVariables"),
                    "status_callback": request.get("StatusCallback"),
                    "messaging_service_sid": request.get("MessagingServiceSid"),
                    "media_url": list(request.fields.get("MediaUrl", [])),
                    "sid": resource["sid"],
                    "time": now,
                    "params": request.params,
                }
            )
            self._changed.notify_all()
        return FakeResponse(201, resource, delay=delay)

    def _resource(self, request: FakeRequest) -> dict[str, Any]:
        """Build the Message resource Twilio answers a create with."""
        sid = "SM" + uuid.uuid4().hex
        stamp = email.utils.format_datetime(datetime.now(UTC).replace(microsecond=0))
        to = request.get("To") or ""
        body = request.get("Body") or ""
        service = request.get("MessagingServiceSid")
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": stamp,
            "date_sent": None,
            "date_updated": stamp,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": request.get("From"),
            "messaging_service_sid": service,
            "num_media": str(len(request.fields.get("MediaUrl", []))),
            "num_segments": str(_segments(body, to)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued" if request.get("From") else "accepted",
            "subresource_uris": {"media": f"{base}/Media.json"},
            "to": to,
            "uri": f"{base}.json",
        }
