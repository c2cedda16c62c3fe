"""Prove the loopback fakes speak the wire formats of the real client libraries."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import requests
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.request import HTTPXRequest
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from werkzeug.datastructures import MultiDict

from tests.fakes import payloads
from tests.fakes.telegram_api import FakeTelegram, SlidingWindow, parse_fields
from tests.fakes.twilio_api import FakeTwilio

T = TypeVar("T")
WA_FROM = "whatsapp:+14155238886"
WA_TO = "whatsapp:+6281234567890"
TEMPLATE = "HX" + "b" * 32


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _ptb_timedelta(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make PTB give ``retry_after`` as a timedelta, without deprecation warnings."""
    monkeypatch.setenv("PTB_TIMEDELTA", "1")


def _fake_threads(prefix: str = "Fake") -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    """Run a default FakeTelegram and check it stopped cleanly and never crashed."""
    with FakeTelegram() as fake:
        yield fake
    assert fake.errors == []
    assert _fake_threads("FakeTelegram") == []


@pytest.fixture
def tw() -> Iterator[FakeTwilio]:
    """Run a default FakeTwilio and check it stopped cleanly and never crashed."""
    with FakeTwilio() as fake:
        yield fake
    assert fake.errors == []
    assert _fake_threads("FakeTwilio") == []


def run_bot(
    fake: FakeTelegram,
    scenario: Callable[[Bot], Awaitable[T]],
    *,
    token: str | None = None,
    read_timeout: float = 5.0,
) -> T:
    """Run ``scenario`` with one initialised Bot inside one event loop."""

    async def main() -> T:
        request = HTTPXRequest(read_timeout=read_timeout, connect_timeout=2.0)
        bot = Bot(
            token or fake.token,
            base_url=fake.base_url,
            base_file_url=fake.base_file_url,
            request=request,
        )
        async with bot:
            return await scenario(bot)

    return asyncio.run(main())


@pytest.fixture
def twilio_client(tw: FakeTwilio) -> Iterator[Client]:
    """Build a real twilio Client pointed at the fake."""
    http = TwilioHttpClient(timeout=2)
    client = Client(tw.account_sid, tw.auth_token, http_client=http)
    client.api.base_url = tw.url
    yield client
    if http.session is not None:
        http.session.close()


def make_client(fake: FakeTwilio, *, token: str | None = None, timeout: float = 2) -> Client:
    """Build a real twilio Client (caller closes ``client.http_client.session``)."""
    client = Client(
        fake.account_sid, token or fake.auth_token, http_client=TwilioHttpClient(timeout=timeout)
    )
    client.api.base_url = fake.url
    return client


def close_client(client: Client) -> None:
    """Close the requests session behind a twilio Client."""
    session = getattr(client.http_client, "session", None)
    if session is not None:
        session.close()


