"""Telegram: the only module that imports python-telegram-bot.

Inbound, a Telegram ``Update`` (from the webhook or from long polling) is authenticated
by the caller, parsed with ``Update.de_json`` and turned into a neutral ``Inbound`` for
the engine; replies go through the outbox like every other message. Kinds of update:

- a private text message, ``/start CODE`` (deep link) or any other command: to the engine;
- stickers, photos, voice notes, locations...: to the engine as their kind, which answers
  that it can read only text;
- an edited message: not acted on again (it may have been a command), but answered;
- ``my_chat_member``: the user blocked the bot (marks the chat unreachable and holds
  what waits for it) or unblocked it (reachable again, held messages released);
- channel posts, group messages, button presses and anything else: acknowledged only;
- a kind we act on whose fields have the wrong type (python-telegram-bot checks none), or
  any string that is not valid Unicode: refused as malformed (400), nothing stored.

Outbound, python-telegram-bot is asynchronous and we are not: each process runs one
event loop in a daemon thread, started lazily (threads do not survive gunicorn's fork),
with one ``Bot`` per configuration, and sync code waits on ``run_coroutine_threadsafe``.
Reusing a Bot across ``asyncio.run`` calls breaks keep-alive connections (TECH_NOTES).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from telegram import Bot, ChatMember, Message, Update
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest

from bot.channels.base import MAX_LENGTH, PACE, SendResult
from bot.channels.telegram_wire import (  # noqa: F401  (re-exported for callers)
    SECRET_HEADER,
    MalformedUpdate,
    _whole,
    check_update,
    secret_ok,
)
from bot.config import Config
from bot.i18n import N_
from bot.messages import Inbound, Outbound, t
from bot.outbox import hold_address, queue_messages, release_held
from bot.privacy import mask_phone
from storage.db import session_scope
from storage.models import ChannelIdentity, InboundLog

log = logging.getLogger(__name__)
T = TypeVar("T")
if importlib.util.find_spec("sniffio") is None:
    # httpcore (under python-telegram-bot's httpx) tries `import sniffio` four times per
    # request; when it is not installed, each failed import searches sys.path again:
    # half of all the CPU a send costs. Record its absence once (httpcore then assumes
    # asyncio, which is what we run).
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]
# Read at run time by python-telegram-bot: retry_after as a timedelta, no warnings.
os.environ.setdefault("PTB_TIMEDELTA", "1")

WEBHOOK_PATH = "/webhooks/telegram"
# The update kinds we ask Telegram for (webhook and polling alike).
ALLOWED_UPDATES = ["message", "edited_message", "channel_post", "my_chat_member",
                   "callback_query"]
POLL_TIMEOUT_S = 25
EDITED_NOTE = N_("I only read new messages, not edited ones. Please send it again as a new "
                 "message.")
# The update kinds we act on: a body carrying one of them must parse.
_HANDLED_KINDS = frozenset({"message", "edited_message", "my_chat_member"})
# Message attributes that make a non-text message, and the kind the engine is told.
_MEDIA_KINDS = (
    ("sticker", "sticker"), ("animation", "animation"), ("photo", "photo"),
    ("video_note", "video_note"), ("video", "video"), ("voice", "voice"), ("audio", "audio"),
    ("document", "document"), ("venue", "location"), ("location", "location"),
    ("contact", "contact"), ("poll", "poll"), ("dice", "dice"), ("story", "story"),
    ("game", "game"),
)


# A deep-link start parameter is up to 64 of [A-Za-z0-9_-] (Telegram refuses the rest).
_NOT_IN_CODE = re.compile(r"[^A-Za-z0-9_-]")


def utcnow() -> datetime:
    """Return the current instant in UTC."""
    return datetime.now(UTC)


# --- one event loop per process ------------------------------------------------------


@dataclass
class _Runtime:
    pid: int
    loop: asyncio.AbstractEventLoop
    bots: dict[tuple[str, str, float], Bot] = field(default_factory=dict)


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _loop() -> _Runtime:
    """Return this process's event loop thread, starting it on first use."""
    global _runtime
    with _runtime_lock:
        rt = _runtime
        if rt is None or rt.pid != os.getpid() or rt.loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="telegram-loop",
                                      daemon=True)
            thread.start()
            rt = _runtime = _Runtime(pid=os.getpid(), loop=loop)
        return rt


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the process's loop and wait for its result (from sync code)."""
    future = asyncio.run_coroutine_threadsafe(coro, _loop().loop)
    try:
        return future.result(timeout)
    except FutureTimeout:
        future.cancel()
        raise


def file_base_url(api_base_url: str) -> str:
    """Return the file URL that goes with a Bot API base URL (``.../bot`` → ``.../file/bot``)."""
    if api_base_url.endswith("/bot"):
        return api_base_url[: -len("/bot")] + "/file/bot"
    return api_base_url.rstrip("/") + "/file/bot"


