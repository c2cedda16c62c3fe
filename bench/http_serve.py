"""Benchmark: inbound webhooks per second through the real ``desmigratif serve``.

``desmigratif serve --no-scheduler`` (gunicorn, 2 sync workers, the worker subprocess)
runs on a SQLite file in a temporary folder, with Telegram and WhatsApp pointed at the
loopback fakes (running in this process) at the platforms' default rate limits. 200
families are registered with linked chats (a parent abroad on WhatsApp, a carer on
Telegram, a teenage child on either), and every request is real conversation traffic
from one of them, each with its own platform id: MENU, TIPS, plain text and KABAR relays,
as Telegram updates with the secret token and Twilio forms with a valid signature.

The baseline, measured in the same run, before and after, with the same load generator:
a bare Flask "hello" app under the same gunicorn settings (bind, 2 workers, sync class,
timeouts, no access log). The ratio is desmigratif's messages/s over the mean of the two
baseline runs (target >= 0.4). The webhooks store each message and answer (``[server]
inbound = "queue"``, the default); the worker process runs the engine on what they
stored. So the end-to-end rate is printed too: messages over the time from the first
request to the last message processed, the queue's drain after each half included.

Also the resident memory (VmRSS) of serve's processes: gunicorn master + workers + the
sender subprocess, at start-up before any request, after half the messages and after
all of them (target: under 150 MB, and flat between the two).

The load generator (bench/_util.py) stands in for wrk: separate processes, several
connections each, pre-built request bytes; its own CPU cost per request is printed. The
last line is one JSON object.

    python bench/http_serve.py [--messages N] [--quick] [--procs P] [--conns C]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PTB_TIMEDELTA", "1")

from _util import LoadResult, get_request, run_load, wait_for_port  # noqa: E402

FAMILIES = 200
WARM_UP = 600  # one message from every member: imports, caches, first connections


def serve_hello(port: int, workers: int) -> None:
    """Serve a bare Flask hello with the gunicorn settings of ``desmigratif serve``."""
    from flask import Flask
    from gunicorn.app.base import BaseApplication

    app = Flask("hello")

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    class App(BaseApplication):  # type: ignore[misc]
        # The same settings as bot/cli.py's cmd_serve.
        def load_config(self) -> None:
            self.cfg.set("bind", f"127.0.0.1:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "sync")
            self.cfg.set("timeout", 60)
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("accesslog", None)

        def load(self) -> Any:
            return app

    App().run()


def bare_flask(requests: int, procs: int, conns: int) -> tuple[LoadResult, float, float]:
    """Measure the bare Flask hello; return the load, its workers' CPU s and its RSS MB."""
    from tests.fakes.processes import child_env, children, free_port
    from tests.fakes.serve import cpu_seconds, kill_group, rss_kb

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-hello", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=child_env(), start_new_session=True)
    try:
        wait_for_port(port)
        request = get_request(port)
        run_load("127.0.0.1", port, [request] * 500, procs=procs, conns=conns)
        workers = children(proc.pid)
        cpu0 = sum(cpu_seconds(p) for p in workers)
        result = run_load("127.0.0.1", port, [request] * requests, procs=procs, conns=conns)
        rss = sum(rss_kb(p) for p in [proc.pid, *workers]) / 1024
        return result, sum(cpu_seconds(p) for p in workers) - cpu0, rss
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        kill_group(proc.pid)