def raw(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """Send one request with urllib and return (status, parsed JSON body)."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


# --------------------------------------------------------------------------- Telegram


def test_telegram_send_message_answers_full_message_and_records(tg: FakeTelegram) -> None:
    """Send through PTB and get real Message objects back; the fake records each send."""
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Ya", callback_data="yes")]])

    async def scenario(bot: Bot) -> list[Any]:
        return [
            await bot.send_message(42, "Halo Rina", reply_markup=markup),
            await bot.send_message("42", "Apa kabar?"),
            await bot.send_message(7, "Selamat pagi"),
        ]

    first, second, third = run_bot(tg, scenario)
    assert first.message_id < second.message_id < third.message_id
    assert (first.chat.id, first.chat.type, first.text) == (42, "private", "Halo Rina")
    assert isinstance(first.date, datetime)
    assert first.reply_markup == markup
    assert tg.texts_for(42) == ["Halo Rina", "Apa kabar?"]
    assert tg.texts_for("7") == ["Selamat pagi"]
    sent = tg.wait_for(3, timeout=1)
    assert [m["chat_id"] for m in sent] == ["42", "42", "7"]
    assert json.loads(sent[0]["params"]["reply_markup"]) == {
        "inline_keyboard": [[{"text": "Ya", "callback_data": "yes"}]]
    }
    assert all(isinstance(m["time"], float) for m in sent)
    assert [c["method"] for c in tg.calls] == ["getMe", "sendMessage", "sendMessage", "sendMessage"]
    # PTB posts form-encoded bodies, with chat_id as a string.
    assert tg.calls[1]["content_type"].startswith("application/x-www-form-urlencoded")
    assert tg.calls[1]["params"]["chat_id"] == "42"


def test_telegram_get_me_matches_token(tg: FakeTelegram) -> None:
    """Initialise a Bot (getMe) and see the bot id taken from the token."""

    async def scenario(bot: Bot) -> tuple[int, str | None]:
        return bot.id, bot.username

    assert run_bot(tg, scenario) == (123456, "desmigratif_test_bot")


def test_telegram_429_raises_retry_after(tg: FakeTelegram) -> None:
    """Map an injected 429 to RetryAfter with the scripted retry_after; next send passes."""
    tg.inject("429", retry_after=7)

    async def scenario(bot: Bot) -> timedelta | int:
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(42, "dropped")
        await bot.send_message(42, "delivered")
        return caught.value.retry_after

    assert run_bot(tg, scenario) == timedelta(seconds=7)
    assert tg.texts_for(42) == ["delivered"]
    assert tg.rejected == {"429": 1}


def test_telegram_blocked_and_unknown_chats(tg: FakeTelegram) -> None:
    """Answer 403 for a blocked chat and 400 for an unknown one, as PTB expects."""
    tg.block(7)
    tg.unknown_chat(8)

    async def scenario(bot: Bot) -> tuple[str, str]:
        with pytest.raises(Forbidden) as blocked:
            await bot.send_message(7, "x")
        with pytest.raises(BadRequest) as unknown:
            await bot.send_message(8, "x")
        await bot.send_message(9, "ok")
        return blocked.value.message, unknown.value.message

    blocked, unknown = run_bot(tg, scenario)
    assert "blocked by the user" in blocked
    assert "chat not found" in unknown.lower()
    assert [m["chat_id"] for m in tg.sent] == ["9"]
    assert tg.rejected == {"403": 1, "400": 1}


def test_telegram_500_and_drop_raise_network_error(tg: FakeTelegram) -> None:
    """Map 500 and a dropped connection to NetworkError (not TimedOut); record nothing."""
    tg.inject("500")
    tg.inject("drop")

    async def scenario(bot: Bot) -> list[NetworkError]:
        errors = []
        for _ in range(2):
            with pytest.raises(NetworkError) as caught:
                await bot.send_message(42, "lost")
            errors.append(caught.value)
        await bot.send_message(42, "after")
        return errors

    server_error, dropped = run_bot(tg, scenario)
    assert not isinstance(server_error, TimedOut)
    assert "Internal Server Error" in server_error.message
    assert not isinstance(dropped, TimedOut)
    assert tg.texts_for(42) == ["after"]
    assert tg.rejected == {"500": 1, "drop": 1}


def test_telegram_slow_raises_timed_out_but_is_delivered(tg: FakeTelegram) -> None:
    """Answer late: the client times out although Telegram did deliver the message."""
    tg.slow_seconds = 0.6
    tg.inject("slow")

    async def scenario(bot: Bot) -> float:
        started = time.monotonic()
        with pytest.raises(TimedOut):
            await bot.send_message(42, "late")
        elapsed = time.monotonic() - started
        await bot.send_message(42, "next")
        return elapsed

    assert run_bot(tg, scenario, read_timeout=0.2) < 0.55
    assert tg.texts_for(42) == ["late", "next"]
    assert tg.rejected == {"slow": 1}


def test_telegram_fault_every_is_deterministic(tg: FakeTelegram) -> None:
    """Fail every 3rd send with 429 and every 5th with 500; the first registered wins ties."""
    tg.fault_every("429", 3, retry_after=2)
    tg.fault_every("500", 5)

    async def scenario(bot: Bot) -> list[str]:
        outcomes = []
        for i in range(1, 16):
            try:
                await bot.send_message(42, f"m{i}")
                outcomes.append("ok")
            except RetryAfter as exc:
                assert exc.retry_after == timedelta(seconds=2)
                outcomes.append("429")
            except NetworkError:
                outcomes.append("500")
        return outcomes

    outcomes = run_bot(tg, scenario)
    failed = {i + 1: kind for i, kind in enumerate(outcomes) if kind != "ok"}
    assert failed == {3: "429", 5: "500", 6: "429", 9: "429", 10: "500", 12: "429", 15: "429"}
    assert tg.rejected == {"429": 5, "500": 2}
    assert len(tg.sent) == 8


def test_telegram_keep_alive_one_bot_one_loop(tg: FakeTelegram) -> None:
    """Send several messages over one persistent connection; the default fake closes each."""

    async def scenario(bot: Bot) -> None:
        for i in range(5):
            await bot.send_message(42, f"m{i}")

    with FakeTelegram(keep_alive=True) as alive:
        run_bot(alive, scenario)
        assert alive.texts_for(42) == [f"m{i}" for i in range(5)]
        assert alive.connections == 1  # getMe and five sends on one socket
        assert alive.errors == []
    run_bot(tg, scenario)
    assert tg.connections == 6


def test_telegram_keep_alive_exposes_event_loop_trap() -> None:
    """Reproduce TECH_NOTES' trap: one Bot across asyncio.run() calls breaks on keep-alive."""

    def outcomes(keep_alive: bool) -> list[str]:
        with FakeTelegram(keep_alive=keep_alive) as fake:
            bot = Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url)
            asyncio.run(bot.initialize())
            results = []
            for i in range(4):
                try:
                    asyncio.run(bot.send_message(42, f"m{i}"))
                    results.append("ok")
                except NetworkError as exc:
                    results.append("closed" if "Event loop is closed" in str(exc) else "other")
            with contextlib.suppress(RuntimeError):  # its pooled socket has a dead loop
                asyncio.run(bot.shutdown())
            del bot
            with warnings.catch_warnings():  # collect the dead loop's sockets quietly, now
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
            return results

    trapped = outcomes(keep_alive=True)
    assert "closed" in trapped and "ok" in trapped  # every other call breaks
    assert outcomes(keep_alive=False) == ["ok"] * 4


