"""Configuration: TOML file, environment overrides, validation at start-up.

Every key is declared once below as a dataclass field with its type and default; the
loader refuses unknown keys and values of the wrong type, naming the key, so a typo in
a deployment's config stops start-up instead of silently doing the wrong thing.
Secrets may come from environment variables: ``DESMIGRATIF_<SECTION>_<KEY>`` overrides
``[section] key`` for every scalar key (e.g. ``DESMIGRATIF_TELEGRAM_TOKEN``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ENV_CONFIG = "DESMIGRATIF_CONFIG"
ENV_PREFIX = "DESMIGRATIF_"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key."""


@dataclass
class ServerConfig:
    """The HTTP side: where platforms reach us and where we listen."""

    public_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    simulator: bool = True
    secret_key: str = ""
    behind_proxy: bool = False
    metrics: bool = True  # GET /metrics (Prometheus); unauthenticated, keep it internal
    # "queue": webhooks store the message and answer; the worker processes it (bot/inbox.py).
    # "inline": the webhook runs the engine before answering.
    inbound: str = "queue"
    # The worker process serve starts runs this much nicer (0-19): in a burst the webhooks
    # are answered first and the worker catches up after.
    worker_nice: int = 10


@dataclass
class DatabaseConfig:
    """Where the data lives."""

    url: str = "sqlite:///var/desmigratif.db"
    echo: bool = False


@dataclass
class TelegramConfig:
    """Telegram Bot API; an empty token turns the channel off."""

    token: str = ""
    webhook_secret: str = ""
    api_base_url: str = "https://api.telegram.org/bot"
    bot_username: str = ""
    rate_per_s: float = 30.0
    rate_per_chat_per_s: float = 1.0
    timeout_s: float = 10.0


@dataclass
class TwilioConfig:
    """WhatsApp through Twilio; an empty auth token turns the channel off."""

    account_sid: str = ""
    auth_token: str = ""
    whatsapp_from: str = "whatsapp:+14155238886"
    api_base_url: str = "https://api.twilio.com"
    rate_per_s: float = 80.0
    timeout_s: float = 10.0
    status_callback: bool = True
    # message kind -> approved template (Content SID); used outside the 24-hour window.
    templates: dict[str, str] = field(default_factory=dict)


@dataclass
class BotConfig:
    """How the conversation behaves."""

    default_language: str = "id"
    languages: list[str] = field(default_factory=lambda: ["id", "en", "jv"])
    default_timezone: str = "Asia/Jakarta"
    flow_timeout_minutes: int = 30
    child_account_min_age: int = 13
    max_text_length: int = 4000


@dataclass
class SchedulerConfig:
    """Timed jobs; every time is in the member's own timezone."""

    enabled: bool = True
    parent_checkin: str = "sun 19:00"
    carer_question: str = "fri 16:00"
    weekly_tip: str = "wed 18:00"
    silent_parent_days: int = 14
    quiet_hours_start: str = "21:00"
    quiet_hours_end: str = "07:00"
    grace_minutes: int = 360
    tick_seconds: int = 30
    alert_escalation_minutes: int = 30
    retention_days: int = 90  # sent/failed/cancelled outbox rows and inbound records


@dataclass
class SenderConfig:
    """The outbound sender loop."""

    poll_interval_s: float = 0.2
    batch_size: int = 50
    max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    lease_s: float = 60.0


@dataclass
class LoggingConfig:
    """What goes to the log, and how."""

    level: str = "INFO"
    json: bool = False


@dataclass
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    twilio: TwilioConfig = field(default_factory=TwilioConfig)
    bot: BotConfig = field(default_factory=BotConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sender: SenderConfig = field(default_factory=SenderConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str = "defaults"

    @property
    def telegram_enabled(self) -> bool:
        """Tell whether the Telegram channel is configured."""
        return bool(self.telegram.token)

    @property
    def whatsapp_enabled(self) -> bool:
        """Tell whether the WhatsApp channel is configured."""
        return bool(self.twilio.auth_token and self.twilio.account_sid)


SECTIONS: dict[str, type] = {
    name: hint for name, hint in typing.get_type_hints(Config).items() if name != "source"
}

_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_WEEKLY_RE = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun) ([01]?\d|2[0-3]):([0-5]\d)$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check one value against its declared type, converting env strings."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected a whole number, got {value!r}")
    if annotation is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
        raise ConfigError(f"{name}: expected a table of strings, got {value!r}")
    raise ConfigError(f"{name}: unsupported type")  # pragma: no cover - declaration error


