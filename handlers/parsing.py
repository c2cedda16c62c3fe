"""Parse what people type in chat: rupiah amounts, due dates, times, weekdays, yes/no.

Every function here is pure (no I/O, no clock: `today` is a parameter) and never raises on
arbitrary text; it answers None (or a reason) when the input is not understood, so a chat
flow can ask again. Input is read case-insensitively, after Unicode NFKC normalisation
(full-width digits typed on a Chinese keyboard in Taiwan or Hong Kong become ASCII digits)
and with accents removed (Sundanese `Pébruari`).
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, time, timedelta
from fractions import Fraction
from typing import Literal

__all__ = [
    "MAX_AMOUNT",
    "MIN_AMOUNT",
    "AmountReason",
    "AmountResult",
    "normalise_yes_no",
    "parse_amount",
    "parse_amount_detail",
    "parse_due_date",
    "parse_time_of_day",
    "parse_weekday",
]

MIN_AMOUNT = 1_000
"""The smallest plausible request, in rupiah; less is a typo (`150` meant `150rb`)."""

MAX_AMOUNT = 100_000_000
"""The largest plausible school-fund request, in rupiah; more is a typo."""

# Long inputs are not amounts; the cap also bounds the work done on hostile input.
_MAX_AMOUNT_INPUT = 100
# More significant digits than this cannot be under MAX_AMOUNT; it also keeps int() away from
# Python's 4300-digit conversion limit.
_MAX_NUMERAL_DIGITS = 15

AmountReason = Literal["ok", "empty", "not_a_number", "too_small", "too_large", "ambiguous"]


@dataclass(frozen=True, slots=True)
class AmountResult:
    """The outcome of reading an amount: the rupiah, or why there are none."""

    amount: int | None
    reason: AmountReason

    @property
    def ok(self) -> bool:
        """Tell whether an amount was read."""
        return self.amount is not None


# --- shared text clean-up -----------------------------------------------------------------


# Emoji and their modifiers (skin tones, variation selectors, joiners): `150rb 🙏` is 150rb.
_IGNORED_CATEGORIES = frozenset({"So", "Sk", "Cf", "Cc", "Co", "Cs"})


def _ignored(ch: str) -> bool:
    """Tell whether a character carries no meaning here: an accent, an emoji, a control."""
    return (
        unicodedata.combining(ch) != 0
        or "\ufe00" <= ch <= "\ufe0f"
        or unicodedata.category(ch) in _IGNORED_CATEGORIES
    )


def _fold(text: str) -> str:
    """Return text in NFKC, lower case, without accents, emoji, curly quotes or extra spaces."""
    text = unicodedata.normalize("NFKC", text)
    decomposed = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in decomposed if not _ignored(ch))
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u2212", "-")
    return " ".join(text.split())


# --- amounts ------------------------------------------------------------------------------

# Number words: Indonesian, plus Javanese (ngoko) with the linking forms used before
# puluh/atus/ewu (`rong atus ewu` = 200.000), since many carers write as they speak.
_SMALL_WORDS: dict[str, int] = {
    "nol": 0,
    "satu": 1,
    "dua": 2,
    "tiga": 3,
    "empat": 4,
    "lima": 5,
    "enam": 6,
    "tujuh": 7,
    "delapan": 8,
    "sembilan": 9,
    "sepuluh": 10,
    "sebelas": 11,
    "siji": 1,
    "loro": 2,
    "rong": 2,
    "telu": 3,
    "telung": 3,
    "papat": 4,
    "patang": 4,
    "limang": 5,
    "enem": 6,
    "nem": 6,
    "pitu": 7,
    "pitung": 7,
    "wolu": 8,
    "wolung": 8,
    "sanga": 9,
    "sangang": 9,
    "sewelas": 11,
    "rolas": 12,
    "telulas": 13,
    "patbelas": 14,
    "limalas": 15,
    "nembelas": 16,
    "pitulas": 17,
    "wolulas": 18,
    "sangalas": 19,
    "selikur": 21,
    "rolikur": 22,
    "telulikur": 23,
    "patlikur": 24,
    "selawe": 25,
    "nemlikur": 26,
    "pitulikur": 27,
    "wolulikur": 28,
    "sangalikur": 29,
    "seket": 50,
    "sewidak": 60,
    "suwidak": 60,
}
# Round tens that a following unit digit may complete (`seket loro` = 52).
_OPEN_TENS_WORDS = frozenset({"seket", "sewidak", "suwidak"})
_TENS = frozenset({"puluh"})
_TEENS = frozenset({"belas"})
_HUNDREDS = frozenset({"ratus", "atus"})
_ONE_HUNDRED = frozenset({"seratus", "satus"})
_BIG: dict[str, int] = {
    "k": 1_000,
    "rb": 1_000,
    "rbu": 1_000,
    "ribu": 1_000,
    "rebu": 1_000,
    "ewu": 1_000,
    "jt": 1_000_000,
    "jta": 1_000_000,
    "juta": 1_000_000,
    "yuta": 1_000_000,
    "miliar": 1_000_000_000,
    "milyar": 1_000_000_000,
    "triliun": 1_000_000_000_000,
}
_ONE_BIG: dict[str, int] = {
    "seribu": 1_000,
    "sewu": 1_000,
    "sejuta": 1_000_000,
    "sayuta": 1_000_000,
    "semiliar": 1_000_000_000,
    "semilyar": 1_000_000_000,
}
_HALF = frozenset({"setengah", "stengah", "separo"})
# `m` is million in English but miliar (a thousand times more) in Indonesian shorthand.
_AMBIGUOUS_UNITS = frozenset({"m", "mio", "mil", "mn"})

_AMOUNT_TOKEN = re.compile(r"[0-9]+(?:[.,][0-9]+)*|[a-z]+|\S", re.ASCII)
_GROUPED_DOT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{3})+", re.ASCII)
_GROUPED_COMMA = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+", re.ASCII)
_DECIMAL = re.compile(r"([0-9]+)[.,]([0-9]{1,2})", re.ASCII)
_SPACE_GROUPED = re.compile(r"[0-9]{1,3}(?: [0-9]{3})+", re.ASCII)
_TRAILING_PUNCT = re.compile(r"[\s.,!?]+$")
_CURRENCY_SUFFIX = re.compile(r"(?<![a-z])(?:rupiah|idr|rp)\.?$")
_DASH_SUFFIX = re.compile(r"\s*[.,]\s*-+$")
_ZERO_CENTS = re.compile(r"(?<=[0-9])[.,]00$")
_CURRENCY_PREFIX = re.compile(r"^(?:rp\.?|idr)\s*")


class _Reject(Exception):
    """Raised inside the amount reader to stop with a reason."""

    def __init__(self, reason: AmountReason) -> None:
        super().__init__(reason)
        self.reason: AmountReason = reason


def parse_amount(text: str) -> int | None:
    """Return the rupiah amount typed in text, or None; see `parse_amount_detail`."""
    return parse_amount_detail(text).amount


def parse_amount_detail(text: str) -> AmountResult:
    """Read a rupiah amount as people type it in chat, with the reason when it fails.

    Accepted: digits (`150000`), thousands separators (`150.000`, `150,000`, `150 000`),
    a currency prefix or suffix (`Rp`, `Rp.`, `IDR`, `rupiah`), units (`rb`/`ribu`/`k` =
    thousand, `jt`/`juta` = million, Javanese `ewu`/`yuta`), number words in Indonesian and
    Javanese (`seratus lima puluh ribu`, `satus seket ewu`), halves (`setengah juta`,
    `satu setengah juta`, `sejuta setengah`) and combinations (`1 juta 500 ribu`,
    `1jt 500rb`).

    Rules for the ambiguous cases:
    - A dot or comma followed by exactly three digits (in groups of three: `1.500.000`) is a
      thousands separator, also before a unit: `1.500 rb` is 1.500.000.
    - A single dot or comma followed by 1-2 digits is a decimal separator, and is accepted
      only before a unit (`1,5 jt`, `1.25jt`, `2,5k`); alone (`1,5`, `150,50`) it is
      "ambiguous" (1,5 what? or a fraction of a rupiah).
    - A trailing `,-` / `.-` and zero cents `,00` / `.00` are ignored (`Rp 150.000,-`).
    - `m` (also `mio`, `mil`) is "ambiguous": million in English, miliar in Indonesian.
    - A bare number after juta (`2 juta 500`) is "ambiguous": people often mean 2.500.000.
      After ribu it counts as rupiah (`seribu lima ratus` is 1.500).
    - A leading minus is "too_small" (a negative amount); zero is "too_small".
    - Anything else in the text (`150abc`, `150rb untuk buku`) is "not_a_number": amounts
      are money, so we would rather ask again than guess.
    - Under MIN_AMOUNT is "too_small", over MAX_AMOUNT is "too_large".
    """
    if not text or not text.strip():
        return AmountResult(None, "empty")
    if len(text) > _MAX_AMOUNT_INPUT:
        return AmountResult(None, "not_a_number")
    s = _strip_currency(_fold(text))
    negative = s.startswith("-")
    if negative:
        s = _strip_currency(s[1:].strip())
    try:
        value = _read_amount(s)
    except _Reject as rejected:
        return AmountResult(None, rejected.reason)
    if negative or value < MIN_AMOUNT:
        return AmountResult(None, "too_small")
    if value > MAX_AMOUNT:
        return AmountResult(None, "too_large")
    return AmountResult(value, "ok")


def _strip_currency(s: str) -> str:
    """Remove the currency words and the accounting decorations around an amount."""
    s = _TRAILING_PUNCT.sub("", s)
    s = _CURRENCY_SUFFIX.sub("", s).strip()
    s = _DASH_SUFFIX.sub("", s)
    s = _ZERO_CENTS.sub("", s)
    s = _CURRENCY_PREFIX.sub("", s)
    return s.strip()


def _read_amount(s: str) -> int:
    """Return the whole rupiah in s (no currency words left), or raise _Reject."""
    if _SPACE_GROUPED.fullmatch(s):
        s = s.replace(" ", "")
    tokens = _AMOUNT_TOKEN.findall(s)
    if not tokens:
        raise _Reject("not_a_number")
    total = _AmountReader(tokens).read()
    if total.denominator != 1:
        raise _Reject("not_a_number")  # a fraction of a rupiah
    return int(total)


def _read_numeral(token: str) -> tuple[Fraction, bool] | None:
    """Return a numeral's value and whether it has decimals, or None if it is not a numeral.

    Raises _Reject for a malformed numeral (`1.2.3`, `12,34,5`).
    """
    if token[0] not in "0123456789":
        return None  # other scripts' digits (Arabic-Indic...) are not read as amounts
    if token.isdigit() or _GROUPED_DOT.fullmatch(token) or _GROUPED_COMMA.fullmatch(token):
        digits = token.replace(".", "").replace(",", "")
        if len(digits.lstrip("0")) > _MAX_NUMERAL_DIGITS:
            raise _Reject("too_large")
        return Fraction(int(digits)), False
    decimal = _DECIMAL.fullmatch(token)
    if decimal:
        whole, fraction = decimal.groups()
        if len(whole.lstrip("0")) > _MAX_NUMERAL_DIGITS:
            raise _Reject("too_large")
        return Fraction(f"{whole}.{fraction}"), True
    raise _Reject("not_a_number")


class _AmountReader:
    """Add up a sequence of numerals, number words and units, left to right.

    The current group (below the next unit) is built from a numeral, or from words:
    `hundreds` + `rest`. A unit (ribu, juta) multiplies the group into `total`; units must
    come in decreasing order (`1 juta 500 ribu`).
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.total = Fraction(0)
        self.last_unit: int | None = None
        self.saw_number = False
        self._reset_group()

    def _reset_group(self) -> None:
        self.literal: Fraction | None = None  # a numeral >= 1000 or with decimals
        self.literal_is_decimal = False
        self.hundreds = 0
        self.rest = 0
        self.rest_set = False
        self.digit: int | None = None  # a lone digit that puluh/belas/ratus may multiply
        self.tens_open = False  # `dua puluh` or `seket`: a unit digit may follow
        self.half = False

    @property
    def started(self) -> bool:
        return self.literal is not None or self.hundreds > 0 or self.rest_set

    def _group(self) -> Fraction:
        value = self.literal if self.literal is not None else Fraction(self.hundreds + self.rest)
        return value + Fraction(1, 2) if self.half else value

    def read(self) -> Fraction:
        for index, token in enumerate(self.tokens):
            following = self.tokens[index + 1] if index + 1 < len(self.tokens) else None
            self._take(token, following)
        if self.started:
            self._close_trailing_group()
        if not self.saw_number:
            raise _Reject("not_a_number")
        return self.total

    def _take(self, token: str, following: str | None) -> None:
        numeral = _read_numeral(token)
        if numeral is not None:
            value, is_decimal = numeral
            self.saw_number = True
            if is_decimal or value >= 1000:
                if self.started or self.half:
                    raise _Reject("not_a_number")
                self.literal, self.literal_is_decimal = value, is_decimal
            else:
                self._add_small(int(value), open_tens=False)
        elif token in _SMALL_WORDS:
            self.saw_number = True
            self._add_small(_SMALL_WORDS[token], open_tens=token in _OPEN_TENS_WORDS)
        elif token in _TENS or token in _TEENS:
            if self.digit is None or self.rest != self.digit or self.half:
                raise _Reject("not_a_number")
            self.rest = self.digit * 10 if token in _TENS else 10 + self.digit
            self.tens_open = token in _TENS
            self.digit = None
        elif token in _HUNDREDS:
            if self.hundreds or self.digit is None or self.rest != self.digit or self.half:
                raise _Reject("not_a_number")
            self.hundreds, self.rest, self.rest_set, self.digit = self.digit * 100, 0, False, None
        elif token in _ONE_HUNDRED:
            if self.started or self.half:
                raise _Reject("not_a_number")
            self.saw_number = True
            self.hundreds = 100
        elif token in _BIG or token in _ONE_BIG:
            self._apply_unit(token)
        elif token in _HALF:
            self._take_half(following)
        elif token in _AMBIGUOUS_UNITS and self.saw_number:
            raise _Reject("ambiguous")
        else:
            raise _Reject("not_a_number")

    def _add_small(self, value: int, *, open_tens: bool) -> None:
        """Add a number below 1000 to the group: a first number, or a unit after tens."""
        if self.literal is not None or self.half:
            raise _Reject("not_a_number")
        if not self.rest_set:
            self.rest, self.rest_set = value, True
            self.digit = value if 1 <= value <= 9 else None
            self.tens_open = open_tens
        elif self.tens_open and 1 <= value <= 9:
            self.rest += value  # `dua puluh lima`, `seket loro`
            self.tens_open, self.digit = False, None
        else:
            raise _Reject("not_a_number")

    def _apply_unit(self, token: str) -> None:
        if token in _ONE_BIG:
            if self.started or self.half:
                raise _Reject("not_a_number")
            self.saw_number = True
            unit, group = _ONE_BIG[token], Fraction(1)
        else:
            if not self.started and not self.half:
                raise _Reject("not_a_number")  # `jt`, `rb 150`
            if self.half and self.literal_is_decimal:
                raise _Reject("not_a_number")
            unit, group = _BIG[token], self._group()
        if self.last_unit is not None and unit >= self.last_unit:
            raise _Reject("not_a_number")  # `500 ribu 1 juta`, `1 juta 2 juta`
        self.total += group * unit
        self.last_unit = unit
        self._reset_group()

    def _take_half(self, following: str | None) -> None:
        self.saw_number = True
        if following in _BIG:
            # `setengah juta`, `satu setengah juta`: half is added to the group.
            if self.half or self.literal_is_decimal:
                raise _Reject("not_a_number")
            self.half = True
        elif following is None and not self.started and self.last_unit is not None:
            # `sejuta setengah`: half of the unit just said.
            self.total += Fraction(self.last_unit, 2)
        elif following is None:
            raise _Reject("ambiguous")  # `satu setengah`: one and a half what?
        else:
            raise _Reject("not_a_number")

    def _close_trailing_group(self) -> None:
        """Add a group with no unit after it, unless it is ambiguous."""
        group = self._group()
        if self.literal_is_decimal:
            raise _Reject("ambiguous")  # `1,5`, `150,50`
        if self.last_unit is not None:
            if group >= self.last_unit:
                raise _Reject("not_a_number")  # `1 ribu 5000`
            if self.last_unit >= 1_000_000 and group < 1_000:
                raise _Reject("ambiguous")  # `2 juta 500`: most mean 2.500.000
        self.total += group


