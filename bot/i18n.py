"""Languages: one translator per message, chosen from the recipient's language.

Catalogs are standard gettext ``.po`` files under ``locales/<lang>/LC_MESSAGES/``, read
with Babel (no compile step needed at run time, so a fresh checkout just works; ``make
compile`` still builds ``.mo`` files for other gettext tools). Nothing here installs a
process-wide language: two people in one broadcast read it in two languages.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date as _babel_date
from babel.dates import format_datetime as _babel_datetime
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

from bot.messages import Money, Part, Raw, Text

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
DOMAIN = "messages"
DEFAULT_LANGUAGE = "id"
# Babel's CLDR names for the languages whose short code it does not resolve alone.
_BABEL_LOCALE = {"su": "su_Latn_ID", "id": "id", "en": "en", "jv": "jv", "ms": "ms"}
_lock = threading.Lock()
# A catalog edited on disk is picked up within this many seconds, without a restart;
# checking the file on every message cost more than rendering the message.
RECHECK_S = 5.0
_checked: dict[tuple[str, Path], tuple[float, dict[str, str]]] = {}


def N_(msgid: str) -> str:  # noqa: N802 - the gettext convention
    """Mark a string for extraction without translating it here."""
    return msgid


def babel_locale(lang: str) -> Locale:
    """Return the Babel locale for one of our language codes."""
    return Locale.parse(_BABEL_LOCALE.get(lang, lang))


@functools.lru_cache(maxsize=32)
def _load_catalog(path: Path, mtime: float) -> dict[str, str]:
    with path.open("rb") as fh:
        catalog = read_po(fh, locale=None, domain=DOMAIN)
    out: dict[str, str] = {}
    for message in catalog:
        if not message.id or message.fuzzy:
            continue
        msgid = message.id if isinstance(message.id, str) else str(message.id[0])
        raw = message.string
        msgstr = raw if isinstance(raw, str) else (str(raw[0]) if raw else "")
        if msgstr:
            out[msgid] = msgstr
    return out


def catalog_path(lang: str, root: Path = LOCALES_DIR) -> Path:
    """Return where a language's catalog lives."""
    return root / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def load_catalog(lang: str, root: Path = LOCALES_DIR) -> dict[str, str]:
    """Return a language's translations as a dict (empty when there is no catalog)."""
    key = (lang, root)
    now = time.monotonic()
    cached = _checked.get(key)
    if cached is not None and now - cached[0] < RECHECK_S:
        return cached[1]
    path = catalog_path(lang, root)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        found: dict[str, str] = {}
    else:
        with _lock:
            found = _load_catalog(path, mtime)
    _checked[key] = (now, found)
    return found


def available_languages(root: Path = LOCALES_DIR) -> list[str]:
    """List the languages that have a catalog."""
    return sorted(p.parent.parent.name for p in root.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


class _SafeParams(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        # A translator's typo in a placeholder must not lose the message.
        return "{" + key + "}"


class Translator:
    """Renders messages in one language, falling back to the default language."""

    def __init__(self, lang: str, *, root: Path = LOCALES_DIR, default: str = DEFAULT_LANGUAGE):
        self.lang = lang
        self.root = root
        self.default = default

    def gettext(self, msgid: str) -> str:
        """Return the translation of msgid, or the default language's, or msgid."""
        found = load_catalog(self.lang, self.root).get(msgid)
        if found is None and self.lang != self.default:
            found = load_catalog(self.default, self.root).get(msgid)
        return found if found is not None else msgid

    def format_param(self, value: Any) -> Any:
        """Format one parameter for this language."""
        if isinstance(value, Money):
            return format_rupiah(value.amount, self.lang)
        if isinstance(value, Text):
            return self.render(value)
        if isinstance(value, Raw):
            return value.text
        if isinstance(value, datetime):
            return format_when(value, self.lang)
        if isinstance(value, date):
            return format_day(value, self.lang)
        return value

    def render(self, part: Part) -> str:
        """Render a message part to text in this language."""
        if isinstance(part, Raw):
            return part.text
        template = self.gettext(part.msgid)
        if not part.params:
            return template
        params = _SafeParams({k: self.format_param(v) for k, v in part.params.items()})
        try:
            return template.format_map(params)
        except (ValueError, IndexError):
            # A broken translation (stray brace) falls back to the source text.
            return part.msgid.format_map(params)

    def render_all(self, parts: list[Part], sep: str = "\n\n") -> str:
        """Render several parts as one message."""
        return sep.join(s for s in (self.render(p) for p in parts) if s)


@functools.lru_cache(maxsize=16)
def translator(lang: str) -> Translator:
    """Return the (shared, stateless) translator for a language."""
    return Translator(lang)


def format_rupiah(amount: int, lang: str) -> str:
    """Format rupiah for a locale: ``Rp150.000`` in id and jv, ``Rp150,000`` in en."""
    # CLDR writes IDR150,000 in English; every reader here knows "Rp".
    return "Rp" + format_decimal(amount, format="#,##0", locale=babel_locale(lang))


def format_when(value: datetime, lang: str, tz: str | None = None) -> str:
    """Format an instant for a locale and timezone: ``Kamis, 5 Maret 2026 08:30 WIB``."""
    zone = ZoneInfo(tz) if tz else None
    return _babel_datetime(value, "EEEE, d MMMM y HH:mm zzz", tzinfo=zone,
                           locale=babel_locale(lang))


def format_day(value: date, lang: str) -> str:
    """Format a calendar day for a locale: ``5 Maret 2026``."""
    return _babel_date(value, "d MMMM y", locale=babel_locale(lang))


def language_name(lang: str) -> str:
    """Return a language's own name (``Bahasa Indonesia``, ``English``, ``Jawa``)."""
    try:
        return str(babel_locale(lang).get_display_name(babel_locale(lang)) or lang).split(" (")[0]
    except Exception:
        return lang


def aliases(msgid: str, root: Path = LOCALES_DIR) -> Mapping[str, str]:
    """Return {language: translation} of one msgid across every catalog."""
    out: dict[str, str] = {}
    for lang in available_languages(root):
        found = load_catalog(lang, root).get(msgid)
        if found:
            out[lang] = found
    return out
