"""Run the real ``desmigratif serve`` in a child process against the loopback fakes.

Shared by the SQLite soak test and the HTTP benchmark (``bench/http_serve.py``):

- ``populate`` registers families whose chats are already linked (a parent abroad on
  WhatsApp, a carer on Telegram, a teenage child on either), so that every webhook is
  real conversation traffic; ``script`` says what each member sends in turn, and
  ``Household.relay_recipients`` whom a KABAR reaches;
- ``write_config`` points the Telegram and Twilio channels at the fakes;
- ``ServeProcess`` starts ``desmigratif serve`` in its own process group, waits for
  ``/healthz``, finds its processes (gunicorn master, workers, the ``worker`` sender
  subprocess) and their resident memory, and kills the whole group when stopped, even
  when the master is already gone;
- ``telegram_request`` and ``twilio_request`` build the exact bytes of a webhook call
  (valid secret, valid signature), so a load generator only writes them to a socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import urlencode

from sqlmodel import select

from storage.db import make_engine, session_scope, upgrade
from storage.models import ChannelIdentity
from storage.repo import FamilySpec, MemberSpec, create_family
from tests.fakes.payloads import tg_text, twilio_inbound, twilio_signature
from tests.fakes.processes import child_env, children, is_worker

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_URL = "https://bot.example.org"
SECRET = "soak_SECRET-1"
TELEGRAM_TOKEN = "123456:TEST-TOKEN"  # FakeTelegram's default
TWILIO_SID = "AC" + "0" * 32  # FakeTwilio's defaults
TWILIO_TOKEN = "test-auth-token"
# Words of the log that must never appear in a healthy run.
BAD_LOG_WORDS = ("database is locked", "Traceback", " ERROR ", " CRITICAL ", "[ERROR]",
                 "[CRITICAL]", "WORKER TIMEOUT")


# --- the population ----------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """A registered member with a linked chat."""

    member_id: int
    family: int  # index of the family, 0-based
    role: str
    channel: str  # "telegram" or "whatsapp"
    address: str  # chat id, or "whatsapp:+E164"


@dataclass(frozen=True)
class Household:
    """One family: a parent abroad, a carer at home and a teenage child."""

    parent: Person
    carer: Person
    child: Person

    @property
    def people(self) -> tuple[Person, Person, Person]:
        """Return the three members."""
        return (self.parent, self.carer, self.child)

    def relay_recipients(self, sender: Person) -> list[Person]:
        """Return who a KABAR from `sender` reaches (handlers/news.py)."""
        if sender.role == "parent":
            return [self.carer, self.child]
        return [self.parent]


def populate(url: str, families: int, *, now: datetime | None = None) -> list[Household]:
    """Migrate a new database and register `families` families with linked chats.

    Everyone counts as welcomed and as having written just now, so that a first message
    gets only its own answer and WhatsApp's 24-hour window is open for relays.
    """
    now = now or datetime.now(UTC)
    db = make_engine(url)
    upgrade(db)
    languages = ["id", "en", "jv"]
    households: list[Household] = []
    with session_scope(db) as session:
        for f in range(families):
            child_on_telegram = f % 2 == 0
            spec = FamilySpec(
                village=f"Desa {f % 10}", district="Indramayu", region="indramayu",
                language=languages[f % 3],
                members=[
                    MemberSpec(role="parent", name=f"Rina {f}", timezone="Asia/Hong_Kong",
                               whatsapp=f"+8529{f:07d}"),
                    MemberSpec(role="carer", name=f"Warsini {f}", birth_year=1958,
                               telegram_chat_id=str(700_000_000 + f)),
                    MemberSpec(role="child", name=f"Dimas {f}", birth_year=now.year - 15,
                               telegram_chat_id=str(800_000_000 + f) if child_on_telegram
                               else None,
                               whatsapp=None if child_on_telegram else f"+62813{f:08d}"),
                ],
                consent_given_by=f"Warsini {f}", consent_method="signed form")
            _family, members = create_family(session, spec, now=now, languages=languages)
            people: list[Person] = []
            for m in members:
                m.welcomed = True
                session.add(m)
                ident = session.exec(select(ChannelIdentity)
                                     .where(ChannelIdentity.member_id == m.id)).one()
                ident.last_inbound_at = now
                session.add(ident)
                people.append(Person(member_id=m.id or 0, family=f, role=m.role,
                                     channel=ident.channel, address=ident.address))
            households.append(Household(*people))
    db.dispose()
    return households


# What each role sends, in turn. Every message gets one reply; a KABAR also reaches the
# relay's recipients, one outbox row each. Plain text gets the short menu.
SCRIPTS: dict[str, tuple[str, ...]] = {
    "parent": ("MENU", "KABAR", "TIPS", "PLAIN"),
    "carer": ("KABAR", "TIPS", "MENU", "PLAIN"),
    "child": ("KABAR", "MENU", "PLAIN"),
}
PLAIN_TEXTS = ("terima kasih ya", "selamat pagi semuanya", "sudah makan siang belum",
               "see you next week")


def script(person: Person, turn: int, token: str) -> tuple[str, str]:
    """Return (action, text) of a member's `turn`-th message; KABAR texts carry `token`."""
    actions = SCRIPTS[person.role]
    action = actions[turn % len(actions)]
    if action == "KABAR":
        return action, f"KABAR salam sayang dari jauh {token}"
    if action == "PLAIN":
        return action, PLAIN_TEXTS[turn % len(PLAIN_TEXTS)]
    return action, action


