"""GET /metrics: counters where things happen, gauges from the database, every process.

The in-process tests drive the real webhooks, sender and scheduler on both databases and
read /metrics through Flask's test client; counters are process-wide, so each test checks
by how much a number moved. The last test starts `desmigratif serve` for real (gunicorn,
two workers and the worker subprocess) and reads the sums of every process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import select

from bot import metrics
from bot.app import create_app
from bot.channels.base import SendResult
from bot.channels.whatsapp import WhatsAppChannel
from bot.config import Config
from bot.engine import Engine
from bot.messages import Outbound, Raw
from bot.outbox import queue_messages
from bot.scheduler import LiveScheduler, run_due
from bot.sender import Sender
from storage.db import make_engine, session_scope
from storage.models import Alert, JobRun, Outbox, SchedulerLease, Village
from tests.conftest import Clock, Demo
from tests.fakes import payloads
from tests.fakes.processes import free_port
from tests.fakes.support import (
    SECRET,
    drain,
    inbound_count,
    link,
    make_app,
    post_twilio,
    post_update,
    rows,
    running_clock,
    use_telegram,
    use_twilio,
)
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
RINA = payloads.WHATSAPP_USER


# --- reading /metrics ---------------------------------------------------------------------


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Return every sample of a text exposition by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(client: FlaskClient) -> Samples:
    """GET /metrics and parse it (it must be 200 and Prometheus' text format)."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain")
    return parse(answer.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value (0 when the series is absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


class Delta:
    """What moved between two scrapes."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.before = scrape(client)

    def __call__(self, name: str, **labels: str) -> float:
        after = scrape(self.client)
        return value(after, name, **labels) - value(self.before, name, **labels)


def webhooks(delta: Delta, channel: str) -> dict[str, float]:
    """Return the non-zero moves of desmigratif_webhooks_total for a channel, by outcome."""
    moved = {o: delta("desmigratif_webhooks_total", channel=channel, outcome=o)
             for o in metrics.WEBHOOK_OUTCOMES}
    return {o: n for o, n in moved.items() if n}


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def both(config: Config, tg: FakeTelegram, tw: FakeTwilio) -> Config:
    return use_twilio(use_telegram(config, tg), tw)


@pytest.fixture
def app(both: Config, db: DbEngine, engine: Engine) -> Flask:
    return make_app(both, db, engine)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def family(make_family: Callable[..., Demo]) -> Demo:
    return make_family(link=False)


# --- the endpoint --------------------------------------------------------------------------


def test_database_gauges_are_read_at_scrape_time(client: FlaskClient, db: DbEngine,
                                                  family: Demo, clock: Clock) -> None:
    now = clock()

    def row(channel: str, status: str, due: datetime, **kw: Any) -> Outbox:
        return Outbox(channel=channel, address=f"{channel}-1", text="x", status=status,
                      next_attempt_at=due, created_at=now - timedelta(hours=1), **kw)

    before = scrape(client)
    assert value(before, "desmigratif_db_up") == 1
    assert value(before, "desmigratif_outbox_messages", channel="telegram", status="queued") == 0
    assert value(before, "desmigratif_outbox_oldest_due_age_seconds") == 0
    with session_scope(db) as session:
        village = session.exec(select(Village)).first()
        assert village is not None
        session.add_all([
            row("telegram", "queued", now - timedelta(seconds=75)),  # the oldest due
            row("telegram", "queued", now - timedelta(seconds=5)),
            row("telegram", "queued", now + timedelta(hours=2)),  # not due yet
            row("telegram", "sending", now - timedelta(seconds=500), claimed_by="w"),
            row("whatsapp", "held", now - timedelta(days=2)),
            row("whatsapp", "sent", now - timedelta(days=3), sent_at=now),
            Alert(village_id=village.id or 0, kind="sos", created_at=now),
            Alert(village_id=village.id or 0, kind="sos", created_at=now, status="acknowledged"),
            JobRun(kind="outbox_retention", last_run_at=now - timedelta(minutes=3)),
            SchedulerLease(name="scheduler", holder="h:1", expires_at=now + timedelta(seconds=60)),
        ])
    s = scrape(client)
    assert value(s, "desmigratif_outbox_messages", channel="telegram", status="queued") == 3
    assert value(s, "desmigratif_outbox_due_messages", channel="telegram") == 2
    assert value(s, "desmigratif_outbox_messages", channel="telegram", status="sending") == 1
    assert value(s, "desmigratif_outbox_messages", channel="whatsapp", status="held") == 1
    assert value(s, "desmigratif_outbox_messages", channel="whatsapp", status="queued") == 0
    assert value(s, "desmigratif_outbox_oldest_due_age_seconds") == 75
    assert value(s, "desmigratif_safety_alerts_open") == 1
    assert value(s, "desmigratif_scheduler_lease_held") == 1
    assert value(s, "desmigratif_scheduler_job_last_run_timestamp_seconds",
                 kind="outbox_retention") == (now - timedelta(minutes=3)).timestamp()
    clock.advance(seconds=61)  # the lease runs out; the oldest message waits longer
    s = scrape(client)
    assert value(s, "desmigratif_scheduler_lease_held") == 0
    assert value(s, "desmigratif_outbox_oldest_due_age_seconds") == 136


def test_a_dead_database_is_db_up_0_and_never_a_5xx(both: Config, engine: Engine) -> None:
    dead = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    client = create_app(both, db=dead, engine=engine).test_client()
    answer = client.get("/metrics")
    assert answer.status_code == 200
    s = parse(answer.get_data(as_text=True))
    assert value(s, "desmigratif_db_up") == 0
    assert not any(name.startswith("desmigratif_outbox") for name, _ in s)
    # What the processes counted is still there.
    assert ("desmigratif_webhooks_total",
            frozenset({("channel", "telegram"), ("outcome", "handled")})) in s


@SQLITE_ONLY
def test_a_missing_sqlite_file_is_db_up_0_and_is_not_created(
        both: Config, engine: Engine, tmp_path: Path) -> None:
    gone = tmp_path / "gone" / "nothing.db"
    db = make_engine(f"sqlite:///{gone}")
    gone.parent.joinpath("nothing.db").unlink(missing_ok=True)
    answer = create_app(both, db=db, engine=engine).test_client().get("/metrics")
    assert answer.status_code == 200
    assert value(parse(answer.get_data(as_text=True)), "desmigratif_db_up") == 0
    assert not gone.exists()


@SQLITE_ONLY
def test_metrics_can_be_turned_off(both: Config, db: DbEngine, engine: Engine) -> None:
    both.server.metrics = False
    answer = create_app(both, db=db, engine=engine).test_client().get("/metrics")
    assert answer.status_code == 404 and "metrics" in answer.get_json()["error"]


# --- webhooks ----------------------------------------------------------------------------


def test_telegram_webhook_outcomes_are_counted_once_each(
        client: FlaskClient, family: Demo, db: DbEngine, engine: Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    delta = Delta(client)
    chat = 5550001
    assert post_update(client, payloads.tg_text(1, chat, "halo")).status_code == 200
    assert post_update(client, payloads.tg_text(1, chat, "halo")).get_json()[
        "outcome"] == "duplicate"
    assert post_update(client, payloads.tg_edited(2, chat, "x")).get_json()["outcome"] == "edited"
    assert post_update(client, payloads.tg_channel_post(3, -1001, "x")).status_code == 200
    assert post_update(client, payloads.tg_text(4, chat, "halo"), secret="wrong").status_code \
        == 403
    assert client.post("/webhooks/telegram", data=b"[1]", content_type="application/json",
                       headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}).status_code == 400

    def crash(*_a: Any, **_k: Any) -> str:
        raise RuntimeError("a handler bug")

    monkeypatch.setattr(engine, "_dispatch", crash)  # the engine apologises: still a 200
    crashed = post_update(client, payloads.tg_text(5, chat, "halo"))
    assert crashed.status_code == 200 and crashed.get_json()["outcome"] == "error"
    monkeypatch.setattr("bot.channels.telegram.process_update", crash)
    assert post_update(client, payloads.tg_text(6, chat, "halo")).status_code == 500
    assert webhooks(delta, "telegram") == {"handled": 2, "duplicate": 1, "ignored": 1,
                                           "forbidden": 1, "bad_request": 1, "error": 2}
    assert delta("desmigratif_webhook_duration_seconds_count", channel="telegram") == 8
    assert delta("desmigratif_webhook_duration_seconds_sum", channel="telegram") > 0
    assert webhooks(delta, "whatsapp") == {}


SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_webhooks_answer_like_the_flask_app_before_it(client: FlaskClient, db: DbEngine,
                                                    family: Demo) -> None:
    # The webhooks are answered in front of Flask (bot/web/webhooks.py): the same JSON
    # reasons, methods and limits as every other route, and only those paths.
    delta = Delta(client)
    for method in ("get", "put", "delete"):
        answer = getattr(client, method)("/webhooks/telegram")
        assert answer.status_code == 405 and answer.get_json()["error"]
        assert answer.headers["Allow"] == "OPTIONS, POST"
    assert client.options("/webhooks/twilio").headers["Allow"] == "OPTIONS, POST"
    huge = b'{"update_id": 1, "x": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    answer = client.post("/webhooks/telegram", data=huge, content_type="application/json",
                         headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert answer.status_code == 413 and "exceeds" in answer.get_json()["error"]
    answer = client.post("/webhooks/twilio", data={"Body": "a" * (2 * 1024 * 1024)})
    assert answer.status_code == 413
    # A path beside a webhook's is the Flask app's: its JSON 404.
    assert client.post("/webhooks/telegram/", json={}).status_code == 404
    assert client.get("/webhooks/").get_json()["error"]
    assert webhooks(delta, "telegram") == {"bad_request": 1}
    assert webhooks(delta, "whatsapp") == {"bad_request": 1}
    assert inbound_count(db) == 0


def test_whatsapp_webhook_and_status_outcomes(client: FlaskClient, family: Demo,
                                              db: DbEngine, both: Config, clock: Clock,
                                              tw: FakeTwilio) -> None:
    delta = Delta(client)
    form = payloads.twilio_inbound("menu")
    assert post_twilio(client, form).status_code == 200
    assert post_twilio(client, form).status_code == 200  # Twilio redelivers
    assert post_twilio(client, payloads.twilio_inbound("hi", from_="+6281234567890")
                       ).status_code == 200  # an SMS: not ours
    assert post_twilio(client, payloads.twilio_inbound("menu"), signature="bad").status_code \
        == 403
    assert post_twilio(client, {"Body": "x"}).status_code == 400
    assert webhooks(delta, "whatsapp") == {"handled": 1, "duplicate": 1, "ignored": 1,
                                           "forbidden": 1, "bad_request": 1}
    assert delta("desmigratif_webhook_duration_seconds_count", channel="whatsapp") == 5

    link(db, family.ids["Rina"], "whatsapp", RINA, last_inbound_at=clock())
    with session_scope(db) as session:
        queue_messages(session, [Outbound([Raw("halo")], member_id=family.ids["Rina"],
                                          kind="relay")], now=clock(), config=both)
    channel = WhatsAppChannel(both)
    try:
        drain(Sender(db, both, {"whatsapp": channel}, clock=running_clock(clock)),
              lambda: bool(rows(db, status="sent")))
    finally:
        channel.close()
    (sent,) = rows(db, status="sent")
    status = "/webhooks/twilio/status"
    assert post_twilio(client, payloads.twilio_status(sent.external_id or "", "delivered"),
                       path=status).status_code == 200
    assert post_twilio(client, payloads.twilio_status("SM" + "f" * 32, "failed",
                                                      error_code=30008),
                       path=status).status_code == 200  # a message we never sent
    assert post_twilio(client, {"MessageSid": "SM1"}, path=status).status_code == 400
    assert webhooks(delta, "twilio_status") == {"handled": 1, "ignored": 1, "bad_request": 1}


@SQLITE_ONLY
def test_a_channel_that_is_not_configured_counts_as_disabled(
        config: Config, db: DbEngine, engine: Engine) -> None:
    client = make_app(config, db, engine).test_client()
    delta = Delta(client)
    assert client.post("/webhooks/twilio", data={"Body": "x"}).status_code == 404
    assert client.post("/webhooks/telegram", json={"update_id": 1}).status_code == 404
    assert webhooks(delta, "whatsapp") == {"disabled": 1}
    assert webhooks(delta, "telegram") == {"disabled": 1}


# --- the sender --------------------------------------------------------------------------


@dataclass
class Scripted:
    """A channel that answers each send with the next scripted result."""

    answers: list[SendResult]
    name: str = "telegram"
    rate_per_s: float = 1000.0
    rate_per_address_per_s: float | None = None
    max_length: int = 4000

    def send(self, row: Outbox) -> SendResult:
        return self.answers.pop(0)


def test_sends_are_counted_by_result(client: FlaskClient, family: Demo, db: DbEngine,
                                     both: Config, clock: Clock, tw: FakeTwilio) -> None:
    """Real WhatsApp sends against the fake, and scripted Telegram answers, by result."""
    delta = Delta(client)
    numbers = {"Rina": RINA, "Warsini": "whatsapp:+6281234567890",
               "Dimas": "whatsapp:+6281234567891", "Sari": "whatsapp:+6281234567892"}
    for name, number in numbers.items():
        link(db, family.ids[name], "whatsapp", number, last_inbound_at=clock())
    tw.invalid(numbers["Warsini"])  # unreachable
    tw.opted_out(numbers["Dimas"])  # unreachable (opted out)
    tw.outside_window(numbers["Sari"])  # held until Sari writes again
    with session_scope(db) as session:
        queue_messages(session, [Outbound([Raw(f"untuk {name}")], member_id=family.ids[name],
                                          kind="relay") for name in numbers],
                       now=clock(), config=both)
    channel = WhatsAppChannel(both)
    try:
        sender = Sender(db, both, {"whatsapp": channel}, clock=running_clock(clock))
        drain(sender, lambda: not rows(db, channel="whatsapp", status="sending")
              and len(rows(db, channel="whatsapp", status="queued")) <= 1)  # (Sari's nudge)
    finally:
        channel.close()
    assert {r: delta("desmigratif_sends_total", channel="whatsapp", result=r)
            for r in metrics.SEND_RESULTS} == {"sent": 1, "retry": 0, "rate_limited": 0,
                                               "held": 1, "failed": 0, "unreachable": 2}

    # Telegram, scripted (on the fixed clock): first a temporary failure, a permanent one,
    # another temporary one and a 429 (last: it pauses the channel); then, 700 s later, the
    # first runs out of attempts and the two others go.
    both.sender.max_attempts = 2
    with session_scope(db) as session:
        for n in range(4):
            session.add(Outbox(channel="telegram", address=f"77{n}", text="x",
                               next_attempt_at=clock(), created_at=clock()))
    script = Scripted([
        SendResult(ok=False, error="timed out"),  # 770
        SendResult(ok=False, permanent=True, error="chat not found"),  # 771
        SendResult(ok=False, error="timed out"),  # 772
        SendResult(ok=False, retry_after=5.0, error="429"),  # 773
    ])
    tg_sender = Sender(db, both, {"telegram": script}, clock=clock)
    assert tg_sender.run_once() == 4
    clock.advance(seconds=700)
    script.answers += [SendResult(ok=False, error="timed out"),  # 770: attempt 2 of 2
                       SendResult(ok=True, external_id="m2"),  # 772
                       SendResult(ok=True, external_id="m3")]  # 773
    assert tg_sender.run_once() == 3
    assert script.answers == []
    assert {r: delta("desmigratif_sends_total", channel="telegram", result=r)
            for r in metrics.SEND_RESULTS} == {"sent": 2, "retry": 2, "rate_limited": 1,
                                               "held": 0, "failed": 2, "unreachable": 0}
    # Attempts of messages that had failed an attempt before: 770 and 772 the second time
    # (a 429 is no failed attempt: the platform only asked to wait).
    assert delta("desmigratif_send_retries_total", channel="telegram") == 2
    assert delta("desmigratif_send_retries_total", channel="whatsapp") == 0


# --- the scheduler -----------------------------------------------------------------------


def test_scheduler_runs_queued_messages_and_lag(client: FlaskClient, make_family: Callable[
        ..., Demo], db: DbEngine, both: Config) -> None:
    make_family()  # Rina, a parent in Hong Kong, linked: her check-in is Sunday 19:00 HKT
    delta = Delta(client)
    first = datetime(2026, 3, 21, tzinfo=UTC)
    run_due(db, both, first)  # computes first occurrences; queues nothing
    sunday_19_hkt = datetime(2026, 3, 22, 11, 0, tzinfo=UTC)
    counts = run_due(db, both, sunday_19_hkt + timedelta(seconds=90))
    assert counts["parent_checkin"] == 1
    assert delta("desmigratif_scheduler_runs_total", kind="parent_checkin") == 2
    assert delta("desmigratif_scheduler_queued_messages_total", kind="parent_checkin") == 1
    # Lag: observed when something was due, as late as the most overdue member.
    assert delta("desmigratif_scheduler_lag_seconds_count", kind="parent_checkin") == 1
    assert delta("desmigratif_scheduler_lag_seconds_sum", kind="parent_checkin") == 90
    # A periodic job: its first run has no due time; the next one was due 10 min after it.
    assert delta("desmigratif_scheduler_runs_total", kind="outbox_retention") == 2
    assert delta("desmigratif_scheduler_lag_seconds_sum", kind="outbox_retention") == (
        sunday_19_hkt + timedelta(seconds=90) - first - timedelta(minutes=10)).total_seconds()


def test_live_scheduler_ticks_ran_or_standby(client: FlaskClient, db: DbEngine,
                                             both: Config, clock: Clock) -> None:
    delta = Delta(client)
    one, two = LiveScheduler(db, both, clock=clock), LiveScheduler(db, both, clock=clock)
    assert one.tick() is not None
    assert two.tick() is None  # the first one holds the lease
    assert delta("desmigratif_scheduler_ticks_total", result="ran") == 1
    assert delta("desmigratif_scheduler_ticks_total", result="standby") == 1
    assert value(scrape(client), "desmigratif_scheduler_lease_held") == 1


# --- the real thing: gunicorn workers and the worker subprocess ----------------------------


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - loopback
        return bytes(answer.read())


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def test_serve_adds_up_every_process(tmp_path: Path, tg: FakeTelegram) -> None:
    """A webhook in one gunicorn worker, a send in the worker process: every scrape sees both."""
    port = free_port()
    conf = tmp_path / "c.toml"
    conf.write_text(f"""
[server]
public_url = "https://bot.example.org"
port = {port}
[database]
url = "sqlite:///{tmp_path / 'serve.db'}"
[telegram]
token = "{tg.token}"
webhook_secret = "{SECRET}"
api_base_url = "{tg.base_url}"
[sender]
poll_interval_s = 0.05
[logging]
json = true
""")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DESMIGRATIF_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp_path)  # where serve makes its metrics directory
    # What a serve killed with SIGKILL left behind; its process is gone.
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    stale = tmp_path / f"desmigratif-metrics-{dead_pid.pid}-x1"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"")
    stderr = (tmp_path / "stderr").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--config", str(conf),
                             "--workers", "2"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _get(f"{base}/healthz") == b'{"status":"ok"}\n', "serve to start")
        request = urllib.request.Request(
            f"{base}/webhooks/telegram", method="POST",
            data=json.dumps(payloads.tg_text(1, 4242, "halo")).encode(),
            headers={"Content-Type": "application/json",
                     "X-Telegram-Bot-Api-Secret-Token": SECRET})
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            # Stored and answered; the worker process runs the engine and sends the reply.
            assert json.loads(answer.read())["outcome"] == "queued"
        _wait_for(lambda: len(tg.texts_for(4242)) == 1, "the worker process to send the reply")

        def scraped() -> Samples:
            return parse(_get(f"{base}/metrics").decode())

        # The scheduler runs in the worker process too; its first tick comes at start.
        _wait_for(lambda: value(scraped(), "desmigratif_scheduler_runs_total",
                                kind="outbox_retention") >= 1, "a scheduler run")
        for _ in range(12):  # each a new connection: both gunicorn workers answer some
            s = scraped()
            assert value(s, "desmigratif_webhooks_total", channel="telegram",
                         outcome="queued") == 1
            assert value(s, "desmigratif_inbound_processed_total", channel="telegram",
                         outcome="processed") == 1
            assert value(s, "desmigratif_inbound_queue_messages") == 0
            assert value(s, "desmigratif_webhook_duration_seconds_count",
                         channel="telegram") == 1
            assert value(s, "desmigratif_sends_total", channel="telegram", result="sent") == 1
            assert value(s, "desmigratif_scheduler_ticks_total", result="ran") >= 1
            assert value(s, "desmigratif_db_up") == 1
            assert value(s, "desmigratif_outbox_messages", channel="telegram",
                         status="queued") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            stderr.close()
    assert proc.returncode == 0
    # Serve removed the metrics directory it made, and the one left by the dead serve.
    assert not list(tmp_path.glob("desmigratif-metrics-*"))
    # Every line on stderr, gunicorn's own included, is one JSON object.
    lines = [line for line in (tmp_path / "stderr").read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    loggers = {e["logger"] for e in entries}
    assert {"gunicorn.error", "bot.sender", "bot.inbox"} <= loggers, loggers
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)



def test_a_given_metrics_directory_keeps_the_files_of_live_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PROMETHEUS_MULTIPROC_DIR set by the operator: serve cleans only dead processes' files."""
    from bot.cli import _metrics_dir

    given = tmp_path / "metrics"
    given.mkdir()
    done = subprocess.Popen(["true"])
    done.wait()
    for name in (f"counter_{os.getpid()}.db", f"histogram_{done.pid}.db", "counter_x.db"):
        (given / name).write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    assert _metrics_dir(create=True, clean=True) == (str(given), False)
    assert sorted(p.name for p in given.iterdir()) == [f"counter_{os.getpid()}.db"]
    # The worker uses it as it is; without the variable it makes none.
    (given / "counter_x.db").write_bytes(b"")
    assert _metrics_dir(create=False, clean=False) == (str(given), False)
    assert (given / "counter_x.db").exists()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert _metrics_dir(create=False, clean=False) == (None, False)
