"""Check the content packs: ``python -m bot.content_check [--root PATH]`` (run in CI).

Prints one line per problem, then a summary line; exits 1 when there is any problem.

Reading level is a deliberately simple, documented proxy (tips go to elderly carers on
cheap phones, so short sentences and short words): the average number of words per
sentence must be at most 20, and the average word length at most 8 letters (6.5 for
English, whose words are shorter). Indonesian affixes make words long, hence the
language-specific limit. Near-duplicates are pairs of tips in one language whose word
3-shingles overlap with a Jaccard similarity of 0.6 or more.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.content import (
    AUDIENCES,
    BANDS,
    LOCALES_DIR,
    MASTER_LANGUAGE,
    PLACEHOLDER_PREFIX,
    SAFEGUARDING_CATEGORIES,
    Problem,
    RawTip,
    SafeguardingLexicon,
    TipFile,
    read_regions,
    read_safeguarding_files,
    read_tip_files,
)

MIN_CHARS = 20
MAX_CHARS = 600
MAX_WORDS_PER_SENTENCE = 20.0
MAX_WORD_LENGTH: dict[str, float] = {"en": 6.5}
DEFAULT_MAX_WORD_LENGTH = 8.0
NEAR_DUPLICATE = 0.6
REQUIRED_TRANSLATIONS: tuple[str, ...] = ("en",)
REQUIRED_SAFEGUARDING: tuple[str, ...] = ("id", "en", "jv", "su")
# (language, audience) -> minimum number of national tips.
MIN_COUNTS: dict[tuple[str, str], int] = {
    ("id", "carer"): 54,
    ("id", "parent"): 12,
    ("jv", "carer"): 18,
}
STRAY_MARKERS = re.compile(r"\{[^}]*\}|\bTODO\b|\bXXX\b|\bFIXME\b|ISI:")
# Things a village might type instead of a real contact.
UNFILLED_CONTACT = re.compile(r"^(x+|-+|\.+|0?8x+.*|todo|tbd|\?+)$", re.IGNORECASE)

_SENTENCE_END = re.compile(r"[.!?]+(?:[\"')\]]*)(?:\s+|$)|\n+")
_WORD = re.compile(r"[^\W\d_]+")


@dataclass
class Report:
    """What the check found: problems (one line each) and a one-line summary."""

    problems: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        """Return True when there is no problem."""
        return not self.problems


def reading_level(text: str) -> tuple[float, float]:
    """Return (average words per sentence, average letters per word) of a text."""
    sentences = [s for s in _SENTENCE_END.split(text) if _WORD.search(s)]
    words = _WORD.findall(text)
    if not words:
        return 0.0, 0.0
    per_sentence = len(words) / max(len(sentences), 1)
    return per_sentence, sum(len(w) for w in words) / len(words)


def shingles(text: str, size: int = 3) -> set[tuple[str, ...]]:
    """Return the set of word n-grams of a text (lower case, letters only)."""
    words = [w.casefold() for w in _WORD.findall(text)]
    if len(words) < size:
        return {tuple(words)}
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    """Return the Jaccard similarity of two sets."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class _Checker:
    def __init__(self, root: Path, require_full: bool) -> None:
        self.root = root
        self.require_full = require_full
        self.problems: list[str] = []

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root.parent).as_posix()
        except ValueError:
            return path.as_posix()

    def add(self, path: Path, message: str, tip_id: str | None = None) -> None:
        where = f"tip {tip_id}: " if tip_id else ""
        self.problems.append(f"{self.rel(path)}: {where}{message}")

    def add_problems(self, problems: Sequence[Problem]) -> None:
        for problem in problems:
            self.add(problem.path, problem.message)

    def expected_path(self, lang: str, theme: str, region: str | None) -> Path:
        if region is None:
            return self.root / lang / "tips" / f"{theme}.toml"
        return self.root / "regions" / region / "tips" / lang / f"{theme}.toml"

    # ------------------------------------------------------------------ tips

    def check_tips(self) -> tuple[list[TipFile], dict[str, tuple[TipFile, RawTip]]]:
        files, problems = read_tip_files(self.root)
        self.add_problems(problems)
        master: dict[str, tuple[TipFile, RawTip]] = {}
        for tip_file in files:
            if tip_file.extra_keys:
                self.add(tip_file.path, f"unknown keys {', '.join(tip_file.extra_keys)}")
            if tip_file.language == MASTER_LANGUAGE and not tip_file.sources:
                self.add(tip_file.path, "'sources' is empty: list the sources of this theme")
            if tip_file.language != MASTER_LANGUAGE:
                continue
            for tip in tip_file.tips:
                self.check_master_tip(tip_file, tip, master)
        for tip_file in files:
            if tip_file.language == MASTER_LANGUAGE:
                continue
            seen: set[str] = set()
            for tip in tip_file.tips:
                if tip.id in seen:
                    self.add(tip_file.path, "duplicate id", tip.id)
                seen.add(tip.id)
                self.check_translation(tip_file, tip, master)
        self.check_duplicate_translation_ids(files)
        self.check_translations_present(files, master)
        self.check_texts(files)
        self.check_near_duplicates(files, master)
        return files, master

    def check_master_tip(
        self, tip_file: TipFile, tip: RawTip, master: dict[str, tuple[TipFile, RawTip]]
    ) -> None:
        path = tip_file.path
        if tip.extra_keys:
            self.add(path, f"unknown keys {', '.join(tip.extra_keys)}", tip.id)
        if tip.id in master:
            other = master[tip.id][0]
            self.add(path, f"duplicate id (also in {self.rel(other.path)})", tip.id)
            return
        if tip.band not in BANDS:
            self.add(path, f"band must be one of {', '.join(BANDS)}, not {tip.band!r}", tip.id)
        if tip.audience not in AUDIENCES:
            self.add(
                path,
                f"audience must be one of {', '.join(AUDIENCES)}, not {tip.audience!r}",
                tip.id,
            )
        prefix = f"{tip_file.region}." if tip_file.region else ""
        pattern = rf"{re.escape(prefix + tip_file.theme)}\.{re.escape(tip.band or '')}\.\d+"
        if not re.fullmatch(pattern, tip.id):
            self.add(
                path,
                f"id must look like {prefix}{tip_file.theme}.{tip.band}.<number>",
                tip.id,
            )
        if tip.replaces is not None and tip_file.region is None:
            self.add(path, "'replaces' is only for regional tips", tip.id)
        master[tip.id] = (tip_file, tip)

    def check_translation(
        self, tip_file: TipFile, tip: RawTip, master: dict[str, tuple[TipFile, RawTip]]
    ) -> None:
        path = tip_file.path
        if tip.extra_keys:
            self.add(path, f"unknown keys {', '.join(tip.extra_keys)}", tip.id)
        if tip.id not in master:
            self.add(path, f"unknown tip id (not in the {MASTER_LANGUAGE} pack)", tip.id)
            return
        source_file, source = master[tip.id]
        if source_file.theme != tip_file.theme or source_file.region != tip_file.region:
            expected = self.expected_path(tip_file.language, source_file.theme, source_file.region)
            self.add(path, f"belongs in {self.rel(expected)}", tip.id)
        for key in ("band", "audience", "replaces"):
            value = getattr(tip, key)
            if value is not None and value != getattr(source, key):
                self.add(path, f"{key} {value!r} differs from the {MASTER_LANGUAGE} pack", tip.id)

    def check_duplicate_translation_ids(self, files: list[TipFile]) -> None:
        by_lang: dict[str, Counter[str]] = defaultdict(Counter)
        where: dict[tuple[str, str], Path] = {}
        for tip_file in files:
            if tip_file.language == MASTER_LANGUAGE:
                continue
            for tip in tip_file.tips:
                if by_lang[tip_file.language][tip.id] and where[(tip_file.language, tip.id)] != (
                    tip_file.path
                ):
                    self.add(tip_file.path, "duplicate id", tip.id)
                by_lang[tip_file.language][tip.id] += 1
                where.setdefault((tip_file.language, tip.id), tip_file.path)

    def check_translations_present(
        self, files: list[TipFile], master: dict[str, tuple[TipFile, RawTip]]
    ) -> None:
        have: dict[str, set[str]] = defaultdict(set)
        for tip_file in files:
            have[tip_file.language].update(t.id for t in tip_file.tips)
        for lang in REQUIRED_TRANSLATIONS:
            for tip_id, (source_file, _) in master.items():
                if tip_id not in have[lang]:
                    path = self.expected_path(lang, source_file.theme, source_file.region)
                    self.add(path, "missing translation", tip_id)

    def check_texts(self, files: list[TipFile]) -> None:
        for tip_file in files:
            limit = MAX_WORD_LENGTH.get(tip_file.language, DEFAULT_MAX_WORD_LENGTH)
            for tip in tip_file.tips:
                n = len(tip.text)
                if n > MAX_CHARS:
                    self.add(tip_file.path, f"too long: {n} characters (max {MAX_CHARS})", tip.id)
                if n < MIN_CHARS:
                    self.add(tip_file.path, f"too short: {n} characters (min {MIN_CHARS})", tip.id)
                marker = STRAY_MARKERS.search(tip.text)
                if marker:
                    self.add(tip_file.path, f"stray placeholder {marker.group(0)!r}", tip.id)
                per_sentence, word_length = reading_level(tip.text)
                if per_sentence > MAX_WORDS_PER_SENTENCE:
                    self.add(
                        tip_file.path,
                        f"reading level: {per_sentence:.1f} words per sentence "
                        f"(max {MAX_WORDS_PER_SENTENCE:g}); split the sentences",
                        tip.id,
                    )
                if word_length > limit:
                    self.add(
                        tip_file.path,
                        f"reading level: {word_length:.1f} letters per word "
                        f"(max {limit:g}); use plainer words",
                        tip.id,
                    )

    def check_near_duplicates(
        self, files: list[TipFile], master: dict[str, tuple[TipFile, RawTip]]
    ) -> None:
        by_lang: dict[str, list[tuple[TipFile, RawTip, set[tuple[str, ...]]]]] = defaultdict(list)
        for tip_file in files:
            for tip in tip_file.tips:
                by_lang[tip_file.language].append((tip_file, tip, shingles(tip.text)))

        def replaces(a: str, b: str) -> bool:
            return a in master and master[a][1].replaces == b

        for items in by_lang.values():
            for i, (file_a, tip_a, sh_a) in enumerate(items):
                for file_b, tip_b, sh_b in items[i + 1 :]:
                    if tip_a.id == tip_b.id or replaces(tip_a.id, tip_b.id):
                        continue
                    if replaces(tip_b.id, tip_a.id):
                        continue
                    score = jaccard(sh_a, sh_b)
                    if score >= NEAR_DUPLICATE:
                        self.add(
                            file_b.path,
                            f"near-duplicate of {tip_a.id} in {self.rel(file_a.path)} "
                            f"(similarity {score:.2f})",
                            tip_b.id,
                        )

    def check_replacements(self, master: dict[str, tuple[TipFile, RawTip]]) -> None:
        for tip_id, (tip_file, tip) in master.items():
            if tip.replaces is None:
                continue
            target = master.get(tip.replaces)
            if target is None or target[0].region is not None:
                self.add(tip_file.path, f"replaces unknown national tip {tip.replaces}", tip_id)
            elif target[1].audience != tip.audience:
                self.add(tip_file.path, f"replaces {tip.replaces} of another audience", tip_id)

    # ------------------------------------------------------------------ regions

    def check_regions(self) -> dict[str, int]:
        regions, problems = read_regions(self.root)
        self.add_problems(problems)
        placeholders: dict[str, int] = {}
        for key, info in regions.items():
            if info.extra_keys:
                self.add(info.path, f"unknown keys {', '.join(info.extra_keys)}")
            count = 0
            for res in info.resources:
                label = f"resource {res.kind} ({res.name})"
                if res.extra_keys:
                    self.add(info.path, f"{label}: unknown keys {', '.join(res.extra_keys)}")
                if not res.fields:
                    self.add(info.path, f"{label}: give a phone, whatsapp, address or contact")
                values = {"name": res.name, **res.fields}
                marked = [k for k, v in values.items() if v.startswith(PLACEHOLDER_PREFIX)]
                for k, v in values.items():
                    if not v:
                        self.add(info.path, f"{label}: {k} is empty")
                    elif v.startswith(PLACEHOLDER_PREFIX):
                        continue
                    elif UNFILLED_CONTACT.match(v) or STRAY_MARKERS.search(v):
                        self.add(
                            info.path,
                            f"{label}: {k} {v!r} looks unfilled; fill it or write "
                            f"'{PLACEHOLDER_PREFIX} ...' with placeholder = true",
                        )
                if marked and not res.placeholder:
                    self.add(
                        info.path,
                        f"{label}: unmarked placeholder in {', '.join(marked)}; "
                        "fill it in or add placeholder = true",
                    )
                if res.placeholder and not marked:
                    self.add(
                        info.path,
                        f"{label}: placeholder = true but every field is filled; "
                        "remove placeholder = true",
                    )
                if res.placeholder:
                    count += 1
            placeholders[key] = count
        return placeholders

    # ------------------------------------------------------------------ safeguarding

    def check_safeguarding(self) -> dict[str, tuple[int, int]]:
        files, problems = read_safeguarding_files(self.root)
        self.add_problems(problems)
        sizes: dict[str, tuple[int, int]] = {}
        present = {f.language for f in files}
        if self.require_full:
            for lang in REQUIRED_SAFEGUARDING:
                if lang not in present:
                    self.add(self.root / lang / "safeguarding.toml", "missing safeguarding list")
        lexicon = SafeguardingLexicon(files)
        for lang, key, value in lexicon.alias_conflicts:
            self.add(
                self.root / lang / "safeguarding.toml",
                f"alias {key!r} = {value!r} conflicts with another language's alias",
            )
        for sg_file in files:
            path = sg_file.path
            if not sg_file.categories:
                self.add(path, "no [[category]] of risky phrases")
            if not sg_file.harmless:
                self.add(path, "no 'harmless' phrases: list look-alikes to keep false alarms down")
            seen: set[str] = set()
            risky = 0
            for name, phrases in sg_file.categories:
                if name not in SAFEGUARDING_CATEGORIES:
                    self.add(
                        path,
                        f"unknown category {name!r} (known: {', '.join(SAFEGUARDING_CATEGORIES)})",
                    )
                if not phrases:
                    self.add(path, f"category {name}: no phrases")
                for phrase in phrases:
                    risky += 1
                    folded = phrase.strip().casefold()
                    if folded in seen:
                        self.add(path, f"duplicate phrase {phrase!r}")
                    seen.add(folded)
                    for stem in re.findall(r"(\w+)\*", phrase):
                        if len(stem) < 4:
                            self.add(path, f"phrase {phrase!r}: prefix {stem!r}* is too short")
                    probe = re.sub(r"(?<![\w*])\*(?![\w*])", " ", phrase).replace("*", "")
                    if lexicon.match(probe) is None:
                        self.add(
                            path,
                            f"phrase {phrase!r} never matches (hidden by a harmless phrase "
                            "or an alias)",
                        )
            for phrase in sg_file.harmless:
                probe = re.sub(r"(?<![\w*])\*(?![\w*])", " ", phrase).replace("*", "")
                hit = lexicon.match(probe)
                if hit is not None:
                    self.add(path, f"harmless phrase {phrase!r} matches {hit.phrase!r}")
            sizes[sg_file.language] = (risky, len(sg_file.harmless))
        return sizes

    # ------------------------------------------------------------------ counts

    def check_counts(
        self, files: list[TipFile], master: dict[str, tuple[TipFile, RawTip]]
    ) -> Counter[tuple[str, str]]:
        counts: Counter[tuple[str, str]] = Counter()
        for tip_file in files:
            if tip_file.region is not None:
                continue
            for tip in tip_file.tips:
                if tip.id in master:
                    counts[(tip_file.language, master[tip.id][1].audience or "?")] += 1
        if self.require_full:
            for (lang, audience), minimum in MIN_COUNTS.items():
                if counts[(lang, audience)] < minimum:
                    self.add(
                        self.root / lang / "tips",
                        f"only {counts[(lang, audience)]} {audience} tips (need {minimum})",
                    )
        return counts