# --- dates --------------------------------------------------------------------------------

# Full month names in Indonesian, English, Javanese and Sundanese spellings (Javanese and
# Sundanese use the Indonesian names, often with the older P-spellings). Any unambiguous
# prefix of three letters or more is accepted too (`jan`, `sept`, `des`, `nop`).
_MONTH_NAMES: dict[str, int] = {
    "januari": 1,
    "january": 1,
    "februari": 2,
    "pebruari": 2,
    "febuari": 2,
    "pebuari": 2,
    "february": 2,
    "maret": 3,
    "march": 3,
    "april": 4,
    "mei": 5,
    "may": 5,
    "juni": 6,
    "june": 6,
    "juli": 7,
    "july": 7,
    "agustus": 8,
    "agustos": 8,
    "august": 8,
    "september": 9,
    "oktober": 10,
    "october": 10,
    "november": 11,
    "nopember": 11,
    "desember": 12,
    "december": 12,
}
_MONTH_ABBREVIATIONS: dict[str, int] = {"agt": 8, "ags": 8, "sep": 9, "sept": 9}

_RELATIVE_DAYS: dict[str, int] = {
    "hari ini": 0,
    "today": 0,
    "besok": 1,
    "besuk": 1,
    "sesuk": 1,
    "tomorrow": 1,
    "lusa": 2,
    "day after tomorrow": 2,
    "minggu depan": 7,
    "pekan depan": 7,
    "minggu ngarep": 7,
    "next week": 7,
}
_END_OF_MONTH = frozenset({"akhir bulan", "end of month", "end of the month", "akhir wulan"})

