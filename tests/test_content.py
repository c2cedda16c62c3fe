"""Content packs: the loader, tip selection, regional resources, the check and safeguarding."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from bot.content import (
    LOCALES_DIR,
    AgeBand,
    SafeguardingLexicon,
    TipLibrary,
    age_band,
    load_default,
    load_default_lexicon,
    region_resources,
)
from bot.content_check import check, main, reading_level

TODAY = date(2026, 3, 5)


@pytest.fixture(scope="module")
def library() -> TipLibrary:
    """Return the real tip library, loaded strictly (a broken pack fails here)."""
    return TipLibrary.load(LOCALES_DIR, strict=True)


@pytest.fixture(scope="module")
def lexicon() -> SafeguardingLexicon:
    """Return the real safeguarding lexicon."""
    return SafeguardingLexicon.load(LOCALES_DIR)


# --------------------------------------------------------------------------- age bands


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "0-23m"),
        (1, "0-23m"),
        (2, "2-9"),
        (4, "2-9"),
        (9, "2-9"),
        (10, "10-17"),
        (14, "10-17"),
        (17, "10-17"),
        (18, None),
        (40, None),
        (-1, None),
    ],
)
def test_age_band_edges(age: int, band: str | None) -> None:
    assert age_band(TODAY.year - age, TODAY) == band


# --------------------------------------------------------------------------- the real packs


def test_real_packs_hold_the_counts(library: TipLibrary) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    for tip_id in library.ids():
        for lang in library.languages():
            tip = library.get(tip_id, lang)
            assert tip is not None
            if tip.language == lang and tip.region is None:
                counts[(lang, tip.audience)] += 1
    assert counts[("id", "carer")] >= 54
    assert counts[("id", "parent")] >= 12
    assert counts[("en", "carer")] == counts[("id", "carer")]
    assert counts[("en", "parent")] == counts[("id", "parent")]
    assert counts[("jv", "carer")] >= 18
    assert {"id", "en", "jv"} <= set(library.languages())
    assert library.languages()[0] == "id"


def test_every_theme_has_every_band_that_fits(library: TipLibrary) -> None:
    bands_by_theme: dict[str, set[str]] = {}
    for tip_id in library.ids():
        tip = library.get(tip_id, "id")
        assert tip is not None
        if tip.region is None and tip.audience == "carer":
            bands_by_theme.setdefault(tip.theme, set()).add(tip.band)
    assert len(bands_by_theme) == 12
    for theme, bands in bands_by_theme.items():
        assert {"2-9", "10-17"} <= bands, theme


def test_carer_of_4_and_14_year_old_in_indramayu(library: TipLibrary) -> None:
    bands = {age_band(TODAY.year - 4, TODAY), age_band(TODAY.year - 14, TODAY)}
    assert bands == {"2-9", "10-17"}
    wanted: set[AgeBand] = {"2-9", "10-17"}
    ids = library.candidates(audience="carer", bands=wanted, region="indramayu")
    tips = [library.get(i, "id") for i in ids]
    assert all(t is not None and t.audience == "carer" and t.band in wanted for t in tips)
    regional = [t for t in tips if t is not None and t.region == "indramayu"]
    assert regional, "the Indramayu pack has carer tips for these bands"
    assert tips[: len(regional)] == regional, "region tips come first"
    # The region replaces the national routine tip with its harvest-season version.
    assert "indramayu.routines.2-9.1" in ids
    assert "routines.2-9.1" not in ids
    assert len(ids) == len(set(ids))

    seen: list[str] = []
    first = None
    for n in range(len(ids)):
        tip, restarted = library.pick(
            lang="id", audience="carer", bands=wanted, region="Indramayu", seen=seen
        )
        assert tip is not None and not restarted
        assert tip.id not in seen, "no repeat until the cycle is exhausted"
        if n == 0:
            first = tip
        seen.append(tip.id)
    assert first is not None and first.region == "indramayu"
    assert set(seen) == set(ids)
    tip, restarted = library.pick(
        lang="id", audience="carer", bands=wanted, region="indramayu", seen=seen
    )
    assert restarted and tip is not None


def test_pick_with_rng_is_deterministic_and_prefers_region(library: TipLibrary) -> None:
    def run(seed: int) -> list[str]:
        rng = random.Random(seed)
        seen: list[str] = []
        for _ in range(8):
            tip, _ = library.pick(
                lang="en",
                audience="carer",
                bands=["2-9"],
                region="lombok_timur",
                seen=seen,
                rng=rng,
            )
            assert tip is not None
            seen.append(tip.id)
        return seen

    first = run(7)
    assert first == run(7)
    assert len(set(first)) == 8
    assert set(first[:2]) == {"lombok_timur.close_far.2-9.1", "lombok_timur.calm.2-9.1"}


def test_parent_abroad_gets_parent_tips(library: TipLibrary) -> None:
    ids = library.candidates(audience="parent", bands=["2-9"], region="indramayu")
    assert ids and ids[0].startswith("indramayu.")
    for tip_id in ids:
        tip = library.get(tip_id, "en")
        assert tip is not None and tip.audience == "parent" and tip.band == "2-9"
    tip, restarted = library.pick(
        lang="en", audience="parent", bands=["10-17"], region=None, seen=[]
    )
    assert tip is not None and not restarted
    assert tip.audience == "parent" and tip.language == "en" and tip.region is None


def test_no_children_known_uses_every_band(library: TipLibrary) -> None:
    all_bands = library.candidates(audience="carer", bands=(), region=None)
    assert {library.get(i, "id").band for i in all_bands} == {"0-23m", "2-9", "10-17"}  # type: ignore[union-attr]


def test_unknown_region_gets_national_tips_only(library: TipLibrary) -> None:
    ids = library.candidates(audience="carer", bands=["2-9"], region="Kabupaten Cilacap")
    assert ids and all("." in i and library.get(i, "id").region is None for i in ids)  # type: ignore[union-attr]


def test_region_aliases_resolve(library: TipLibrary) -> None:
    assert library.resolve_region("Kab. Lombok Timur") == "lombok_timur"
    assert library.resolve_region("East Lombok") == "lombok_timur"
    assert library.resolve_region("Dermayu") == "indramayu"
    assert library.resolve_region(None) is None


def test_language_fallback(library: TipLibrary) -> None:
    jv = library.get("calm.2-9.1", "jv")
    assert jv is not None and jv.language == "jv" and jv.theme_title != "Tetap tenang, jaga diri"
    # Not every tip is in Javanese: those come back in Indonesian.
    fallback = library.get("money.10-17.2", "jv")
    assert fallback is not None and fallback.language == "id"
    assert fallback.text == library.get("money.10-17.2", "id").text  # type: ignore[union-attr]
    unknown = library.get("calm.2-9.1", "xx")
    assert unknown is not None and unknown.language == "id"
    assert library.get("calm.2-9.1", "en-GB").language == "en"  # type: ignore[union-attr]
    assert library.get("no.such.tip", "id") is None
    tip, _ = library.pick(lang="jv", audience="carer", bands=["10-17"], region=None, seen=[])
    assert tip is not None and tip.text


def test_tip_texts_are_single_messages(library: TipLibrary) -> None:
    for tip_id in library.ids():
        for lang in library.languages():
            tip = library.get(tip_id, lang)
            assert tip is not None
            assert 20 <= len(tip.text) < 600
            assert "\n" not in tip.text, "wrapped lines are joined into one paragraph"


def test_load_default_is_cached() -> None:
    assert load_default() is load_default()
    assert load_default_lexicon() is load_default_lexicon()


def test_region_resources() -> None:
    national = region_resources(LOCALES_DIR, None)
    assert [r.kind for r in national] == ["sapa129"]
    assert "129" in national[0].contact and "08111-129-129" in national[0].contact
    indramayu = region_resources(LOCALES_DIR, "Indramayu")
    assert indramayu[0] == national[0]
    kinds = {r.kind for r in indramayu}
    assert {"puspaga", "uptd_ppa", "learning_house", "health"} <= kinds
    puspaga = next(r for r in indramayu if r.kind == "puspaga")
    assert puspaga.name == "PUSPAGA Kabupaten Indramayu"
    assert puspaga.placeholder and "ISI:" in puspaga.contact
    lotim = region_resources(LOCALES_DIR, "lombok_timur")
    assert any(r.name == "UPTD PPA Kabupaten Lombok Timur" for r in lotim)
    assert region_resources(LOCALES_DIR, "nowhere") == national


def test_pick_returns_none_without_candidates(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    lib = TipLibrary.load(root, strict=True)
    assert lib.pick(lang="id", audience="parent", bands=["2-9"], region=None, seen=[]) == (
        None,
        False,
    )


# --------------------------------------------------------------------------- content check


def test_content_check_passes_on_the_real_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("content check: OK")
    assert "id carer" in out[0] and "safeguarding" in out[0]


def test_content_check_fails_on_a_missing_directory(tmp_path: Path) -> None:
    assert not check(tmp_path / "nope").ok


def test_reading_level_proxy() -> None:
    plain = "Ajak anak bermain sepuluh menit. Biarkan dia memilih permainannya."
    jargon = (
        "Implementasi intervensi psikososial berbasis komunitas memerlukan koordinasi "
        "multisektoral antarpemangku kepentingan dalam kerangka penguatan kapasitas."
    )
    assert reading_level(plain)[1] <= 8
    assert reading_level(jargon)[1] > 8


def toml_str(value: str) -> str:
    """Quote a string for TOML (a JSON string is a valid TOML basic string)."""
    return json.dumps(value, ensure_ascii=False)


def write_pack(
    root: Path,
    lang: str,
    theme: str,
    tips: list[dict[str, str]],
    *,
    region: str | None = None,
    sources: tuple[str, ...] = ("WHO/UNICEF Parenting for Lifelong Health (2020)",),
) -> Path:
    """Write one tip file into a fixture locales tree."""
    base = root / lang / "tips" if region is None else root / "regions" / region / "tips" / lang
    base.mkdir(parents=True, exist_ok=True)
    lines = [f"theme = {toml_str(theme)}", f"title = {toml_str(theme.title())}"]
    if sources:
        lines.append("sources = [" + ", ".join(toml_str(s) for s in sources) + "]")
    for tip in tips:
        lines.append("\n[[tip]]")
        lines.extend(f"{key} = {toml_str(value)}" for key, value in tip.items())
    path = base / f"{theme}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


ID_TEXTS = [
    "Ajak anak bermain berdua sepuluh menit setiap hari. Biarkan dia memilih mainannya.",
    "Buat jadwal tidur yang sama setiap malam. Bacakan satu cerita pendek sebelum tidur.",
    "Tanyakan kabar sekolahnya dengan pertanyaan yang jelas. Dengarkan sampai selesai.",
]
EN_TEXTS = [
    "Play with the child for ten minutes every day. Let them choose the game.",
    "Keep the same bedtime every night. Read one short story before sleep.",
    "Ask about school with a clear question. Listen until they have finished.",
]


def make_tree(tmp_path: Path) -> Path:
    """Build a small valid locales tree: two themes in id and en, one region."""
    root = tmp_path / "locales"
    write_pack(
        root,
        "id",
        "play",
        [
            {"id": "play.2-9.1", "band": "2-9", "audience": "carer", "text": ID_TEXTS[0]},
            {"id": "play.10-17.1", "band": "10-17", "audience": "carer", "text": ID_TEXTS[1]},
        ],
    )
    write_pack(
        root,
        "en",
        "play",
        [{"id": "play.2-9.1", "text": EN_TEXTS[0]}, {"id": "play.10-17.1", "text": EN_TEXTS[1]}],
        sources=(),
    )
    write_pack(
        root,
        "id",
        "school",
        [{"id": "demo.school.2-9.1", "band": "2-9", "audience": "carer", "text": ID_TEXTS[2]}],
        region="demo",
    )
    write_pack(
        root,
        "en",
        "school",
        [{"id": "demo.school.2-9.1", "text": EN_TEXTS[2]}],
        region="demo",
        sources=(),
    )
    (root / "regions" / "demo" / "region.toml").write_text(
        'name = "Kabupaten Demo"\nprovince = "Jawa Barat"\n\n'
        '[[resource]]\nkind = "puspaga"\nname = "PUSPAGA Kabupaten Demo"\n'
        'whatsapp = "ISI: nomor WhatsApp PUSPAGA"\nplaceholder = true\n',
        encoding="utf-8",
    )
    for lang in ("id", "en", "jv", "su"):
        (root / lang).mkdir(parents=True, exist_ok=True)
        shutil.copy(LOCALES_DIR / lang / "safeguarding.toml", root / lang / "safeguarding.toml")
    return root


def problems_of(root: Path) -> list[str]:
    """Return the check's problems for a fixture tree (without minimum counts)."""
    return check(root, require_full=False).problems


