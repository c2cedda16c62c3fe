"""Loopback fake of the Telegram Bot API, for tests.

``FakeTelegram`` is a real HTTP server on 127.0.0.1 (random port) that speaks the wire
format python-telegram-bot 22.8 uses: ``POST {base_url}{token}/{method}`` with a
form-encoded body (JSON bodies, multipart bodies and GET query strings are accepted too),
answered with ``{"ok": true, "result": ...}`` or Telegram's error shape.

The generic machinery (server thread, request parsing, fault plan, rate windows) lives in
this module and is shared with ``twilio_api``.

Rate enforcement uses a sliding window per key (one per chat, and one overall):

* for a rate ``r`` >= 1 the window ``W`` is 1 s and at most ``floor(r)`` messages may fall
  inside any window; for ``r`` < 1 the window is ``1 / r`` seconds and holds one message;
* a request at monotonic time ``t`` is refused when the window ``(t - W, t]`` is already
  full; refused requests do not count; ``retry_after`` is ``ceil(oldest + W - t)``, at
  least 1, i.e. the whole seconds after which the oldest counted request leaves the window.

So a sender pacing at ``r`` messages/s with a little margin is never refused, and a burst
is refused exactly like Telegram does (about 1 msg/s per chat, 30 msg/s overall).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

FAULT_KINDS = ("429", "500", "slow", "drop")
_MAX_BODY = 50 * 1024 * 1024


# --------------------------------------------------------------------------- shared parts


@dataclass
class FakeRequest:
    """One parsed HTTP request as the fakes see it."""

    method: str
    path: str
    headers: Message
    fields: dict[str, list[str]]
    body: bytes
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, str]:
        """Return every field with its last value (what a form handler would see)."""
        return {name: values[-1] for name, values in self.fields.items() if values}

    def get(self, name: str) -> str | None:
        """Return the last value of a field, or None when absent."""
        values = self.fields.get(name)
        return values[-1] if values else None

    def basic_auth(self) -> tuple[str, str] | None:
        """Return the (user, password) of an HTTP Basic ``Authorization`` header."""
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None


@dataclass
class FakeResponse:
    """What a fake answers: a JSON payload, possibly late, or a dropped connection."""

    status: int
    payload: Any = None
    delay: float = 0.0
    drop: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def _to_field(value: Any) -> str:
    """Render a JSON value the way a form would carry it."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_fields(
    content_type_header: str, body: bytes, query: str
) -> tuple[dict[str, list[str]], dict[str, bytes]]:
    """Parse a query string plus a form, JSON or multipart body into fields and files."""
    fields: dict[str, list[str]] = {}
    files: dict[str, bytes] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        fields.setdefault(name, []).extend(values)
    if not body:
        return fields, files
    head = Message()
    head["Content-Type"] = content_type_header or "application/octet-stream"
    content_type = head.get_content_type()
    charset = head.get_content_charset() or "utf-8"
    if content_type == "application/x-www-form-urlencoded":
        text = body.decode(charset)
        for name, values in parse_qs(text, keep_blank_values=True, strict_parsing=False).items():
            fields.setdefault(name, []).extend(values)
    elif content_type == "application/json":
        data = json.loads(body.decode(charset))
        if not isinstance(data, dict):
            raise ValueError("JSON body must be an object")
        for name, value in data.items():
            if value is not None:
                fields.setdefault(name, []).append(_to_field(value))
    elif content_type == "multipart/form-data":
        raw = b"Content-Type: " + content_type_header.encode("latin-1") + b"\r\n\r\n" + body
        parsed = BytesParser(policy=HTTP).parsebytes(raw)
        if not parsed.is_multipart():
            raise ValueError("malformed multipart body")
        for part in parsed.iter_parts():
            part_name = part.get_param("name", header="content-disposition")
            if not isinstance(part_name, str):
                continue
            payload = part.get_payload(decode=True)
            data_bytes = payload if isinstance(payload, bytes) else b""
            if part.get_filename() is not None:
                files[part_name] = data_bytes
                fields.setdefault(part_name, []).append(f"attach://{part_name}")
            else:
                part_charset = part.get_content_charset() or "utf-8"
                fields.setdefault(part_name, []).append(data_bytes.decode(part_charset))
    else:
        raise ValueError(f"unsupported content type {content_type}")
    return fields, files


