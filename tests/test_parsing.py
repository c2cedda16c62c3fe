"""Tables of what people really type, and properties that must hold for any text."""

from __future__ import annotations

from datetime import date, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.parsing import (
    MAX_AMOUNT,
    MIN_AMOUNT,
    AmountResult,
    normalise_yes_no,
    parse_amount,
    parse_amount_detail,
    parse_due_date,
    parse_time_of_day,
    parse_weekday,
)

# --- amounts ------------------------------------------------------------------------------

AMOUNTS: list[tuple[str, int]] = [
    # digits and thousands separators
    ("150000", 150_000),
    ("150.000", 150_000),
    ("150,000", 150_000),
    ("150 000", 150_000),
    ("1.500.000", 1_500_000),
    ("1,500,000", 1_500_000),
    ("1.500", 1_500),
    ("100.000.000", 100_000_000),
    ("1000", 1_000),
    # currency prefixes and suffixes, accounting decorations
    ("Rp150.000", 150_000),
    ("Rp 150.000", 150_000),
    ("Rp. 150.000,-", 150_000),
    ("Rp.150.000,-", 150_000),
    ("Rp150.000,00", 150_000),
    ("Rp 150.000.-", 150_000),
    ("RP 1.000.000,00 rupiah", 1_000_000),
    ("IDR 150000", 150_000),
    ("150000 IDR", 150_000),
    ("150.000 rupiah", 150_000),
    ("150.000.", 150_000),
    # thousands units
    ("150rb", 150_000),
    ("150 rb", 150_000),
    ("150RB", 150_000),
    ("150ribu", 150_000),
    ("150 ribu", 150_000),
    ("150 ribu rupiah", 150_000),
    (" 75rb ", 75_000),
    ("75rb!", 75_000),
    ("Rp75rb", 75_000),
    ("150k", 150_000),
    ("150K", 150_000),
    ("2,5k", 2_500),
    ("150 rebu", 150_000),
    ("1.500 rb", 1_500_000),
    # millions, with decimals before the unit
    ("2 juta", 2_000_000),
    ("2 JUTA", 2_000_000),
    ("2jt", 2_000_000),
    ("2 jt", 2_000_000),
    ("1,5 juta", 1_500_000),
    ("1,5jt", 1_500_000),
    ("1.5jt", 1_500_000),
    ("Rp 1,5 jt", 1_500_000),
    ("1,25 juta", 1_250_000),
    ("0,5 jt", 500_000),
    ("12,3 jt", 12_300_000),
    # combinations
    ("1 juta 500 ribu", 1_500_000),
    ("1jt 500rb", 1_500_000),
    ("1jt500rb", 1_500_000),
    ("2 juta 500.000", 2_500_000),
    ("150rb 500", 150_500),
    # Indonesian number words
    ("seratus ribu", 100_000),
    ("seratus lima puluh ribu", 150_000),
    ("dua ratus ribu", 200_000),
    ("dua ratus lima puluh ribu", 250_000),
    ("dua puluh lima ribu", 25_000),
    ("sebelas ribu", 11_000),
    ("dua belas ribu", 12_000),
    ("seribu", 1_000),
    ("seribu lima ratus", 1_500),
    ("sejuta", 1_000_000),
    ("Sejuta lima ratus ribu", 1_500_000),
    ("satu juta", 1_000_000),
    ("satu setengah juta", 1_500_000),
    ("setengah juta", 500_000),
    ("sejuta setengah", 1_500_000),
    ("dua setengah juta", 2_500_000),
    ("lima ratus ribu rupiah", 500_000),
    ("2 ratus ribu", 200_000),
    # Javanese number words
    ("satus ewu", 100_000),
    ("satus seket ewu", 150_000),
    ("rong atus ewu", 200_000),
    ("limang atus ewu", 500_000),
    ("sayuta limang atus ewu", 1_500_000),
    ("setengah yuta", 500_000),
    # emoji and trailing punctuation, as typed on WhatsApp
    ("150rb \U0001f64f", 150_000),
    ("150rb\U0001f44d\U0001f3fd", 150_000),
    ("150.000,", 150_000),
    # full-width digits from a Chinese keyboard (Taiwan, Hong Kong)
    ("１５０ｒｂ", 150_000),
]


@pytest.mark.parametrize(("text", "expected"), AMOUNTS)
def test_parse_amount_reads_real_spellings(text: str, expected: int) -> None:
    assert parse_amount(text) == expected
    assert parse_amount_detail(text) == AmountResult(expected, "ok")