_MAX_DAYS_AHEAD = 366
_DATE_PREFIX = re.compile(r"^(?:tanggal|tgl\.?|tg\.?|on)\s*")
_ISO_DATE = re.compile(r"([0-9]{4})[-/.]([0-9]{1,2})[-/.]([0-9]{1,2})", re.ASCII)
_NUMERIC_DATE = re.compile(r"([0-9]{1,2})[-/.]([0-9]{1,2})(?:[-/.]([0-9]{4}|[0-9]{2}))?", re.ASCII)
_DAY_MONTH_NAME = re.compile(
    r"([0-9]{1,2})(?:st|nd|rd|th)?[\s-]*([a-z]+)\.?(?:[\s,-]+([0-9]{4}|[0-9]{2}))?", re.ASCII
)
_MONTH_NAME_DAY = re.compile(
    r"([a-z]+)\.?\s*([0-9]{1,2})(?:st|nd|rd|th)?(?:,?\s+([0-9]{4}))?", re.ASCII
)
_DAY_ONLY = re.compile(r"[0-9]{1,2}", re.ASCII)


def parse_due_date(text: str, today: date) -> date | None:
    """Read an optional due date typed in Indonesian, Javanese or English, or return None.

    Accepted: `15/1`, `15-1-2027`, `15.01.27`, `2027-01-15`, `15 Jan`, `15 januari 2027`,
    `January 15, 2027`, `tgl 15`, `besok`/`tomorrow`, `lusa`, `minggu depan`/`next week`
    (today + 7), `akhir bulan`/`end of month` (the last day of this month).

    Rules: numeric dates are always day first (`1/15` is None, not 15 January); a day and
    month without a year is the next such date on or after today (`5/1` on 20 December is
    next January); `tgl 15` alone is the next 15th; a two-digit year is 20xx. Past dates,
    dates more than 366 days ahead and dates that do not exist (`31/2`) give None.
    """
    if not text or len(text) > 60:
        return None
    s = _TRAILING_PUNCT.sub("", _fold(text))
    if s in _RELATIVE_DAYS:
        return today + timedelta(days=_RELATIVE_DAYS[s])
    if s in _END_OF_MONTH:
        return today.replace(day=calendar.monthrange(today.year, today.month)[1])
    has_prefix = _DATE_PREFIX.match(s) is not None
    s = _DATE_PREFIX.sub("", s)

    if match := _ISO_DATE.fullmatch(s):
        year, month, day = (int(group) for group in match.groups())
        return _resolve_date(day, month, year, today)
    if match := _NUMERIC_DATE.fullmatch(s):
        return _resolve_date(int(match[1]), int(match[2]), _year(match[3]), today)
    if match := _DAY_MONTH_NAME.fullmatch(s):
        named_month = _month_from_word(match[2])
        if named_month is None:
            return None
        return _resolve_date(int(match[1]), named_month, _year(match[3]), today)
    if match := _MONTH_NAME_DAY.fullmatch(s):
        named_month = _month_from_word(match[1])
        if named_month is None:
            return None
        return _resolve_date(int(match[2]), named_month, _year(match[3]), today)
    if has_prefix and _DAY_ONLY.fullmatch(s):
        return _next_day_of_month(int(s), today)
    return None


