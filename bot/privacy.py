"""Keep personal data out of logs: mask phone numbers and chat ids, hide message content.

Pure helpers (no I/O). Logs are kept longer and read by more people than the database, and
under UU 27/2022 children's and financial data are *specific* data: what people write, and
who wrote it, must not end up in them. Masks use the ASCII `*`, so they survive every
terminal and log shipper.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Mapping
from typing import Any

__all__ = ["mask_phone", "mask_text", "normalise_e164", "redact"]

MASK = "*"

# The channel prefixes kept in a masked address; any other prefix could itself be personal.
_SCHEMES = r"(?:whatsapp|tel|sms|telegram|tg):"
_PHONE_LIKE = re.compile(
    rf"(?P<prefix>{_SCHEMES})?\s*(?P<sign>[+-])?(?P<body>[0-9(][0-9 ().-]*[0-9]|[0-9])",
    re.IGNORECASE | re.ASCII,
)
_SCHEME_PREFIX = re.compile(rf"^{_SCHEMES}", re.IGNORECASE)


def mask_phone(value: str) -> str:
    """Mask a phone number or chat id for logs, keeping only enough to tell numbers apart.

    `whatsapp:+6281234567890` becomes `whatsapp:+62*********90`: the channel prefix, the
    sign, the first two digits (the country code's start) and the last two digits are kept,
    every other digit becomes `*` and separators are dropped. Numbers of 5 to 7 digits keep
    only their last two digits and shorter ones are masked entirely. Anything that is not
    phone-like (`budi@example.com`) has every letter and digit masked, so the result never
    equals an input with five or more digits.
    """
    if not value:
        return value
    match = _PHONE_LIKE.fullmatch(value.strip())
    if match is None:
        prefix = _SCHEME_PREFIX.match(value)
        kept = prefix.group(0) if prefix else ""
        rest = value[len(kept) :]
        return kept + "".join(MASK if ch.isalnum() else ch for ch in rest)
    digits = re.sub(r"[^0-9]", "", match["body"])
    count = len(digits)
    if count >= 8:
        masked = digits[:2] + MASK * (count - 4) + digits[-2:]
    elif count >= 5:
        masked = MASK * (count - 2) + digits[-2:]
    else:
        masked = MASK * count
    return (match["prefix"] or "") + (match["sign"] or "") + masked


# Countries where a national trunk 0 is written after the country code by mistake
# (`+62 0812...`) and is never the start of a real subscriber number. Not Italy (+39 06...),
# where the 0 is part of the number.
_TRUNK_ZERO_COUNTRIES = ("62", "60", "886", "82", "81", "966")
_PHONE_CHARACTERS = re.compile(r"\+?[0-9 ().\-/]+", re.ASCII)


def normalise_e164(value: str, default_country: str = "62") -> str | None:
    """Return a phone number in E.164 (`+6281234567890`), or None if it cannot be one.

    Rules: a `whatsapp:`/`tel:` prefix is dropped; `+` or `00` starts an international
    number; a leading `0` is the national trunk prefix of `default_country`
    (`0812-3456-7890` is `+6281234567890`); other digits already include the country code
    (`62812...`); `(0)` and a trunk 0 typed after an Asian country code (`+62 0812...`)
    are dropped. Spaces, dots, dashes, slashes and brackets are ignored. Letters, other
    characters, fewer than 8 or more than 15 digits give None.
    """
    if not (default_country.isascii() and default_country.isdigit()) or not (
        1 <= len(default_country) <= 3 and default_country[0] != "0"
    ):
        raise ValueError(f"default_country must be a calling code like '62': {default_country!r}")
    if not value or len(value) > 40:
        return None
    s = unicodedata.normalize("NFKC", value).strip()
    s = _SCHEME_PREFIX.sub("", s).strip().replace("(0)", "")
    if not _PHONE_CHARACTERS.fullmatch(s):
        return None
    digits = re.sub(r"[^0-9]", "", s)
    if s.startswith("+"):
        international = digits
    elif digits.startswith("00"):
        international = digits[2:]
    elif digits.startswith("0"):
        international = default_country + digits[1:]
    else:
        international = digits
    for country in _TRUNK_ZERO_COUNTRIES:
        if international.startswith(country + "0"):
            international = country + international[len(country) + 1 :]
            break
    if not international or international[0] == "0":
        return None
    if not 8 <= len(international) <= 15:
        return None
    return "+" + international


# A per-process key: an unkeyed hash of a short reply (`YA`, a child's name) could be
# reversed by hashing a word list. Equal texts still get equal tags within one process
# (gunicorn workers forked after import share it), enough to follow a message through logs.
_PROCESS_KEY = secrets.token_bytes(16)


def mask_text(text: str, key: bytes | None = None) -> str:
    """Replace message content with its length and a short keyed hash, for logs."""
    data = text.encode("utf-8", "surrogatepass")
    digest = hmac.new(key or _PROCESS_KEY, data, hashlib.sha256).hexdigest()[:8]
    return f"<text len={len(text)} sha={digest}>"


def _key(name: object) -> str:
    """Return a key in one comparable form: `WaId`, `wa_id` and `wa-id` are all `waid`."""
    return re.sub(r"[\s_-]", "", str(name)).lower()


# Identifiers of people: Twilio's From/To/WaId, our own fields, Telegram's ids.
_PHONE_KEYS = frozenset(
    {
        "from",
        "to",
        "waid",
        "phone",
        "phonenumber",
        "whatsapp",
        "address",
        "chatid",
        "telegramchatid",
        "userid",
        "fromid",
        "msisdn",
        "forwardedfrom",
    }
)
# What people wrote or are called.
_TEXT_KEYS = frozenset(
    {
        "body",
        "text",
        "caption",
        "message",
        "profilename",
        "firstname",
        "lastname",
        "username",
        "name",
        "fullname",
        "title",
        "reason",
        "purpose",
        "latitude",
        "longitude",
        "vcard",
    }
)
# Credentials: never logged, not even their length.
_SECRET_WORDS = ("password", "token", "secret", "authorization", "signature", "invitecode")
# Telegram objects whose `id` is a person's or a chat's id.
_IDENTITY_OBJECTS = frozenset(
    {
        "from",
        "chat",
        "user",
        "contact",
        "senderchat",
        "forwardfrom",
        "forwardfromchat",
        "newchatmember",
        "newchatmembers",
        "leftchatmember",
    }
)
_MAX_DEPTH = 32
REDACTED = "[redacted]"


def redact(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a payload that is safe to log: ids masked, content hidden.

    Phone numbers and chat ids (`From`, `To`, `WaId`, `phone`, `whatsapp`, `chat_id`, the
    `id` of a Telegram `from`/`chat`) go through `mask_phone`; content and names (`Body`,
    `text`, `caption`, `ProfileName`, `first_name`, `MediaUrl0`...) through `mask_text`;
    credentials (`token`, `password`, `X-Twilio-Signature`...) become `[redacted]`. Keys
    match in any case with or without `_`/`-`; nested objects and lists are redacted too.
    Other values are copied as they are.
    """
    return _redact_mapping(mapping, parent="", depth=0)


def _redact_mapping(mapping: Mapping[Any, Any], parent: str, depth: int) -> dict[Any, Any]:
    return {name: _redact_value(name, value, parent, depth + 1) for name, value in mapping.items()}


def _redact_value(name: object, value: Any, parent: str, depth: int) -> Any:
    key = _key(name)
    if value is None or isinstance(value, bool):
        return value
    if depth > _MAX_DEPTH:
        return REDACTED  # deeper than any real payload: do not look, do not log
    if any(word in key for word in _SECRET_WORDS):
        return REDACTED
    if isinstance(value, Mapping):
        return _redact_mapping(value, parent=key, depth=depth)
    if isinstance(value, list | tuple):
        return [_redact_value(name, item, parent, depth + 1) for item in value]
    if key in _PHONE_KEYS or (key == "id" and parent in _IDENTITY_OBJECTS):
        return mask_phone(str(value))
    if key in _TEXT_KEYS or key.startswith("mediaurl"):
        return mask_text(str(value))
    return value
