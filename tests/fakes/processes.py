"""Run ``desmigratif`` commands as real subprocesses, for crash tests.

A test writes a config file to its ``tmp_path`` (:func:`write_config`), starts the
commands it needs through a :class:`Processes` (each in its own session, so one signal
reaches a whole ``serve``: gunicorn's master, its workers and its ``worker`` child), waits
for them with :func:`wait_until`, kills what it wants killed, and closes the
``Processes`` in teardown, which kills whatever is left, pass or fail. Each process
writes its output to a log file; a failed wait quotes the tail of every log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# --- configuration ---------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML config file of sections (a dict value is a sub-table); return the path."""
    lines: list[str] = []
    for name, keys in sections.items():
        tables = {k: v for k, v in keys.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items() if k not in tables]
        for sub, values in tables.items():
            lines.append(f"[{name}.{sub}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """Return the environment for a child: ours, minus any DESMIGRATIF_* setting.

    The config file alone configures the child; a developer's exported
    ``DESMIGRATIF_DATABASE_URL`` must not point a crash test at their database.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESMIGRATIF_")}
    env["PTB_TIMEDELTA"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- processes -------------------------------------------------------------------------


@dataclass
class Proc:
    """One started command: its process, its log file, and how it ended."""

    name: str
    args: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    killed: bool = False

    @property
    def pid(self) -> int:
        """Return the process id (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Tell whether the process is still running."""
        return self.popen.poll() is None

    def output(self) -> str:
        """Return everything the process wrote so far."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        """Return the last lines the process wrote."""
        return "\n".join(self.output().splitlines()[-lines:])

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to the process and everything it started (its process group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def crash(self) -> None:
        """SIGKILL the process alone (not its children) and reap it."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def crash_all(self) -> None:
        """SIGKILL the process and its whole group at once, and reap it."""
        self.killed = True
        self.kill_group(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; return its status (fail with its log if late)."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not finish in {timeout:g} s; its log:\n"
                                 f"{self.tail()}") from None


@dataclass
class Processes:
    """Start ``desmigratif`` commands with one config file; kill them all at close()."""

    workdir: Path
    config: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Proc:
        """Start ``desmigratif ARGS --config CONFIG`` in its own session, logging to a file."""
        log = self.workdir / f"{name}-{len(self.procs)}.log"
        cmd = [sys.executable, "-m", "bot", *args, "--config", str(self.config)]
        with log.open("wb") as out:
            popen = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        proc = Proc(name=name, args=list(args), popen=popen, log=log)
        self.procs.append(proc)
        return proc

    def report(self) -> str:
        """Return the state and log tail of every process started, for a failure message."""
        parts = []
        for proc in self.procs:
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"--- {proc.name} (pid {proc.pid}, {state}) {' '.join(proc.args)}\n"
                         f"{proc.tail()}")
        return "\n".join(parts)

    def check_alive(self, *procs: Proc) -> None:
        """Fail with the logs if one of these processes ended on its own."""
        dead = [p for p in procs if not p.alive() and not p.killed]
        if dead:
            raise AssertionError(f"{', '.join(p.name for p in dead)} exited unexpectedly\n"
                                 + self.report())

    def close(self) -> None:
        """Kill every process started (and its children) and reap them."""
        for proc in self.procs:
            proc.kill_group(signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str,
               procs: Processes | None = None, watch: tuple[Proc, ...] = (),
               interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy and return its value, or fail saying what.

    Processes in ``watch`` must stay alive meanwhile (a crash fails at once, not at the
    deadline); the failure message carries every process's log tail.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if procs is not None and watch:
            procs.check_alive(*watch)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n"
                                 + (procs.report() if procs is not None else ""))
        time.sleep(interval)


def log_has(proc: Proc, text: str) -> bool:
    """Tell whether a process has written this text to its log."""
    return text in proc.output()


def children(pid: int) -> list[int]:
    """Return the ids of a process's children (Linux: /proc/PID/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def comm(pid: int) -> str:
    """Return a process's name (/proc/PID/comm; "" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def is_worker(pid: int) -> bool:
    """Tell whether a process is a desmigratif worker: forked by serve (named so) or
    started as ``desmigratif worker``."""
    from bot.cli import WORKER_PROCESS_NAME

    return comm(pid) == WORKER_PROCESS_NAME or "worker" in cmdline(pid)[:4]


def cmdline(pid: int) -> list[str]:
    """Return a process's command line ([] once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