def test_telegram_unknown_token_and_method(tg: FakeTelegram) -> None:
    """Answer 401 for a wrong token and 404 for an unknown method, like Telegram."""
    status, body = raw(f"{tg.base_url}999:WRONG/getMe", data=b"")
    assert (status, body) == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )
    status, body = raw(f"{tg.base_url}{tg.token}/noSuchMethod", data=b"")
    assert (status, body["error_code"], body["ok"]) == (404, 404, False)
    # Method names are case-insensitive on Telegram.
    status, body = raw(f"{tg.base_url}{tg.token}/GETME")
    assert status == 200 and body["result"]["is_bot"] is True

    async def scenario(bot: Bot) -> None:
        return None

    with pytest.raises(InvalidToken):
        run_bot(tg, scenario, token="999:WRONG")
    assert [c["method"] for c in tg.calls] == ["getMe"]  # refused requests are not calls


def test_telegram_accepts_json_and_query_strings(tg: FakeTelegram) -> None:
    """Accept JSON bodies and GET query strings besides PTB's forms."""
    body = json.dumps({"chat_id": 42, "text": "json", "disable_notification": True}).encode()
    status, answer = raw(
        f"{tg.base_url}{tg.token}/sendMessage", body, {"Content-Type": "application/json"}
    )
    assert status == 200 and answer["result"]["chat"] == {"id": 42, "type": "private"}
    query = urlencode({"chat_id": "-1001234", "text": "query"})
    status, answer = raw(f"{tg.base_url}{tg.token}/sendMessage?{query}")
    assert status == 200 and answer["result"]["chat"]["type"] == "supergroup"
    assert tg.sent[0]["params"] == {"chat_id": "42", "text": "json", "disable_notification": "true"}
    assert [m["chat_id"] for m in tg.sent] == ["42", "-1001234"]
    status, answer = raw(f"{tg.base_url}{tg.token}/sendMessage", b"chat_id=42", {})
    assert status == 400 and "text is empty" in answer["description"]


def test_telegram_get_updates_offset_and_long_poll(tg: FakeTelegram) -> None:
    """Serve queued updates through getUpdates, honour offset and wake a long poll."""
    tg.queue_update(payloads.tg_start(10, 42, "KODE1"))
    tg.queue_update(payloads.tg_text(11, 42, "MENU"))

    async def scenario(bot: Bot) -> tuple[list[Update], list[Update], list[Update], float]:
        both = list(await bot.get_updates(offset=0, timeout=0))
        rest = list(await bot.get_updates(offset=11, timeout=0))
        empty = list(await bot.get_updates(offset=12, timeout=0))
        threading.Timer(0.2, tg.queue_update, [payloads.tg_text(12, 42, "late")]).start()
        started = time.monotonic()
        late = list(await bot.get_updates(offset=12, timeout=5, read_timeout=7))
        return both, rest, empty + late, time.monotonic() - started

    both, rest, late, waited = run_bot(tg, scenario)
    assert [u.update_id for u in both] == [10, 11]
    assert both[0].message is not None and both[0].message.text == "/start KODE1"
    assert [u.update_id for u in rest] == [11]
    assert [u.update_id for u in late] == [12]
    assert 0.15 < waited < 2


