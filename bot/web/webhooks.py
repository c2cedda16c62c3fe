"""Webhooks: Telegram updates, Twilio WhatsApp messages and Twilio delivery reports.

They are nearly every request the server gets, so they are answered by a small WSGI
application in front of Flask (:class:`WebhookFront`), which passes every other request
(API, dashboard, simulator, health, metrics) to the Flask app. The request is parsed by
werkzeug, as Flask would, but none of Flask's per-request machinery runs: no context,
routing, session, signals or hooks. Measured under ``serve`` (bench/http_serve.py): a
webhook's CPU went from 2.0 to 1.75 times a bare Flask hello's, and what each gunicorn
worker holds of its own after 4,000 webhooks from 15-16 MB to 10-13 MB.

Each webhook authenticates first (nothing is read or stored for a request that fails),
checks the body's shape, and then, with ``[server] inbound = "queue"`` (the default),
stores the message for the worker and answers at once (bot/inbox.py); with "inline" it
runs the engine before answering. What the bot says back goes through the outbox and the
sender either way, never inline in the answer. A malformed body gets a 4xx with a short
JSON reason, as from the Flask app; a platform that redelivers gets the same 200 and
nothing is done twice.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, NotFound
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Request

from bot import inbox, metrics
from bot.app import services
from bot.channels import telegram_wire as tg_wire
from bot.channels import twilio_wire as wire

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

    from bot.app import Services

log = logging.getLogger(__name__)

MAX_BODY = 1 * 1024 * 1024  # no platform sends more than this (the Flask app's limit too)
STATUS_PATH = "/webhooks/twilio/status"
_JSON = "application/json"
_XML = "application/xml; charset=utf-8"  # what Flask's Response(mimetype=...) would say


class _Request(Request):
    max_content_length = MAX_BODY


class Answer(NamedTuple):
    """What a webhook answers: a body and its type, the outcome counted, a status."""

    body: bytes
    content_type: str
    outcome: str
    status: int = 200


@functools.lru_cache(maxsize=32)
def _telegram_body(outcome: str) -> bytes:
    """Return Telegram's answer, {"ok": true, "outcome": ...} (made once per outcome)."""
    return json.dumps({"ok": True, "outcome": outcome}).encode() + b"\n"


def telegram_update(svc: Services, request: Request) -> Answer:
    """Take one Telegram Update: store it for the worker, or handle it here (inline)."""
    if not svc.config.telegram_enabled:
        raise NotFound("Telegram is not configured here")
    if not tg_wire.secret_ok(svc.config, request.headers.get(tg_wire.SECRET_HEADER)):
        raise Forbidden("wrong or missing secret token")
    try:
        data = request.get_json(force=True, silent=True)
    except RecursionError:  # nested deeper than the parser goes: not an Update either
        data = None
    if not isinstance(data, dict):
        raise BadRequest("expected a Telegram Update as a JSON object")
    try:
        update_id, payload = tg_wire.check_update(data)
        if svc.config.server.inbound == "queue":
            stored = inbox.accept(svc.db, channel="telegram", external_id=str(update_id),
                                  chat_key=tg_wire.chat_key(data), payload=payload,
                                  now=svc.clock())
            outcome = "queued" if stored else "duplicate"
        else:
            from bot.channels import telegram

            outcome = telegram.process_update(svc.db, svc.engine, svc.config, data)
    except tg_wire.MalformedUpdate as exc:
        raise BadRequest(str(exc)) from None
    return Answer(_telegram_body(outcome), _JSON, metrics.telegram_outcome(outcome))


def _twilio_checked(svc: Services, request: Request, path: str) -> None:
    """Refuse a Twilio request that is not signed for our public URL."""
    if not svc.config.whatsapp_enabled:
        raise NotFound("WhatsApp is not configured here")
    signature = request.headers.get(wire.SIGNATURE_HEADER)
    if not wire.signature_ok(svc.config, path, request.query_string, request.form, signature):
        raise Forbidden("invalid or missing Twilio signature")


