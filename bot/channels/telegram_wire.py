"""Telegram's webhook wire format, checked without python-telegram-bot.

What a web process needs to accept an Update: the secret token check, the shape of the
fields we act on, and the chat an update belongs to (the unit of ordering in the inbound
queue). Parsing with ``Update.de_json`` and acting on it happen in bot/channels/telegram.py,
in the worker; keeping this module free of that library keeps the web processes small.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, TypeGuard

from bot.config import Config

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
# The update kinds that carry a chat we answer in, in the order they are looked for.
_CHAT_KINDS = ("message", "edited_message", "my_chat_member", "channel_post",
               "edited_channel_post")
# Ids and dates are 64-bit signed integers at Telegram (chat ids need 52 bits).
_MAX_INT = 2**63
_KIND_NAMES = {"int": "a whole number", "str": "a string", "bool": "true or false"}


class MalformedUpdate(ValueError):
    """A webhook body that is not a Telegram Update."""


def secret_ok(config: Config, header: str | None) -> bool:
    """Tell, in constant time, whether a webhook carries our secret token."""
    secret = config.telegram.webhook_secret
    if not secret or header is None:
        return False
    return hmac.compare_digest(header.encode("utf-8", "replace"), secret.encode())


def _whole(value: Any) -> TypeGuard[int]:
    """Tell whether a JSON value is an id or a date as Telegram sends them (64-bit)."""
    return isinstance(value, int) and not isinstance(value, bool) and -_MAX_INT < value < _MAX_INT


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedUpdate(f"{where}: expected an object")
    return value


def _field(obj: dict[str, Any], key: str, where: str, kind: str, *,
           optional: bool = False) -> None:
    """Refuse a field of the wrong type (python-telegram-bot takes whatever it is given)."""
    if key not in obj and optional:
        return
    value = obj.get(key)
    ok = {"int": _whole, "str": lambda v: isinstance(v, str),
          "bool": lambda v: isinstance(v, bool)}[kind](value)
    if not ok:
        raise MalformedUpdate(f"{where}.{key}: expected {_KIND_NAMES[kind]}")


def _check_chat_and_sender(obj: dict[str, Any], where: str, *, sender_optional: bool) -> None:
    chat = _object(obj.get("chat"), f"{where}.chat")
    _field(chat, "id", f"{where}.chat", "int")
    _field(chat, "type", f"{where}.chat", "str")
    if "from" in obj or not sender_optional:
        user = _object(obj.get("from"), f"{where}.from")
        _field(user, "id", f"{where}.from", "int")
        _field(user, "is_bot", f"{where}.from", "bool")
        _field(user, "first_name", f"{where}.from", "str", optional=True)
    _field(obj, "date", where, "int")


def _check_shape(data: dict[str, Any]) -> None:
    """Refuse an Update whose fields we act on are missing or of the wrong type.

    ``Update.de_json`` checks no types: a caption that is a list or a message without a
    chat would otherwise reach the engine and break there. Only the kinds we act on are
    checked, and only the fields we read.
    """
    for kind in ("message", "edited_message"):
        if data.get(kind) is None:
            continue
        message = _object(data[kind], kind)
        _field(message, "message_id", kind, "int")
        _check_chat_and_sender(message, kind, sender_optional=True)
        for key in ("text", "caption"):
            _field(message, key, kind, "str", optional=True)
        entities = message.get("entities", [])
        if not isinstance(entities, list):
            raise MalformedUpdate(f"{kind}.entities: expected a list")
        for item in entities:
            entity = _object(item, f"{kind}.entities[]")
            for key, type_ in (("offset", "int"), ("length", "int"), ("type", "str")):
                _field(entity, key, f"{kind}.entities[]", type_)
    if data.get("my_chat_member") is not None:
        change = _object(data["my_chat_member"], "my_chat_member")
        _check_chat_and_sender(change, "my_chat_member", sender_optional=False)
        for key in ("old_chat_member", "new_chat_member"):
            member = _object(change.get(key), f"my_chat_member.{key}")
            _field(member, "status", f"my_chat_member.{key}", "str")
            _object(member.get("user"), f"my_chat_member.{key}.user")


def check_update(data: dict[str, Any]) -> tuple[int, str]:
    """Refuse what is not an Update we can act on; return its update_id and its JSON."""
    update_id = data.get("update_id")
    if not _whole(update_id) or update_id < 0:
        raise MalformedUpdate("update_id: expected a whole number")
    _check_shape(data)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    try:
        # A lone surrogate (a "\ud800" escape) cannot be stored or sent anywhere.
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedUpdate("strings must be valid Unicode") from exc
    return update_id, text


def chat_key(data: dict[str, Any]) -> str:
    """Return the chat a checked Update belongs to ("telegram:-" when none)."""
    for kind in _CHAT_KINDS:
        obj = data.get(kind)
        if isinstance(obj, dict) and isinstance(obj.get("chat"), dict):
            chat_id = obj["chat"].get("id")
            if _whole(chat_id):
                return f"telegram:{chat_id}"
    return "telegram:-"
