"""Helpers for the benchmarks: an HTTP load generator, percentiles, the machine.

The load generator stands in for wrk, which a fresh clone does not have. It runs in
separate processes (forked, so the pre-built requests are shared, not pickled), each
keeping several connections busy with one ``selectors`` loop over non-blocking
sockets: connect, write the request's pre-built bytes, read to the end (gunicorn's sync
workers close every connection), note the status and the latency, start the next one.
Each process reports the CPU time it used, so the generator's own cost per request,
and so its ceiling on this machine, is printed beside the figures it measured.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import platform
import selectors
import socket
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


@dataclass
class LoadResult:
    """What a load run measured."""

    requests: int
    seconds: float
    latencies: list[float]  # seconds, one per completed request
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no HTTP answer
    errors: Counter[str] = field(default_factory=Counter)
    client_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        """Return requests completed per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def non_2xx(self) -> int:
        """Return how many requests did not get a 2xx answer."""
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def cpu_us_per_request(self) -> float:
        """Return the load generator's CPU time per request, in microseconds."""
        return self.client_cpu_s / self.requests * 1e6 if self.requests else 0.0

    def percentile_ms(self, q: float) -> float:
        """Return the q-th percentile latency in milliseconds."""
        return percentile(self.latencies, q) * 1000


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0-100) by the nearest-rank method."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class _Slot:
    """One connection in flight."""

    __slots__ = ("data", "started", "sent", "head")

    def __init__(self, data: bytes, started: float) -> None:
        self.data, self.started, self.sent, self.head = memoryview(data), started, 0, b""


def _client(host: str, port: int, requests: Sequence[bytes], conns: int, go: Any,
            out: Connection) -> None:
    """Send every request over `conns` concurrent connections; send the results back."""
    sel = selectors.DefaultSelector()
    latencies = array("d")
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    todo = iter(requests)
    active = 0

    def open_one(data: bytes) -> bool:
        # Connect without waiting; False when the connection failed at once.
        nonlocal active
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slot = _Slot(data, time.perf_counter())
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            errors[errno.errorcode.get(code, str(code))] += 1
            statuses[0] += 1
            sock.close()
            return False
        sel.register(sock, selectors.EVENT_WRITE, slot)
        active += 1
        return True

    def launch() -> None:
        # Start the next request, skipping those whose connection failed at once.
        while (data := next(todo, None)) is not None:
            if open_one(data):
                return

    def finish(sock: socket.socket, slot: _Slot, error: str | None) -> None:
        nonlocal active
        sel.unregister(sock)
        sock.close()
        active -= 1
        if error is not None:
            errors[error] += 1
            statuses[0] += 1
        else:
            try:
                statuses[int(slot.head[9:12])] += 1
            except ValueError:
                statuses[0] += 1
                errors["unreadable answer"] += 1
            latencies.append(time.perf_counter() - slot.started)
        launch()

    go.wait()
    cpu0 = os.times()
    began = time.monotonic()
    for _ in range(conns):
        launch()
    while active:
        for key, events in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            slot: _Slot = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    if slot.sent == 0:
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            finish(sock, slot, errno.errorcode.get(err, str(err)))
                            continue
                    slot.sent += sock.send(slot.data[slot.sent:])
                    if slot.sent == len(slot.data):
                        sel.modify(sock, selectors.EVENT_READ, slot)
                else:
                    chunk = sock.recv(65536)
                    if chunk:
                        if len(slot.head) < 12:
                            slot.head += chunk[:16]
                    else:
                        finish(sock, slot, None if slot.head else "closed without answer")
            except OSError as exc:
                finish(sock, slot, type(exc).__name__)
    ended = time.monotonic()
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    out.send((began, ended, latencies.tobytes(), dict(statuses), dict(errors), cpu))
    out.close()


def run_load(host: str, port: int, requests: Sequence[bytes], *, procs: int = 2,
             conns: int = 4) -> LoadResult:
    """Send the requests from `procs` processes of `conns` connections each."""
    ctx = mp.get_context("fork")
    go = ctx.Event()
    workers: list[tuple[Any, Connection]] = []
    for i in range(procs):
        mine = requests[i::procs]
        if not mine:
            continue
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_client, args=(host, port, mine, conns, go, send),
                           daemon=True)
        proc.start()
        send.close()
        workers.append((proc, receive))
    go.set()
    starts, ends, latencies = [], [], array("d")
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    cpu = 0.0
    for proc, receive in workers:
        began, ended, lat, st, err, used = receive.recv()
        proc.join()
        starts.append(began)
        ends.append(ended)
        latencies.frombytes(lat)
        statuses.update(st)
        errors.update(err)
        cpu += used
    done = sum(statuses.values())
    return LoadResult(requests=done, seconds=max(ends) - min(starts), latencies=list(latencies),
                      statuses=statuses, errors=errors, client_cpu_s=cpu)


def get_request(port: int, path: str = "/") -> bytes:
    """Return the bytes of a plain GET."""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            ).encode()


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def machine() -> dict[str, Any]:
    """Describe this machine: CPU model, cores, RAM, load; and the Python."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "ram_gb": ram_gb,
            "os": f"{platform.system()} {platform.release()}"}


def loadavg() -> list[float]:
    """Return the 1, 5 and 15-minute load averages."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def now_iso() -> str:
    """Return the current UTC time, ISO 8601, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()
