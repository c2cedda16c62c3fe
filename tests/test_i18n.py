"""Languages: every catalog complete, placeholders intact, money and dates per locale."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from bot.i18n import (
    LOCALES_DIR,
    Translator,
    available_languages,
    format_day,
    format_rupiah,
    format_when,
)
from bot.messages import Money, Raw, Text

ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = ["id", "en", "jv"]
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _template_ids() -> set[str]:
    """Extract msgids from the code now, so a string added without a catalog entry fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fresh.pot"
        subprocess.run(
            [str(Path(sys.executable).parent / "pybabel"), "extract", "-F",
             str(ROOT / "babel.cfg"), "-k", "N_", "-k", "t", "--no-location", "-o", str(out),
             "."], capture_output=True, check=True, cwd=ROOT)
        with out.open("rb") as fh:
            fresh = {m.id for m in read_po(fh) if m.id}
    assert len(fresh) > 20
    return {str(i) for i in fresh}


@pytest.fixture(scope="module")
def template_ids() -> set[str]:
    return _template_ids()


def test_languages_available() -> None:
    assert set(LANGUAGES) <= set(available_languages())


@pytest.mark.parametrize("lang", LANGUAGES)
def test_catalog_is_complete(lang: str, template_ids: set[str]) -> None:
    path = LOCALES_DIR / lang / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as fh:
        catalog = read_po(fh)
    translated = {m.id: m.string for m in catalog if m.id and m.string and not m.fuzzy}
    missing = sorted(template_ids - set(translated))
    assert not missing, f"{lang} misses {len(missing)} messages, first: {missing[:3]}"
    for msgid, msgstr in translated.items():
        if msgid in template_ids:
            wanted = set(_PLACEHOLDER.findall(str(msgid)))
            assert wanted == set(_PLACEHOLDER.findall(str(msgstr))), \
                f"{lang}: placeholders differ in {msgid!r}"


def test_rupiah_per_locale() -> None:
    assert format_rupiah(150_000, "id") == "Rp150.000"
    assert format_rupiah(1_500_000, "jv") == "Rp1.500.000"
    assert format_rupiah(150_000, "en") == "Rp150,000"


def test_dates_per_locale() -> None:
    instant = datetime(2026, 3, 5, 1, 30, tzinfo=UTC)
    assert format_when(instant, "id", "Asia/Jakarta") == "Kamis, 5 Maret 2026 08:30 WIB"
    assert "Thursday" in format_when(instant, "en", "Asia/Hong_Kong")
    assert format_day(date(2026, 8, 17), "id") == "17 Agustus 2026"


def test_translator_renders_params_per_reader() -> None:
    part = Text("Tip: {title}", {"title": Raw("Rutinitas")})
    assert Translator("id").render(part) == "Tips: Rutinitas"
    assert Translator("en").render(part) == "Tip: Rutinitas"
    money = Text("{amount}", {"amount": Money(150_000)})
    assert Translator("id").render(money) == "Rp150.000"
    assert Translator("en").render(money) == "Rp150,000"


def test_missing_language_falls_back_to_indonesian() -> None:
    assert Translator("xx").gettext("Reply MENU to see what you can do.").startswith("Balas")


def test_a_broken_translation_does_not_lose_the_message(tmp_path: Path) -> None:
    po = tmp_path / "xx" / "LC_MESSAGES"
    po.mkdir(parents=True)
    (po / "messages.po").write_text(
        'msgid ""\nmsgstr ""\n\nmsgid "Hi {name}"\nmsgstr "Hai {name"\n')
    tr = Translator("xx", root=tmp_path, default="xx")
    assert tr.render(Text("Hi {name}", {"name": "Rina"})) == "Hi Rina"


def test_unknown_placeholder_is_left_visible() -> None:
    assert Translator("en").render(Text("Hello {who}", {})) == "Hello {who}"
