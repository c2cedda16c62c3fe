"""The polling loop shared by the worker's threads (the sender, the inbound queue)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_until_stopped(name: str, run_once: Callable[[], int], stop: threading.Event,
                      idle: Callable[[], object]) -> None:
    """Call `run_once` until `stop` is set; after a round that did nothing, call `idle`.

    An exception is logged and counts as an idle round: the loop goes on.
    """
    while not stop.is_set():
        try:
            n = run_once()
        except Exception:
            log.exception("%s loop error; retrying shortly", name)
            n = 0
        if n == 0:
            idle()


def drain(run_once: Callable[[], int], *, timeout: float) -> int:
    """Call `run_once` until a round does nothing (or `timeout` s); return the total."""
    total = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = run_once()
        total += n
        if n == 0:
            break
    return total
