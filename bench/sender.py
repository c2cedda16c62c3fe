"""Benchmark: the outbound sender against a loopback Telegram fake.

Two runs, each through the real sender loop, python-telegram-bot and a SQLite outbox
(WAL), with the fake in its own process (as Telegram is):

1. unthrottled: the fake enforces no limit and the configured rates are out of the way;
   figure: messages delivered per second (target: at least 1,000), beside a baseline
   measured in the same run: a bare python-telegram-bot loop sending as fast as it can
   to the same kind of fake, with no database (the ceiling of this machine);
2. limited: ``[telegram] rate_per_s = 30`` (1 per chat) against a fake that enforces
   exactly that (a 429 past 30 in any second); figure: messages the fake accepted in a
   20-second window divided by 20 x 30 (target: 0.95 to 1.0), and the 429s it answered
   (target: 0).

The last line is one JSON object:
``{"unthrottled_msgs_per_s": ..., "limited_rate_ratio": ..., "rejected_429": ...}``.

    python bench/sender.py [--messages N] [--window S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PTB_TIMEDELTA", "1")

from sqlmodel import col, func, select  # noqa: E402

from bot.channels import telegram  # noqa: E402
from bot.channels.telegram import TelegramChannel  # noqa: E402
from bot.config import Config, load_config  # noqa: E402
from bot.sender import Sender  # noqa: E402
from storage.db import make_engine, session_scope, upgrade  # noqa: E402
from storage.models import Outbox  # noqa: E402

LIMIT = 30.0


def serve_fake(per_chat: float, overall: float) -> None:
    """Run a FakeTelegram in this process until stdin closes; then print what it saw."""
    from tests.fakes.telegram_api import FakeTelegram

    fake = FakeTelegram(keep_alive=True, per_chat_per_s=per_chat or None,
                        overall_per_s=overall or None).start()
    print(fake.base_url, flush=True)
    sys.stdin.read()
    report = {"accepted": [m["time"] for m in fake.sent], "rejected": fake.rejected,
              "errors": [repr(e) for e in fake.errors]}
    fake.stop()
    print(json.dumps(report), flush=True)


class Fake:
    """A FakeTelegram in a child process."""

    def __init__(self, *, per_chat: float = 0, overall: float = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-fake", str(per_chat), str(overall)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()

    def finish(self) -> dict[str, object]:
        """Stop the fake; return the send times it accepted and what it refused."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        report: dict[str, object] = json.loads(self.proc.stdout.readline())
        self.proc.wait(timeout=30)
        return report


def _config(url: str, fake: Fake, rate: float, per_chat: float) -> Config:
    cfg = load_config(env={})
    cfg.database.url = url
    cfg.server.simulator = False
    cfg.telegram.token = "123456:TEST-TOKEN"
    cfg.telegram.webhook_secret = "bench"
    cfg.telegram.api_base_url = fake.base_url
    cfg.telegram.rate_per_s = rate
    cfg.telegram.rate_per_chat_per_s = per_chat
    cfg.sender.batch_size = 200
    cfg.sender.poll_interval_s = 0.02
    return cfg


def _queue(db: object, n: int, chats: int) -> None:
    now = datetime.now(UTC)
    with session_scope(db) as session:  # type: ignore[arg-type]
        session.add_all([Outbox(channel="telegram", address=str(10_000 + i % chats),
                                text=f"message {i}", kind="broadcast", priority=8,
                                next_attempt_at=now, created_at=now) for i in range(n)])


def _unsent(db: object) -> int:
    with session_scope(db) as session:  # type: ignore[arg-type]
        return int(session.exec(select(func.count()).select_from(Outbox)
                                .where(col(Outbox.status) != "sent")).one())


def _run_sender(db: object, cfg: Config) -> tuple[Sender, threading.Thread]:
    sender = Sender(db, cfg, {"telegram": TelegramChannel(cfg)})  # type: ignore[arg-type]
    thread = threading.Thread(target=sender.run_forever, daemon=True)
    thread.start()
    return sender, thread