# --- configuration -----------------------------------------------------------------------


def write_config(path: Path, *, db_url: str, port: int, telegram_url: str, twilio_url: str,
                 sender_rate: float | None = None, logging_level: str = "INFO") -> Path:
    """Write a config file for serve: both channels on the fakes, no quiet hours.

    ``sender_rate`` lifts the platforms' rate limits (messages a second) so that a test
    can drain a large outbox; None keeps the production defaults.
    """
    tg_rates = tw_rates = ""
    if sender_rate is not None:
        tg_rates = f"rate_per_s = {sender_rate}\nrate_per_chat_per_s = {sender_rate}\n"
        tw_rates = f"rate_per_s = {sender_rate}\n"
    path.write_text(
        "[server]\n"
        f'public_url = "{PUBLIC_URL}"\nhost = "127.0.0.1"\nport = {port}\nworkers = 2\n'
        "[database]\n"
        f'url = "{db_url}"\n'
        "[telegram]\n"
        f'token = "{TELEGRAM_TOKEN}"\nwebhook_secret = "{SECRET}"\n'
        f'api_base_url = "{telegram_url}"\ntimeout_s = 30.0\n{tg_rates}'
        "[twilio]\n"
        f'account_sid = "{TWILIO_SID}"\nauth_token = "{TWILIO_TOKEN}"\n'
        f'api_base_url = "{twilio_url}"\ntimeout_s = 30.0\n{tw_rates}'
        # Quiet hours would hold relays until morning wherever the clock of the run is.
        '[scheduler]\nquiet_hours_start = "00:00"\nquiet_hours_end = "00:00"\n'
        f'[logging]\nlevel = "{logging_level}"\n',
        encoding="utf-8")
    return path


# --- webhook requests --------------------------------------------------------------------