def test_fixture_tree_is_clean(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    assert problems_of(root) == []
    assert not check(root, require_full=True).ok, "the minimum counts are not met"
    assert main(["--root", str(root), "--no-minimums"]) == 0


def test_check_finds_a_missing_translation(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write_pack(root, "en", "play", [{"id": "play.2-9.1", "text": EN_TEXTS[0]}], sources=())
    assert problems_of(root) == ["locales/en/tips/play.toml: tip play.10-17.1: missing translation"]
    assert main(["--root", str(root), "--no-minimums"]) == 1


def test_check_finds_a_too_long_tip(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    long_text = " ".join(["Ajak anak bermain di halaman rumah."] * 20)
    write_pack(
        root,
        "id",
        "play",
        [
            {"id": "play.2-9.1", "band": "2-9", "audience": "carer", "text": long_text},
            {"id": "play.10-17.1", "band": "10-17", "audience": "carer", "text": ID_TEXTS[1]},
        ],
    )
    assert any("play.2-9.1: too long" in p for p in problems_of(root))


def test_check_finds_a_duplicate_id(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write_pack(
        root,
        "id",
        "extra",
        [
            {
                "id": "play.2-9.1",
                "band": "2-9",
                "audience": "carer",
                "text": "Nyanyikan lagu bersama anak sebelum tidur. Pilih lagu yang ia suka.",
            }
        ],
    )
    assert any("tip play.2-9.1: duplicate id" in p for p in problems_of(root))


def test_check_finds_a_near_duplicate(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    near = ID_TEXTS[0].replace("mainannya", "permainannya")
    write_pack(
        root,
        "id",
        "play",
        [
            {"id": "play.2-9.1", "band": "2-9", "audience": "carer", "text": ID_TEXTS[0]},
            {"id": "play.10-17.1", "band": "10-17", "audience": "carer", "text": near},
        ],
    )
    assert any("near-duplicate of play.2-9.1" in p for p in problems_of(root))


def test_check_finds_an_unmarked_placeholder(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    region = root / "regions" / "demo" / "region.toml"
    region.write_text(region.read_text().replace("placeholder = true\n", ""), encoding="utf-8")
    problems = problems_of(root)
    assert len(problems) == 1 and "unmarked placeholder in whatsapp" in problems[0]


def test_check_finds_a_filled_placeholder_still_marked(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    region = root / "regions" / "demo" / "region.toml"
    region.write_text(
        region.read_text().replace("ISI: nomor WhatsApp PUSPAGA", "0812-0000-0000"),
        encoding="utf-8",
    )
    assert any("remove placeholder = true" in p for p in problems_of(root))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ajak anak bermain. TODO tulis ulang kalimat ini nanti ya.", "stray placeholder 'TODO'"),
        ("Hubungi {puspaga} kalau butuh teman bicara tentang anak.", "stray placeholder"),
        (
            "Implementasi intervensi psikososial berbasis komunitas memerlukan koordinasi "
            "multisektoral antarpemangku kepentingan.",
            "letters per word",
        ),
        ("Pendek.", "too short"),
    ],
)
def test_check_finds_bad_texts(tmp_path: Path, text: str, expected: str) -> None:
    root = make_tree(tmp_path)
    write_pack(
        root,
        "id",
        "play",
        [
            {"id": "play.2-9.1", "band": "2-9", "audience": "carer", "text": text},
            {"id": "play.10-17.1", "band": "10-17", "audience": "carer", "text": ID_TEXTS[1]},
        ],
    )
    assert any(expected in p for p in problems_of(root))


def test_check_finds_structural_mistakes(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write_pack(
        root,
        "id",
        "play",
        [
            {"id": "play.2-9.1", "band": "2-9", "audience": "carer", "text": ID_TEXTS[0]},
            {"id": "play.10-17.1", "band": "teen", "audience": "kids", "text": ID_TEXTS[1]},
        ],
        sources=(),
    )
    write_pack(root, "jv", "play", [{"id": "play.9-9.9", "text": "Dolanan bareng bocah."}])
    (root / "en" / "tips" / "broken.toml").write_text("theme = [unclosed\n", encoding="utf-8")
    problems = "\n".join(problems_of(root))
    assert "'sources' is empty" in problems
    assert "band must be one of" in problems
    assert "audience must be one of" in problems
    assert "play.9-9.9: unknown tip id" in problems
    assert "broken.toml: does not parse" in problems


def test_check_finds_a_bad_replacement(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write_pack(
        root,
        "id",
        "school",
        [
            {
                "id": "demo.school.2-9.1",
                "band": "2-9",
                "audience": "carer",
                "replaces": "school.2-9.99",
                "text": ID_TEXTS[2],
            }
        ],
        region="demo",
    )
    assert any("replaces unknown national tip" in p for p in problems_of(root))


def test_check_requires_the_safeguarding_languages(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / "su" / "safeguarding.toml").unlink()
    problems = check(root).problems
    assert "locales/su/safeguarding.toml: missing safeguarding list" in problems


def test_check_finds_a_harmless_phrase_hiding_a_risky_one(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    path = root / "en" / "safeguarding.toml"
    path.write_text(
        path.read_text().replace("harmless = [\n", 'harmless = [\n  "kill myself",\n'),
        encoding="utf-8",
    )
    assert any("'kill myself' never matches" in p for p in problems_of(root))


# --------------------------------------------------------------------------- safeguarding

# (message, risky?) Written for this test: real phrasing, typos, slang, mixed languages.
SAFEGUARDING_TABLE: list[tuple[str, bool]] = [
    # Indonesian, risky
    ("tolong bu, aku dipukulin bapak tiri tiap malam", True),
    ("sy d pukul pake sapu sama om", True),
    ("aq pgn mati aja, cape hidup", True),
    ("udah ga mau hidup lagi", True),
    ("mau bundir aja rasanya", True),
    ("b u n u h  d i r i", True),
    ("bunuhdiri aja lah", True),
    ("anakku dicabuli tetangga", True),
    ("aku dilecehin guru les", True),
    ("adikku diperkosa", True),
    ("om itu minta vcs terus sama aku", True),
    ("aku dipegang2 sama paman, aku takut", True),
    ("kak aku mau dijual ke malaysia sama calo", True),
    ("paspor sy ditahan majikan", True),
    ("aku dikurung di kamar gak dikasih makan", True),
    ("aku mau kabur dari rumah", True),
    ("pengen minggat aja", True),
    ("aku disuruh kerja di warung sampe malem ga sekolah", True),
    ("mau dinikahkan padahal masih smp", True),
    ("aku dibully terus di sekolah dikatain anak tkw", True),
    ("gaji ga dibayar 3 bulan", True),
    ("suami saya KDRT terus", True),
    ("ditampar sama ayah sampe berdarah", True),
    ("tolooong aku dipukuuul", True),
    ("b0d0 amat hidupku, aku mau m4ti aja", True),
    ("aku nyilet tangan lagi semalem", True),
    ("kmrn aku minum obat banyak biar mati", True),
    ("ada om2 ngajak ketemuan dan minta foto bugil", True),
    ("temenku dijual online sama pacarnya, open bo", True),
    ("Aku DIPUKULI!!! tolong", True),
    ("anak saya hilang dari kemarin belum pulang", True),
    ("dia ngancam bunuh aku kalau cerita", True),
    # English, risky
    ("my uncle hits me when he's drunk", True),
    ("I want to kill myself", True),
    ("i dont want to live anymore", True),
    ("someone touched me down there and said keep it secret", True),
    ("they took my passport and i cant go home", True),
    ("im being forced to work 18 hours no pay", True),
    ("thinking of running away from home", True),
    ("my sister was r4ped", True),
    ("kms fr", True),
    ("he beat me up again", True),
    ("my employer has not paid me, wages withheld 4 months", True),
    # Javanese, risky
    ("aku digebuki bapak", True),
    ("pengen mati wae rasane", True),
    ("putuku diantemi karo bapake", True),
    ("arep dipateni jarene", True),
    ("wis emoh urip aku", True),
    ("aku arep minggat wae", True),
    ("anakku digrepe-grepe tonggone", True),
    ("ora dikei mangan wis rong dina", True),
    # Sundanese, risky
    ("abdi dipeupeuh ku bapa", True),
    ("hayang paeh wae", True),
    ("adi abdi dirogahala", True),
    ("embung hirup deui", True),
    ("rek kabur ti imah", True),
    ("teu dibere dahar ku bibi", True),
    # Indonesian, harmless
    ("hp ku mati, nanti aku telpon lagi ya", False),
    ("lagi mati lampu di sini", False),
    ("aku mati gaya di acara itu wkwk", False),
    ("aku mati ketawa liat videonya", False),
    ("pukul 7 pagi anak berangkat sekolah", False),
    ("fotonya kabur, kirim ulang ya", False),
    ("motor dijual buat bayar sekolah", False),
    ("bunuh waktu sambil nunggu bus", False),
    ("obat pembunuh nyamuk habis", False),
    ("cucu saya main bola, bolanya ditendang keras", False),
    ("anak disuruh kerja kelompok di rumah temannya", False),
    ("ayamnya dikurung di kandang", False),
    ("anak saya dapat nilai bagus, dipuji gurunya", False),
    ("beduk dipukul tanda buka puasa", False),
    ("aku pengen mati-matian belajar biar lulus", False),
    ("semua dipukul rata, tidak adil", False),
    ("kabar baik, anak sudah makan dan tidur", False),
    ("mohon info jadwal posyandu bulan ini", False),
    ("DANA 150rb untuk buku sekolah", False),
    ("aku ga mau hidup susah terus, makanya kerja", False),
    ("kucingnya diusir tetangga", False),
    ("tolong kirim nomor PUSPAGA", False),
    # English, harmless
    ("my phone died, call you later", False),
    ("battery is dead sorry", False),
    ("just killing time at the airport", False),
    ("this song is a big hit here", False),
    ("hit me up when you're free", False),
    ("the kids ran away laughing when grandma chased them", False),
    ("I'm dead tired after work", False),
    ("your message touched my heart", False),
    ("my son beat me at chess", False),
    ("tickets were sold out", False),
    # Javanese, harmless
    ("hp-ku mati, mengko tak telpon maneh", False),
    ("sapine didol neng pasar", False),
    ("bocah-bocah dolanan bal, bale ditendhang", False),
    ("lampune mati kabeh", False),
    ("gabahe didol wingi", False),
    # Sundanese, harmless
    ("hape abdi paeh, engke ditelepon deui", False),
    ("budak keur ulin bal di lapang", False),
    ("tadi peuting pareum listrik", False),
]


def test_safeguarding_table_recall_and_false_alarms(lexicon: SafeguardingLexicon) -> None:
    assert len(SAFEGUARDING_TABLE) >= 60
    risky = [m for m, r in SAFEGUARDING_TABLE if r]
    harmless = [m for m, r in SAFEGUARDING_TABLE if not r]
    missed = [m for m in risky if lexicon.match(m) is None]
    alarms = [(m, lexicon.match(m)) for m in harmless if lexicon.match(m) is not None]
    recall = 1 - len(missed) / len(risky)
    false_alarm_rate = len(alarms) / len(harmless)
    print(
        f"\nsafeguarding: {len(risky)} risky, {len(harmless)} harmless messages; "
        f"recall {recall:.3f}, false-alarm rate {false_alarm_rate:.3f}"
    )
    print(f"missed: {missed}\nfalse alarms: {alarms}")
    assert recall >= 0.9, missed
    assert false_alarm_rate <= 0.05, alarms


@pytest.mark.parametrize(
    ("message", "category", "language"),
    [
        ("aku mau bunuh diri", "self_harm", "id"),
        ("pgn mati", "self_harm", "id"),
        ("ga mau hidup lagi", "self_harm", "id"),
        ("dipukulin", "violence", "id"),
        ("di pukul", "violence", "id"),
        ("d pukul", "violence", "id"),
        ("kabur dari rumah", "running_away", "id"),
        ("dikurung", "abuse", "id"),
        ("disuruh kerja", "exploitation", "id"),
        ("dicabuli", "sexual_abuse", "id"),
        ("paspor saya ditahan", "trafficking", "id"),
        ("I wanna die", "self_harm", "en"),
        ("kicked me out of the house", "abuse", "en"),
        ("pengen mati wae", "self_harm", "jv"),
        ("nglalu", "self_harm", "jv"),
        ("digebuki", "violence", "jv"),
        ("dipeupeuh", "violence", "su"),
        ("hayang paeh", "self_harm", "su"),
        ("dikekesek", "sexual_abuse", "su"),
        ("aku dipukul dan pengen bunuh diri", "self_harm", "id"),  # the most urgent wins
    ],
)
def test_must_hit(lexicon: SafeguardingLexicon, message: str, category: str, language: str) -> None:
    hit = lexicon.match(message)
    assert hit is not None, message
    assert (hit.category, hit.language) == (category, language)


@pytest.mark.parametrize(
    "message",
    [
        "bunuh waktu",
        "mati lampu",
        "mati gaya",
        "kill time",
        "dead battery",
        "aku mati ketawa",
        "hp ku mati",
        "pukul 10 malam",
        "pembunuhan di berita tadi",  # a word containing a risky stem is not a hit
        "kaburnya foto",
        "DAFTAR 4821",
        "",
    ],
)
def test_must_not_hit(lexicon: SafeguardingLexicon, message: str) -> None:
    assert lexicon.match(message) is None


def test_harmless_is_removed_but_the_rest_still_matches(lexicon: SafeguardingLexicon) -> None:
    hit = lexicon.match("hp ku mati, tapi aku mau bunuh diri")
    assert hit is not None and hit.category == "self_harm"


def test_match_is_fast(lexicon: SafeguardingLexicon) -> None:
    text = (
        "Assalamualaikum bu, ini cucu saya sudah pulang sekolah, tadi dia cerita di sekolah "
        "ada lomba menggambar dan dia dapat juara dua. Hp ku mati tadi siang jadi baru "
        "bisa kabar sekarang. Uang kiriman bulan ini sudah saya bagi ke amplop, untuk "
        "sekolah, belanja harian dan tabungan. Besok pukul 7 pagi ada posyandu untuk "
        "adiknya, nanti saya bawa buku KIA. Minggu depan kerja bakti di desa. Salam buat "
        "ibunya di Taiwan, semoga sehat selalu dan bisa telepon hari Minggu ya, terima kasih. "
        "Oh iya, adiknya sudah bisa jalan sendiri sekarang, senang sekali lihatnya."
    )[:600]
    assert len(text) >= 550
    lexicon.match(text)
    runs = 200
    start = time.perf_counter()
    for _ in range(runs):
        lexicon.match(text)
    per_call = (time.perf_counter() - start) / runs
    assert per_call < 0.001, f"{per_call * 1e6:.0f} µs per match"