def _year(text: str | None) -> int | None:
    """Return a four-digit year from `2027` or `27`, or None."""
    if text is None:
        return None
    return int(text) + 2000 if len(text) == 2 else int(text)


def _month_from_word(word: str) -> int | None:
    """Return the month number of a month name or an unambiguous prefix of one."""
    if word in _MONTH_NAMES:
        return _MONTH_NAMES[word]
    if word in _MONTH_ABBREVIATIONS:
        return _MONTH_ABBREVIATIONS[word]
    if len(word) < 3:
        return None
    months = {month for name, month in _MONTH_NAMES.items() if name.startswith(word)}
    return months.pop() if len(months) == 1 else None


def _in_window(candidate: date, today: date) -> bool:
    return 0 <= (candidate - today).days <= _MAX_DAYS_AHEAD


def _resolve_date(day: int, month: int, year: int | None, today: date) -> date | None:
    """Return the date, choosing the year when none is given, if it lies in the window."""
    years = [year] if year is not None else [today.year, today.year + 1]
    for candidate_year in years:
        try:
            candidate = date(candidate_year, month, day)
        except ValueError:
            continue  # 31/2, or 29/2 outside a leap year: try the next year if allowed
        if candidate >= today or year is not None:
            return candidate if _in_window(candidate, today) else None
    return None


