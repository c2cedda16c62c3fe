"""Webhooks: Telegram updates, Twilio WhatsApp messages and Twilio delivery reports.

Each view authenticates first (nothing is read or stored for a request that fails),
hands the body to its channel module, and answers at once: what the bot says back goes
through the outbox and the sender, never inline. A malformed body gets a 4xx with a
short reason; a platform that redelivers gets the same 200 and nothing is done twice.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request

from bot import metrics
from bot.app import services

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/telegram")
@metrics.webhook("telegram")
def telegram_update() -> Any:
    """Take one Telegram Update."""
    svc = services(current_app)
    if not svc.config.telegram_enabled:
        abort(404, description="Telegram is not configured here")
    from bot.channels import telegram

    if not telegram.secret_ok(svc.config, request.headers.get(telegram.SECRET_HEADER)):
        abort(403, description="wrong or missing secret token")
    try:
        data = request.get_json(force=True, silent=True)
    except RecursionError:  # nested deeper than the parser goes: not an Update either
        data = None
    if not isinstance(data, dict):
        abort(400, description="expected a Telegram Update as a JSON object")
    try:
        outcome = telegram.process_update(svc.db, svc.engine, svc.config, data)
    except telegram.MalformedUpdate as exc:
        abort(400, description=str(exc))
    metrics.set_outcome(metrics.telegram_outcome(outcome))
    return jsonify(ok=True, outcome=outcome)


def _twilio_checked(path: str) -> Any:
    """Refuse a Twilio request that is not signed for our public URL; return the module."""
    svc = services(current_app)
    if not svc.config.whatsapp_enabled:
        abort(404, description="WhatsApp is not configured here")
    from bot.channels import whatsapp

    signature = request.headers.get(whatsapp.SIGNATURE_HEADER)
    if not whatsapp.signature_ok(svc.config, path, request.query_string, request.form,
                                 signature):
        abort(403, description="invalid or missing Twilio signature")
    return whatsapp


def _twiml(body: str) -> Response:
    return Response(body, status=200, mimetype="application/xml")


@bp.post("/twilio")
@metrics.webhook("whatsapp")
def twilio_message() -> Any:
    """Take one WhatsApp message from Twilio; answer with empty TwiML."""
    whatsapp = _twilio_checked("/webhooks/twilio")
    svc = services(current_app)
    now = svc.engine.clock()
    try:
        inbound = whatsapp.parse_inbound(request.form, now)
    except whatsapp.MalformedForm as exc:
        abort(400, description=str(exc))
    result = svc.engine.handle(inbound, now=now) if inbound is not None else None
    metrics.set_outcome(metrics.engine_outcome(result))
    return _twiml(whatsapp.EMPTY_TWIML)


@bp.post("/twilio/status")
@metrics.webhook("twilio_status")
def twilio_status() -> Any:
    """Take one Twilio delivery report."""
    whatsapp = _twilio_checked("/webhooks/twilio/status")
    svc = services(current_app)
    try:
        outcome = whatsapp.record_status(svc.db, svc.config, request.form, svc.engine.clock())
    except whatsapp.MalformedForm as exc:
        abort(400, description=str(exc))
    metrics.set_outcome(metrics.status_outcome(outcome))
    return _twiml(whatsapp.EMPTY_TWIML)