REJECTS: list[tuple[str, str]] = [
    ("", "empty"),
    ("   ", "empty"),
    ("abc", "not_a_number"),
    ("seratus", "too_small"),
    ("150abc", "not_a_number"),
    ("1.2.3", "not_a_number"),
    ("12,34,5", "not_a_number"),
    ("1234.567", "not_a_number"),
    ("rp", "not_a_number"),
    ("Rp.", "not_a_number"),
    ("jt", "not_a_number"),
    ("rb 150", "not_a_number"),
    ("150rb untuk buku", "not_a_number"),
    ("500 ribu 1 juta", "not_a_number"),
    ("1 juta 2 juta", "not_a_number"),
    ("+150rb", "not_a_number"),
    ("0", "too_small"),
    ("0 rb", "too_small"),
    ("-150rb", "too_small"),
    ("- 150.000", "too_small"),
    ("Rp -150.000", "too_small"),
    ("500", "too_small"),
    ("150", "too_small"),
    ("Rp 150,00", "too_small"),
    ("200 juta", "too_large"),
    ("100.000.001", "too_large"),
    ("1 miliar", "too_large"),
    ("081234567890", "too_large"),
    ("9" * 40, "too_large"),
    ("1.5m", "ambiguous"),
    ("2m", "ambiguous"),
    ("1,5", "ambiguous"),
    ("150,5", "ambiguous"),
    ("150.50", "ambiguous"),
    ("2 juta 500", "ambiguous"),
    ("satu setengah", "ambiguous"),
    ("x" * 200, "not_a_number"),
]


@pytest.mark.parametrize(("text", "reason"), REJECTS)
def test_parse_amount_rejects_with_a_reason(text: str, reason: str) -> None:
    result = parse_amount_detail(text)
    assert result == AmountResult(None, reason)  # type: ignore[arg-type]
    assert not result.ok
    assert parse_amount(text) is None


def indonesian(n: int) -> str:
    """Format n as Indonesians write it: 1.500.000."""
    return f"{n:,}".replace(",", ".")


@given(st.integers(MIN_AMOUNT, MAX_AMOUNT), st.sampled_from(["", "Rp", "Rp ", "Rp.", "Rp. "]))
def test_indonesian_grouping_round_trips(n: int, prefix: str) -> None:
    assert parse_amount(prefix + indonesian(n)) == n
    assert parse_amount(prefix + indonesian(n) + ",-") == n
    assert parse_amount(str(n)) == n


