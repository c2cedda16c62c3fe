"""Twilio's WhatsApp webhook wire format, checked without Twilio's REST client.

What a web process needs to accept a message: the signature check against our public URL
and the form turned into a neutral ``Inbound``. Sending, delivery reports and the 24-hour
window live in bot/channels/whatsapp.py; keeping this module light keeps the web
processes small (``twilio.request_validator`` is hmac and a few helpers).
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from twilio.request_validator import RequestValidator, add_port, compare, remove_port

from bot.config import Config
from bot.messages import Inbound

SIGNATURE_HEADER = "X-Twilio-Signature"
INBOUND_PATH = "/webhooks/twilio"
# What twilio.twiml's MessagingResponse() renders, without importing the TwiML builder.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'
_MEDIA_KINDS = {"image": "photo", "audio": "voice", "video": "video"}
# What Twilio sends: SIDs are two letters and 32 hex digits, numbers are E.164. The
# patterns are looser than that, but keep out whatever a database or a reply cannot take
# (control characters, NUL, spaces, markup, 200-digit "numbers").
_SID = re.compile(r"[A-Za-z0-9]{2,80}")
_NUMBER = re.compile(r"\+?[0-9]{6,15}", re.ASCII)
_KIND = re.compile(r"[a-z0-9_]{1,24}", re.ASCII)


class MalformedForm(ValueError):
    """A webhook form that is not what Twilio sends."""


def public_url(config: Config, path: str, query: bytes | str = b"") -> str:
    """Return the URL Twilio signed: the public address, the path, the query string."""
    query_text = query.decode("latin-1") if isinstance(query, bytes) else query
    url = config.server.public_url.rstrip("/") + path
    return f"{url}?{query_text}" if query_text else url


def signature_ok(config: Config, path: str, query: bytes | str, form: Any,
                 signature: str | None) -> bool:
    """Tell whether a request carries Twilio's valid signature for our public URL."""
    if not signature or not config.twilio.auth_token:
        return False
    validator = _validator(config.twilio.auth_token)
    url = public_url(config, path, query)
    if "bodySHA256" in url:
        return bool(validator.validate(url, form, signature))  # a JSON body: the whole check
    # What RequestValidator.validate does for a form, stopping at the first match: it signs
    # the URL both without and with the port every time (Twilio's back end is said to use
    # either), which is half the cost of a webhook. The MultiDict itself: a field repeated
    # in the form must stay repeated.
    parsed = urlparse(url)
    return any(compare(validator.compute_signature(candidate, form), signature)
               for candidate in (remove_port(parsed), add_port(parsed)))


@functools.lru_cache(maxsize=4)
def _validator(auth_token: str) -> RequestValidator:
    return RequestValidator(auth_token)


def parse_inbound(form: Any, now: datetime) -> Inbound | None:
    """Turn Twilio's form into an Inbound; None for what we do not handle (SMS, reactions)."""
    sid = _sid(form.get("MessageSid") or form.get("SmsMessageSid"))
    sender = (form.get("From") or "").strip()
    if not sender:
        raise MalformedForm("MessageSid and From are required")
    if not sender.startswith("whatsapp:"):
        return None  # an SMS to the same number: not a channel we serve
    number = sender.removeprefix("whatsapp:").strip()
    # Twilio sends E.164 ("whatsapp:+6281..."); anything else would become an address
    # we store, reply to and can never reach.
    if not _NUMBER.fullmatch(number):
        raise MalformedForm("From: not a WhatsApp number")
    number = "+" + number.lstrip("+")
    try:
        media = int(form.get("NumMedia") or 0)
    except ValueError as exc:
        raise MalformedForm("NumMedia: expected a number") from exc
    body = form.get("Body") or ""
    message_type = (form.get("MessageType") or "").lower()
    if media > 0:
        content_type = (form.get("MediaContentType0") or "").lower()
        major = content_type.split("/", 1)[0]
        kind = "sticker" if content_type == "image/webp" else _MEDIA_KINDS.get(major, "document")
    elif message_type == "location" or form.get("Latitude"):
        kind = "location"
    elif message_type == "reaction":
        return None  # an emoji on one of our messages: nothing to answer
    elif message_type in ("", "text", "button", "interactive") or body:
        kind = "text"
        body = body or form.get("ButtonText") or ""
    else:
        # A kind Twilio may add one day: the engine answers that it reads only text.
        kind = message_type[:24] if _KIND.fullmatch(message_type[:24]) else "other"
    return Inbound(channel="whatsapp", address=f"whatsapp:{number}", text=body,
                   external_id=sid, received_at=now, kind=kind,
                   profile_name=form.get("ProfileName") or None)


def _sid(value: str | None) -> str:
    """Return a message SID as Twilio sends it, or refuse the form."""
    if not value:
        raise MalformedForm("MessageSid and From are required")
    if len(value) > 80:
        raise MalformedForm("MessageSid: too long")
    if not _SID.fullmatch(value):
        raise MalformedForm("MessageSid: not a Twilio message id")
    return value