def test_telegram_stop_releases_long_poll() -> None:
    """Return a pending long poll promptly when the fake stops."""
    fake = FakeTelegram().start()
    url = f"{fake.base_url}{fake.token}/getUpdates?timeout=30"
    answers: list[Any] = []
    poller = threading.Thread(target=lambda: answers.append(raw(url)))
    poller.start()
    time.sleep(0.1)
    started = time.monotonic()
    fake.stop()
    poller.join(timeout=5)
    assert time.monotonic() - started < 1.5
    assert answers == [(200, {"ok": True, "result": []})]
    assert _fake_threads() == []


def test_telegram_webhook_lifecycle(tg: FakeTelegram) -> None:
    """Set, inspect and delete a webhook; refuse getUpdates while it is set."""

    async def scenario(bot: Bot) -> tuple[str, str, str]:
        await bot.set_webhook(
            "https://bot.example.org/webhooks/telegram",
            secret_token="s3cret_-A",
            allowed_updates=["message", "my_chat_member"],
        )
        info = await bot.get_webhook_info()
        with pytest.raises(Conflict):
            await bot.get_updates()
        with pytest.raises(BadRequest) as insecure:
            await bot.set_webhook("http://127.0.0.1/webhooks/telegram")
        with pytest.raises(BadRequest) as bad_secret:
            await bot.set_webhook("https://bot.example.org/x", secret_token="no spaces")
        assert tg.webhook is not None and tg.webhook["secret_token"] == "s3cret_-A"
        await bot.delete_webhook()
        assert await bot.send_chat_action(42, "typing") is True
        return info.url, insecure.value.message, bad_secret.value.message

    url, insecure, bad_secret = run_bot(tg, scenario)
    assert url == "https://bot.example.org/webhooks/telegram"
    assert "https url must be provided" in insecure.lower()
    assert "secret token" in bad_secret.lower()
    assert tg.webhook is None
    methods = [c["method"] for c in tg.calls]
    assert methods.count("setWebhook") == 3 and "deleteWebhook" in methods
    assert "sendChatAction" in methods and tg.sent == []


def test_telegram_rate_per_chat_gives_correct_retry_after() -> None:
    """Refuse a second message to one chat within its window, with the right retry_after."""

    async def scenario(bot: Bot) -> timedelta | int:
        await bot.send_message(42, "first")
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(42, "too soon")
        await bot.send_message(43, "other chat")
        return caught.value.retry_after

    with FakeTelegram(per_chat_per_s=0.25) as fake:
        assert run_bot(fake, scenario) == timedelta(seconds=4)
        assert [m["text"] for m in fake.sent] == ["first", "other chat"]
        assert fake.rejected == {"429": 1}


def test_telegram_rate_overall_burst_is_refused() -> None:
    """Refuse the message past the overall limit, whatever the chat."""

    async def scenario(bot: Bot) -> list[str]:
        outcomes = []
        for chat in range(100, 105):
            try:
                await bot.send_message(chat, "burst")
                outcomes.append("ok")
            except RetryAfter as exc:
                assert exc.retry_after == timedelta(seconds=1)
                outcomes.append("429")
        return outcomes

    with FakeTelegram(overall_per_s=3) as fake:
        assert run_bot(fake, scenario) == ["ok", "ok", "ok", "429", "429"]
        assert fake.rejected == {"429": 2}


def test_telegram_rate_paced_sends_pass() -> None:
    """Accept every message of a sender that paces just under the limits."""

    async def scenario(bot: Bot) -> None:
        for i in range(7):
            await bot.send_message(42, f"m{i}")
            await asyncio.sleep(0.25)

    with FakeTelegram(per_chat_per_s=5, overall_per_s=5) as fake:
        run_bot(fake, scenario)
        assert len(fake.sent) == 7
        assert fake.rejected == {}


