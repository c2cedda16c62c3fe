"""Soak: 50 concurrent webhook senders against ``desmigratif serve`` on SQLite.

The real server (gunicorn, two sync workers, the sender subprocess) runs on a SQLite
file, its channels pointed at the loopback fakes. Fifty client threads post Telegram
updates and signed Twilio forms from pre-linked members of 50 families for
``$DESMIGRATIF_SOAK_SECONDS`` (default 30): MENU, TIPS, plain text and KABAR relays,
with a redelivery of an already acknowledged message now and then. Afterwards:

- every request got a 2xx, and every redelivery was recognised;
- one inbound record per distinct platform id, none of them an error;
- exactly the outbox rows the messages call for (one reply each, one relay row per
  recipient of each KABAR), all of them delivered to the fakes once the sender drained
  the outbox, each relay's text to each of its recipients;
- the server's log holds no "database is locked", no traceback and no error line.

Throughput is the benchmark's business (bench/http_serve.py): nothing here is timed,
except the deadline for a sender that stops making progress.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine as DbEngine

from bot import inbox
from storage.db import make_engine
from tests.fakes.processes import free_port
from tests.fakes.serve import (
    Household,
    Person,
    ServeProcess,
    Webhook,
    message_for,
    populate,
    script,
    write_config,
)
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

SOAK_SECONDS = float(os.environ.get("DESMIGRATIF_SOAK_SECONDS", "30"))
SENDERS = 50
FAMILIES = 50
REDELIVER_EVERY = 20  # every 20th request repeats the one before it
STALL_SECONDS = 120.0  # the sender must settle at least one row in this long...
DRAIN_SECONDS = 900.0  # ...and everything in this long
EXPECTED_OUTCOME = {"MENU": "command:menu", "KABAR": "command:news", "TIPS": "command:tips",
                    "PLAIN": "menu"}
TOKEN_RE = re.compile(r"salam sayang dari jauh (k\d+)")


@dataclass
class Post:
    """One webhook call made and what came back."""

    webhook: Webhook
    person: Person
    action: str
    token: str
    duplicate: bool
    status: int = 0
    body: bytes = b""
    error: str = ""


def _post(port: int, webhook: Webhook) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", webhook.path, body=webhook.body, headers=webhook.headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), ""
    except (OSError, http.client.HTTPException) as exc:
        return 0, b"", repr(exc)
    finally:
        conn.close()


def _sender(index: int, port: int, people: list[Person], stop: threading.Event,
            out: list[Post]) -> None:
    """Post as members of every family, in turn, until told to stop."""
    turn = 0
    previous: Post | None = None
    while not stop.is_set():
        if previous is not None and turn % REDELIVER_EVERY == REDELIVER_EVERY - 1 \
                and 200 <= previous.status < 300:
            post = Post(previous.webhook, previous.person, previous.action, previous.token,
                        duplicate=True)
        else:
            person = people[(index * 3 + turn) % len(people)]
            unique = index * 10_000_000 + turn + 1
            token = f"k{unique}"
            # Members come round in role order: the turn of the round picks the action.
            action, words = script(person, turn // 3 + index, token)
            post = Post(message_for(person, words, unique), person, action, token,
                        duplicate=False)
        post.status, post.body, post.error = _post(port, post.webhook)
        out.append(post)
        if not post.duplicate:
            previous = post
        turn += 1


def _nice(pid: int) -> int:
    """Return a process's nice value (field 19 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[16])


def _count(db: DbEngine, sql: str) -> int:
    with db.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


OUTBOX_PENDING = "SELECT count(*) FROM outbox WHERE status IN ('queued', 'sending')"
INBOX_PENDING = "SELECT count(*) FROM inboundqueue"


def _wait_drained(db: DbEngine, serve: ServeProcess, query: str = OUTBOX_PENDING) -> None:
    """Wait until `query` counts nothing; fail if the worker stops making progress."""
    last, since = -1, time.monotonic()
    deadline = since + DRAIN_SECONDS
    while True:
        # The inbound queue is a file of its own beside the SQLite database.
        pending = _count(inbox.queue_db(db) if query == INBOX_PENDING else db, query)
        if pending == 0:
            return
        assert serve.proc is not None and serve.proc.poll() is None, "serve died"
        if pending != last:
            last, since = pending, time.monotonic()
        elif time.monotonic() - since > STALL_SECONDS:
            raise AssertionError(f"the worker made no progress for {STALL_SECONDS:.0f} s "
                                 f"with {pending} rows queued or in flight")
        if time.monotonic() > deadline:
            raise AssertionError(f"{pending} rows still queued or in flight after "
                                 f"{DRAIN_SECONDS:.0f} s")
        time.sleep(0.5)


@pytest.fixture
def fakes() -> Iterator[tuple[FakeTelegram, FakeTwilio]]:
    """Start a Telegram and a Twilio fake (keep-alive, like the real platforms)."""
    with FakeTelegram(keep_alive=True) as tg, FakeTwilio(keep_alive=True) as tw:
        yield tg, tw


