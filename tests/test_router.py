"""Keyword matching: case, aliases, typos, ambiguity; no database."""

from __future__ import annotations

import pytest

import handlers  # noqa: F401
from bot.engine import Context, Next
from bot.router import Registry, distance, normalise, registry


def _noop(ctx: Context) -> Next | None:
    return None


@pytest.mark.parametrize(("a", "b", "d"), [
    ("tips", "tips", 0), ("tpis", "tips", 1), ("bantuuan", "bantuan", 1), ("dana", "data", 1),
    ("menu", "mneu", 1), ("kabar", "kbar", 1), ("abc", "xyz", 3),
])
def test_distance(a: str, b: str, d: int) -> None:
    assert distance(a, b) == d


@pytest.mark.parametrize(("raw", "folded"), [
    ("MENU", "menu"), ("/help", "help"), ("/start@desmigratif_bot", "start"), ("Menu!", "menu"),
    ("ＭＥＮＵ", "menu"), ("bahása", "bahasa"),
])
def test_normalise(raw: str, folded: str) -> None:
    assert normalise(raw) == folded


@pytest.mark.parametrize("text", ["MENU", "menu", "  Menu  ", "/help", "HELP", "bantuan",
                                  "bantuuan", "mneu", "/menu@desmigratif_bot"])
def test_menu_variants(text: str) -> None:
    match = registry.match(text)
    assert match is not None and match.command.name == "menu"


@pytest.mark.parametrize("text", ["tpis", "TIPS", "tips", "Tip", "saran"])
def test_tips_variants(text: str) -> None:
    match = registry.match(text)
    assert match is not None and match.command.name == "tips"


def test_args_after_the_keyword() -> None:
    match = registry.match("BAHASA   en ")
    assert match is not None and match.command.name == "language" and match.args == "en"
    match = registry.match("daftar AB12CD")
    assert match is not None and match.command.name == "register" and match.args == "AB12CD"


def test_no_fuzzy_for_words_that_opt_out() -> None:
    assert registry.match("stok") is None
    assert registry.match("STOP") is not None


def test_ambiguous_typo_is_not_guessed() -> None:
    reg = Registry()
    reg.command("fund", "dana")(_noop)
    reg.command("data", "data")(_noop)
    assert reg.match("dama") is None
    match = reg.match("dana")
    assert match is not None and match.command.name == "fund"


def test_short_words_are_never_fuzzy() -> None:
    reg = Registry()
    reg.command("yes", "ya")(_noop)
    assert reg.match("yo") is None


def test_aliases_come_from_every_catalog() -> None:
    registry.reset_cache()
    table = registry.table()
    # Indonesian and Javanese aliases declared in the catalogs, not in the code.
    assert table.get("pitutur") is not None or table.get("saran") is not None


def test_declaring_twice_is_an_error() -> None:
    reg = Registry()
    reg.command("a", "a")(_noop)
    with pytest.raises(ValueError):
        reg.command("a", "b")(_noop)