def check(root: Path, *, require_full: bool = True) -> Report:
    """Check every pack under a locales root; `require_full` also enforces minimum counts."""
    checker = _Checker(root, require_full)
    if not root.is_dir():
        return Report([f"{root}: not a directory"], "content check: no locales directory")
    files, master = checker.check_tips()
    checker.check_replacements(master)
    placeholders = checker.check_regions()
    sizes = checker.check_safeguarding()
    counts = checker.check_counts(files, master)

    langs = sorted({lang for lang, _ in counts}, key=lambda x: (x != MASTER_LANGUAGE, x))
    tip_part = "; ".join(
        f"{lang} carer {counts[(lang, 'carer')]} parent {counts[(lang, 'parent')]}"
        for lang in langs
    )
    regional: Counter[str] = Counter()
    for tip_file in files:
        if tip_file.region and tip_file.language == MASTER_LANGUAGE:
            regional[tip_file.region] += len(tip_file.tips)
    region_part = ", ".join(
        f"{r} {regional[r]} tips {placeholders.get(r, 0)} placeholders"
        for r in sorted(set(regional) | set(placeholders))
    )
    sg_part = ", ".join(f"{lang} {risky}/{harmless}" for lang, (risky, harmless) in sizes.items())
    status = "OK" if not checker.problems else f"{len(checker.problems)} problem(s)"
    summary = (
        f"content check: {status} | tips {tip_part} | regional: {region_part or 'none'} "
        f"| safeguarding risky/harmless: {sg_part or 'none'}"
    )
    return Report(checker.problems, summary)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check from the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bot.content_check", description=__doc__)
    parser.add_argument("--root", type=Path, default=LOCALES_DIR, help="the locales/ directory")
    parser.add_argument(
        "--no-minimums",
        action="store_true",
        help="skip minimum counts and required languages (for partial or test trees)",
    )
    args = parser.parse_args(argv)
    report = check(args.root, require_full=not args.no_minimums)
    for line in report.problems:
        print(line)
    print(report.summary)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