def _next_day_of_month(day: int, today: date) -> date | None:
    """Return the next date on or after today whose day of the month is `day`."""
    year, month = today.year, today.month
    for _ in range(13):
        try:
            candidate = date(year, month, day)
        except ValueError:
            candidate = None  # this month has no such day (the 31st of April)
        if candidate is not None and candidate >= today:
            return candidate if _in_window(candidate, today) else None
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return None


# --- times of day -------------------------------------------------------------------------

_HOUR_WORDS: dict[str, int] = {
    "satu": 1,
    "dua": 2,
    "tiga": 3,
    "empat": 4,
    "lima": 5,
    "enam": 6,
    "tujuh": 7,
    "delapan": 8,
    "sembilan": 9,
    "sepuluh": 10,
    "sebelas": 11,
    "dua belas": 12,
    "siji": 1,
    "loro": 2,
    "telu": 3,
    "papat": 4,
    "enem": 6,
    "pitu": 7,
    "wolu": 8,
    "sanga": 9,
    "sewelas": 11,
    "rolas": 12,
}
# Parts of the day in Indonesian, Javanese (ngoko and krama) and Sundanese, mapped to one
# rule each in _apply_period.
_PERIODS: dict[str, str] = {
    "am": "am",
    "pm": "pm",
    "pagi": "morning",
    "esuk": "morning",
    "isuk": "morning",
    "enjing": "morning",
    "siang": "midday",
    "awan": "midday",
    "beurang": "midday",
    "sore": "afternoon",
    "petang": "afternoon",
    "sonten": "afternoon",
    "malam": "night",
    "bengi": "night",
    "wengi": "night",
    "dalu": "night",
    "peuting": "night",
    "dini hari": "small_hours",
    "subuh": "small_hours",
}
_TIME_PREFIX = re.compile(r"^(?:jam|pukul|pkl\.?|pk\.?|at|@)\s*")
_TIME = re.compile(
    r"(?:(?P<half>setengah)\s+)?(?P<hour>[0-9]{1,2})(?:[:.](?P<minute>[0-9]{2}))?"
    r"\s*(?P<period>[a-z][a-z ]*)?",
    re.ASCII,
)
_HOUR_WORD = re.compile(r"\b(" + "|".join(sorted(_HOUR_WORDS, key=len, reverse=True)) + r")\b")