def _section_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build_section(section: str, cls: type, raw: dict[str, Any], env: dict[str, str]) -> Any:
    fields = _section_fields(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(f"[{section}] {key}: unknown key")
    values: dict[str, Any] = {}
    for key, annotation in fields.items():
        env_name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
        if env_name in env and typing.get_origin(annotation) is not dict:
            values[key] = _coerce(env_name, env[env_name], annotation)
        elif key in raw:
            values[key] = _coerce(f"[{section}] {key}", raw[key], annotation)
    return cls(**values)


def _validate(cfg: Config) -> None:
    """Check values that have the right type but are still wrong."""
    for section, key in (("server", "public_url"), ("telegram", "api_base_url"),
                         ("twilio", "api_base_url")):
        url = getattr(getattr(cfg, section), key)
        if not re.match(r"^https?://[^\s/]+", url):
            raise ConfigError(f"[{section}] {key}: expected an http(s) URL, got {url!r}")
    if not (0 < cfg.server.port < 65536):
        raise ConfigError(f"[server] port: expected 1-65535, got {cfg.server.port}")
    if cfg.server.workers < 1:
        raise ConfigError("[server] workers: expected at least 1")
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", cfg.database.url):
        raise ConfigError(
            "[database] url: expected sqlite:/// or postgresql+psycopg://, "
            f"got {cfg.database.url!r}"
        )
    if cfg.telegram.webhook_secret and not _SECRET_RE.match(cfg.telegram.webhook_secret):
        raise ConfigError("[telegram] webhook_secret: 1-256 characters of A-Z, a-z, 0-9, _ and -")
    if cfg.telegram.token and not cfg.telegram.webhook_secret:
        raise ConfigError("[telegram] webhook_secret: required when a token is set")
    if cfg.twilio.auth_token and not cfg.twilio.account_sid:
        raise ConfigError("[twilio] account_sid: required when auth_token is set")
    if cfg.twilio.whatsapp_from and not cfg.twilio.whatsapp_from.startswith("whatsapp:+"):
        raise ConfigError("[twilio] whatsapp_from: expected whatsapp:+E164")
    for section, key in (("telegram", "rate_per_s"), ("telegram", "rate_per_chat_per_s"),
                         ("twilio", "rate_per_s")):
        if getattr(getattr(cfg, section), key) <= 0:
            raise ConfigError(f"[{section}] {key}: must be above 0")
    if cfg.bot.default_language not in cfg.bot.languages:
        raise ConfigError("[bot] default_language: must be one of [bot] languages")
    for tz_key in ("default_timezone",):
        try:
            ZoneInfo(getattr(cfg.bot, tz_key))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"[bot] {tz_key}: unknown IANA timezone") from exc
    if cfg.bot.flow_timeout_minutes < 1:
        raise ConfigError("[bot] flow_timeout_minutes: expected at least 1")
    for key in ("parent_checkin", "carer_question", "weekly_tip"):
        if not _WEEKLY_RE.match(getattr(cfg.scheduler, key).strip().lower()):
            raise ConfigError(f"[scheduler] {key}: expected a day and time like 'sun 19:00'")
    for key in ("quiet_hours_start", "quiet_hours_end"):
        if not _TIME_RE.match(getattr(cfg.scheduler, key)):
            raise ConfigError(f"[scheduler] {key}: expected HH:MM")
    if cfg.scheduler.silent_parent_days < 1:
        raise ConfigError("[scheduler] silent_parent_days: expected at least 1")
    for key in ("retention_days", "tick_seconds"):
        if getattr(cfg.scheduler, key) < 1:
            raise ConfigError(f"[scheduler] {key}: expected at least 1")
    if not 0 <= cfg.server.worker_nice <= 19:
        raise ConfigError("[server] worker_nice: expected 0 to 19")
    if cfg.server.inbound not in ("queue", "inline"):
        raise ConfigError('[server] inbound: expected "queue" or "inline"')
    if cfg.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("[logging] level: expected DEBUG, INFO, WARNING or ERROR")


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Load the configuration from a TOML file (or defaults) and the environment."""
    env = dict(os.environ) if env is None else env
    if path is None:
        path = env.get(ENV_CONFIG) or None
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        source = str(p)
    for key, value in raw.items():
        if key not in SECTIONS:
            raise ConfigError(f"[{key}]: unknown section")
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a [{key}] table")
    sections = {
        name: _build_section(name, cls, raw.get(name, {}), env) for name, cls in SECTIONS.items()
    }
    cfg = Config(**sections, source=source)
    if f"{ENV_PREFIX}DATABASE_URL" not in env and cfg.database.url.startswith("sqlite:///"):
        # A relative SQLite path is relative to the config file's folder, so that a
        # service started from another directory finds the same database.
        rel = cfg.database.url[len("sqlite:///"):]
        if rel and not rel.startswith("/") and rel != ":memory:" and path is not None:
            base = Path(path).resolve().parent
            cfg.database.url = "sqlite:///" + str(base / rel)
    _validate(cfg)
    return cfg


def sqlite_path(url: str) -> Path | None:
    """Return the file path of a SQLite URL, or None for other databases."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):]
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


__all__ = ["Config", "ConfigError", "load_config", "sqlite_path"]
