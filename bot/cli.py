"""The command line: ``desmigratif`` (also ``python -m bot``).

Every command takes ``--config PATH`` before or after the subcommand. Bad input ends
with a one-line reason on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.config import Config, ConfigError, load_config
from storage.db import SchemaError

log = logging.getLogger("desmigratif")
# Set by `serve` for the worker it starts: the worker stops when that process is gone.
PARENT_ENV = "DESMIGRATIF_SERVE_PID"


class CliError(Exception):
    """A problem to report in one line with a non-zero exit status."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", dest="config_path", default=argparse.SUPPRESS,
                   help="TOML config file (default: $DESMIGRATIF_CONFIG, else built-in defaults)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desmigratif", description=__doc__.splitlines()[0])
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="webhooks, API, dashboard, simulator and sender")
    _common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--no-scheduler", action="store_true", help="do not run the timed jobs")
    p.add_argument("--telegram-polling", action="store_true",
                   help="fetch Telegram updates by long polling (development without a URL)")

    p = sub.add_parser("worker", help="scheduler and outbound sender, no HTTP")
    _common(p)
    p.add_argument("--no-scheduler", action="store_true")

    p = sub.add_parser("status", help="outbox, deliveries, alerts and scheduler at a glance")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("db", help="database schema")
    _common(p)
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    _common(dbsub.add_parser("upgrade", help="apply migrations"))
    _common(dbsub.add_parser("current", help="show the schema revision"))

    p = sub.add_parser("coordinator", help="coordinators")
    _common(p)
    csub = p.add_subparsers(dest="coord_command", required=True, metavar="ACTION")
    a = csub.add_parser("add", help="create a coordinator and print its API token")
    _common(a)
    a.add_argument("--name", required=True)
    a.add_argument("--village", required=True)
    a.add_argument("--district", default="")
    a.add_argument("--level", choices=("village", "district"), default="village")
    a.add_argument("--whatsapp")
    a.add_argument("--telegram-chat-id")
    a.add_argument("--language", default=None)
    a.add_argument("--password-stdin", action="store_true",
                   help="read a dashboard password from standard input")

    p = sub.add_parser("demo", help="create the demo village and family")
    _common(p)

    p = sub.add_parser("chat", help="talk to the bot in the terminal as a member")
    _common(p)
    p.add_argument("--as", dest="member_id", type=int, required=True, metavar="MEMBER_ID")

    p = sub.add_parser("scheduler", help="timed jobs")
    _common(p)
    ssub = p.add_subparsers(dest="sched_command", required=True, metavar="ACTION")
    r = ssub.add_parser("run-due", help="run the jobs due at an instant and send what they queue")
    _common(r)
    r.add_argument("--at", required=True, help="ISO 8601 instant, e.g. 2026-12-06T11:00:00Z")
    _common(ssub.add_parser("list", help="show the jobs and what they would send now"))

    p = sub.add_parser("telegram", help="Telegram webhook set-up")
    _common(p)
    tsub = p.add_subparsers(dest="tg_command", required=True, metavar="ACTION")
    _common(tsub.add_parser("set-webhook",
                            help="register public_url + /webhooks/telegram with the secret"))
    _common(tsub.add_parser("delete-webhook", help="remove the webhook (before long polling)"))
    _common(tsub.add_parser("webhook-info", help="show what Telegram knows of the webhook"))

    p = sub.add_parser("broadcast", help="announce to a village and send it, with progress")
    _common(p)
    p.add_argument("--village", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--roles", help="comma-separated: child,carer,parent (default: all)")
    p.add_argument("--age-band", choices=("0-23m", "2-9", "10-17"),
                   help="only families with a child of this age")
    p.add_argument("--translation", action="append", default=[], metavar="LANG=TEXT",
                   help="the text in another language, e.g. en='Meeting at 8' (repeatable)")
    p.add_argument("--send-at", help="ISO 8601 time to send at (default: now)")
    p.add_argument("--no-wait", action="store_true",
                   help="queue it and leave the sending to the running worker")

    p = sub.add_parser("import", help="import families from a CSV file (docs/import.md)")
    _common(p)
    p.add_argument("file", help="CSV file, one row a member")
    p.add_argument("--dry-run", action="store_true", help="check everything, import nothing")

    p = sub.add_parser("export", help="write families or fund requests as CSV")
    _common(p)
    p.add_argument("what", choices=("families", "fund-requests"))
    p.add_argument("--village", help="one village (default: every village)")
    p.add_argument("--status", help="fund requests of one status only")
    p.add_argument("--out", help="file to write (default: standard output)")
    return parser


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config_path", None))


def _setup_logging(config: Config) -> None:
    from bot.logs import setup_logging

    # Text or JSON lines ([logging] json), phone numbers masked either way (bot/logs.py).
    setup_logging(config.logging.level, json_lines=config.logging.json)


def _db(config: Config, *, create_if_empty: bool = True) -> Any:
    from storage.db import ensure_schema, make_engine

    engine = make_engine(config.database.url, echo=config.database.echo)
    # A brand-new SQLite file is created at the current schema; anything else must be
    # migrated on purpose, with `desmigratif db upgrade`.
    new_sqlite = config.database.url.startswith("sqlite")
    ensure_schema(engine, create_if_empty=create_if_empty and new_sqlite)
    return engine


def _now() -> datetime:
    return datetime.now(UTC)


def _phone(value: str) -> str | None:
    from bot.privacy import normalise_e164

    return normalise_e164(value)


# --- commands ------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    """Apply migrations or show the schema revision."""
    from storage.db import current_revision, head_revision, make_engine, upgrade

    config = _config(args)
    engine = make_engine(config.database.url)
    if args.db_command == "upgrade":
        before = current_revision(engine)
        upgrade(engine)
        print(f"database at {head_revision()} (was {before or 'empty'})")
    else:
        print(current_revision(engine) or "empty")
    return 0


def cmd_coordinator(args: argparse.Namespace) -> int:
    """Create a coordinator and print its token alone on the last line."""
    from bot.web.passwords import hash_password
    from storage.db import session_scope
    from storage.repo import ValidationError, create_coordinator

    config = _config(args)
    password_hash = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            raise CliError("password: at least 8 characters")
        password_hash = hash_password(password)
    engine = _db(config)
    try:
        with session_scope(engine) as session:
            coord, token = create_coordinator(
                session, name=args.name, village=args.village, now=_now(),
                whatsapp=args.whatsapp, telegram_chat_id=args.telegram_chat_id,
                password_hash=password_hash, level=args.level, district=args.district,
                language=args.language or config.bot.default_language, normalise_phone=_phone)
            cid = coord.id
    except ValidationError as exc:
        raise CliError(str(exc)) from exc
    print(f"coordinator {cid} created for {args.village}; API token:")
    print(token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Create the demo data (idempotent) and print who is who."""
    from bot.demo import seed_demo
    from storage.db import session_scope

    config = _config(args)
    engine = _db(config)
    with session_scope(engine) as session:
        members, token = seed_demo(session, config, _now())
        lines = [f"  {m.id:>3}  {m.role:<12} {m.name:<16} invite code {m.invite_code or '-'}"
                 for m in members]
    print("Demo members (use `desmigratif chat --as ID` or the web simulator):")
    print("\n".join(lines))
    if token:
        from bot.demo import DEMO_PASSWORD

        print(f"Dashboard: /dashboard/ as Pak Darto, password {DEMO_PASSWORD}")
        print("Demo coordinator API token:")
        print(token)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Talk to the bot as a member, in the terminal."""
    import handlers  # noqa: F401
    from bot.channels.simulator import SimulatorChannel, address_for
    from bot.engine import Engine
    from bot.messages import Inbound
    from bot.sender import Sender
    from storage.db import session_scope
    from storage.models import Member, Outbox
    from storage.repo import link_identity

    config = _config(args)
    engine = _db(config)
    with session_scope(engine) as session:
        member = session.get(Member, args.member_id)
        if member is None:
            raise CliError(f"no member with id {args.member_id}")
        link_identity(session, member, "simulator", address_for(member.id or 0), now=_now())
        name, role = member.name, member.role
    bot = Engine(engine, config)
    sender = Sender(engine, config, {"simulator": SimulatorChannel()})
    interactive = sys.stdin.isatty()
    print(f"Chatting as {name} ({role}). Type MENU; Ctrl-D to leave.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line:
            break
        result = bot.handle(Inbound(channel="simulator", address=address_for(args.member_id),
                                    text=line.rstrip("\n"), external_id=f"cli-{uuid.uuid4().hex}",
                                    received_at=_now()))
        with session_scope(engine) as session:
            for oid in result.outbox_ids:
                row = session.get(Outbox, oid)
                if row is None:
                    continue
                if row.member_id == args.member_id:
                    print(row.text)
                else:
                    other = session.get(Member, row.member_id) if row.member_id else None
                    who = f"{other.name} ({other.role})" if other else row.address
                    print(f"  [→ {who} via {row.channel or 'not linked yet'}] "
                          + row.text.replace("\n", "\n  "))
            print()
        sender.drain(timeout=5)
    return 0


def _run_worker(config: Config, *, scheduler: bool, stop: threading.Event) -> None:
    from bot.channels import build_channels
    from bot.sender import Sender

    if os.environ.get(PARENT_ENV) and config.server.worker_nice:
        # Beside serve's web workers on one machine: they answer platforms that wait,
        # this works through queues that can wait a little.
        os.nice(config.server.worker_nice)

    engine = _db(config)
    channels = build_channels(config)
    sender = Sender(engine, config, channels)
    sched = None
    if scheduler and config.scheduler.enabled:
        try:
            from bot.scheduler import LiveScheduler
        except ImportError:  # pragma: no cover - scheduler module not installed
            LiveScheduler = None  # type: ignore[assignment,misc]  # noqa: N806
        if LiveScheduler is not None:
            sched = LiveScheduler(engine, config)
            sched.start()
    thread = threading.Thread(target=sender.run_forever, name="sender", daemon=True)
    thread.start()
    # What webhooks stored (bot/inbox.py) is processed here, in its own thread, and wakes
    # the sender at once so that replies do not wait for its next poll.
    import handlers  # noqa: F401  (registers every command and flow)
    from bot.engine import Engine
    from bot.inbox import InboxWorker

    inbox = InboxWorker(Engine(engine, config), on_processed=sender.wake_event.set)
    inbox_thread = threading.Thread(target=inbox.run_forever, name="inbox", daemon=True)
    inbox_thread.start()
    parent = os.environ.get(PARENT_ENV, "")
    while not stop.wait(1.0):
        # Started by `serve`: when serve is gone (even killed with SIGKILL, which runs
        # no clean-up), stop too, rather than send on beside the next serve.
        if parent.isdecimal() and os.getppid() != int(parent):
            log.warning("serve (pid %s) is gone: the worker stops", parent)
            break
    inbox.stop()
    inbox_thread.join(timeout=10)
    sender.stop()
    if sched is not None:
        sched.shutdown()
    thread.join(timeout=10)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the sender (and the scheduler) until SIGTERM or SIGINT."""
    config = _config(args)
    _setup_logging(config)
    # Started by `serve` (or beside one, given the same PROMETHEUS_MULTIPROC_DIR), the
    # counters go to the shared directory, for serve's /metrics; never cleaned here, since
    # the processes sharing it still write there. Without it they stay in this process.
    _metrics_dir(create=False, clean=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _run_worker(config, scheduler=not args.no_scheduler, stop=stop)
    return 0


METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _metrics_dir(*, create: bool, clean: bool) -> tuple[str | None, bool]:
    """Prepare prometheus-client's multiprocess directory; return (path, made here).

    Must run before anything imports prometheus_client, which reads the variable once at
    import: the children (gunicorn workers after the fork, the worker subprocess through
    its environment) then all write their counters there. A PROMETHEUS_MULTIPROC_DIR
    already set is used as it is; otherwise, with `create`, a fresh temporary directory.
    `clean` removes the files of processes that no longer run (a previous run's), and
    keeps those of live ones (a separate `worker` sharing the directory).
    """
    given = os.environ.get(METRICS_DIR_ENV)
    if not given:
        if not create:
            return None, False
        # The directory of a serve killed without its on_exit (SIGKILL) stays behind: its
        # name holds the pid, so the next serve can remove it once that process is gone.
        for stale in Path(tempfile.gettempdir()).glob("desmigratif-metrics-*-*"):
            pid = stale.name.split("-")[2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        path = tempfile.mkdtemp(prefix=f"desmigratif-metrics-{os.getpid()}-")
        os.environ[METRICS_DIR_ENV] = path
        return path, True
    try:
        Path(given).mkdir(parents=True, exist_ok=True)
        if clean:
            for f in Path(given).glob("*.db"):
                pid = f.stem.rsplit("_", 1)[-1]
                if not pid.isdigit() or not _pid_alive(int(pid)):
                    f.unlink(missing_ok=True)
    except OSError as exc:
        # Counting into a directory that cannot be written would fail every process.
        log.warning("%s=%s cannot be used (%s): metrics stay in each process", METRICS_DIR_ENV,
                    given, exc)
        os.environ.pop(METRICS_DIR_ENV, None)
        return None, False
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        log.warning("prometheus_client was imported before %s was set: this process's "
                    "metrics will be missing from /metrics", METRICS_DIR_ENV)
    return given, False


# The name the worker forked by serve shows in ps and /proc/PID/comm (15 bytes at most).
WORKER_PROCESS_NAME = "desmigratif-wkr"


def _name_process(name: str) -> None:
    """Set this process's name (Linux ``prctl(PR_SET_NAME)``); best effort elsewhere."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)


def _fork_worker(config: Config, *, scheduler: bool, listeners: Sequence[Any] = ()) -> int:
    """Fork the worker from serve's process; return its pid (in the parent).

    Forked rather than started afresh: it shares with the web workers every page of
    code and data the master loaded (SQLAlchemy, the models, the handlers, Flask),
    which a new interpreter would load again (about 70 MB).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:  # the child: never returns into serve's code
        _name_process(WORKER_PROCESS_NAME)
        # Forked again by gunicorn's arbiter after a crash, it has the arbiter's signal
        # handlers and listening sockets: not the worker's to keep.
        from gunicorn.arbiter import Arbiter

        for sig in (*Arbiter.SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.close()
        # Stops when serve is gone, even killed with SIGKILL (see _run_worker).
        os.environ[PARENT_ENV] = str(parent)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        _run_worker(config, scheduler=scheduler, stop=stop)
    except BaseException:
        log.exception("the worker failed")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _exited(pid: int) -> bool:
    """Tell whether a forked child has ended (gunicorn may have reaped it already)."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # reaped by gunicorn's SIGCHLD handler, which waits for any child
    return bool(done)


def _stop_forked(pid: int, *, timeout: float = 20.0) -> None:
    """Ask a forked child to stop and wait for it (gunicorn may have reaped it already)."""
    import time

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _exited(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve HTTP with gunicorn and run a worker process beside it.

    Memory: the application is loaded once in this process; the gunicorn workers
    (``preload_app``) and the worker are forked from it and share those pages. The
    garbage collector's view of them is frozen first (``gc.freeze``), so that collections
    in the children do not write to, and so copy, the shared pages.
    """
    import gc
    import time

    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter

    # First of all: before anything imports prometheus_client (see _metrics_dir).
    metrics_dir, made_dir = _metrics_dir(create=True, clean=True)
    config = _config(args)
    _setup_logging(config)
    db = _db(config)  # refuses an old schema before binding the port
    host = args.host or config.server.host
    port = args.port or config.server.port
    workers = args.workers or config.server.workers
    children: list[subprocess.Popen[bytes]] = []

    from bot.app import create_app

    # Starts no thread: safe to fork after. What only the worker uses (the platforms'
    # clients, the sender) it loads itself: loaded here, it would sit in every process's
    # resident set and still be used by one (measured: RSS sum 40 MB more, PSS the same).
    app = create_app(config, db=db)
    from bot import inbox

    inbox.prepare(db)
    # One request answered here, before the forks: what Flask and werkzeug build on a
    # first request (the URL map's matcher...) and the database's first connection are
    # then made once and shared, not again in each child (measured: 3.5 MB of each web
    # worker's own memory). No connection crosses the forks.
    with app.test_client() as client:
        client.get("/healthz")
    db.dispose()
    gc.freeze()
    worker = [_fork_worker(config, scheduler=not args.no_scheduler)]
    restarts: list[float] = []

    class _Arbiter(Arbiter):  # type: ignore[misc]
        def manage_workers(self) -> None:
            super().manage_workers()
            # Called about once a second by the arbiter's loop: a worker that died is
            # forked again (at most once every 10 s), or the inbound queue would fill
            # while webhooks go on answering 200.
            if _exited(worker[0]) and (not restarts or time.monotonic() - restarts[-1] > 10):
                log.error("the worker (pid %s) ended: starting another", worker[0])
                _mark_dead(worker[0])
                restarts.append(time.monotonic())
                worker[0] = _fork_worker(config, scheduler=not args.no_scheduler,
                                         listeners=self.LISTENERS)

    class App(BaseApplication):  # type: ignore[misc]
        def run(self) -> None:
            try:
                _Arbiter(self).run()
            except RuntimeError as exc:  # what BaseApplication.run does with one
                print(f"\nError: {exc}\n", file=sys.stderr)
                sys.exit(1)

        def load_config(self) -> None:
            from bot.logs import gunicorn_logger_class

            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "sync")
            self.cfg.set("timeout", 60)
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("accesslog", None)
            # gunicorn 27 opens a control socket at one fixed path per user: two serves
            # on a machine would take each other's. Nothing here uses it.
            self.cfg.set("control_socket_disable", True)
            # Gunicorn's own log in the app's format (JSON lines when configured).
            self.cfg.set("logger_class", gunicorn_logger_class())
            self.cfg.set("loglevel", config.logging.level.lower())
            self.cfg.set("preload_app", True)
            self.cfg.set("post_fork", _post_fork)
            self.cfg.set("when_ready", _when_ready)
            self.cfg.set("child_exit", _child_exit)
            self.cfg.set("on_exit", _on_exit)

        def load(self) -> Any:
            return app

    def _post_fork(_server: Any, _worker: Any) -> None:
        # No connection crosses a fork: each worker opens its own (there are none yet;
        # this keeps it so whatever the master did).
        db.dispose(close=False)

    def _when_ready(_server: Any) -> None:
        if args.telegram_polling:
            children.append(subprocess.Popen(
                [sys.executable, "-m", "bot.channels.polling"]
                + (["--config", args.config_path] if getattr(args, "config_path", None) else [])))
        ready = (f"desmigratif serving on http://{host}:{port} "
                 f"(simulator: http://{host}:{port}/simulator/)")
        if config.logging.json:
            log.info(ready)  # every line of stderr stays one JSON object
        else:
            print(ready, file=sys.stderr, flush=True)

    def _mark_dead(pid: int) -> None:
        if metrics_dir is not None:
            from prometheus_client import multiprocess

            # Drops the live gauges of a process that ended; its counters stay counted.
            multiprocess.mark_process_dead(pid, metrics_dir)

    def _child_exit(_server: Any, worker: Any) -> None:
        _mark_dead(worker.pid)

    stopped: list[bool] = []

    def _on_exit(_server: Any) -> None:
        if stopped:
            return
        stopped.append(True)
        for child in children:
            child.terminate()
        _stop_forked(worker[0])
        _mark_dead(worker[0])
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
            _mark_dead(child.pid)
        if made_dir and metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    try:
        App().run()
    finally:
        _on_exit(None)  # also when gunicorn gave up before it ran (a port in use)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the outbox, deliveries, alerts and scheduler, read from the database.

    Works whether or not `serve` runs: everything comes from the database. Exit 1 with
    the reason when the database does not answer.
    """
    import json

    from bot.metrics import DatabaseUnavailable, format_status, reader_for, status_snapshot

    config = _config(args)
    try:
        # Its own connection, reading only; the 24-hour counts may take a while on a big
        # outbox (sent_at has no index), so a longer query timeout than a scrape's.
        db = reader_for(config.database.url, query_timeout_ms=60_000)
        try:
            snapshot = status_snapshot(db, _now())
        finally:
            db.dispose()
    except DatabaseUnavailable as exc:
        print(f"desmigratif: the database does not answer: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(snapshot) if args.json else format_status(snapshot))
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    """Run the jobs due at an instant, or list them."""
    try:
        from bot import scheduler
    except ImportError as exc:  # pragma: no cover
        raise CliError("the scheduler is not available in this build") from exc
    config = _config(args)
    engine = _db(config)
    if args.sched_command == "run-due":
        try:
            at = datetime.fromisoformat(args.at.replace("Z", "+00:00"))
        except ValueError as exc:
            raise CliError(f"--at: not an ISO 8601 instant: {args.at!r}") from exc
        if at.tzinfo is None:
            raise CliError("--at: give a timezone, e.g. 2026-12-06T11:00:00Z or +07:00")
        summary = scheduler.run_due(engine, config, at.astimezone(UTC), send=True)
        for kind, count in sorted(summary.items()):
            print(f"{kind}: {count}")
        return 0
    for line in scheduler.describe(engine, config, _now()):
        print(line)
    return 0


def cmd_telegram(args: argparse.Namespace) -> int:
    """Register, remove or show the Telegram webhook."""
    config = _config(args)
    if not config.telegram_enabled:
        raise CliError("[telegram] token: not set (or DESMIGRATIF_TELEGRAM_TOKEN)")
    from bot.channels import telegram

    try:
        if args.tg_command == "set-webhook":
            if not config.server.public_url.startswith("https://"):
                raise CliError("[server] public_url: Telegram calls https:// addresses only, "
                               f"got {config.server.public_url!r}")
            print(f"Telegram webhook set to {telegram.set_webhook(config)}")
        elif args.tg_command == "delete-webhook":
            telegram.delete_webhook(config)
            print("Telegram webhook deleted")
        else:
            for key, value in telegram.webhook_info(config).items():
                print(f"{key}: {value if value not in (None, '') else '-'}")
    except CliError:
        raise
    except Exception as exc:
        reason = telegram.describe_error(exc, config)
        if reason is None:
            raise
        raise CliError(reason) from exc
    return 0


def cmd_broadcast(args: argparse.Namespace) -> int:
    """Announce to a village and send it, with a progress bar (bot/coordinator_cli.py)."""
    from bot.coordinator_cli import broadcast

    return broadcast(args)


def cmd_import(args: argparse.Namespace) -> int:
    """Import families from a CSV file, all or nothing (bot/coordinator_cli.py)."""
    from bot.coordinator_cli import import_file

    return import_file(args)


def cmd_export(args: argparse.Namespace) -> int:
    """Write families or fund requests as CSV (bot/coordinator_cli.py)."""
    from bot.coordinator_cli import export

    return export(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve, "worker": cmd_worker, "status": cmd_status, "db": cmd_db,
    "coordinator": cmd_coordinator,
    "demo": cmd_demo, "chat": cmd_chat, "scheduler": cmd_scheduler,
    "broadcast": cmd_broadcast, "import": cmd_import, "export": cmd_export,
    "telegram": cmd_telegram,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    os.environ.setdefault("PTB_TIMEDELTA", "1")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, CliError, SchemaError) as exc:
        print(f"desmigratif: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