def test_sliding_window_exact_arithmetic() -> None:
    """Count events in (now - W, now] and compute retry_after from the oldest one."""
    window = SlidingWindow(2)
    assert (window.window, window.limit) == (1.0, 2)
    for at in (10.0, 10.4):
        assert window.retry_after("a", at) is None
        window.record("a", at)
    assert window.retry_after("a", 10.5) == 1
    assert window.retry_after("b", 10.5) is None
    assert window.retry_after("a", 11.0) is None  # the event at 10.0 left the window
    slow = SlidingWindow(0.1)
    assert (slow.window, slow.limit) == (10.0, 1)
    slow.record("a", 0.0)
    assert slow.retry_after("a", 0.5) == 10
    assert slow.retry_after("a", 8.2) == 2
    with pytest.raises(ValueError):
        SlidingWindow(0)


def test_telegram_wait_for_and_reset(tg: FakeTelegram) -> None:
    """Return early once enough messages arrived, give up at the timeout, forget on reset."""
    started = time.monotonic()
    assert tg.wait_for(1, timeout=0.2) == []
    assert 0.15 < time.monotonic() - started < 1
    threading.Timer(0.1, raw, [f"{tg.base_url}{tg.token}/sendMessage?chat_id=1&text=hi"]).start()
    started = time.monotonic()
    assert [m["text"] for m in tg.wait_for(1, timeout=3)] == ["hi"]
    assert time.monotonic() - started < 1
    tg.block(1)
    tg.inject("500", times=3)
    tg.reset()
    assert (tg.sent, tg.calls, tg.rejected) == ([], [], {})
    status, _ = raw(f"{tg.base_url}{tg.token}/sendMessage?chat_id=1&text=again")
    assert status == 200
    with pytest.raises(ValueError):
        tg.inject("teapot")


def test_bodies_are_parsed_or_refused_with_4xx(tg: FakeTelegram, tw: FakeTwilio) -> None:
    """Parse multipart bodies; answer unparsable ones with a 4xx, never a crash."""
    upload = requests.Request(
        "POST",
        "http://127.0.0.1/",
        data={"chat_id": "42", "caption": "foto"},
        files={"photo": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")},
    ).prepare()
    assert isinstance(upload.body, bytes)
    fields, files = parse_fields(upload.headers["Content-Type"], upload.body, "x=1")
    assert fields == {
        "x": ["1"],
        "chat_id": ["42"],
        "caption": ["foto"],
        "photo": ["attach://photo"],
    }
    assert files == {"photo": b"\xff\xd8\xff"}
    status, answer = raw(
        f"{tg.base_url}{tg.token}/sendMessage", b"{oops", {"Content-Type": "application/json"}
    )
    assert status == 400 and answer["ok"] is False
    bad = requests.post(
        f"{tw.url}/2010-04-01/Accounts/{tw.account_sid}/Messages.json",
        data=b"a,b",
        headers={"Content-Type": "text/csv"},
        auth=(tw.account_sid, tw.auth_token),
        timeout=2,
    )
    assert (bad.status_code, bad.json()["code"]) == (400, 20001)
    assert tg.queue_update(payloads.tg_text(0, 1, "x") | {"update_id": 41}) == 41
    assert tg.queue_update({"message": payloads.tg_text(0, 1, "y")["message"]}) == 42


# --------------------------------------------------------------------------- Twilio


def test_twilio_create_returns_message_instance(tw: FakeTwilio, twilio_client: Client) -> None:
    """Create a WhatsApp message with the real client and read it back."""
    message = twilio_client.messages.create(
        to=WA_TO,
        from_=WA_FROM,
        body="Halo Bu",
        status_callback="https://bot.example.org/webhooks/twilio/status",
    )
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid or "")
    assert (message.status, message.to, message.from_, message.body) == (
        "queued",
        WA_TO,
        WA_FROM,
        "Halo Bu",
    )
    assert isinstance(message.date_created, datetime)
    assert message.error_code is None and message.account_sid == tw.account_sid
    record = tw.wait_for(1, timeout=1)[0]
    assert record["sid"] == message.sid
    assert record["status_callback"] == "https://bot.example.org/webhooks/twilio/status"
    assert record["params"]["Body"] == "Halo Bu"
    assert tw.bodies_for("+6281234567890") == ["Halo Bu"] == tw.bodies_for(WA_TO)
    call = tw.calls[0]
    assert call["method"] == f"POST /2010-04-01/Accounts/{tw.account_sid}/Messages.json"
    assert call["content_type"].startswith("application/x-www-form-urlencoded")
    fetched = twilio_client.messages(message.sid).fetch()
    assert fetched.sid == message.sid and fetched.body == "Halo Bu"


