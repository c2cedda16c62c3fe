"""Logs: JSON lines when configured, text otherwise, and never a phone number."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Iterator

import pytest

from bot.cli import _setup_logging
from bot.config import load_config
from bot.logs import JsonFormatter, PhoneMaskFilter, mask_numbers, setup_logging

NUMBER = "+6281234567890"
MASKED = "+62*********90"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Log through the app's own set-up into a buffer; put the root logger back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    yield buffer
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(buffer: io.StringIO) -> list[str]:
    return [line for line in buffer.getvalue().splitlines() if line]


def test_json_lines_have_time_level_logger_message_and_extras(stream: io.StringIO) -> None:
    setup_logging("INFO", json_lines=True, stream=stream)
    log = logging.getLogger("bot.test")
    log.info("queued %d for %s", 3, "parent_checkin", extra={"kind": "reminder", "n": 3})
    log.debug("not at INFO")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("it failed")
    first, second = (json.loads(line) for line in lines(stream))  # exactly two, one a line
    assert first["level"] == "INFO" and first["logger"] == "bot.test"
    assert first["message"] == "queued 3 for parent_checkin"
    assert first["kind"] == "reminder" and first["n"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])  # UTC
    assert second["level"] == "ERROR" and second["message"] == "it failed"
    assert second["exc_info"].startswith("Traceback") and "ValueError: boom" in second["exc_info"]
    assert "exc_info" not in first
    warnings.warn("old API", DeprecationWarning, stacklevel=1)  # through logging, as JSON
    assert "old API" in json.loads(lines(stream)[-1])["message"]


def test_text_logs_keep_the_usual_format(stream: io.StringIO) -> None:
    setup_logging("WARNING", stream=stream)
    logging.getLogger("bot.x").info("hidden")
    logging.getLogger("bot.x").warning("shown")
    (line,) = lines(stream)
    assert line.endswith(" WARNING bot.x: shown")


@pytest.mark.parametrize("json_lines", [True, False])
def test_phone_numbers_are_masked_wherever_they_slip_in(stream: io.StringIO,
                                                        json_lines: bool) -> None:
    """Through the handler the CLI sets up: arguments, tracebacks, extras, both formats."""
    setup_logging("INFO", json_lines=json_lines, stream=stream)
    log = logging.getLogger("handlers.test")
    log.info("message from whatsapp:%s", NUMBER)
    log.info("national 0812-3456-7890 and spaced +62 812 3456 7890", extra={"to": NUMBER})
    try:
        raise RuntimeError(f"duplicate key (whatsapp)=(whatsapp:{NUMBER})")
    except RuntimeError:
        log.exception("insert failed")
    text = stream.getvalue()
    for raw in (NUMBER, "81234567890", "0812-3456-7890", "812 3456 7890"):
        assert raw not in text
    assert f"whatsapp:{MASKED}" in text
    # The message twice, the traceback; and in JSON the extra field too.
    assert text.count(MASKED) == (4 if json_lines else 3) and "08********90" in text
    if json_lines:
        entries = [json.loads(line) for line in lines(stream)]
        assert entries[1]["to"] == MASKED
        assert MASKED in entries[2]["exc_info"]


def test_ids_times_and_amounts_are_left_alone() -> None:
    text = ("update 123456789 at 2026-03-05T01:30:00Z, member 42, Rp150.000, "
            "sha=deadbeef1234, message SM0123456789abcdef, chat -1001234567890")
    assert mask_numbers(text) == text
    assert mask_numbers(f"to {NUMBER}.") == f"to {MASKED}."


def test_a_record_is_masked_once_for_every_handler() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "to %s", (NUMBER,), None)
    assert PhoneMaskFilter().filter(record) and PhoneMaskFilter().filter(record)
    assert record.getMessage() == f"to {MASKED}"
    assert json.loads(JsonFormatter().format(record))["message"] == f"to {MASKED}"


def test_the_cli_follows_logging_json(stream: io.StringIO,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", stream)
    _setup_logging(load_config(env={"DESMIGRATIF_LOGGING_JSON": "true",
                                    "DESMIGRATIF_LOGGING_LEVEL": "DEBUG"}))
    logging.getLogger("bot.cli_test").debug("hello %s", NUMBER)
    _setup_logging(load_config(env={}))  # set up twice: one handler, not two
    logging.getLogger("bot.cli_test").info("again")
    first, second = lines(stream)
    assert json.loads(first)["message"] == f"hello {MASKED}"
    assert second.endswith("INFO bot.cli_test: again")
    assert logging.getLogger("twilio.http_client").level == logging.WARNING