def parse_time_of_day(text: str) -> time | None:
    """Read a time of day (`20:00`, `20.00`, `20`, `8 malam`, `8pm`, `setengah 8`), or None.

    Rules: a bare hour is on the 24-hour clock (`8` is 08:00); the part of the day fixes
    the 12-hour reading: `pagi` 1-11, `siang` 10-12 and 1-5 (`1 siang` is 13:00), `sore`
    1-7 (`3 sore` is 15:00), `malam` 5-11 (`8 malam` is 20:00), 12 (midnight) and 1-4
    (`jam 1 malam` is 01:00); `am`/`pm` as in English. `setengah 8` means 7:30 (half to
    eight), as in Indonesian. Hours may be written as words (`jam delapan malam`).
    """
    if not text or len(text) > 40:
        return None
    s = _fold(text).replace("a.m.", "am").replace("p.m.", "pm")
    s = _TRAILING_PUNCT.sub("", s)
    s = _TIME_PREFIX.sub("", s)
    s = _HOUR_WORD.sub(lambda word: str(_HOUR_WORDS[word[1]]), s, count=1)
    match = _TIME.fullmatch(s)
    if not match:
        return None
    hour = int(match["hour"])
    minute = int(match["minute"]) if match["minute"] is not None else 0
    period = None
    if match["period"] is not None:
        period = _PERIODS.get(match["period"].strip())
        if period is None:
            return None
    if match["half"]:
        if match["minute"] is not None or not 1 <= hour <= 24:
            return None
        hour, minute = hour - 1, 30
        if hour == 0 and period is not None:
            hour = 12  # `setengah satu siang` is 12:30
    converted = _apply_period(hour, period)
    if converted is None or not 0 <= minute <= 59:
        return None
    return time(converted, minute)