def test_twilio_template_passes_outside_window(tw: FakeTwilio, twilio_client: Client) -> None:
    """Refuse freeform text outside the 24-hour window with 63016, accept a template."""
    tw.outside_window(WA_TO)
    with pytest.raises(TwilioRestException) as caught:
        twilio_client.messages.create(to=WA_TO, from_=WA_FROM, body="freeform")
    assert (caught.value.code, caught.value.status) == (63016, 400)
    message = twilio_client.messages.create(
        to=WA_TO, from_=WA_FROM, content_sid=TEMPLATE, content_variables='{"1": "Rina"}'
    )
    assert message.sid
    record = tw.sent[0]
    assert (record["content_sid"], record["content_variables"], record["body"]) == (
        TEMPLATE,
        '{"1": "Rina"}',
        None,
    )
    assert tw.bodies_for(WA_TO) == []
    assert tw.rejected == {"63016": 1}


@pytest.mark.parametrize(
    ("script", "to", "code"),
    [
        ("opted_out", WA_TO, 21610),
        ("invalid", WA_TO, 21211),
        (None, "whatsapp:12345", 21211),
    ],
)
def test_twilio_recipient_errors(
    tw: FakeTwilio, twilio_client: Client, script: str | None, to: str, code: int
) -> None:
    """Answer the scripted per-recipient errors with Twilio's codes."""
    if script:
        getattr(tw, script)(to)
    for kwargs in ({"body": "hi"}, {"content_sid": TEMPLATE}):
        with pytest.raises(TwilioRestException) as caught:
            twilio_client.messages.create(to=to, from_=WA_FROM, **kwargs)
        assert (caught.value.code, caught.value.status) == (code, 400)
    assert tw.sent == []
    assert tw.rejected == {str(code): 2}


def test_twilio_validation_and_auth(tw: FakeTwilio, twilio_client: Client) -> None:
    """Validate like Twilio: no content 21619, no To 21604, wrong credentials 20003."""
    with pytest.raises(TwilioRestException) as caught:
        twilio_client.messages.create(to=WA_TO, from_=WA_FROM)
    assert caught.value.code == 21619
    with pytest.raises(TwilioRestException) as caught:
        twilio_client.messages.create(to=WA_TO, from_="+14155238886", body="x")
    assert caught.value.code == 21910
    url = f"{tw.url}/2010-04-01/Accounts/{tw.account_sid}/Messages.json"
    answer = requests.post(
        url, data={"From": WA_FROM, "Body": "x"}, auth=(tw.account_sid, tw.auth_token), timeout=2
    )
    assert (answer.status_code, answer.json()["code"]) == (400, 21604)
    denied = requests.post(url, data={"To": WA_TO, "From": WA_FROM, "Body": "x"}, timeout=2)
    assert denied.status_code == 401
    assert denied.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    intruder = make_client(tw, token="wrong-token")
    try:
        with pytest.raises(TwilioRestException) as caught:
            intruder.messages.create(to=WA_TO, from_=WA_FROM, body="x")
        assert (caught.value.code, caught.value.status) == (20003, 401)
    finally:
        close_client(intruder)
    assert tw.sent == []


def test_twilio_faults(tw: FakeTwilio, twilio_client: Client) -> None:
    """Map injected faults to TwilioRestException or requests' own exceptions."""
    tw.inject("429")
    tw.inject("500")
    tw.inject("drop")
    with pytest.raises(TwilioRestException) as caught:
        twilio_client.messages.create(to=WA_TO, from_=WA_FROM, body="a")
    assert (caught.value.code, caught.value.status) == (20429, 429)
    with pytest.raises(TwilioRestException) as caught:
        twilio_client.messages.create(to=WA_TO, from_=WA_FROM, body="b")
    assert caught.value.status == 500
    with pytest.raises(requests.exceptions.ConnectionError):
        twilio_client.messages.create(to=WA_TO, from_=WA_FROM, body="c")
    tw.slow_seconds = 0.6
    tw.inject("slow")
    impatient = make_client(tw, timeout=0.2)
    try:
        with pytest.raises(requests.exceptions.Timeout):
            impatient.messages.create(to=WA_TO, from_=WA_FROM, body="late")
    finally:
        close_client(impatient)
    tw.fault_every("429", 2)
    outcomes = []
    for i in range(4):
        try:
            twilio_client.messages.create(to=WA_TO, from_=WA_FROM, body=f"n{i}")
            outcomes.append("ok")
        except TwilioRestException as exc:
            outcomes.append(str(exc.code))
    assert outcomes == ["ok", "20429", "ok", "20429"]
    assert tw.bodies_for(WA_TO) == ["late", "n0", "n2"]
    assert tw.rejected == {"429": 3, "500": 1, "drop": 1, "slow": 1}