def test_fifty_concurrent_webhook_senders_on_sqlite(
        tmp_path: Path, fakes: tuple[FakeTelegram, FakeTwilio]) -> None:
    tg, tw = fakes
    url = f"sqlite:///{tmp_path / 'soak.db'}"
    households: list[Household] = populate(url, FAMILIES)
    people = [p for h in households for p in h.people]
    family_of = {p.member_id: h for h in households for p in h.people}
    port = free_port()
    config = write_config(tmp_path / "soak.toml", db_url=url, port=port,
                          telegram_url=tg.base_url, twilio_url=tw.url, sender_rate=5000)
    serve = ServeProcess(config, port, tmp_path / "serve.log")
    db = make_engine(url)
    stop = threading.Event()
    try:
        serve.start()
        # Serve's own worker yields the CPU to the web workers ([server] worker_nice).
        roles = serve.pids()
        base = _nice(roles["master"][0])
        deadline = time.monotonic() + 30  # the worker sets it as it starts
        while [_nice(p) for p in roles["sender"]] != [min(19, base + 10)] \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [_nice(p) for p in roles["sender"]] == [min(19, base + 10)], roles
        assert {_nice(p) for p in roles["workers"]} == {base}
        results: list[list[Post]] = [[] for _ in range(SENDERS)]
        threads = [threading.Thread(target=_sender, args=(i, port, people, stop, results[i]),
                                    name=f"soak-{i}", daemon=True) for i in range(SENDERS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(SOAK_SECONDS)
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        assert not any(thread.is_alive() for thread in threads), "a sender thread hung"
        posted = time.monotonic() - started
        posts = [p for r in results for p in r]
        originals = [p for p in posts if not p.duplicate]
        duplicates = [p for p in posts if p.duplicate]

        # Every call answered 2xx; a redelivered Telegram update says so.
        failed = [(p.webhook.platform_id, p.status, p.error or p.body[:200]) for p in posts
                  if not 200 <= p.status < 300]
        assert failed == [], f"{len(failed)} requests failed, e.g. {failed[:5]}"
        tg_dups = [p for p in duplicates if p.person.channel == "telegram"]
        # A redelivery is recognised while the original waits in the inbound queue
        # ("duplicate"), or stored again and recognised by the engine later ("queued").
        assert all(json.loads(p.body)["outcome"] in ("duplicate", "queued") for p in tg_dups)

        # The worker processes everything the webhooks accepted.
        inbox_started = time.monotonic()
        _wait_drained(db, serve, INBOX_PENDING)
        inbox_drained = time.monotonic() - inbox_started

        # One inbound record per distinct platform id, each with the outcome it called for.
        ids = {p.webhook.platform_id for p in originals}
        assert len(ids) == len(originals)
        assert _count(db, "SELECT count(*) FROM inboundlog") == len(ids)
        with db.connect() as conn:
            outcomes = {f"{channel}:{external}": outcome for channel, external, outcome in
                        conn.execute(text("SELECT channel, external_id, outcome "
                                          "FROM inboundlog"))}
        wrong = [(p.webhook.platform_id, p.action, outcomes.get(p.webhook.platform_id))
                 for p in originals
                 if outcomes.get(p.webhook.platform_id) != EXPECTED_OUTCOME[p.action]]
        assert wrong == [], f"{len(wrong)} messages handled wrongly, e.g. {wrong[:5]}"

        # The outbox holds one reply per message and one relay row per recipient.
        kabar = [p for p in originals if p.action == "KABAR"]
        expected_relays = {(r.address, p.token) for p in kabar
                           for r in family_of[p.person.member_id].relay_recipients(p.person)}
        assert _count(db, "SELECT count(*) FROM relay") == len(kabar)
        assert _count(db, "SELECT count(*) FROM outbox WHERE kind = 'reply'") == len(originals)
        assert _count(db, "SELECT count(*) FROM outbox WHERE kind = 'relay'") \
            == len(expected_relays)
        total = _count(db, "SELECT count(*) FROM outbox")
        assert total == len(originals) + len(expected_relays)

        # The sender delivers all of it to the fakes: nothing lost, nothing sent twice.
        drain_started = time.monotonic()
        _wait_drained(db, serve)
        drained = time.monotonic() - drain_started
        with db.connect() as conn:
            statuses = Counter(dict(conn.execute(text(  # type: ignore[arg-type]
                "SELECT status, count(*) FROM outbox GROUP BY status")).all()))
        assert statuses == Counter({"sent": total}), statuses
        assert len(tg.sent) + len(tw.sent) == total
        delivered = {(str(m["chat_id"]), match.group(1)) for m in tg.sent
                     if (match := TOKEN_RE.search(m["text"]))}
        delivered |= {(m["to"], match.group(1)) for m in tw.sent
                      if (match := TOKEN_RE.search(m["body"] or ""))}
        missing = expected_relays - delivered
        assert missing == set(), f"{len(missing)} relays never arrived, e.g. {list(missing)[:5]}"
        assert tg.errors == [] and tw.errors == []

        # And the server never hit a locked database nor crashed on anything.
        assert serve.bad_log_lines() == []
        by_channel = Counter(p.person.channel for p in originals)
        print(f"\nsoak: {len(posts)} requests in {posted:.1f} s from {SENDERS} threads "
              f"({len(originals)} messages: {by_channel['telegram']} Telegram, "
              f"{by_channel['whatsapp']} WhatsApp; {len(kabar)} KABAR relays to "
              f"{len(expected_relays)} recipients; {len(duplicates)} redeliveries); "
              f"0 errors; {total} outbox rows delivered ({len(tg.sent)} Telegram, "
              f"{len(tw.sent)} Twilio); inbound queue empty {inbox_drained:.1f} s after the "
              f"load stopped, the outbox {drained:.1f} s after that")
    except BaseException:
        print("\n--- serve log (tail) ---\n" + serve.log_tail(80))
        raise
    finally:
        stop.set()
        serve.stop(timeout=20)
        db.dispose()