class FaultPlan:
    """Decide which of the next requests fail: queued faults first, then every n-th."""

    def __init__(self) -> None:
        self._queued: deque[tuple[str, int]] = deque()
        # kind -> [n, counter, retry_after]; dicts keep registration order (first wins).
        self._every: dict[str, list[int]] = {}

    @staticmethod
    def _check(kind: str) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {FAULT_KINDS}")

    def inject(self, kind: str, times: int = 1, retry_after: int = 1) -> None:
        """Make the next ``times`` requests fail with ``kind``."""
        self._check(kind)
        self._queued.extend([(kind, retry_after)] * times)

    def every(self, kind: str, n: int, retry_after: int = 1, offset: int = 0) -> None:
        """Make every n-th request fail with ``kind`` (n <= 0 turns it off).

        With ``offset`` k the first failure is request n - k (so two plans with one n can
        fail disjoint requests: every 20th from request 15 beside every 10th).
        """
        self._check(kind)
        if n <= 0:
            self._every.pop(kind, None)
        else:
            self._every[kind] = [n, offset % n, retry_after]

    def clear(self) -> None:
        """Forget every planned fault."""
        self._queued.clear()
        self._every.clear()

    def next(self) -> tuple[str, int] | None:
        """Count one request and return the (kind, retry_after) it must fail with, if any."""
        hit: tuple[str, int] | None = None
        for kind, state in self._every.items():
            state[1] += 1
            if state[1] >= state[0]:
                state[1] = 0
                if hit is None:
                    hit = (kind, state[2])
        if self._queued:
            return self._queued.popleft()
        return hit


class SlidingWindow:
    """Allow at most ``limit`` events per key in any window of ``window`` seconds."""

    def __init__(self, per_second: float) -> None:
        if per_second <= 0:
            raise ValueError("rate must be positive")
        self.window = 1.0 if per_second >= 1 else 1.0 / per_second
        self.limit = max(1, math.floor(per_second * self.window + 1e-9))
        self._hits: dict[Hashable, deque[float]] = {}

    def retry_after(self, key: Hashable, now: float) -> int | None:
        """Return the whole seconds to wait when the window of ``key`` is full, else None."""
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) < self.limit:
            return None
        return max(1, math.ceil(hits[0] + self.window - now))

    def record(self, key: Hashable, now: float) -> None:
        """Count one accepted event for ``key`` at ``now``."""
        self._hits.setdefault(key, deque()).append(now)

    def clear(self) -> None:
        """Forget every event."""
        self._hits.clear()