def test_twilio_rate_limit() -> None:
    """Answer 429/20429 past the overall rate; accept again once the window moved."""
    with FakeTwilio(overall_per_s=2, keep_alive=True) as fake:
        client = make_client(fake)
        try:
            codes = []
            for i in range(3):
                try:
                    client.messages.create(to=WA_TO, from_=WA_FROM, body=f"m{i}")
                    codes.append(0)
                except TwilioRestException as exc:
                    codes.append(exc.code)
            assert codes == [0, 0, 20429]
            time.sleep(1.0)
            client.messages.create(to=WA_TO, from_=WA_FROM, body="later")
        finally:
            close_client(client)
        assert fake.bodies_for(WA_TO) == ["m0", "m1", "later"]
        assert fake.rejected == {"429": 1}
        assert fake.connections == 1  # requests kept one persistent connection
        assert fake.errors == []


# --------------------------------------------------------------------------- payloads

CHAT = 987654321
TELEGRAM_CASES: list[tuple[str, dict[str, Any], Callable[[Any], bool]]] = [
    ("text", payloads.tg_text(1, CHAT, "MENU"), lambda u: u.message.text == "MENU"),
    (
        "start",
        payloads.tg_start(2, CHAT, "AB12CD"),
        lambda u: (
            u.message.text == "/start AB12CD"
            and u.message.parse_entities() == {u.message.entities[0]: "/start"}
            and u.message.entities[0].type == "bot_command"
        ),
    ),
    (
        "command",
        payloads.tg_command(3, CHAT, "bahasa", "en"),
        lambda u: u.message.text == "/bahasa en" and u.message.entities[0].length == 7,
    ),
    ("sticker", payloads.tg_sticker(4, CHAT), lambda u: u.message.sticker.emoji == "👍"),
    (
        "photo",
        payloads.tg_photo(5, CHAT, "foto anak"),
        lambda u: len(u.message.photo) == 3 and u.message.caption == "foto anak",
    ),
    ("photo-bare", payloads.tg_photo(6, CHAT), lambda u: u.message.caption is None),
    ("voice", payloads.tg_voice(7, CHAT), lambda u: u.message.voice.mime_type == "audio/ogg"),
    (
        "location",
        payloads.tg_location(8, CHAT),
        lambda u: round(u.message.location.latitude, 2) == 22.30,
    ),
    (
        "edited",
        payloads.tg_edited(9, CHAT, "DANA"),
        lambda u: u.message is None and u.edited_message.text == "DANA",
    ),
    (
        "blocked",
        payloads.tg_my_chat_member_blocked(10, CHAT),
        lambda u: (
            (u.my_chat_member.old_chat_member.status, u.my_chat_member.new_chat_member.status)
            == ("member", "kicked")
        ),
    ),
    (
        "unblocked",
        payloads.tg_my_chat_member_unblocked(11, CHAT),
        lambda u: u.my_chat_member.new_chat_member.status == "member",
    ),
    (
        "channel",
        payloads.tg_channel_post(12, -1001234567890, "pengumuman"),
        lambda u: u.channel_post.chat.type == "channel" and u.effective_user is None,
    ),
    (
        "callback",
        payloads.tg_callback_query(13, CHAT, "fund:yes"),
        lambda u: u.callback_query.data == "fund:yes" and u.callback_query.message.chat.id == CHAT,
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "check"), TELEGRAM_CASES, ids=[c[0] for c in TELEGRAM_CASES]
)
def test_telegram_payloads_parse(
    name: str, data: dict[str, Any], check: Callable[[Any], bool]
) -> None:
    """Parse every Telegram factory with Update.de_json, as JSON-ready dicts."""
    update = Update.de_json(json.loads(json.dumps(data)), bot=None)
    assert update is not None
    assert update.update_id == data["update_id"]
    assert update.effective_chat is not None
    expected_chat = -1001234567890 if name == "channel" else CHAT
    assert update.effective_chat.id == expected_chat
    assert check(update)


