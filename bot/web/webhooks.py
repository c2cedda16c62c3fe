"""Webhooks: Telegram updates, Twilio WhatsApp messages and Twilio delivery reports.

Each view authenticates first (nothing is read or stored for a request that fails),
checks the body's shape, and then, with ``[server] inbound = "queue"`` (the default),
stores the message for the worker and answers at once (bot/inbox.py); with "inline" it
runs the engine before answering. What the bot says back goes through the outbox and the
sender either way, never inline in the answer. A malformed body gets a 4xx with a
short reason; a platform that redelivers gets the same 200 and nothing is done twice.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from flask import Blueprint, Response, abort, current_app, request

from bot import inbox, metrics
from bot.app import services
from bot.channels import twilio_wire as wire

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/telegram")
@metrics.webhook("telegram")
def telegram_update() -> Any:
    """Take one Telegram Update: store it for the worker, or handle it here (inline)."""
    svc = services(current_app)
    if not svc.config.telegram_enabled:
        abort(404, description="Telegram is not configured here")
    from bot.channels import telegram_wire as wire

    if not wire.secret_ok(svc.config, request.headers.get(wire.SECRET_HEADER)):
        abort(403, description="wrong or missing secret token")
    try:
        data = request.get_json(force=True, silent=True)
    except RecursionError:  # nested deeper than the parser goes: not an Update either
        data = None
    if not isinstance(data, dict):
        abort(400, description="expected a Telegram Update as a JSON object")
    try:
        update_id, payload = wire.check_update(data)
        if svc.config.server.inbound == "queue":
            stored = inbox.accept(svc.db, channel="telegram", external_id=str(update_id),
                                  chat_key=wire.chat_key(data), payload=payload,
                                  now=svc.clock())
            outcome = "queued" if stored else "duplicate"
        else:
            from bot.channels import telegram

            outcome = telegram.process_update(svc.db, svc.engine, svc.config, data)
    except wire.MalformedUpdate as exc:
        abort(400, description=str(exc))
    metrics.set_outcome(metrics.telegram_outcome(outcome))
    return _answer(outcome)


@functools.lru_cache(maxsize=32)
def _answer_body(outcome: str) -> bytes:
    return json.dumps({"ok": True, "outcome": outcome}).encode() + b"\n"


def _answer(outcome: str) -> Response:
    """Return Telegram's answer, {"ok": true, "outcome": ...} (made once per outcome)."""
    return Response(_answer_body(outcome), status=200, mimetype="application/json")


def _twilio_checked(path: str) -> None:
    """Refuse a Twilio request that is not signed for our public URL."""
    svc = services(current_app)
    if not svc.config.whatsapp_enabled:
        abort(404, description="WhatsApp is not configured here")
    signature = request.headers.get(wire.SIGNATURE_HEADER)
    if not wire.signature_ok(svc.config, path, request.query_string, request.form, signature):
        abort(403, description="invalid or missing Twilio signature")


def _twiml(body: str) -> Response:
    return Response(body, status=200, mimetype="application/xml")


@bp.post("/twilio")
@metrics.webhook("whatsapp")
def twilio_message() -> Any:
    """Take one WhatsApp message from Twilio: store it for the worker, or handle it here
    (inline); answer with empty TwiML either way."""
    _twilio_checked(wire.INBOUND_PATH)
    svc = services(current_app)
    now = svc.clock()
    try:
        inbound = wire.parse_inbound(request.form, now)
    except wire.MalformedForm as exc:
        abort(400, description=str(exc))
    if inbound is None:
        metrics.set_outcome("ignored")
    elif svc.config.server.inbound == "queue":
        stored = inbox.accept(svc.db, channel="whatsapp", external_id=inbound.external_id,
                              chat_key=inbound.address, payload=inbox.whatsapp_payload(inbound),
                              now=now)
        metrics.set_outcome("queued" if stored else "duplicate")
    else:
        metrics.set_outcome(metrics.engine_outcome(svc.engine.handle(inbound, now=now)))
    return _twiml(wire.EMPTY_TWIML)


@bp.post("/twilio/status")
@metrics.webhook("twilio_status")
def twilio_status() -> Any:
    """Take one Twilio delivery report."""
    _twilio_checked("/webhooks/twilio/status")
    from bot.channels import whatsapp

    svc = services(current_app)
    try:
        outcome = whatsapp.record_status(svc.db, svc.config, request.form, svc.clock())
    except wire.MalformedForm as exc:
        abort(400, description=str(exc))
    metrics.set_outcome(metrics.status_outcome(outcome))
    return _twiml(wire.EMPTY_TWIML)