async def _bot(config: Config) -> Bot:
    """Return this process's Bot for a configuration (on the loop thread: no lock needed)."""
    rt = _loop()
    tg = config.telegram
    key = (tg.token, tg.api_base_url, tg.timeout_s)
    bot = rt.bots.get(key)
    if bot is None:
        timeout = tg.timeout_s
        request = HTTPXRequest(connection_pool_size=16, read_timeout=timeout,
                               write_timeout=timeout, connect_timeout=timeout,
                               pool_timeout=timeout)
        polling = HTTPXRequest(connection_pool_size=2, read_timeout=timeout + POLL_TIMEOUT_S,
                               write_timeout=timeout, connect_timeout=timeout)
        bot = Bot(tg.token, base_url=tg.api_base_url, base_file_url=file_base_url(tg.api_base_url),
                  request=request, get_updates_request=polling)
        rt.bots[key] = bot
    return bot


def shutdown() -> None:
    """Close this process's Telegram connections (tests, clean exits)."""
    rt = _runtime
    if rt is None or rt.pid != os.getpid():
        return

    async def _close() -> None:
        for bot in list(rt.bots.values()):
            try:
                await bot.shutdown()
            except Exception:  # a half-open client: nothing left to close
                log.debug("bot shutdown failed", exc_info=True)
        rt.bots.clear()

    run(_close(), timeout=10)