@given(st.integers(MIN_AMOUNT // 1000, MAX_AMOUNT // 1000))
def test_thousands_units_round_trip(thousands: int) -> None:
    n = thousands * 1000
    assert parse_amount(f"{thousands}rb") == n
    assert parse_amount(f"{thousands} ribu") == n
    assert parse_amount(f"{thousands}k") == n


@given(st.integers(1, MAX_AMOUNT // 100_000))
def test_decimal_millions_round_trip(tenths: int) -> None:
    n = tenths * 100_000
    whole, tenth = divmod(tenths, 10)
    assert parse_amount(f"{whole},{tenth} jt") == n
    assert parse_amount(f"Rp {whole}.{tenth}juta") == n


@given(st.text(max_size=60))
def test_parse_amount_never_raises_and_stays_in_range(text: str) -> None:
    result = parse_amount_detail(text)
    assert (result.amount is None) == (result.reason != "ok")
    assert result.amount is None or MIN_AMOUNT <= result.amount <= MAX_AMOUNT


@given(st.text(alphabet="0123456789.,-rpbjtkRPJTKributa ", max_size=25))
def test_parse_amount_on_amount_like_noise(text: str) -> None:
    amount = parse_amount(text)
    assert amount is None or MIN_AMOUNT <= amount <= MAX_AMOUNT


# --- due dates ----------------------------------------------------------------------------

TODAY = date(2026, 3, 10)  # a Tuesday
YEAR_END = date(2026, 12, 20)

DUE_DATES: list[tuple[str, date, date | None]] = [
    ("15/3", TODAY, date(2026, 3, 15)),
    ("10/3", TODAY, date(2026, 3, 10)),  # today is not in the past
    ("9/3", TODAY, date(2027, 3, 9)),  # the next 9 March
    ("15/04/2026", TODAY, date(2026, 4, 15)),
    ("15-4-2026", TODAY, date(2026, 4, 15)),
    ("15.4.26", TODAY, date(2026, 4, 15)),
    ("2026-04-15", TODAY, date(2026, 4, 15)),
    ("15 Apr", TODAY, date(2026, 4, 15)),
    ("15 April", TODAY, date(2026, 4, 15)),
    ("15 april 2026", TODAY, date(2026, 4, 15)),
    ("15-Apr-2026", TODAY, date(2026, 4, 15)),
    ("April 15, 2026", TODAY, date(2026, 4, 15)),
    ("tgl 15", TODAY, date(2026, 3, 15)),
    ("tanggal 5", TODAY, date(2026, 4, 5)),
    ("1 Agustus", TODAY, date(2026, 8, 1)),
    ("1 August", TODAY, date(2026, 8, 1)),
    ("1 agt", TODAY, date(2026, 8, 1)),
    ("17 Agustus 2026", TODAY, date(2026, 8, 17)),
    ("25 Desember", TODAY, date(2026, 12, 25)),
    ("25 December", TODAY, date(2026, 12, 25)),
    ("25 des", TODAY, date(2026, 12, 25)),
    ("10 Nopember", TODAY, date(2026, 11, 10)),
    ("10 Pebruari", TODAY, date(2027, 2, 10)),
    ("10 Pébruari", TODAY, date(2027, 2, 10)),
    ("1 Mei", TODAY, date(2026, 5, 1)),
    ("1 May", TODAY, date(2026, 5, 1)),
    ("besok", TODAY, date(2026, 3, 11)),
    ("Besok!", TODAY, date(2026, 3, 11)),
    ("besok \U0001f64f", TODAY, date(2026, 3, 11)),
    ("tomorrow", TODAY, date(2026, 3, 11)),
    ("sesuk", TODAY, date(2026, 3, 11)),
    ("lusa", TODAY, date(2026, 3, 12)),
    ("minggu depan", TODAY, date(2026, 3, 17)),
    ("next week", TODAY, date(2026, 3, 17)),
    ("akhir bulan", TODAY, date(2026, 3, 31)),
    ("end of month", date(2028, 2, 3), date(2028, 2, 29)),
    # year wrap
    ("5/1", YEAR_END, date(2027, 1, 5)),
    ("5 januari", YEAR_END, date(2027, 1, 5)),
    ("31/12", YEAR_END, date(2026, 12, 31)),
    ("akhir bulan", YEAR_END, date(2026, 12, 31)),
    ("minggu depan", YEAR_END, date(2026, 12, 27)),
    ("tgl 3", YEAR_END, date(2027, 1, 3)),
    # leap day: the next one that exists
    ("29/2", date(2027, 3, 1), date(2028, 2, 29)),
    # rejects
    ("31/2", TODAY, None),
    ("31/4", TODAY, None),
    ("29/2/2027", TODAY, None),
    ("1/15", TODAY, None),  # day first, always: no US reading
    ("0/3", TODAY, None),
    ("1/3/2026", TODAY, None),  # past
    ("2025-12-31", TODAY, None),  # past
    ("15/3/2028", TODAY, None),  # more than 366 days ahead
    ("2027-03-12", TODAY, None),  # 367 days ahead
    ("2027-03-11", TODAY, date(2027, 3, 11)),  # 366 days ahead
    ("15 Foo", TODAY, None),
    ("15 ju", TODAY, None),  # juni or juli?
    ("15", TODAY, None),  # a bare number could be anything
    ("kapan-kapan", TODAY, None),
    ("", TODAY, None),
]


@pytest.mark.parametrize(("text", "today", "expected"), DUE_DATES)
def test_parse_due_date(text: str, today: date, expected: date | None) -> None:
    assert parse_due_date(text, today) == expected


@given(st.text(max_size=40), st.dates(date(2000, 1, 1), date(2099, 12, 31)))
def test_parse_due_date_never_raises_and_is_within_a_year(text: str, today: date) -> None:
    due = parse_due_date(text, today)
    assert due is None or 0 <= (due - today).days <= 366


@given(st.dates(date(2000, 1, 1), date(2099, 12, 31)), st.integers(0, 366))
def test_day_month_is_the_next_such_date(today: date, ahead: int) -> None:
    target = today + timedelta(days=ahead)
    assert parse_due_date(target.isoformat(), today) == target
    assert parse_due_date(f"{target.day}/{target.month}/{target.year}", today) == target
    if ahead <= 364:  # 365 days ahead, the same day and month also falls today
        assert parse_due_date(f"{target.day}/{target.month}", today) == target


# --- times of day -------------------------------------------------------------------------

TIMES: list[tuple[str, time | None]] = [
    ("20:00", time(20, 0)),
    ("20.00", time(20, 0)),
    ("20", time(20, 0)),
    ("07:30", time(7, 30)),
    ("7.30", time(7, 30)),
    ("0:00", time(0, 0)),
    ("23:59", time(23, 59)),
    ("8", time(8, 0)),
    ("8 malam", time(20, 0)),
    ("jam 8 malam", time(20, 0)),
    ("Jam 8 Malam.", time(20, 0)),
    ("pukul 20.00", time(20, 0)),
    ("20.00 malam", time(20, 0)),
    ("13pm", time(13, 0)),
    ("8.30 malam", time(20, 30)),
    ("12 malam", time(0, 0)),
    ("1 malam", time(1, 0)),
    ("7 pagi", time(7, 0)),
    ("jam 6 esuk", time(6, 0)),
    ("12 siang", time(12, 0)),
    ("1 siang", time(13, 0)),
    ("3 sore", time(15, 0)),
    ("4 sore", time(16, 0)),
    ("jam 7 bengi", time(19, 0)),
    ("8pm", time(20, 0)),
    ("8 pm", time(20, 0)),
    ("8 p.m.", time(20, 0)),
    ("8:30pm", time(20, 30)),
    ("12pm", time(12, 0)),
    ("12am", time(0, 0)),
    ("7am", time(7, 0)),
    ("setengah 8", time(7, 30)),
    ("setengah 8 malam", time(19, 30)),
    ("setengah satu siang", time(12, 30)),
    ("jam delapan malam", time(20, 0)),
    ("jam tujuh pagi", time(7, 0)),
    ("jam dua belas siang", time(12, 0)),
    # rejects
    ("25:00", None),
    ("24:00", None),
    ("12:61", None),
    ("8:5", None),
    ("abc", None),
    ("", None),
    ("20 pagi", None),
    ("9 sore", None),
    ("0 pm", None),
    ("8 wib", None),
    ("2000", None),
]


@pytest.mark.parametrize(("text", "expected"), TIMES)
def test_parse_time_of_day(text: str, expected: time | None) -> None:
    assert parse_time_of_day(text) == expected


@given(st.integers(0, 23), st.integers(0, 59))
def test_24_hour_times_round_trip(hour: int, minute: int) -> None:
    assert parse_time_of_day(f"{hour:02d}:{minute:02d}") == time(hour, minute)
    assert parse_time_of_day(f"{hour}.{minute:02d}") == time(hour, minute)


@given(st.text(max_size=30))
def test_parse_time_of_day_never_raises(text: str) -> None:
    assert parse_time_of_day(text) is None or isinstance(parse_time_of_day(text), time)


# --- weekdays -----------------------------------------------------------------------------

WEEKDAYS: list[tuple[str, int | None]] = [
    ("senin", 0),
    ("Senin", 0),
    ("SELASA", 1),
    ("rabu", 2),
    ("kamis", 3),
    ("jumat", 4),
    ("Jum'at", 4),
    ("jum\u2019at", 4),
    ("sabtu", 5),
    ("minggu", 6),
    ("ahad", 6),
    ("hari Minggu", 6),
    ("Monday", 0),
    ("tue", 1),
    ("Wed.", 2),
    ("thursday", 3),
    ("fri", 4),
    ("SAT", 5),
    ("sun", 6),
    ("senen", 0),
    ("seloso", 1),
    ("rebo", 2),
    ("kemis", 3),
    ("jemuah", 4),
    ("setu", 5),
    ("  Sabtu  ", 5),
    ("besok", None),
    ("mo", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), WEEKDAYS)
def test_parse_weekday(text: str, expected: int | None) -> None:
    assert parse_weekday(text) == expected


# --- yes / no -----------------------------------------------------------------------------

YES_WORDS: tuple[str, ...] = (
    "ya",
    "iya",
    "y",
    "yes",
    "ok",
    "oke",
    "setuju",
    "nggih",
    "inggih",
    "enggeh",
    "iyo",
)
YES_WORDS += ("yo", "sumuhun", "muhun", "Ya!", "YA.", "Iyaaa", "OK", " oke ")
NO_WORDS: tuple[str, ...] = (
    "tidak",
    "tdk",
    "gak",
    "nggak",
    "ga",
    "no",
    "n",
    "ora",
    "mboten",
    "henteu",
    "embung",
)
NO_WORDS += ("TIDAK!", "Nggak.", "tidak setuju", "ora gelem")

YES_NO: list[tuple[str, bool | None]] = [
    *((word, True) for word in YES_WORDS),
    *((word, False) for word in NO_WORDS),
    ("", None),
    ("mungkin", None),
    ("ya tidak", None),
    ("ya saya setuju tapi", None),
    ("yakin", None),
    ("nanti", None),
    ("?", None),
    ("Ya \U0001f64f", True),
    ("nggih \U0001f64f\U0001f3fc", True),
    ("\U0001f44d", None),  # a thumbs-up is not a recorded consent
]


@pytest.mark.parametrize(("text", "expected"), YES_NO)
def test_normalise_yes_no(text: str, expected: bool | None) -> None:
    assert normalise_yes_no(text) is expected


@given(st.text(max_size=40))
def test_helpers_never_raise(text: str) -> None:
    assert normalise_yes_no(text) in (True, False, None)
    weekday = parse_weekday(text)
    assert weekday is None or 0 <= weekday <= 6