def _apply_period(hour: int, period: str | None) -> int | None:
    """Return the 24-hour hour for an hour said with a part of the day, or None."""
    if period is None:
        return hour if 0 <= hour <= 23 else None
    if hour >= 13:
        # Already a 24-hour hour: accept it when the part of the day agrees.
        agrees = {"pm": 13, "midday": 13, "afternoon": 13, "night": 17}
        return hour if period in agrees and agrees[period] <= hour <= 23 else None
    rules: dict[str, dict[int, int]] = {
        "am": {12: 0, **{h: h for h in range(1, 12)}},
        "pm": {12: 12, **{h: h + 12 for h in range(1, 12)}},
        "morning": {h: h for h in range(1, 12)},
        "midday": {10: 10, 11: 11, 12: 12, **{h: h + 12 for h in range(1, 6)}},
        "afternoon": {h: h + 12 for h in range(1, 8)},
        "night": {12: 0, **{h: h for h in range(1, 5)}, **{h: h + 12 for h in range(5, 12)}},
        "small_hours": {h: h for h in range(0, 6)},
    }
    return rules[period].get(hour)


# --- weekdays -----------------------------------------------------------------------------

_WEEKDAYS: dict[str, int] = {
    # Indonesian (and Malay), with calendar abbreviations
    "senin": 0,
    "sen": 0,
    "isnin": 0,
    "selasa": 1,
    "sel": 1,
    "rabu": 2,
    "rab": 2,
    "kamis": 3,
    "kam": 3,
    "khamis": 3,
    "jumat": 4,
    "jumaat": 4,
    "jum": 4,
    "sabtu": 5,
    "sab": 5,
    "minggu": 6,
    "min": 6,
    "ahad": 6,
    # English, with abbreviations
    "monday": 0,
    "mon": 0,
    "tuesday": 1,
    "tue": 1,
    "tues": 1,
    "wednesday": 2,
    "wed": 2,
    "thursday": 3,
    "thu": 3,
    "thur": 3,
    "thurs": 3,
    "friday": 4,
    "fri": 4,
    "saturday": 5,
    "sat": 5,
    "sunday": 6,
    "sun": 6,
    # Javanese
    "senen": 0,
    "seloso": 1,
    "rebo": 2,
    "kemis": 3,
    "jemuah": 4,
    "jemuwah": 4,
    "setu": 5,
}