def unthrottled(workdir: Path, n: int) -> float:
    """Return messages per second delivered with no limit anywhere."""
    fake = Fake()
    db = make_engine(f"sqlite:///{workdir / 'unthrottled.db'}")
    upgrade(db)
    cfg = _config(str(db.url), fake, rate=1e6, per_chat=1e6)
    _queue(db, 200, 200)  # warm-up: connections, caches
    sender, thread = _run_sender(db, cfg)
    while _unsent(db):
        time.sleep(0.01)
    _queue(db, n, 1000)
    started = time.monotonic()  # the same clock as the fake's records (CLOCK_MONOTONIC)
    sender.wake_event.set()
    while _unsent(db):
        time.sleep(0.1)  # coarse: the end is read from the fake's own record
    sender.stop()
    thread.join(timeout=10)
    report = fake.finish()
    accepted = report["accepted"]
    assert len(accepted) == n + 200, report["errors"]  # type: ignore[arg-type]
    elapsed = max(accepted) - started  # type: ignore[type-var,operator]
    telegram.shutdown()
    db.dispose()
    return n / elapsed


def baseline(n: int) -> float:
    """Return messages per second of a bare python-telegram-bot loop (no outbox)."""
    import asyncio

    fake = Fake()
    cfg = _config("sqlite://", fake, rate=1e6, per_chat=1e6)

    async def send_all() -> float:
        bot = await telegram._bot(cfg)
        slots = asyncio.Semaphore(2)

        async def one(i: int) -> None:
            async with slots:
                await bot.send_message(chat_id=str(10_000 + i % 1000), text=f"message {i}")

        await asyncio.gather(*(one(i) for i in range(200)))
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)

    rate = telegram.run(send_all())
    fake.finish()
    telegram.shutdown()
    return rate


def limited(workdir: Path, window: float) -> tuple[float, int]:
    """Return (achieved rate / limit over the window, 429s) against an enforcing fake."""
    fake = Fake(per_chat=1, overall=LIMIT)
    db = make_engine(f"sqlite:///{workdir / 'limited.db'}")
    upgrade(db)
    cfg = _config(str(db.url), fake, rate=LIMIT, per_chat=1.0)
    _queue(db, int(LIMIT * (window + 4)), 300)  # more than the window can take
    sender, thread = _run_sender(db, cfg)
    deadline = time.monotonic() + window + 2.5
    while time.monotonic() < deadline:
        time.sleep(0.1)
    sender.stop()
    thread.join(timeout=10)
    report = fake.finish()
    times = sorted(report["accepted"])  # type: ignore[arg-type]
    start = times[0]
    inside = sum(1 for t in times if start <= t < start + window)
    rejected = int(report["rejected"].get("429", 0))  # type: ignore[attr-defined]
    telegram.shutdown()
    db.dispose()
    return inside / (window * LIMIT), rejected


def main() -> None:
    """Run both measurements and print them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--serve-fake", nargs=2, type=float, metavar=("PER_CHAT", "OVERALL"))
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake(*args.serve_fake)
        return
    with tempfile.TemporaryDirectory() as tmp:
        bare = baseline(args.messages)
        rate = unthrottled(Path(tmp), args.messages)
        print(f"unthrottled: {rate:,.0f} messages/s delivered through the outbox "
              f"({rate / 1000:.2f} x the 1,000/s target; bare python-telegram-bot loop "
              f"{bare:,.0f}/s, ratio {rate / bare:.2f})")
        ratio, rejected = limited(Path(tmp), args.window)
        print(f"limited to {LIMIT:.0f}/s: {ratio * LIMIT:.2f} messages/s over {args.window:g} s "
              f"= {ratio:.3f} of the limit (target 0.95-1.0); 429 answers: {rejected}")
    print(json.dumps({"unthrottled_msgs_per_s": round(rate, 1),
                      "limited_rate_ratio": round(ratio, 4), "rejected_429": rejected}))


if __name__ == "__main__":
    main()
