"""Fetch Telegram updates by long polling: ``python -m bot.channels.polling --config X``.

For development without a public address (``desmigratif serve --telegram-polling``
starts it beside the web server). Each update goes through exactly the code the webhook
uses; the sender (in the worker) delivers the replies. The webhook is deleted first:
Telegram refuses getUpdates while one is set.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from bot.config import ConfigError, load_config

log = logging.getLogger("desmigratif.polling")


def main(argv: Sequence[str] | None = None) -> int:
    """Poll until SIGTERM or SIGINT; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bot.channels.polling",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", dest="config_path", default=None)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config_path)
    except ConfigError as exc:
        print(f"desmigratif polling: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, config.logging.level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not config.telegram_enabled:
        print("desmigratif polling: [telegram] token is not set", file=sys.stderr)
        return 2

    import handlers  # noqa: F401  (registers every command and flow)
    from bot.channels import telegram
    from bot.engine import Engine
    from storage.db import SchemaError, ensure_schema, make_engine

    db = make_engine(config.database.url)
    try:
        ensure_schema(db, create_if_empty=config.database.url.startswith("sqlite"))
    except SchemaError as exc:
        print(f"desmigratif polling: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    failure: list[str] = []

    def _poll() -> None:
        try:
            telegram.poll_forever(db, Engine(db, config), config, stop)
        except Exception as exc:
            failure.append(telegram.describe_error(exc, config) or repr(exc))
            log.exception("polling stopped")
        finally:
            stop.set()

    # A long poll holds its thread up to half a minute: poll on a daemon thread so that
    # SIGTERM ends the process at once. An update cut short is not confirmed (the offset
    # did not move), so Telegram delivers it again.
    threading.Thread(target=_poll, name="telegram-polling", daemon=True).start()
    stop.wait()
    if failure:
        print(f"desmigratif polling: {failure[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