def parse_weekday(text: str) -> int | None:
    """Return the weekday (Monday=0 ... Sunday=6) named in Indonesian, English or Javanese."""
    if not text or len(text) > 30:
        return None
    s = _fold(text).replace("'", "").replace(".", "").replace(",", "")
    s = s.strip("!? ")
    if s.startswith("hari "):
        s = s[len("hari ") :]
    return _WEEKDAYS.get(s)


# --- yes / no -----------------------------------------------------------------------------

_YES_WORDS = (
    *("ya", "iya", "y", "yes", "yup", "yep", "ok", "oke", "okay", "okey", "setuju", "sip"),
    *("nggih", "inggih", "enggih", "enggeh", "iyo", "yo"),  # Javanese
    *("sumuhun", "muhun", "leres"),  # Sundanese
)
_NO_WORDS = (
    *("tidak", "tdk", "tak", "gak", "ga", "gk", "nggak", "enggak", "engga", "ndak"),
    *("no", "n", "nope"),
    *("ora", "mboten", "boten"),  # Javanese
    *("henteu", "embung", "teu"),  # Sundanese
)
# A no-word with one of these is still no (`tidak setuju`, `ora gelem`).
_AGREE_WORDS = frozenset({"setuju", "mau", "gelem", "purun", "hoyong", "bersedia"})


def _squeeze(word: str) -> str:
    """Collapse repeated letters, so `yaaa`, `okee` and `nggakk` read as `ya`, `oke`, `ngak`."""
    return re.sub(r"(.)\1+", r"\1", word)


_YES = frozenset(_squeeze(word) for word in _YES_WORDS)
_NO = frozenset(_squeeze(word) for word in _NO_WORDS)
_AGREE = frozenset(_squeeze(word) for word in _AGREE_WORDS)


def normalise_yes_no(text: str) -> bool | None:
    """Return True for yes, False for no (Indonesian, Javanese, Sundanese, English), else None.

    One word, case and punctuation ignored, letters may be repeated (`Yaaa!`). A no-word
    followed by an agreeing word is no (`tidak setuju`); anything longer is None, so that
    a consent is never read from a sentence.
    """
    if not text or len(text) > 40:
        return None
    letters = "".join(ch if ch.isalpha() else " " for ch in _fold(text))
    words = [_squeeze(word) for word in letters.split()]
    if len(words) == 1:
        if words[0] in _YES:
            return True
        if words[0] in _NO:
            return False
    if len(words) == 2 and words[0] in _NO and words[1] in _AGREE:
        return False
    return None