def desmigratif(workdir: Path, messages: int, procs: int, conns: int,
                sender_rate: float | None) -> dict[str, Any]:
    """Measure webhooks through serve; return the figures."""
    from sqlalchemy import text

    from storage.db import make_engine
    from tests.fakes.processes import free_port
    from tests.fakes.serve import (
        ServeProcess,
        message_for,
        populate,
        script,
        write_config,
    )
    from tests.fakes.telegram_api import FakeTelegram
    from tests.fakes.twilio_api import FakeTwilio

    url = f"sqlite:///{workdir / 'bench.db'}"
    households = populate(url, FAMILIES)
    people = [p for h in households for p in h.people]
    port = free_port()
    counter = 0

    def build(count: int) -> list[bytes]:
        nonlocal counter
        out = []
        for _ in range(count):
            counter += 1
            person = people[counter % len(people)]
            _action, words = script(person, counter // len(people), f"k{counter}")
            out.append(message_for(person, words, counter).raw(port))
        return out

    with FakeTelegram(keep_alive=True) as tg, FakeTwilio(keep_alive=True) as tw:
        config = write_config(workdir / "bench.toml", db_url=url, port=port,
                              telegram_url=tg.base_url, twilio_url=tw.url,
                              sender_rate=sender_rate)
        serve = ServeProcess(config, port, workdir / "serve.log")
        try:
            serve.start()
            time.sleep(2.0)  # let the workers and the sender settle
            rss_idle = serve.rss_mb()
            run_load("127.0.0.1", port, build(WARM_UP), procs=procs, conns=conns)
            db = make_engine(url)
            warm_drain = wait_processed(db)
            halves = [messages // 2, messages - messages // 2]
            phases: list[LoadResult] = []
            rss: list[dict[str, float]] = []
            drains: list[float] = []
            cpu0 = serve.cpu()
            for half in halves:
                started = time.perf_counter()
                batch = build(half)
                built = time.perf_counter() - started
                print(f"  built {half:,} requests in {built:.1f} s; sending...", flush=True)
                phases.append(run_load("127.0.0.1", port, batch, procs=procs, conns=conns))
                del batch
                # Every accepted message processed (and its effects written) before the
                # next half: the end-to-end rate counts that time too.
                drains.append(wait_processed(db))
                rss.append(serve.rss_mb())
            cpu1 = serve.cpu()
            with db.connect() as conn:
                inbound = conn.execute(text("SELECT count(*) FROM inboundlog")).scalar_one()
                failed = conn.execute(text("SELECT count(*) FROM inboundlog "
                                           "WHERE outcome = 'error'")).scalar_one()
                queued = conn.execute(text("SELECT count(*) FROM outbox "
                                           "WHERE status = 'queued'")).scalar_one()
                outbox = conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
            db.dispose()
            delivered = len(tg.sent) + len(tw.sent)
            bad = serve.bad_log_lines()
        finally:
            serve.stop()
    return {"phases": phases, "drains": drains, "warm_drain": warm_drain,
            "rss_idle": rss_idle, "rss": rss, "inbound": inbound,
            "expected_inbound": WARM_UP + messages, "failed": failed, "queued": queued,
            "outbox": outbox, "delivered": delivered, "bad_log_lines": bad,
            "cpu": {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}}


def wait_processed(db: Any, timeout: float = 1800.0) -> float:
    """Wait until the inbound queue is empty; return how long that took, in seconds."""
    from sqlalchemy import text

    from bot.inbox import queue_db

    started = time.perf_counter()
    while True:
        with queue_db(db).connect() as conn:
            if not conn.execute(text("SELECT count(*) FROM inboundqueue")).scalar_one():
                return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise SystemExit("the worker did not process the inbound queue in time")
        time.sleep(0.05)


def _merge(results: list[LoadResult]) -> LoadResult:
    merged = LoadResult(requests=sum(r.requests for r in results),
                        seconds=sum(r.seconds for r in results),
                        latencies=[x for r in results for x in r.latencies],
                        client_cpu_s=sum(r.client_cpu_s for r in results))
    for r in results:
        merged.statuses.update(r.statuses)
        merged.errors.update(r.errors)
    return merged


def main() -> None:
    """Run the baseline, desmigratif, the baseline again; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--bare-requests", type=int, default=20_000,
                        help="requests per baseline run (two runs)")
    parser.add_argument("--quick", action="store_true",
                        help="10,000 messages and 5,000 baseline requests")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--conns", type=int, default=4, help="connections per process")
    parser.add_argument("--sender-rate", type=float,
                        help="lift the platforms' rate limits to this many messages/s "
                             "(default: the production defaults, 30/s Telegram, 80/s Twilio)")
    parser.add_argument("--serve-hello", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_hello:
        serve_hello(args.serve_hello, workers=2)
        return
    if args.quick:
        args.messages, args.bare_requests = 10_000, 5_000
    cores = os.cpu_count() or 1
    print(f"load generator: {args.procs} processes x {args.conns} connections; "
          f"{cores} cores shared by server, generator and fakes", flush=True)
    before, cpu_before, hello_rss = bare_flask(args.bare_requests, args.procs, args.conns)
    print(f"bare Flask hello (before): {before.rate:,.0f} req/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = desmigratif(Path(tmp), args.messages, args.procs, args.conns, args.sender_rate)
    after, cpu_after, _rss = bare_flask(args.bare_requests, args.procs, args.conns)
    print(f"bare Flask hello (after):  {after.rate:,.0f} req/s", flush=True)

    phases: list[LoadResult] = got["phases"]
    run = _merge(phases)
    bare = (before.rate + after.rate) / 2
    ratio = run.rate / bare
    bare_run = _merge([before, after])
    rss_idle, (rss_half, rss_all) = got["rss_idle"], got["rss"]
    growth = rss_all["total"] - rss_half["total"]
    errors = run.non_2xx + bare_run.non_2xx
    # CPU per request: what the machine's other load does to wall-clock rates, it does
    # much less to these.
    cpu = got["cpu"]
    hello_cpu_ms = (cpu_before + cpu_after) / bare_run.requests * 1000
    msg_cpu_ms = cpu["workers"] / run.requests * 1000
    sender_cpu_ms = cpu["sender"] / run.requests * 1000
    # End to end: from the first request to the last message processed (its reply and
    # relays in the outbox), both halves.
    processed_s = sum(r.seconds for r in phases) + sum(got["drains"])
    processed_rate = run.requests / processed_s

    def roles(r: dict[str, float]) -> str:
        return (f"master {r['master']:.0f} + workers {r['workers']:.0f} + sender "
                f"{r['sender']:.0f}")

    half = args.messages // 2
    print(f"desmigratif: {run.rate:8,.0f} messages/s over {run.requests:,} webhooks "
          f"(first half {phases[0].rate:,.0f}/s, second half {phases[1].rate:,.0f}/s); "
          f"p50 {run.percentile_ms(50):.1f} ms, p99 {run.percentile_ms(99):.1f} ms, "
          f"max {run.percentile_ms(100):.0f} ms; non-2xx: {run.non_2xx}")
    print(f"bare Flask:  {bare:8,.0f} req/s (mean of {before.rate:,.0f} and {after.rate:,.0f}); "
          f"p50 {bare_run.percentile_ms(50):.1f} ms, p99 {bare_run.percentile_ms(99):.1f} ms; "
          f"non-2xx: {bare_run.non_2xx}")
    print(f"ratio:       {ratio:8.2f} (target >= 0.4)")
    print(f"processed:   {processed_rate:8,.0f} messages/s end to end (webhook to outbox "
          f"rows, by the worker process); the inbound queue emptied "
          f"{got['drains'][0]:.1f} s and {got['drains'][1]:.1f} s after each half's last "
          f"request")
    print(f"checks: {got['inbound']:,} inbound records for {got['expected_inbound']:,} "
          f"messages sent, {got['failed']} handled with an error, "
          f"{len(got['bad_log_lines'])} error lines in the log"
          + (f" (first: {got['bad_log_lines'][0]!r})" if got["bad_log_lines"] else ""))
    rates = (f"{args.sender_rate:g}/s" if args.sender_rate
             else "the platforms' default rates (30/s Telegram, 80/s Twilio)")
    print(f"sender at {rates}: {got['delivered']:,} of {got['outbox']:,} outbox rows "
          f"delivered to the fakes by the end, {got['queued']:,} still queued")
    print(f"server CPU per webhook: gunicorn workers {msg_cpu_ms:.2f} ms (bare hello "
          f"{hello_cpu_ms:.2f} ms per request, CPU ratio {hello_cpu_ms / msg_cpu_ms:.2f}); "
          f"worker process (engine and sender) {sender_cpu_ms:.2f} ms; over "
          f"{run.seconds:.0f} s measured")
    print(f"memory (VmRSS, MB): idle {rss_idle['total']:.0f} ({roles(rss_idle)}); "
          f"after {half:,} messages {rss_half['total']:.0f}; after {args.messages:,} "
          f"{rss_all['total']:.0f} ({roles(rss_all)}); growth over the second half "
          f"{growth:+.1f} MB (target: under 150 MB, flat)")
    print(f"memory (PSS, shared pages divided, MB): idle {rss_idle['pss']:.0f}, after "
          f"{half:,} {rss_half['pss']:.0f}, after {args.messages:,} {rss_all['pss']:.0f}; "
          f"the bare Flask hello under gunicorn (master + 2 workers): {hello_rss:.0f} MB RSS")
    for label, r in (("desmigratif run", run), ("bare Flask runs", bare_run)):
        share = r.client_cpu_s / (r.seconds * cores) * 100
        print(f"load generator in the {label}: {r.cpu_us_per_request:.0f} us CPU per request "
              f"(ceiling about {1e6 / r.cpu_us_per_request:,.0f} req/s per core), "
              f"{share:.0f} % of the machine's CPU; errors: {dict(r.errors) or 0}")
    if errors or got["failed"] or got["bad_log_lines"] or got["inbound"] != got[
            "expected_inbound"]:
        print("FAILED: errors above", file=sys.stderr)
    print(json.dumps({
        "http_msgs_per_s": round(run.rate, 1), "bare_flask_req_per_s": round(bare, 1),
        "http_ratio": round(ratio, 3), "p50_ms": round(run.percentile_ms(50), 2),
        "p99_ms": round(run.percentile_ms(99), 2), "http_non_2xx": errors,
        "http_messages": args.messages,
        "rss_idle_mb": round(rss_idle["total"], 1),
        "rss_after_50k_mb": round(rss_half["total"], 1),
        "rss_after_100k_mb": round(rss_all["total"], 1),
        "rss_growth_50k_100k_mb": round(growth, 1),
        "pss_idle_mb": round(rss_idle["pss"], 1), "pss_after_100k_mb": round(rss_all["pss"], 1),
        "bare_flask_rss_mb": round(hello_rss, 1),
        "worker_cpu_ms_per_msg": round(msg_cpu_ms, 3),
        "bare_cpu_ms_per_req": round(hello_cpu_ms, 3),
        "sender_cpu_ms_per_msg": round(sender_cpu_ms, 3),
        "processed_msgs_per_s": round(processed_rate, 1),
        "inbound_queue_drain_s": [round(d, 1) for d in got["drains"]],
        "loadgen_cpu_us_per_req": round(run.cpu_us_per_request, 1)}))
    if errors or got["failed"] or got["bad_log_lines"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