_EMPTY_TWIML = wire.EMPTY_TWIML.encode()


def twilio_message(svc: Services, request: Request) -> Answer:
    """Take one WhatsApp message from Twilio: store it for the worker, or handle it here
    (inline); answer with empty TwiML either way."""
    _twilio_checked(svc, request, wire.INBOUND_PATH)
    now = svc.clock()
    try:
        inbound = wire.parse_inbound(request.form, now)
    except wire.MalformedForm as exc:
        raise BadRequest(str(exc)) from None
    if inbound is None:
        outcome = "ignored"
    elif svc.config.server.inbound == "queue":
        stored = inbox.accept(svc.db, channel="whatsapp", external_id=inbound.external_id,
                              chat_key=inbound.address, payload=inbox.whatsapp_payload(inbound),
                              now=now)
        outcome = "queued" if stored else "duplicate"
    else:
        outcome = metrics.engine_outcome(svc.engine.handle(inbound, now=now))
    return Answer(_EMPTY_TWIML, _XML, outcome)


def twilio_status(svc: Services, request: Request) -> Answer:
    """Take one Twilio delivery report."""
    _twilio_checked(svc, request, STATUS_PATH)
    from bot.channels import whatsapp

    try:
        outcome = whatsapp.record_status(svc.db, svc.config, request.form, svc.clock())
    except wire.MalformedForm as exc:
        raise BadRequest(str(exc)) from None
    return Answer(_EMPTY_TWIML, _XML, metrics.status_outcome(outcome))


Webhook = Callable[["Services", Request], Answer]

# path -> (the channel label of its metrics, the function answering it)
ROUTES: dict[str, tuple[str, Webhook]] = {
    "/webhooks/telegram": ("telegram", telegram_update),
    wire.INBOUND_PATH: ("whatsapp", twilio_message),
    STATUS_PATH: ("twilio_status", twilio_status),
}


def _error_body(message: str) -> bytes:
    # What the Flask app's error handler answers (jsonify(error=...)).
    return json.dumps({"error": message}, separators=(",", ":")).encode() + b"\n"


class WebhookFront:
    """WSGI middleware: answers the webhooks in ROUTES, passes the rest to the Flask app."""

    def __init__(self, app: Flask, inner: WSGIApplication) -> None:
        self.app = app
        self.inner = inner

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        route = ROUTES.get(environ.get("PATH_INFO", ""))
        if route is None:
            return self.inner(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            # Flask's answers for a POST-only route: OPTIONS lists the methods, others 405.
            if environ.get("REQUEST_METHOD") == "OPTIONS":
                return _respond(start_response, 200, b"", "text/html; charset=utf-8",
                                [("Allow", "OPTIONS, POST")])
            return _respond(start_response, 405, _error_body(
                "The method is not allowed for the requested URL."), _JSON,
                [("Allow", "OPTIONS, POST")])
        channel, webhook = route
        started = time.perf_counter()
        try:
            answer = webhook(services(self.app), _Request(environ))
        except HTTPException as exc:
            code = exc.code or 500
            answer = Answer(_error_body(exc.description or exc.name), _JSON,
                            metrics.http_outcome(code), code)
        except Exception:
            # The platform retries what was not acknowledged: nothing is lost.
            log.exception("unhandled error")
            answer = Answer(_error_body("internal error"), _JSON, "error", 500)
        metrics.observe_webhook(channel, answer.outcome, time.perf_counter() - started)
        return _respond(start_response, answer.status, answer.body, answer.content_type)


def _respond(start_response: StartResponse, status: int, body: bytes, content_type: str,
             extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    reason = HTTP_STATUS_CODES.get(status, "Unknown").upper()  # as werkzeug's Response
    start_response(f"{status} {reason}", headers + (extra or []))
    return [body]


def install(app: Flask) -> None:
    """Put the webhooks in front of the Flask app's WSGI callable."""
    front: Any = WebhookFront(app, app.wsgi_app)
    app.wsgi_app = front  # type: ignore[method-assign]