def _raw(port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Webhook:
    """One webhook call: where it goes, its headers and body, and its platform id."""

    path: str
    headers: dict[str, str]
    body: bytes
    platform_id: str  # "telegram:<update_id>" or "whatsapp:<MessageSid>"

    def raw(self, port: int) -> bytes:
        """Return the request as bytes for a socket."""
        return _raw(port, self.path, self.headers, self.body)


def telegram_request(update_id: int, chat_id: str, text: str) -> Webhook:
    """Build Telegram's call for a text message, with our secret token."""
    body = json.dumps(tg_text(update_id, int(chat_id), text)).encode()
    return Webhook("/webhooks/telegram", {"Content-Type": "application/json",
                                          "X-Telegram-Bot-Api-Secret-Token": SECRET},
                   body, f"telegram:{update_id}")


def twilio_request(message_sid: str, address: str, text: str) -> Webhook:
    """Build Twilio's signed call for a WhatsApp text message."""
    form = twilio_inbound(text, from_=address, message_sid=message_sid)
    signature = twilio_signature(TWILIO_TOKEN, PUBLIC_URL + "/webhooks/twilio", form)
    return Webhook("/webhooks/twilio", {"Content-Type": "application/x-www-form-urlencoded",
                                        "X-Twilio-Signature": signature},
                   urlencode(form).encode(), f"whatsapp:{message_sid}")


def message_for(person: Person, text: str, unique: int) -> Webhook:
    """Build the webhook call of `person` saying `text`; `unique` makes its platform id."""
    if person.channel == "telegram":
        return telegram_request(unique, person.address, text)
    return twilio_request(f"SM{unique:032x}", person.address, text)


# --- the server process ------------------------------------------------------------------


def group(pgid: int) -> list[int]:
    """Return the live pids of the process group `pgid` (scanning /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":  # a zombie is dead already
            found.append(int(entry))
    return found


def kill_group(pgid: int) -> None:
    """Kill (SIGKILL) every process left in the process group `pgid`, one pid at a time."""
    for pid in group(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _proc_kb(pid: int, file: str, key: str) -> int:
    """Return a KiB figure from a line ``key: N kB`` of /proc/PID/file, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    """Return a process's resident memory in KiB (VmRSS), 0 when it is gone."""
    return _proc_kb(pid, "status", "VmRSS:")


def pss_kb(pid: int) -> int:
    """Return a process's proportional set size in KiB (shared pages divided), 0 if gone."""
    return _proc_kb(pid, "smaps_rollup", "Pss:")


def cpu_seconds(pid: int) -> float:
    """Return a process's user + system CPU time so far, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServeProcess:
    """``desmigratif serve`` in its own process group, its output in a log file."""

    def __init__(self, config: Path, port: int, log: Path, *, workers: int = 2,
                 scheduler: bool = False) -> None:
        self.config, self.port, self.log_path = config, port, log
        self.workers, self.scheduler = workers, scheduler
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @staticmethod
    def command() -> list[str]:
        """Return the command that starts the server: the installed ``desmigratif``."""
        script = Path(sys.executable).with_name("desmigratif")
        return [str(script)] if script.exists() else [sys.executable, "-m", "bot"]

    def start(self, timeout: float = 90.0) -> Self:
        """Start serving and wait until /healthz answers and the sender runs."""
        args = [*self.command(), "serve", "--config", str(self.config), "--port",
                str(self.port), "--workers", str(self.workers)]
        if not self.scheduler:
            args.append("--no-scheduler")
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(),
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if self._healthy() and self.pids()["sender"]:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not become ready in time:\n" + self.log_tail())
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def pids(self) -> dict[str, list[int]]:
        """Return the pids of the gunicorn master, its workers and the sender subprocess."""
        if self.proc is None or self.proc.poll() is not None:
            return {"master": [], "workers": [], "sender": []}
        children_ = children(self.proc.pid)
        sender = [p for p in children_ if is_worker(p)]
        return {"master": [self.proc.pid], "sender": sender,
                "workers": [p for p in children_ if p not in sender]}

    def rss_mb(self) -> dict[str, float]:
        """Return resident memory in MB per role (summed), in total, and the total PSS.

        The RSS of forked workers counts the pages they share with the master again;
        the PSS ("pss") divides each shared page among its sharers.
        """
        pids = self.pids()
        out = {role: sum(rss_kb(p) for p in group) / 1024 for role, group in pids.items()}
        out["total"] = sum(out.values())
        out["pss"] = sum(pss_kb(p) for group in pids.values() for p in group) / 1024
        return out

    def cpu(self) -> dict[str, float]:
        """Return CPU seconds used so far per role (summed)."""
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.pids().items()}

    def log_text(self) -> str:
        """Return everything the server wrote so far."""
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """Return the last lines the server wrote."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def bad_log_lines(self) -> list[str]:
        """Return the log lines that show an error (locked database, traceback...)."""
        return [line for line in self.log_text().splitlines()
                if any(word in line for word in BAD_LOG_WORDS)]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGTERM), then kill whatever is left of the process group."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        # The group is ours (start_new_session): kill what is left of it, one pid at a
        # time, so a sender subprocess or a worker left behind by a dead master ends too.
        kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        """Start serving."""
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        """Stop serving."""
        self.stop()
