"""Logging set-up: plain text or one JSON object per line, phone numbers always masked.

Every process (``serve``'s gunicorn master and workers, the ``worker``, the CLI) logs
through one handler on the root logger, made here. ``[logging] json = true`` turns each
record into one JSON object on one line (``time``, ``level``, ``logger``, ``message``,
``exc_info`` when there is a traceback, and whatever the call passed as ``extra=``), which
log shippers read without a parsing rule. Under ``serve`` gunicorn's own error log gets
the same formatter (:func:`gunicorn_logger_class`).

Phone numbers must never reach a log: most calls already pass addresses through
``bot.privacy.mask_phone``, and :class:`PhoneMaskFilter`, on every handler made here,
masks what slips through anyway (a number inside an exception message, a driver error
quoting its parameters, an ``extra=`` field).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

from bot.privacy import mask_phone

__all__ = ["JsonFormatter", "PhoneMaskFilter", "TEXT_FORMAT", "gunicorn_logger_class",
           "make_formatter", "mask_numbers", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# An E.164 number (`+6281234567890`, `whatsapp:+62 812-3456-7890`) or an Indonesian mobile
# number written nationally (`081234567890`), not glued to other digits or letters (so
# that ids, timestamps and hashes are left alone). Separators inside are allowed, as people
# and platforms write them.
_NUMBER = re.compile(
    r"(?<![\w+])(?:(?:whatsapp|tel|sms):)?"
    r"(?:\+[1-9](?:[ .-]?[0-9]){7,14}|08[0-9](?:[ .-]?[0-9]){7,10})(?![0-9])",
    re.IGNORECASE | re.ASCII,
)

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def mask_numbers(text: str) -> str:
    """Mask every phone-number-looking part of a text (see ``bot.privacy.mask_phone``)."""
    if not text or not any(ch.isdigit() for ch in text):
        return text
    return _NUMBER.sub(lambda m: mask_phone(m.group(0)), text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_numbers(value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


class PhoneMaskFilter(logging.Filter):
    """Mask phone numbers in a record's message, traceback and extra fields, in place.

    Set on a handler (not a logger): a handler's filters see every record it writes,
    those propagated from child loggers included. The message is rendered here once and
    the arguments dropped, so that every formatter after this one writes the masked text.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record; never drop it."""
        if getattr(record, "_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the formatter report it as usual
            return True
        record.msg, record.args = mask_numbers(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_numbers(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_numbers(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, _mask_value(value))
        record._masked = True
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object: time, level, logger, message, extras."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            # Several processes write to one stream under `serve`: say which one.
            "pid": record.process,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        return json.dumps(entry, ensure_ascii=False, default=str)


def make_formatter(json_lines: bool) -> logging.Formatter:
    """Return the formatter for `[logging] json`."""
    return JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT)


# What setup_logging chose, for gunicorn's logger to copy.
_current: dict[str, Any] = {"json": False}


def setup_logging(level: str = "INFO", *, json_lines: bool = False,
                  stream: IO[str] | None = None) -> logging.Handler:
    """Log to `stream` (stderr) at `level`, as text or JSON lines, numbers masked.

    Calling it again replaces the handler it made before (tests, or a command that sets
    logging up twice) instead of writing every line twice.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_desmigratif", False):
            root.removeHandler(old)
            old.close()  # (a StreamHandler leaves its stream open)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(json_lines))
    handler.addFilter(PhoneMaskFilter())
    handler._desmigratif = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    _current["json"] = json_lines
    # A warning printed by the warnings module would be a line of plain text among the
    # JSON ones: route warnings through logging instead.
    logging.captureWarnings(json_lines)
    # Twilio logs every request, numbers included, at INFO.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler


def gunicorn_logger_class() -> type:
    """Return a gunicorn logger class that writes in the format setup_logging chose."""
    from gunicorn.glogging import Logger

    class GunicornLogger(Logger):  # type: ignore[misc]
        """Gunicorn's logger, with the app's formatter and the phone-number filter."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for target in (self.error_log, self.access_log):
                for handler in target.handlers:
                    handler.setFormatter(make_formatter(_current["json"]))
                    handler.addFilter(PhoneMaskFilter())

    return GunicornLogger