class _Server(ThreadingHTTPServer):
    """Threading HTTP server that tracks its connections so stop() can close them."""

    daemon_threads = True
    block_on_close = False
    # A sender with many requests in flight opens many connections at once: the default
    # backlog of 5 resets some of them, which no real platform does.
    request_queue_size = 128

    def __init__(self, fake: LoopbackFake, handler: type[BaseHTTPRequestHandler]) -> None:
        self.fake = fake
        self.guard = threading.Lock()
        self.open_sockets: set[socket.socket] = set()
        self.busy: set[socket.socket] = set()
        self.workers: set[threading.Thread] = set()
        self.connections = 0
        super().__init__(("127.0.0.1", 0), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection in a tracked daemon thread."""
        worker = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"{type(self.fake).__name__}-conn",
            daemon=True,
        )
        with self.guard:
            self.open_sockets.add(request)
            self.workers.add(worker)
            self.connections += 1
        worker.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection, then forget it."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.guard:
                self.open_sockets.discard(request)
                self.workers.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Keep unexpected handler errors for the test instead of printing them."""
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, ConnectionError | TimeoutError):
            self.fake.errors.append(exc)

    def close_connections(self, *, idle_only: bool) -> None:
        """Shut open connections (only those between requests if ``idle_only``)."""
        with self.guard:
            sockets = list(self.open_sockets - self.busy if idle_only else self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Turn HTTP requests into FakeRequest objects and write the fake's answer."""

    server: _Server
    server_version = "fake"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and
    # delayed ACKs hold every keep-alive answer back by ~40 ms.
    disable_nagle_algorithm = True
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        """Serve a GET."""
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        """Serve a POST."""
        self._serve()

    def do_DELETE(self) -> None:  # noqa: N802
        """Serve a DELETE."""
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Stay quiet."""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        with self.server.guard:
            self.server.busy.add(self.connection)
        try:
            self._serve_busy()
        finally:
            with self.server.guard:
                self.server.busy.discard(self.connection)
            if self.server.fake.stopping.is_set():
                self.close_connection = True

    def _serve_busy(self) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        try:
            body = self._read_body()
            fields, files = parse_fields(self.headers.get("Content-Type", ""), body, split.query)
        except (ValueError, UnicodeDecodeError) as exc:
            self._write(fake.malformed(str(exc)))
            return
        request = FakeRequest(self.command, unquote(split.path), self.headers, fields, body, files)
        try:
            response = fake.handle(request)
        except Exception as exc:  # a bug in the fake: answer 500 and keep it for the test
            fake.errors.append(exc)
            response = FakeResponse(500, {"ok": False, "description": f"fake crashed: {exc!r}"})
        if response.delay > 0:
            fake.stopping.wait(response.delay)
        if response.drop:
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: FakeResponse) -> None:
        data = b"" if response.payload is None else json.dumps(response.payload).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if not self.server.fake.keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class LoopbackFake:
    """Run an HTTP fake on 127.0.0.1 in a daemon thread and record what it was sent."""

    def __init__(self, *, keep_alive: bool = False) -> None:
        self.keep_alive = keep_alive
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sent: list[dict[str, Any]] = []
        self._calls: list[dict[str, Any]] = []
        self._attempts: list[dict[str, Any]] = []
        self._rejected: Counter[str] = Counter()
        self._faults = FaultPlan()

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving on a random free port of 127.0.0.1."""
        if self._httpd is not None:
            return self
        self.stopping.clear()
        handler = type(
            f"{type(self).__name__}Handler",
            (_Handler,),
            {"protocol_version": "HTTP/1.1" if self.keep_alive else "HTTP/1.0"},
        )
        self._httpd = _Server(self, handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and join every thread."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self.stopping.set()
        with self._changed:
            self._changed.notify_all()
        httpd.shutdown()
        # Let requests in flight (woken by ``stopping``) finish their answer; close idle
        # keep-alive connections at once so their threads stop waiting for a next request.
        deadline = time.monotonic() + 5
        while True:
            now = time.monotonic()
            httpd.close_connections(idle_only=now < deadline)
            with httpd.guard:
                workers = list(httpd.workers)
            if not workers or now > deadline + 5:
                break
            workers[0].join(timeout=0.02)
        httpd.server_close()
        thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        """Start the fake."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the fake."""
        self.stop()

    @property
    def port(self) -> int:
        """Return the port the fake listens on."""
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Return ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Return how many TCP connections the fake has accepted."""
        return self._httpd.connections if self._httpd is not None else 0

    # records -----------------------------------------------------------------------------

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Return a snapshot of the messages accepted so far."""
        with self._lock:
            return list(self._sent)

    @property
    def calls(self) -> list[dict[str, Any]]:
        """Return a snapshot of every authenticated request (method, params, content_type, time)."""
        with self._lock:
            return list(self._calls)

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """Return every message send, accepted or not, with its answer.

        Each entry has the recipient (``chat_id`` or ``to``), the ``text``, the HTTP
        ``status`` answered, the ``retry_after`` of a 429 (else None) and the monotonic
        ``time`` the answer was decided (a client can only have learnt it later).
        """
        with self._lock:
            return list(self._attempts)

    def _record_attempt(self, to: str | None, text: str | None, response: FakeResponse) -> None:
        payload = response.payload if isinstance(response.payload, dict) else {}
        parameters = payload.get("parameters") if isinstance(payload, dict) else None
        retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
        entry = {"to": to, "text": text, "status": response.status,
                 "retry_after": retry_after, "time": time.monotonic()}
        with self._lock:
            self._attempts.append(entry)

    @property
    def rejected(self) -> dict[str, int]:
        """Return how many requests failed, by fault kind or error code."""
        with self._lock:
            return dict(self._rejected)

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` messages were accepted (or timeout); return ``sent``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._sent) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.05))
            return list(self._sent)

    def inject(self, kind: str, times: int = 1, retry_after: int = 1) -> None:
        """Make the next ``times`` message sends fail with ``kind`` (429, 500, slow, drop)."""
        with self._lock:
            self._faults.inject(kind, times, retry_after)

    def fault_every(self, kind: str, n: int, retry_after: int = 1, offset: int = 0) -> None:
        """Make every n-th message send fail with ``kind``; n <= 0 turns it off."""
        with self._lock:
            self._faults.every(kind, n, retry_after, offset)

    def reset(self) -> None:
        """Forget records, faults and scripted behaviours (the server keeps running)."""
        with self._changed:
            self._sent.clear()
            self._calls.clear()
            self._attempts.clear()
            self._rejected.clear()
            self._faults.clear()
            self._reset_locked()
            self._changed.notify_all()

    # hooks for subclasses ----------------------------------------------------------------

    def _reset_locked(self) -> None:
        """Reset subclass state; called with the lock held."""

    def handle(self, request: FakeRequest) -> FakeResponse:
        """Answer one request."""
        raise NotImplementedError

    def malformed(self, reason: str) -> FakeResponse:
        """Answer a body that cannot be parsed."""
        return FakeResponse(400, {"error": reason})

    def _record_call(self, method: str, request: FakeRequest) -> None:
        self._calls.append(
            {
                "method": method,
                "params": request.params,
                "content_type": request.headers.get("Content-Type", ""),
                "time": time.monotonic(),
            }
        )


# --------------------------------------------------------------------------- Telegram

_TOKEN_PATH = re.compile(r"/bot([^/]+)/([A-Za-z_]+)/?")
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_MAX_TEXT = 4096
_TG_METHODS = (
    "getMe",
    "sendMessage",
    "sendChatAction",
    "setWebhook",
    "deleteWebhook",
    "getWebhookInfo",
    "getUpdates",
    "answerCallbackQuery",
    "setMyCommands",
    "getMyCommands",
    "deleteMyCommands",
)


def _tg_error(status: int, description: str, **parameters: Any) -> FakeResponse:
    payload: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        payload["parameters"] = parameters
    return FakeResponse(status, payload)


def _tg_ok(result: Any, description: str | None = None) -> FakeResponse:
    payload: dict[str, Any] = {"ok": True, "result": result}
    if description:
        payload["description"] = description
    return FakeResponse(200, payload)


def _chat_key(chat_id: str) -> str:
    """Normalise a chat id so ``"42"``, ``"+42"`` and ``" 42"`` name one chat."""
    chat_id = chat_id.strip()
    try:
        return str(int(chat_id))
    except ValueError:
        return chat_id


def _chat_object(chat_id: str) -> dict[str, Any]:
    number = int(chat_id)
    if number > 0:
        return {"id": number, "type": "private"}
    if str(number).startswith("-100"):
        return {"id": number, "title": "Group", "type": "supergroup"}
    return {"id": number, "title": "Group", "type": "group"}


class FakeTelegram(LoopbackFake):
    """Fake Telegram Bot API server for python-telegram-bot (and any HTTP client)."""

    def __init__(
        self,
        token: str = "123456:TEST-TOKEN",  # noqa: S107 - a fake's well-known test token
        *,
        keep_alive: bool = False,
        per_chat_per_s: float | None = None,
        overall_per_s: float | None = None,
    ) -> None:
        super().__init__(keep_alive=keep_alive)
        self.token = token
        bot_id, _, _ = token.partition(":")
        self.bot_user: dict[str, Any] = {
            "id": int(bot_id) if bot_id.isdigit() else 123456,
            "is_bot": True,
            "first_name": "Desmigratif Test",
            "username": "desmigratif_test_bot",
        }
        self.slow_seconds = 3.0
        self._per_chat = SlidingWindow(per_chat_per_s) if per_chat_per_s else None
        self._overall = SlidingWindow(overall_per_s) if overall_per_s else None
        self._blocked: set[str] = set()
        self._unknown: set[str] = set()
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._message_id = 0
        self._webhook: dict[str, str] | None = None
        self._commands: str = "[]"
        self._handlers: dict[str, Callable[[dict[str, str]], FakeResponse]] = {
            "getme": self._get_me,
            "sendmessage": self._send_message,
            "sendchataction": self._send_chat_action,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "getupdates": self._get_updates,
            "answercallbackquery": self._answer_callback_query,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
        }
        self._canonical = {name.lower(): name for name in _TG_METHODS}

    # addresses ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Return the ``base_url`` for ``telegram.Bot`` (it appends ``{token}/{method}``)."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        """Return the ``base_file_url`` for ``telegram.Bot``."""
        return f"{self.url}/file/bot"

    # scripting ---------------------------------------------------------------------------

    def block(self, chat_id: int | str) -> None:
        """Make sends to ``chat_id`` fail with 403 "bot was blocked by the user"."""
        with self._lock:
            self._blocked.add(_chat_key(str(chat_id)))

    def unblock(self, chat_id: int | str) -> None:
        """Let sends to ``chat_id`` succeed again."""
        with self._lock:
            self._blocked.discard(_chat_key(str(chat_id)))

    def unknown_chat(self, chat_id: int | str) -> None:
        """Make sends to ``chat_id`` fail with 400 "chat not found"."""
        with self._lock:
            self._unknown.add(_chat_key(str(chat_id)))

    def queue_update(self, update: dict[str, Any]) -> int:
        """Queue an Update for ``getUpdates`` (an ``update_id`` is added when missing)."""
        with self._changed:
            update = dict(update)
            if "update_id" not in update:
                update["update_id"] = self._next_update_id
            self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
            self._updates.append(update)
            self._changed.notify_all()
            return int(update["update_id"])

    # records -----------------------------------------------------------------------------

    @property
    def webhook(self) -> dict[str, str] | None:
        """Return the params of the webhook now set (None after deleteWebhook)."""
        with self._lock:
            return dict(self._webhook) if self._webhook is not None else None

    def texts_for(self, chat_id: int | str) -> list[str]:
        """Return the texts sent to ``chat_id``, oldest first."""
        key = _chat_key(str(chat_id))
        return [m["text"] for m in self.sent if _chat_key(m["chat_id"]) == key]

    def _reset_locked(self) -> None:
        self._blocked.clear()
        self._unknown.clear()
        self._updates.clear()
        self._webhook = None
        self._commands = "[]"
        if self._per_chat:
            self._per_chat.clear()
        if self._overall:
            self._overall.clear()

    # HTTP --------------------------------------------------------------------------------

    def malformed(self, reason: str) -> FakeResponse:
        """Answer an unparsable body like Telegram does."""
        return _tg_error(400, f"Bad Request: {reason}")

    def handle(self, request: FakeRequest) -> FakeResponse:
        """Route ``/bot{token}/{method}`` to the method handlers."""
        match = _TOKEN_PATH.fullmatch(request.path)
        if match is None:
            return _tg_error(404, "Not Found")
        if match.group(1) != self.token:
            return _tg_error(401, "Unauthorized")
        method = match.group(2).lower()  # Telegram method names are case-insensitive
        handler = self._handlers.get(method)
        if handler is None:
            return _tg_error(404, "Not Found")
        params = request.params
        with self._lock:
            self._record_call(self._canonical[method], request)
        response = handler(params)
        if method == "sendmessage":
            self._record_attempt(params.get("chat_id"), params.get("text"), response)
        return response

    def _get_me(self, params: dict[str, str]) -> FakeResponse:
        return _tg_ok(
            {
                **self.bot_user,
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
                "can_connect_to_business": False,
                "has_main_web_app": False,
            }
        )

    def _chat_problem(self, chat_id: str | None) -> FakeResponse | None:
        """Return the error for a missing, unknown or blocked chat, else None (lock held)."""
        if not chat_id:
            return _tg_error(400, "Bad Request: chat_id is empty")
        key = _chat_key(chat_id)
        try:
            int(key)
        except ValueError:
            return _tg_error(400, "Bad Request: chat not found")
        if key in self._unknown:
            return _tg_error(400, "Bad Request: chat not found")
        if key in self._blocked:
            return _tg_error(403, "Forbidden: bot was blocked by the user")
        return None

    def _send_message(self, params: dict[str, str]) -> FakeResponse:
        delay = 0.0
        with self._changed:
            fault = self._faults.next()
            if fault is not None:
                kind, retry_after = fault
                self._rejected[kind] += 1
                if kind == "429":
                    return _tg_error(
                        429,
                        f"Too Many Requests: retry after {retry_after}",
                        retry_after=retry_after,
                    )
                if kind == "500":
                    return _tg_error(500, "Internal Server Error")
                if kind == "drop":
                    return FakeResponse(0, drop=True)
                delay = self.slow_seconds  # "slow": delivered, answered late
            chat_id = params.get("chat_id")
            text = params.get("text", "")
            problem = self._chat_problem(chat_id)
            if problem is None and not text.strip():
                problem = _tg_error(400, "Bad Request: message text is empty")
            if problem is None and len(text) > _MAX_TEXT:
                problem = _tg_error(400, "Bad Request: message is too long")
            markup: Any = None
            if problem is None and "reply_markup" in params:
                try:
                    markup = json.loads(params["reply_markup"])
                except ValueError:
                    problem = _tg_error(
                        400, "Bad Request: can't parse reply keyboard markup JSON object"
                    )
            if problem is not None:
                self._rejected[str(problem.status)] += 1
                return problem
            assert chat_id is not None
            key = _chat_key(chat_id)
            now = time.monotonic()
            wait = self._rate_check(key, now)
            if wait is not None:
                self._rejected["429"] += 1
                return _tg_error(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
            self._message_id += 1
            message: dict[str, Any] = {
                "message_id": self._message_id,
                "from": dict(self.bot_user),
                "chat": _chat_object(key),
                "date": int(time.time()),
                "text": text,
            }
            if isinstance(markup, dict) and "inline_keyboard" in markup:
                message["reply_markup"] = {"inline_keyboard": markup["inline_keyboard"]}
            self._sent.append(
                {
                    "chat_id": chat_id,
                    "text": text,
                    "time": now,
                    "params": params,
                    "message_id": self._message_id,
                }
            )
            self._changed.notify_all()
        response = _tg_ok(message)
        response.delay = delay
        return response

    def _rate_check(self, key: str, now: float) -> int | None:
        """Return retry_after when a window is full, else count the message (lock held)."""
        waits = []
        if self._per_chat is not None:
            waits.append(self._per_chat.retry_after(key, now))
        if self._overall is not None:
            waits.append(self._overall.retry_after(None, now))
        refused = [w for w in waits if w is not None]
        if refused:
            return max(refused)
        if self._per_chat is not None:
            self._per_chat.record(key, now)
        if self._overall is not None:
            self._overall.record(None, now)
        return None

    def _send_chat_action(self, params: dict[str, str]) -> FakeResponse:
        with self._lock:
            problem = self._chat_problem(params.get("chat_id"))
        if problem is not None:
            return problem
        if not params.get("action"):
            return _tg_error(400, "Bad Request: action is empty")
        return _tg_ok(True)

    def _set_webhook(self, params: dict[str, str]) -> FakeResponse:
        url = params.get("url", "")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN.fullmatch(secret):
            return _tg_error(400, "Bad Request: secret token contains unallowed characters")
        if url and not url.startswith("https://"):
            return _tg_error(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        with self._lock:
            if params.get("drop_pending_updates") in ("true", "True", "1"):
                self._updates.clear()
            if not url:
                was_set = self._webhook is not None
                self._webhook = None
                return _tg_ok(
                    True, "Webhook was deleted" if was_set else "Webhook is already deleted"
                )
            self._webhook = dict(params)
        return _tg_ok(True, "Webhook was set")

    def _delete_webhook(self, params: dict[str, str]) -> FakeResponse:
        with self._lock:
            if params.get("drop_pending_updates") in ("true", "True", "1"):
                self._updates.clear()
            was_set = self._webhook is not None
            self._webhook = None
        return _tg_ok(True, "Webhook was deleted" if was_set else "Webhook is already deleted")

    def _get_webhook_info(self, params: dict[str, str]) -> FakeResponse:
        with self._lock:
            hook = self._webhook
            info: dict[str, Any] = {
                "url": hook["url"] if hook else "",
                "has_custom_certificate": False,
                "pending_update_count": len(self._updates),
            }
            if hook:
                info["max_connections"] = int(hook.get("max_connections", "40"))
                info["ip_address"] = "127.0.0.1"
                if "allowed_updates" in hook:
                    info["allowed_updates"] = json.loads(hook["allowed_updates"])
        return _tg_ok(info)

    def _get_updates(self, params: dict[str, str]) -> FakeResponse:
        try:
            offset = int(params.get("offset", "0"))
            limit = min(100, max(1, int(params.get("limit", "100"))))
            timeout = min(50.0, max(0.0, float(params.get("timeout", "0"))))
        except ValueError:
            return _tg_error(400, "Bad Request: wrong parameter value")
        with self._changed:
            if self._webhook is not None:
                return _tg_error(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            if offset < 0:  # -n: keep only the last n updates, like Telegram
                del self._updates[: max(0, len(self._updates) + offset)]
            elif offset > 0:  # confirm every update below offset
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self._changed.wait_for(
                lambda: bool(self._updates) or self.stopping.is_set(), timeout=timeout
            )
            return _tg_ok([dict(u) for u in self._updates[:limit]])

    def _answer_callback_query(self, params: dict[str, str]) -> FakeResponse:
        if not params.get("callback_query_id"):
            return _tg_error(400, "Bad Request: query is too old and response timeout expired")
        return _tg_ok(True)

    def _set_my_commands(self, params: dict[str, str]) -> FakeResponse:
        with self._lock:
            self._commands = params.get("commands", "[]")
        return _tg_ok(True)

    def _get_my_commands(self, params: dict[str, str]) -> FakeResponse:
        with self._lock:
            return _tg_ok(json.loads(self._commands))

    def _delete_my_commands(self, params: dict[str, str]) -> FakeResponse:
        with self._lock:
            self._commands = "[]"
        return _tg_ok(True)