def _seconds(value: int | float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _clean(message: str, config: Config) -> str:
    """Keep the bot token out of error texts (they end up in the database and logs)."""
    text = message.replace(config.telegram.token, "<token>") if config.telegram.token \
        else message
    return text[:200]


# --- sending ---------------------------------------------------------------------------


class TelegramChannel:
    """Sends outbox rows with ``sendMessage``; several in flight at once."""

    name = "telegram"
    max_length = MAX_LENGTH["telegram"]
    burst = 1.5  # absorbs a late wake-up; still under the limit in any second (see sender)

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rate_per_s = config.telegram.rate_per_s * PACE
        self.rate_per_address_per_s: float | None = config.telegram.rate_per_chat_per_s * PACE
        # The limits themselves, which the sender's guard never lets arrivals exceed.
        self.limit_per_s = config.telegram.rate_per_s
        self.limit_per_address_per_s = config.telegram.rate_per_chat_per_s
        self.max_in_flight = 16  # 30 messages/s at half a second each
        self.timeout = config.telegram.timeout_s

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """Return this process's event loop, where every send runs."""
        return _loop().loop

    async def send_async(self, row: Any) -> SendResult:
        """Send one row (on the loop); timeouts come from the HTTP client's settings."""
        try:
            bot = await _bot(self.config)
            message = await bot.send_message(chat_id=row.address, text=row.text)
        except TelegramError as exc:
            return self.result_for(exc)
        return SendResult(ok=True, external_id=str(message.message_id))

    def send(self, row: Any) -> SendResult:
        """Send one row from synchronous code and wait for the outcome."""
        future = asyncio.run_coroutine_threadsafe(self.send_async(row), self.loop)
        try:
            return future.result(self.timeout * 4 + 5)
        except FutureTimeout:
            future.cancel()
            return SendResult(ok=False, error="telegram: no answer in time")

    def result_for(self, exc: TelegramError) -> SendResult:
        """Map a python-telegram-bot error to a SendResult."""
        reason = _clean(exc.message, self.config)
        if isinstance(exc, RetryAfter):
            wait_s = max(1.0, _seconds(exc.retry_after))
            # Telegram's limits are per chat (1/s) and overall (30/s); we pace under the
            # overall one, so a 429 concerns this chat unless many chats get one at once.
            return SendResult(ok=False, retry_after=wait_s, retry_scope="address",
                              error=f"telegram 429: retry after {wait_s:g} s")
        if isinstance(exc, Forbidden):
            return SendResult(ok=False, permanent=True, unreachable=True,
                              error=f"telegram 403: {reason}")
        if isinstance(exc, ChatMigrated):
            return SendResult(ok=False, permanent=True, unreachable=True,
                              error="telegram: the chat became a supergroup")
        if isinstance(exc, InvalidToken):
            log.error("Telegram refused the bot token: check [telegram] token")
            return SendResult(ok=False, error="telegram 401: token refused")
        if isinstance(exc, BadRequest):
            low = reason.lower()
            gone = any(s in low for s in ("chat not found", "user not found",
                                          "user is deactivated", "peer_id_invalid",
                                          "bot can't initiate"))
            return SendResult(ok=False, permanent=True, unreachable=gone,
                              error=f"telegram 400: {reason}")
        if isinstance(exc, TimedOut):
            return SendResult(ok=False, error="telegram: timed out")
        if isinstance(exc, NetworkError):  # 5xx and connection failures
            return SendResult(ok=False, error=f"telegram: {reason}")
        return SendResult(ok=False, error=f"telegram: {type(exc).__name__}: {reason}")


# --- webhook set-up (CLI) --------------------------------------------------------------


def webhook_url(config: Config) -> str:
    """Return the address Telegram should post updates to."""
    return config.server.public_url.rstrip("/") + WEBHOOK_PATH


def set_webhook(config: Config) -> str:
    """Register the webhook (with the secret) at Telegram; return its URL."""
    url = webhook_url(config)

    async def _set() -> None:
        bot = await _bot(config)
        await bot.set_webhook(url, secret_token=config.telegram.webhook_secret,
                              allowed_updates=ALLOWED_UPDATES)

    run(_set(), timeout=config.telegram.timeout_s * 2 + 5)
    return url


def delete_webhook(config: Config) -> None:
    """Remove the webhook (needed before long polling)."""

    async def _delete() -> None:
        bot = await _bot(config)
        await bot.delete_webhook()

    run(_delete(), timeout=config.telegram.timeout_s * 2 + 5)


def webhook_info(config: Config) -> dict[str, Any]:
    """Return Telegram's view of the webhook (URL, pending updates, last error)."""

    async def _info() -> dict[str, Any]:
        bot = await _bot(config)
        info = await bot.get_webhook_info()
        return {"url": info.url, "pending_update_count": info.pending_update_count,
                "last_error_message": info.last_error_message}

    return run(_info(), timeout=config.telegram.timeout_s * 2 + 5)


def describe_error(exc: BaseException, config: Config) -> str | None:
    """Return a one-line reason for a Telegram error, or None if it is not one."""
    if isinstance(exc, TelegramError):
        return f"Telegram said: {_clean(exc.message, config)}"
    if isinstance(exc, FutureTimeout):
        return "Telegram did not answer in time"
    return None


# --- inbound ---------------------------------------------------------------------------


def _parse(data: dict[str, Any]) -> Update | None:
    """Parse an Update; None for one of a kind we ignore that this library cannot read."""
    check_update(data)
    try:
        update = Update.de_json(data, bot=None)
    except Exception as exc:  # de_json raises whatever a broken shape makes it raise
        if not _HANDLED_KINDS & data.keys():
            # A kind of update newer than python-telegram-bot knows, which we would
            # ignore anyway: acknowledge it rather than have Telegram retry it for hours.
            return None
        raise MalformedUpdate(f"not a Telegram Update ({type(exc).__name__})") from exc
    if update is None:
        raise MalformedUpdate("not a Telegram Update")
    return update


def classify(message: Message) -> tuple[str, str, str | None] | None:
    """Return (kind, text, start code) for a message, or None for a service message."""
    if message.text is not None:
        text = message.text
        entities = message.entities or ()
        first = next((e for e in entities if e.offset == 0 and e.type == "bot_command"), None)
        if first is not None:
            command = text[: first.length].split("@", 1)[0].lower()
            if command == "/start":
                words = text[first.length:].split()
                # Keep only what a deep link can carry: the code goes into a query as is.
                code = _NOT_IN_CODE.sub("", words[0])[:64] if words else ""
                return "start", text, code or None
        return "text", text, None
    for attr, kind in _MEDIA_KINDS:
        if getattr(message, attr, None):
            return kind, message.caption or "", None
    return None


def process_update(db: DbEngine, engine: Any, config: Config, data: dict[str, Any], *,
                   now: datetime | None = None) -> str:
    """Handle one Update (already authenticated); return what was done with it."""
    update = _parse(data)
    if update is None:
        log.info("telegram update %s of an unknown kind: acknowledged", data["update_id"])
        return "ignored"
    now = now or getattr(engine, "clock", utcnow)()
    external_id = str(update.update_id)
    if update.message is not None:
        return _on_message(db, engine, update.message, external_id, now)
    if update.edited_message is not None:
        return _on_edited(db, config, update.edited_message, external_id, now)
    if update.my_chat_member is not None:
        return _on_member_status(db, update, external_id, now)
    kind = "channel post" if (update.channel_post or update.edited_channel_post) else "other"
    log.info("telegram update %s acknowledged and ignored (%s)", external_id, kind)
    return "ignored"


def _on_message(db: DbEngine, engine: Any, message: Message, external_id: str,
                now: datetime) -> str:
    user = message.from_user
    if message.chat.type != "private" or user is None or user.is_bot:
        log.info("telegram update %s ignored: not a private chat with a person", external_id)
        return "ignored"
    parsed = classify(message)
    if parsed is None:
        return "ignored"
    kind, text, code = parsed
    address = str(message.chat.id)
    inbound = Inbound(channel="telegram", address=address, text=text, external_id=external_id,
                      received_at=now, kind=kind, start_code=code, profile_name=user.first_name)
    result = engine.handle(inbound, now=now)
    if result.duplicate:
        log.info("telegram update %s was a redelivery: ignored", external_id)
        return "duplicate"
    log.info("telegram update %s from %s: %s (%s)", external_id, mask_phone(address), kind,
             result.outcome)
    # A handler that crashed was answered with an apology and recorded: say so.
    return "error" if result.outcome == "error" else "processed"


def _record(session: Any, external_id: str, kind: str, outcome: str, now: datetime,
            member_id: int | None = None) -> None:
    """Record an update we handle ourselves, so that a redelivery is recognised."""
    session.add(InboundLog(channel="telegram", external_id=external_id, kind=kind,
                           outcome=outcome, member_id=member_id, received_at=now))
    session.flush()


def _identity(session: Any, address: str) -> ChannelIdentity | None:
    return session.exec(select(ChannelIdentity).where(ChannelIdentity.channel == "telegram",
                                                      ChannelIdentity.address == address)
                        ).first()


def _on_edited(db: DbEngine, config: Config, message: Message, external_id: str,
               now: datetime) -> str:
    if message.chat.type != "private" or message.from_user is None or message.from_user.is_bot:
        return "ignored"
    address = str(message.chat.id)
    try:
        with session_scope(db) as session:
            identity = _identity(session, address)
            member_id = identity.member_id if identity is not None else None
            _record(session, external_id, "edited", "edited", now, member_id)
            # Acting on an edit could repeat a step (a confirmed request): say so instead.
            reply = Outbound([t(EDITED_NOTE)], member_id=member_id, kind="reply", urgent=True,
                             channel=None if member_id else "telegram",
                             address=None if member_id else address)
            queue_messages(session, [reply], now=now, config=config,
                           identities={member_id: identity} if identity is not None else None)
    except IntegrityError:
        return "duplicate"
    return "edited"


def _on_member_status(db: DbEngine, update: Update, external_id: str, now: datetime) -> str:
    change = update.my_chat_member
    assert change is not None
    if change.chat.type != "private":
        return "ignored"
    old, new = change.old_chat_member.status, change.new_chat_member.status
    if new == ChatMember.BANNED:
        outcome = "blocked"
    elif new == ChatMember.MEMBER and old != ChatMember.MEMBER:
        outcome = "unblocked"
    else:
        return "ignored"
    address = str(change.chat.id)
    try:
        with session_scope(db) as session:
            identity = _identity(session, address)
            _record(session, external_id, outcome, outcome, now,
                    identity.member_id if identity is not None else None)
            if identity is None:
                return outcome
            if outcome == "blocked":
                identity.reachable, identity.unreachable_reason = False, "blocked the bot"
                hold_address(session, "telegram", address, "the member blocked the bot")
            else:
                identity.reachable, identity.unreachable_reason = True, None
                release_held(session, identity.member_id, identity, now)
            session.add(identity)
    except IntegrityError:
        return "duplicate"
    log.info("telegram chat %s %s the bot", mask_phone(address), outcome)
    return outcome


# --- long polling ----------------------------------------------------------------------


def poll_once(db: DbEngine, engine: Any, config: Config, offset: int | None, *,
              timeout: int = POLL_TIMEOUT_S) -> int | None:
    """Fetch one round of updates with getUpdates, process them; return the next offset."""

    async def _fetch() -> list[dict[str, Any]]:
        bot = await _bot(config)
        updates = await bot.get_updates(offset=offset, timeout=timeout,
                                        allowed_updates=ALLOWED_UPDATES)
        return [u.to_dict() for u in updates]

    for data in run(_fetch(), timeout=timeout + config.telegram.timeout_s * 2 + 5):
        try:
            process_update(db, engine, config, data)
        except MalformedUpdate:
            log.warning("telegram update %s could not be read: skipped", data.get("update_id"))
        offset = int(data["update_id"]) + 1
    return offset


def poll_forever(db: DbEngine, engine: Any, config: Config, stop: threading.Event) -> None:
    """Long-poll Telegram until `stop` is set (development without a public address)."""
    delete_webhook(config)  # getUpdates is refused while a webhook is set
    offset: int | None = None
    failures = 0
    log.info("polling Telegram for updates")
    while not stop.is_set():
        try:
            offset = poll_once(db, engine, config, offset)
            failures = 0
        except Conflict:
            log.error("Telegram refused getUpdates: another process polls, or a webhook is set")
            stop.wait(10)
        except Exception as exc:  # Telegram or the database away: try again shortly
            failures += 1
            log.warning("polling Telegram failed (%s); retrying", type(exc).__name__,
                        exc_info=not isinstance(exc, TelegramError | FutureTimeout))
            stop.wait(min(60, 2 ** min(failures, 6)))