def test_telegram_payload_defaults() -> None:
    """Give private chats the user's id, names and a current date unless told otherwise."""
    update = payloads.tg_text(1, 42, "hi", first_name="Siti", username="siti", date=1700000000)
    message = update["message"]
    assert message["from"]["id"] == message["chat"]["id"] == 42
    assert message["chat"] == {
        "id": 42,
        "first_name": "Siti",
        "username": "siti",
        "type": "private",
    }
    assert message["date"] == 1700000000
    assert abs(payloads.tg_text(2, 42, "x")["message"]["date"] - time.time()) < 5
    assert payloads.tg_start(3, 42, "X")["message"]["entities"] == [
        {"offset": 0, "length": 6, "type": "bot_command"}
    ]


def test_twilio_inbound_fields() -> None:
    """Carry every field Twilio sends for WhatsApp text, media and location messages."""
    form = payloads.twilio_inbound("DAFTAR AB12", message_sid="SM" + "1" * 32)
    assert set(form) == {
        "SmsMessageSid",
        "NumMedia",
        "ProfileName",
        "MessageType",
        "SmsSid",
        "WaId",
        "SmsStatus",
        "Body",
        "To",
        "NumSegments",
        "ReferralNumMedia",
        "MessageSid",
        "AccountSid",
        "From",
        "ApiVersion",
    }
    assert all(isinstance(v, str) for v in form.values())
    assert (form["WaId"], form["MessageType"], form["SmsStatus"]) == (
        "85291234567",
        "text",
        "received",
    )
    assert form["MessageSid"] == form["SmsSid"] == form["SmsMessageSid"] == "SM" + "1" * 32
    media = payloads.twilio_inbound("", num_media=1, media_content_type="image/jpeg")
    assert media["MessageSid"].startswith("MM") and media["MessageType"] == "image"
    assert media["MediaContentType0"] == "image/jpeg"
    assert re.fullmatch(
        r"https://api\.twilio\.com/2010-04-01/Accounts/AC0{32}/Messages/MM[0-9a-f]{32}"
        r"/Media/ME[0-9a-f]{32}",
        media["MediaUrl0"],
    )
    where = payloads.twilio_inbound("", latitude=22.3, longitude=114.17, address="Mong Kok")
    assert (where["MessageType"], where["Latitude"], where["Longitude"]) == (
        "location",
        "22.3",
        "114.17",
    )


def test_twilio_status_fields() -> None:
    """Build status callbacks with MessageStatus, ErrorCode and ChannelToAddress."""
    ok = payloads.twilio_status("SM" + "2" * 32, "delivered")
    assert ok["MessageStatus"] == ok["SmsStatus"] == "delivered"
    assert ok["ChannelPrefix"] == "whatsapp" and ok["ChannelToAddress"] == "+85291234567"
    assert "ErrorCode" not in ok
    failed = payloads.twilio_status("SM" + "2" * 32, "failed", error_code=63016)
    assert (failed["MessageStatus"], failed["ErrorCode"]) == ("failed", "63016")
    sms = payloads.twilio_status("SM" + "3" * 32, "sent", to="+6281234567890", from_="+1415")
    assert "ChannelPrefix" not in sms and sms["To"] == "+6281234567890"


def test_twilio_signature_validates() -> None:
    """Accept twilio_signature with RequestValidator, as dict and MultiDict; reject forgeries."""
    url = "https://bot.example.org/webhooks/twilio"
    form = payloads.twilio_inbound("KABAR anak sehat")
    signature = payloads.twilio_signature("tok", url, form)
    validator = RequestValidator("tok")
    assert validator.validate(url, form, signature)
    assert validator.validate(url, MultiDict(list(form.items())), signature)
    assert not validator.validate(url, {**form, "Body": "KABAR tampered"}, signature)
    assert not validator.validate(url + "?x=1", form, signature)
    assert not RequestValidator("other").validate(url, form, signature)
    assert not validator.validate(url, form, payloads.twilio_signature("other", url, form))
