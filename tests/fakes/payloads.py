"""Factories for real platform payloads: Telegram Updates and Twilio WhatsApp forms.

The shapes follow what the platforms send (core.telegram.org ``Update``/``Message``;
Twilio's messaging webhook and status callback parameters for WhatsApp). Telegram
factories return JSON-ready dicts that ``telegram.Update.de_json(d, bot=None)`` parses;
Twilio factories return ``dict[str, str]`` forms, to be posted form-encoded and signed
with ``twilio_signature``.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from twilio.request_validator import RequestValidator

BOT_ID = 123456  # matches FakeTelegram's default token "123456:TEST-TOKEN"
BOT_USER: dict[str, Any] = {
    "id": BOT_ID,
    "is_bot": True,
    "first_name": "Desmigratif Test",
    "username": "desmigratif_test_bot",
}
ACCOUNT_SID = "AC" + "0" * 32
WHATSAPP_FROM = "whatsapp:+14155238886"
WHATSAPP_USER = "whatsapp:+85291234567"


# --------------------------------------------------------------------------- Telegram


def _now(date: int | None) -> int:
    return int(time.time()) if date is None else date


def tg_user(chat_id: int, *, first_name: str = "Rina", username: str | None = None) -> dict:
    """Build the ``User`` behind a private chat (its id equals the chat id)."""
    user: dict[str, Any] = {
        "id": chat_id,
        "is_bot": False,
        "first_name": first_name,
        "language_code": "id",
    }
    if username:
        user["username"] = username
    return user


def tg_private_chat(chat_id: int, *, first_name: str = "Rina", username: str | None = None) -> dict:
    """Build a private ``Chat``."""
    chat: dict[str, Any] = {"id": chat_id, "first_name": first_name, "type": "private"}
    if username:
        chat["username"] = username
    return chat


def tg_message(
    chat_id: int,
    *,
    message_id: int = 1,
    first_name: str = "Rina",
    username: str | None = None,
    date: int | None = None,
    **content: Any,
) -> dict:
    """Build a ``Message`` from a user in a private chat with the given content fields."""
    return {
        "message_id": message_id,
        "from": tg_user(chat_id, first_name=first_name, username=username),
        "chat": tg_private_chat(chat_id, first_name=first_name, username=username),
        "date": _now(date),
        **content,
    }


def tg_text(
    update_id: int,
    chat_id: int,
    text: str,
    *,
    first_name: str = "Rina",
    username: str | None = None,
    date: int | None = None,
) -> dict:
    """Build an Update carrying a plain text message."""
    message = tg_message(
        chat_id,
        message_id=update_id,
        first_name=first_name,
        username=username,
        date=date,
        text=text,
    )
    return {"update_id": update_id, "message": message}


def tg_command(
    update_id: int,
    chat_id: int,
    command: str,
    args: str = "",
    *,
    first_name: str = "Rina",
    username: str | None = None,
    date: int | None = None,
) -> dict:
    """Build an Update with ``/command args`` and its ``bot_command`` entity."""
    head = "/" + command.lstrip("/")
    text = f"{head} {args}" if args else head
    message = tg_message(
        chat_id,
        message_id=update_id,
        first_name=first_name,
        username=username,
        date=date,
        text=text,
        entities=[{"offset": 0, "length": len(head), "type": "bot_command"}],
    )
    return {"update_id": update_id, "message": message}


def tg_start(
    update_id: int,
    chat_id: int,
    code: str,
    *,
    first_name: str = "Rina",
    username: str | None = None,
    date: int | None = None,
) -> dict:
    """Build the Update a ``t.me/bot?start=CODE`` deep link produces (``/start CODE``)."""
    return tg_command(
        update_id, chat_id, "start", code, first_name=first_name, username=username, date=date
    )


def _file_ids(seed: str) -> dict[str, str]:
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return {"file_id": "AgACAgUAAxkBAAI" + digest[:40], "file_unique_id": "AQAD" + digest[40:52]}


def tg_sticker(update_id: int, chat_id: int, *, emoji: str = "👍", date: int | None = None) -> dict:
    """Build an Update carrying a sticker."""
    sticker = {
        **_file_ids(f"sticker{update_id}"),
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": False,
        "emoji": emoji,
        "set_name": "HotCherry",
        "thumbnail": {
            **_file_ids(f"thumb{update_id}"),
            "file_size": 5416,
            "width": 128,
            "height": 128,
        },
        "file_size": 25406,
    }
    message = tg_message(chat_id, message_id=update_id, date=date, sticker=sticker)
    return {"update_id": update_id, "message": message}


def tg_photo(
    update_id: int, chat_id: int, caption: str | None = None, *, date: int | None = None
) -> dict:
    """Build an Update carrying a photo (three sizes, like Telegram), optionally captioned."""
    sizes = [
        {
            **_file_ids(f"photo{update_id}-{w}"),
            "file_size": w * 15,
            "width": w,
            "height": w * 3 // 4,
        }
        for w in (90, 320, 1280)
    ]
    content: dict[str, Any] = {"photo": sizes}
    if caption is not None:
        content["caption"] = caption
    message = tg_message(chat_id, message_id=update_id, date=date, **content)
    return {"update_id": update_id, "message": message}


def tg_voice(update_id: int, chat_id: int, *, duration: int = 3, date: int | None = None) -> dict:
    """Build an Update carrying a voice note."""
    voice = {
        **_file_ids(f"voice{update_id}"),
        "duration": duration,
        "mime_type": "audio/ogg",
        "file_size": 6000 * duration,
    }
    message = tg_message(chat_id, message_id=update_id, date=date, voice=voice)
    return {"update_id": update_id, "message": message}


def tg_location(
    update_id: int,
    chat_id: int,
    *,
    latitude: float = 22.302711,
    longitude: float = 114.177216,
    date: int | None = None,
) -> dict:
    """Build an Update carrying a shared location (Hong Kong by default)."""
    location = {"latitude": latitude, "longitude": longitude}
    message = tg_message(chat_id, message_id=update_id, date=date, location=location)
    return {"update_id": update_id, "message": message}


def tg_edited(
    update_id: int,
    chat_id: int,
    text: str,
    *,
    message_id: int = 1,
    date: int | None = None,
) -> dict:
    """Build an ``edited_message`` Update (the user edited an earlier text)."""
    sent = _now(date)
    message = tg_message(chat_id, message_id=message_id, date=sent, text=text)
    message["edit_date"] = sent + 30
    return {"update_id": update_id, "edited_message": message}


def _my_chat_member(update_id: int, chat_id: int, old: str, new: str, date: int | None) -> dict:
    new_member: dict[str, Any] = {"user": dict(BOT_USER), "status": new}
    if new == "kicked":
        new_member["until_date"] = 0  # Telegram sends 0 (forever) for a private-chat block
    old_member: dict[str, Any] = {"user": dict(BOT_USER), "status": old}
    if old == "kicked":
        old_member["until_date"] = 0
    return {
        "update_id": update_id,
        "my_chat_member": {
            "chat": tg_private_chat(chat_id),
            "from": tg_user(chat_id),
            "date": _now(date),
            "old_chat_member": old_member,
            "new_chat_member": new_member,
        },
    }


def tg_my_chat_member_blocked(update_id: int, chat_id: int, *, date: int | None = None) -> dict:
    """Build the Update Telegram sends when the user blocks the bot (member → kicked)."""
    return _my_chat_member(update_id, chat_id, "member", "kicked", date)


def tg_my_chat_member_unblocked(update_id: int, chat_id: int, *, date: int | None = None) -> dict:
    """Build the Update Telegram sends when the user unblocks the bot (kicked → member)."""
    return _my_chat_member(update_id, chat_id, "kicked", "member", date)


def tg_channel_post(
    update_id: int, chat_id: int, text: str, *, title: str = "Kabar Desa", date: int | None = None
) -> dict:
    """Build a ``channel_post`` Update (no ``from``; ``sender_chat`` is the channel)."""
    channel = {"id": chat_id, "title": title, "type": "channel"}
    post = {
        "message_id": update_id,
        "sender_chat": dict(channel),
        "chat": channel,
        "date": _now(date),
        "text": text,
    }
    return {"update_id": update_id, "channel_post": post}


def tg_callback_query(
    update_id: int,
    chat_id: int,
    data: str,
    *,
    message_text: str = "Pilih:",
    date: int | None = None,
) -> dict:
    """Build a ``callback_query`` Update: the user pressed an inline button of our message."""
    message = {
        "message_id": update_id,
        "from": dict(BOT_USER),
        "chat": tg_private_chat(chat_id),
        "date": _now(date),
        "text": message_text,
        "reply_markup": {"inline_keyboard": [[{"text": data, "callback_data": data}]]},
    }
    return {
        "update_id": update_id,
        "callback_query": {
            "id": str(4382000000000000000 + update_id),
            "from": tg_user(chat_id),
            "message": message,
            "chat_instance": str(-(8_000_000_000_000_000_000 + chat_id)),
            "data": data,
        },
    }


# --------------------------------------------------------------------------- Twilio


def _sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _media_type(content_type: str) -> str:
    major = content_type.split("/", 1)[0]
    return major if major in ("image", "audio", "video") else "document"


def twilio_inbound(
    body: str,
    *,
    from_: str = WHATSAPP_USER,
    to: str = WHATSAPP_FROM,
    message_sid: str | None = None,
    profile_name: str = "Rina",
    wa_id: str | None = None,
    num_media: int = 0,
    media_content_type: str | None = None,
    account_sid: str = ACCOUNT_SID,
    latitude: float | None = None,
    longitude: float | None = None,
    address: str | None = None,
    label: str | None = None,
) -> dict[str, str]:
    """Build the form Twilio posts for an incoming WhatsApp message."""
    if num_media and media_content_type is None:
        media_content_type = "image/jpeg"
    located = latitude is not None and longitude is not None
    sid = message_sid or _sid("MM" if num_media else "SM")
    if located:
        message_type = "location"
    elif num_media:
        message_type = _media_type(media_content_type or "")
    else:
        message_type = "text"
    form: dict[str, str] = {}
    if located:
        form["Latitude"] = str(latitude)
        form["Longitude"] = str(longitude)
        if address is not None:
            form["Address"] = address
        if label is not None:
            form["Label"] = label
    for i in range(num_media):
        form[f"MediaContentType{i}"] = media_content_type or "image/jpeg"
    form |= {
        "SmsMessageSid": sid,
        "NumMedia": str(num_media),
        "ProfileName": profile_name,
        "MessageType": message_type,
        "SmsSid": sid,
        "WaId": wa_id or from_.removeprefix("whatsapp:").lstrip("+"),
        "SmsStatus": "received",
        "Body": body,
        "To": to,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": from_,
    }
    for i in range(num_media):
        form[f"MediaUrl{i}"] = (
            f"https://api.twilio.com/2010-04-01/Accounts/{account_sid}/Messages/{sid}"
            f"/Media/{_sid('ME')}"
        )
    form["ApiVersion"] = "2010-04-01"
    return form


def twilio_status(
    message_sid: str,
    status: str,
    *,
    error_code: int | str | None = None,
    to: str = WHATSAPP_USER,
    from_: str = WHATSAPP_FROM,
    account_sid: str = ACCOUNT_SID,
) -> dict[str, str]:
    """Build the form Twilio posts to a StatusCallback (queued/sent/delivered/read/failed)."""
    form: dict[str, str] = {}
    whatsapp = to.startswith("whatsapp:")
    if whatsapp:
        form["ChannelPrefix"] = "whatsapp"
    form |= {"ApiVersion": "2010-04-01", "MessageStatus": status, "SmsSid": message_sid}
    form["SmsStatus"] = status
    if whatsapp:
        install = hashlib.sha256(from_.encode()).hexdigest()[:32]
        form["ChannelInstallSid"] = "XE" + install
    if error_code is not None:
        form["ErrorCode"] = str(error_code)
    form |= {"To": to, "From": from_, "MessageSid": message_sid}
    if whatsapp:
        form["StructuredMessage"] = "false"
    form["AccountSid"] = account_sid
    if whatsapp:
        form["ChannelToAddress"] = to.removeprefix("whatsapp:")
    return form


def twilio_signature(auth_token: str, url: str, form: dict[str, str]) -> str:
    """Return the ``X-Twilio-Signature`` Twilio would send for this URL and form."""
    return str(RequestValidator(auth_token).compute_signature(url, form))
