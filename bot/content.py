"""Content packs: parenting tips, regional resources and safeguarding word lists.

Everything here is pure Python over the TOML files in ``locales/`` (see docs/content.md):

    locales/<lang>/tips/<theme>.toml                 national tips; "id" is the master
    locales/<lang>/safeguarding.toml                 risky and harmless phrases, aliases
    locales/regions/<region>/region.toml             region name, province, resources
    locales/regions/<region>/tips/<lang>/<theme>.toml  a region's own tips

The loaders are lenient (a broken tip is skipped and logged, so one typo cannot take the
bot down); ``python -m bot.content_check`` is the strict gate that CI runs.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import tomllib
import unicodedata
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, cast

log = logging.getLogger(__name__)

AgeBand = Literal["0-23m", "2-9", "10-17"]
Audience = Literal["carer", "parent"]

BANDS: tuple[AgeBand, ...] = ("0-23m", "2-9", "10-17")
AUDIENCES: tuple[Audience, ...] = ("carer", "parent")
MASTER_LANGUAGE = "id"
LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
PLACEHOLDER_PREFIX = "ISI:"
# Contact fields of a [[resource]], in the order they are shown.
CONTACT_FIELDS: tuple[str, ...] = ("phone", "whatsapp", "address", "contact")
# Most urgent first: when one message holds several hits, the first category here wins.
SAFEGUARDING_CATEGORIES: tuple[str, ...] = (
    "self_harm",
    "sexual_abuse",
    "trafficking",
    "violence",
    "abuse",
    "exploitation",
    "running_away",
    "bullying",
)

TIP_KEYS = frozenset({"id", "band", "audience", "text", "replaces"})
TIP_FILE_KEYS = frozenset({"theme", "title", "sources", "tip"})
RESOURCE_KEYS = frozenset({"kind", "name", "placeholder", "note", *CONTACT_FIELDS})
REGION_KEYS = frozenset({"name", "province", "aliases", "languages", "notes", "resource"})


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a content file."""

    path: Path
    message: str


class ContentError(ValueError):
    """Raised by strict loading when a pack is broken."""


def age_band(birth_year: int, today: date) -> AgeBand | None:
    """Return the age band for a birth year (age = today.year - birth_year), None if adult."""
    age = today.year - birth_year
    if age < 0:
        return None
    if age <= 1:
        return "0-23m"
    if age <= 9:
        return "2-9"
    if age <= 17:
        return "10-17"
    return None


def clean_text(raw: str) -> str:
    """Join wrapped lines into one line per paragraph; blank lines separate paragraphs."""
    paragraphs = re.split(r"\n[ \t]*\n", raw.strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def region_key(region: str | None) -> str | None:
    """Return the folder-style key for a region name ("Kab. Lombok Timur" -> "lombok_timur")."""
    if region is None:
        return None
    key = region.strip().casefold()
    key = re.sub(r"^(kabupaten|kab\.?|kota)\s+", "", key)
    key = re.sub(r"[\s\-]+", "_", key)
    return key or None


# --------------------------------------------------------------------------- reading files


@dataclass
class RawTip:
    """A tip as written in a pack file."""

    id: str
    text: str
    band: str | None = None
    audience: str | None = None
    replaces: str | None = None
    extra_keys: tuple[str, ...] = ()


@dataclass
class TipFile:
    """One theme file of one language, national (region None) or regional."""

    path: Path
    language: str
    region: str | None
    theme: str
    title: str
    sources: list[str]
    tips: list[RawTip]
    extra_keys: tuple[str, ...] = ()


@dataclass
class RawResource:
    """A [[resource]] entry of a region file."""

    kind: str
    name: str
    fields: dict[str, str]
    placeholder: bool
    note: str | None = None
    extra_keys: tuple[str, ...] = ()


@dataclass
class RegionInfo:
    """A region.toml file."""

    key: str
    path: Path
    name: str
    province: str
    aliases: list[str]
    resources: list[RawResource]
    extra_keys: tuple[str, ...] = ()


def _read_toml(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh), []
    except tomllib.TOMLDecodeError as exc:
        return None, [Problem(path, f"does not parse: {exc}")]
    except OSError as exc:
        return None, [Problem(path, f"cannot be read: {exc}")]


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def iter_tip_paths(root: Path) -> Iterator[tuple[Path, str, str | None]]:
    """Yield (path, language, region) for every tip file under a locales root."""
    if not root.is_dir():
        return
    for lang_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "regions"):
        tips_dir = lang_dir / "tips"
        if tips_dir.is_dir():
            for path in sorted(tips_dir.glob("*.toml")):
                yield path, lang_dir.name, None
    regions = root / "regions"
    if regions.is_dir():
        for region_dir in sorted(p for p in regions.iterdir() if p.is_dir()):
            tips_root = region_dir / "tips"
            if not tips_root.is_dir():
                continue
            for lang_dir in sorted(p for p in tips_root.iterdir() if p.is_dir()):
                for path in sorted(lang_dir.glob("*.toml")):
                    yield path, lang_dir.name, region_dir.name


def read_tip_file(
    path: Path, language: str, region: str | None
) -> tuple[TipFile | None, list[Problem]]:
    """Parse one tip file; return it (None if unusable) and the structural problems found."""
    data, problems = _read_toml(path)
    if data is None:
        return None, problems
    theme = data.get("theme")
    if not isinstance(theme, str) or not theme.strip():
        return None, [Problem(path, "missing or empty 'theme'")]
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        problems.append(Problem(path, "missing or empty 'title'"))
        title = theme
    sources_raw = data.get("sources", [])
    sources: list[str] = []
    if not isinstance(sources_raw, list) or not all(isinstance(s, str) for s in sources_raw):
        problems.append(Problem(path, "'sources' must be a list of strings"))
    else:
        sources = [s.strip() for s in sources_raw if s.strip()]
    tips_raw = data.get("tip", [])
    tips: list[RawTip] = []
    if not isinstance(tips_raw, list):
        problems.append(Problem(path, "'tip' must be an array of tables ([[tip]])"))
        tips_raw = []
    for n, entry in enumerate(tips_raw, start=1):
        if not isinstance(entry, dict):
            problems.append(Problem(path, f"tip #{n}: not a table"))
            continue
        tip_id, text = entry.get("id"), entry.get("text")
        if not isinstance(tip_id, str) or not tip_id.strip():
            problems.append(Problem(path, f"tip #{n}: missing 'id'"))
            continue
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem(path, f"tip {tip_id}: missing 'text'"))
            continue
        tips.append(
            RawTip(
                id=tip_id.strip(),
                text=clean_text(text),
                band=_opt_str(entry.get("band")),
                audience=_opt_str(entry.get("audience")),
                replaces=_opt_str(entry.get("replaces")),
                extra_keys=tuple(sorted(set(entry) - TIP_KEYS)),
            )
        )
    tip_file = TipFile(
        path=path,
        language=language,
        region=region,
        theme=theme.strip(),
        title=title.strip(),
        sources=sources,
        tips=tips,
        extra_keys=tuple(sorted(set(data) - TIP_FILE_KEYS)),
    )
    return tip_file, problems


def read_tip_files(root: Path) -> tuple[list[TipFile], list[Problem]]:
    """Parse every tip file under a locales root."""
    files: list[TipFile] = []
    problems: list[Problem] = []
    for path, language, region in iter_tip_paths(root):
        tip_file, found = read_tip_file(path, language, region)
        problems.extend(found)
        if tip_file is not None:
            files.append(tip_file)
    return files, problems


def read_region(path: Path) -> tuple[RegionInfo | None, list[Problem]]:
    """Parse one region.toml."""
    data, problems = _read_toml(path)
    if data is None:
        return None, problems
    name, province = data.get("name"), data.get("province")
    if not isinstance(name, str) or not name.strip():
        problems.append(Problem(path, "missing or empty 'name'"))
        name = path.parent.name
    if not isinstance(province, str) or not province.strip():
        problems.append(Problem(path, "missing or empty 'province'"))
        province = ""
    aliases_raw = data.get("aliases", [])
    aliases = (
        [a for a in aliases_raw if isinstance(a, str)] if isinstance(aliases_raw, list) else []
    )
    resources: list[RawResource] = []
    raw_list = data.get("resource", [])
    for n, entry in enumerate(raw_list if isinstance(raw_list, list) else [], start=1):
        if not isinstance(entry, dict):
            problems.append(Problem(path, f"resource #{n}: not a table"))
            continue
        kind, res_name = entry.get("kind"), entry.get("name")
        if not isinstance(kind, str) or not kind.strip():
            problems.append(Problem(path, f"resource #{n}: missing 'kind'"))
            continue
        if not isinstance(res_name, str) or not res_name.strip():
            problems.append(Problem(path, f"resource #{n} ({kind}): missing 'name'"))
            continue
        fields = {k: entry[k].strip() for k in CONTACT_FIELDS if isinstance(entry.get(k), str)}
        placeholder = entry.get("placeholder", False)
        if not isinstance(placeholder, bool):
            problems.append(Problem(path, f"resource {res_name}: 'placeholder' must be true/false"))
            placeholder = True
        resources.append(
            RawResource(
                kind=kind.strip(),
                name=res_name.strip(),
                fields=fields,
                placeholder=placeholder,
                note=_opt_str(entry.get("note")),
                extra_keys=tuple(sorted(set(entry) - RESOURCE_KEYS)),
            )
        )
    info = RegionInfo(
        key=path.parent.name,
        path=path,
        name=name.strip(),
        province=province.strip(),
        aliases=aliases,
        resources=resources,
        extra_keys=tuple(sorted(set(data) - REGION_KEYS)),
    )
    return info, problems


def read_regions(root: Path) -> tuple[dict[str, RegionInfo], list[Problem]]:
    """Parse every locales/regions/<region>/region.toml."""
    regions: dict[str, RegionInfo] = {}
    problems: list[Problem] = []
    base = root / "regions"
    if not base.is_dir():
        return regions, problems
    for region_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        path = region_dir / "region.toml"
        if not path.is_file():
            problems.append(Problem(path, "missing region.toml"))
            continue
        info, found = read_region(path)
        problems.extend(found)
        if info is not None:
            regions[info.key] = info
    return regions, problems


# --------------------------------------------------------------------------- tips


@dataclass(frozen=True)
class Tip:
    """One tip, with its text in `language` (the master language when untranslated)."""

    id: str
    theme: str
    theme_title: str
    band: AgeBand
    audience: Audience
    region: str | None
    text: str
    language: str


@dataclass(frozen=True)
class _Entry:
    id: str
    theme: str
    band: AgeBand
    audience: Audience
    region: str | None
    replaces: str | None


def _natural_key(tip_id: str) -> tuple[object, ...]:
    parts: list[object] = []
    for chunk in re.split(r"(\d+)", tip_id):
        parts.append((0, int(chunk)) if chunk.isdigit() else (1, chunk))
    return tuple(parts)


class TipLibrary:
    """All tips of all languages, national and regional, ready to select from."""

    def __init__(
        self,
        entries: dict[str, _Entry],
        texts: dict[tuple[str, str], str],
        titles: dict[tuple[str | None, str, str], str],
        region_aliases: dict[str, str] | None = None,
    ) -> None:
        self._entries = entries
        self._texts = texts
        self._titles = titles
        self._region_aliases = dict(region_aliases or {})
        self._languages = sorted(
            {lang for (_, lang) in texts}, key=lambda lang: (lang != MASTER_LANGUAGE, lang)
        )
        self._national_order = self._interleave([e for e in entries.values() if e.region is None])
        self._regional_order = sorted(
            (e.id for e in entries.values() if e.region is not None), key=_natural_key
        )
        self._replaced: dict[str, set[str]] = {}
        for entry in entries.values():
            if entry.region is not None and entry.replaces:
                self._replaced.setdefault(entry.region, set()).add(entry.replaces)

    @staticmethod
    def _interleave(entries: list[_Entry]) -> list[str]:
        # Round-robin over themes, so that taking tips in order varies the theme.
        by_theme: dict[str, list[str]] = {}
        for entry in sorted(
            entries, key=lambda e: (e.theme, BANDS.index(e.band), _natural_key(e.id))
        ):
            by_theme.setdefault(entry.theme, []).append(entry.id)
        order: list[str] = []
        queues = [by_theme[t] for t in sorted(by_theme)]
        for i in range(max((len(q) for q in queues), default=0)):
            order.extend(q[i] for q in queues if i < len(q))
        return order

    @classmethod
    def load(cls, root: Path, *, strict: bool = False) -> TipLibrary:
        """Load national and regional packs under a locales root (strict: raise on problems)."""
        files, problems = read_tip_files(root)
        regions, region_problems = read_regions(root)
        problems.extend(region_problems)
        library, build_problems = cls.from_files(files, regions)
        problems.extend(build_problems)
        if problems:
            if strict:
                raise ContentError("; ".join(f"{p.path}: {p.message}" for p in problems))
            for problem in problems:
                log.warning("content: %s: %s", problem.path, problem.message)
        return library

    @classmethod
    def from_files(
        cls, files: Sequence[TipFile], regions: dict[str, RegionInfo] | None = None
    ) -> tuple[TipLibrary, list[Problem]]:
        """Build a library from parsed files; return it and the tips it had to skip."""
        problems: list[Problem] = []
        entries: dict[str, _Entry] = {}
        texts: dict[tuple[str, str], str] = {}
        titles: dict[tuple[str | None, str, str], str] = {}
        for tip_file in files:
            if tip_file.language != MASTER_LANGUAGE:
                continue
            titles[(tip_file.region, tip_file.theme, tip_file.language)] = tip_file.title
            for raw in tip_file.tips:
                if raw.band not in BANDS:
                    problems.append(Problem(tip_file.path, f"tip {raw.id}: bad band {raw.band!r}"))
                    continue
                if raw.audience not in AUDIENCES:
                    problems.append(
                        Problem(tip_file.path, f"tip {raw.id}: bad audience {raw.audience!r}")
                    )
                    continue
                if raw.id in entries:
                    problems.append(Problem(tip_file.path, f"tip {raw.id}: duplicate id"))
                    continue
                entries[raw.id] = _Entry(
                    id=raw.id,
                    theme=tip_file.theme,
                    band=cast(AgeBand, raw.band),
                    audience=cast(Audience, raw.audience),
                    region=tip_file.region,
                    replaces=raw.replaces,
                )
                texts[(raw.id, MASTER_LANGUAGE)] = raw.text
        for tip_file in files:
            if tip_file.language == MASTER_LANGUAGE:
                continue
            titles[(tip_file.region, tip_file.theme, tip_file.language)] = tip_file.title
            for raw in tip_file.tips:
                if raw.id not in entries:
                    problems.append(Problem(tip_file.path, f"tip {raw.id}: not in the id pack"))
                    continue
                texts[(raw.id, tip_file.language)] = raw.text
        aliases: dict[str, str] = {}
        for key, info in (regions or {}).items():
            for alias in [info.name, *info.aliases]:
                alias_key = region_key(alias)
                if alias_key:
                    aliases.setdefault(alias_key, key)
        return cls(entries, texts, titles, aliases), problems

    def languages(self) -> list[str]:
        """Return the languages that have tips, the master language first."""
        return list(self._languages)

    def ids(self) -> list[str]:
        """Return every tip id, national then regional."""
        return [*self._national_order, *self._regional_order]

    def resolve_region(self, region: str | None) -> str | None:
        """Return the region folder key for a name or alias (unknown names pass through)."""
        key = region_key(region)
        if key is None:
            return None
        return self._region_aliases.get(key, key)

    def _title(self, entry: _Entry, lang: str) -> str:
        for key in (
            (entry.region, entry.theme, lang),
            (None, entry.theme, lang),
            (entry.region, entry.theme, MASTER_LANGUAGE),
            (None, entry.theme, MASTER_LANGUAGE),
        ):
            if key in self._titles:
                return self._titles[key]
        return entry.theme

    def get(self, tip_id: str, lang: str) -> Tip | None:
        """Return a tip in a language, falling back to the master text when untranslated."""
        entry = self._entries.get(tip_id)
        if entry is None:
            return None
        lang = (lang or MASTER_LANGUAGE).replace("_", "-").split("-")[0].casefold()
        text = self._texts.get((tip_id, lang))
        if text is None:
            lang = MASTER_LANGUAGE
            text = self._texts[(tip_id, MASTER_LANGUAGE)]
        return Tip(
            id=entry.id,
            theme=entry.theme,
            theme_title=self._title(entry, lang),
            band=entry.band,
            audience=entry.audience,
            region=entry.region,
            text=text,
            language=lang,
        )

    def candidates(
        self, *, audience: Audience, bands: Collection[AgeBand], region: str | None
    ) -> list[str]:
        """Return the tip ids for an audience and bands: the region's first, then national."""
        wanted = set(bands) or set(BANDS)
        key = self.resolve_region(region)

        def fits(entry: _Entry) -> bool:
            return entry.audience == audience and entry.band in wanted

        regional = [
            i
            for i in self._regional_order
            if self._entries[i].region == key and key is not None and fits(self._entries[i])
        ]
        replaced = self._replaced.get(key, set()) if key is not None else set()
        national = [i for i in self._national_order if i not in replaced and fits(self._entries[i])]
        return regional + national

    def pick(
        self,
        *,
        lang: str,
        audience: Audience,
        bands: Collection[AgeBand],
        region: str | None,
        seen: Collection[str],
        rng: random.Random | None = None,
    ) -> tuple[Tip | None, bool]:
        """Pick an unseen tip (region tips first); restart the cycle when all were seen.

        Returns (tip, cycle_restarted). Without `rng` the first unseen candidate is taken,
        which walks the themes in turn; with `rng` the choice is random within the pool.
        """
        ids = self.candidates(audience=audience, bands=bands, region=region)
        if not ids:
            return None, False
        seen_set = set(seen)
        unseen = [i for i in ids if i not in seen_set]
        restarted = not unseen
        pool = ids if restarted else unseen
        regional = [i for i in pool if self._entries[i].region is not None]
        pool = regional or pool
        tip_id = rng.choice(pool) if rng is not None else pool[0]
        return self.get(tip_id, lang), restarted


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resource:
    """A place to get help. `placeholder` means a village has not filled the contact yet."""

    kind: str
    name: str
    contact: str
    placeholder: bool


# National and real: the Ministry of Women's Empowerment and Child Protection's hotline.
NATIONAL_RESOURCES: tuple[Resource, ...] = (
    Resource(
        kind="sapa129",
        name="SAPA 129 (Kementerian PPPA)",
        contact="129 / WhatsApp 08111-129-129",
        placeholder=False,
    ),
)


def format_contact(fields: dict[str, str]) -> str:
    """Join a resource's contact fields for display."""
    parts = []
    for key in CONTACT_FIELDS:
        value = fields.get(key)
        if value:
            parts.append(f"WhatsApp {value}" if key == "whatsapp" else value)
    return " / ".join(parts)


@functools.lru_cache(maxsize=16)
def _regions_cached(root: Path) -> dict[str, RegionInfo]:
    regions, problems = read_regions(root)
    for problem in problems:
        log.warning("content: %s: %s", problem.path, problem.message)
    return regions


def region_resources(root: Path, region: str | None) -> list[Resource]:
    """Return the national resources (SAPA 129) followed by the region's."""
    out = list(NATIONAL_RESOURCES)
    key = region_key(region)
    if key is None:
        return out
    regions = _regions_cached(root)
    info = regions.get(key)
    if info is None:
        for candidate in regions.values():
            if key in {region_key(a) for a in [candidate.name, *candidate.aliases]}:
                info = candidate
                break
    if info is None:
        return out
    for res in info.resources:
        values = [res.name, *res.fields.values()]
        out.append(
            Resource(
                kind=res.kind,
                name=res.name,
                contact=format_contact(res.fields),
                placeholder=res.placeholder
                or any(v.startswith(PLACEHOLDER_PREFIX) for v in values),
            )
        )
    return out


# --------------------------------------------------------------------------- safeguarding

_WILD = "qxwildqx"  # stands for a trailing "*" (word prefix) while a phrase is normalised
_GAP = "qxgapqx"  # stands for a lone "*" (skip at most one word)
_EXACT, _PREFIX, _SKIP = 0, 1, 2
_APOSTROPHES = re.compile(r"['’`´]")
_REDUPLICATION = re.compile(r"\b([^\W\d_]{2,})2\b")  # "anak2" = "anak-anak"
_TOKEN = re.compile(r"[^\W_]+")
_REPEATS = re.compile(r"(.)\1+")
_LEET = str.maketrans("013457", "oieast")
# A word mixing letters and digits ("m4ti", "b0d0h"); plain numbers are left alone.
_MIXED = re.compile(r"\b(?=[^\W_]*[^\W\d_])(?=[^\W_]*\d)[^\W_]+\b")


@dataclass
class SafeguardingFile:
    """One language's safeguarding.toml."""

    path: Path
    language: str
    harmless: list[str]
    aliases: dict[str, str]
    categories: list[tuple[str, list[str]]]


@dataclass(frozen=True)
class SafeguardingHit:
    """A risky phrase found in a message."""

    category: str
    phrase: str
    language: str


@dataclass(frozen=True)
class _Phrase:
    parts: tuple[tuple[int, str], ...]
    text: str
    category: str
    language: str


def read_safeguarding_files(root: Path) -> tuple[list[SafeguardingFile], list[Problem]]:
    """Parse every locales/<lang>/safeguarding.toml."""
    files: list[SafeguardingFile] = []
    problems: list[Problem] = []
    if not root.is_dir():
        return files, problems
    for lang_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "regions"):
        path = lang_dir / "safeguarding.toml"
        if not path.is_file():
            continue
        data, found = _read_toml(path)
        problems.extend(found)
        if data is None:
            continue
        harmless_raw = data.get("harmless", [])
        if not isinstance(harmless_raw, list) or not all(isinstance(h, str) for h in harmless_raw):
            problems.append(Problem(path, "'harmless' must be a list of strings"))
            harmless_raw = []
        aliases_raw = data.get("aliases", {})
        aliases: dict[str, str] = {}
        if isinstance(aliases_raw, dict):
            for k, v in aliases_raw.items():
                if isinstance(v, str) and v.strip():
                    aliases[k] = v
                else:
                    problems.append(Problem(path, f"alias {k!r} must map to a word"))
        else:
            problems.append(Problem(path, "'aliases' must be a table"))
        categories: list[tuple[str, list[str]]] = []
        cats_raw = data.get("category", [])
        for n, entry in enumerate(cats_raw if isinstance(cats_raw, list) else [], start=1):
            name = entry.get("name") if isinstance(entry, dict) else None
            phrases = entry.get("phrases") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                problems.append(Problem(path, f"category #{n}: missing 'name'"))
                continue
            if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
                problems.append(Problem(path, f"category {name}: 'phrases' must be strings"))
                continue
            categories.append((name, [p for p in phrases if p.strip()]))
        files.append(
            SafeguardingFile(
                path=path,
                language=lang_dir.name,
                harmless=[h for h in harmless_raw if h.strip()],
                aliases=aliases,
                categories=categories,
            )
        )
    return files, problems


def _join_spelled(tokens: list[str]) -> list[str]:
    """Join words typed letter by letter ("b u n u h" -> "bunuh"), three letters or more."""
    out: list[str] = []
    run: list[str] = []
    for tok in [*tokens, ""]:
        if len(tok) == 1 and tok.isalpha():
            run.append(tok)
            continue
        if len(run) >= 3:
            out.append("".join(run))
        else:
            out.extend(run)
        run = []
        if tok:
            out.append(tok)
    return out


def _join_di(tokens: list[str]) -> list[str]:
    """Glue the passive prefix typed apart ("di pukul", "d pukul") to its verb."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok in ("di", "d") and nxt.isalpha() and not nxt.startswith("qx"):
            out.append("di" + nxt)
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def _base_tokens(text: str) -> list[str]:
    """Lower-case, strip accents, read leetspeak digits, collapse repeated letters."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    text = _APOSTROPHES.sub("", text.casefold())
    text = _REDUPLICATION.sub(r"\1 \1", text)
    if _MIXED.search(text):
        text = _MIXED.sub(lambda m: m.group(0).translate(_LEET), text)
    # Tokens are joined by single spaces here, so a repeat never spans two words.
    return _REPEATS.sub(r"\1", " ".join(_TOKEN.findall(text))).split()


# Phrases are indexed by the first letters of their first word: an exact first word by
# the word itself, a prefix ("dipukul*") by its first _KEY letters.
_KEY = 4


class _Index:
    """Phrases indexed by their first word, for a single pass over a message's words."""

    def __init__(self) -> None:
        self.exact: dict[str, list[_Phrase]] = {}
        self.prefix: dict[str, list[_Phrase]] = {}
        self.short_prefix: list[_Phrase] = []  # prefixes under _KEY letters: checked always
        self.size = 0

    def add(self, phrase: _Phrase) -> None:
        kind, value = phrase.parts[0]
        if kind == _EXACT:
            self.exact.setdefault(value, []).append(phrase)
        elif len(value) >= _KEY:
            self.prefix.setdefault(value[:_KEY], []).append(phrase)
        else:
            self.short_prefix.append(phrase)
        self.size += 1

    def find(self, toks: Sequence[str | None]) -> list[tuple[int, int, _Phrase]]:
        hits: list[tuple[int, int, _Phrase]] = []
        exact, prefix, short = self.exact, self.prefix, self.short_prefix
        for i, tok in enumerate(toks):
            if tok is None:
                continue
            for group in (exact.get(tok), prefix.get(tok[:_KEY]), short):
                if not group:
                    continue
                for phrase in group:
                    end = _match_at(phrase.parts, toks, i, 0)
                    if end is not None:
                        hits.append((i, end, phrase))
        return hits


def _match_at(
    parts: tuple[tuple[int, str], ...], toks: Sequence[str | None], i: int, k: int
) -> int | None:
    """Return where a phrase matching at toks[i] ends, or None."""
    n = len(toks)
    while k < len(parts):
        kind, value = parts[k]
        if kind == _SKIP:
            # A gap takes zero or one word: try zero first, then one.
            end = _match_at(parts, toks, i, k + 1)
            if end is None and i < n and toks[i] is not None:
                end = _match_at(parts, toks, i + 1, k + 1)
            return end
        if i >= n:
            return None
        tok = toks[i]
        if tok is None or not (tok == value or (kind == _PREFIX and tok.startswith(value))):
            return None
        i += 1
        k += 1
    return i


def _outermost(hits: list[tuple[int, int, _Phrase]]) -> list[tuple[int, int, _Phrase]]:
    """Drop hits that lie inside a longer hit ("kicked me" inside "kicked me out")."""
    hits = sorted(hits, key=lambda h: (h[0], -h[1]))
    kept: list[tuple[int, int, _Phrase]] = []
    max_end_before = -1  # furthest end among hits starting before the current start
    group_start, group_end, group_max = -1, -1, -1
    for hit in hits:
        start, end, _ = hit
        if start != group_start:
            max_end_before = max(max_end_before, group_max)
            group_start, group_end, group_max = start, end, end
        if max_end_before >= end or group_end > end:
            continue
        kept.append(hit)
    return kept


class SafeguardingLexicon:
    """Risky and harmless phrases of every language, matched against whole messages."""

    def __init__(self, files: Sequence[SafeguardingFile]) -> None:
        self.alias_conflicts: list[tuple[str, str, str]] = []
        self._recent: dict[str, SafeguardingHit | None] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}
        for sg_file in files:
            for key, value in sg_file.aliases.items():
                base = _base_tokens(key)
                if len(base) != 1:
                    continue
                target = tuple(_base_tokens(value))
                previous = self._aliases.setdefault(base[0], target)
                if previous != target:
                    self.alias_conflicts.append((sg_file.language, key, value))
        self._harmless = _Index()
        self._risky = _Index()
        self.languages: list[str] = []
        for sg_file in files:
            self.languages.append(sg_file.language)
            for text in sg_file.harmless:
                phrase = self.compile_phrase(text, "harmless", sg_file.language)
                if phrase is not None:
                    self._harmless.add(phrase)
            for category, phrases in sg_file.categories:
                for text in phrases:
                    phrase = self.compile_phrase(text, category, sg_file.language)
                    if phrase is None:
                        continue
                    self._risky.add(phrase)
                    compact = self._compact(phrase)
                    if compact is not None:
                        self._risky.add(compact)

    @classmethod
    def load(cls, root: Path) -> SafeguardingLexicon:
        """Load every language's safeguarding.toml under a locales root."""
        files, problems = read_safeguarding_files(root)
        for problem in problems:
            log.warning("content: %s: %s", problem.path, problem.message)
        return cls(files)

    @property
    def sizes(self) -> tuple[int, int]:
        """Return (risky, harmless) phrase counts as indexed."""
        return self._risky.size, self._harmless.size

    def tokens(self, text: str) -> list[str]:
        """Normalise a message into the words that phrases are matched against."""
        out: list[str] = []
        for tok in _join_di(_join_spelled(_base_tokens(text))):
            out.extend(self._aliases.get(tok, (tok,)))
        return out

    def compile_phrase(self, text: str, category: str, language: str) -> _Phrase | None:
        """Normalise a list entry like a message; "word*" is a prefix, a lone "*" a gap."""
        marked = re.sub(r"(?<=\w)\*", f" {_WILD}", text)
        marked = re.sub(r"(?<![\w*])\*(?![\w*])", f" {_GAP} ", marked)
        parts: list[tuple[int, str]] = []
        for tok in self.tokens(marked):
            if tok == _WILD:
                if parts and parts[-1][0] == _EXACT:
                    parts[-1] = (_PREFIX, parts[-1][1])
            elif tok == _GAP:
                parts.append((_SKIP, ""))
            else:
                parts.append((_EXACT, tok))
        while parts and parts[0][0] == _SKIP:
            parts.pop(0)
        while parts and parts[-1][0] == _SKIP:
            parts.pop()
        if not parts:
            return None
        return _Phrase(tuple(parts), text, category, language)

    @staticmethod
    def _compact(phrase: _Phrase) -> _Phrase | None:
        # "bunuh diri" typed as "bunuhdiri".
        if len(phrase.parts) < 2 or any(kind != _EXACT for kind, _ in phrase.parts):
            return None
        joined = "".join(value for _, value in phrase.parts)
        if len(joined) > 30:
            return None
        return _Phrase(((_EXACT, joined),), phrase.text, phrase.category, phrase.language)

    def match(self, text: str) -> SafeguardingHit | None:
        """Return the most urgent risky phrase in a message, or None."""
        # Every message is checked, and most are the same few words (MENU, YA, 1): a
        # small cache of recent answers spares the tokenising. The lexicon never changes
        # after loading, so an answer stays right.
        try:
            return self._recent[text]
        except KeyError:
            pass
        hit = self._match(text)
        if len(text) <= 64:
            if len(self._recent) >= 2048:
                self._recent.clear()
            self._recent[text] = hit
        return hit

    def _match(self, text: str) -> SafeguardingHit | None:
        toks: list[str | None] = list(self.tokens(text))
        for start, end, _ in self._harmless.find(toks):
            for j in range(start, end):
                toks[j] = None
        hits = self._risky.find(toks)
        if not hits:
            return None
        hits = _outermost(hits)

        folded = text.casefold()

        def rank(hit: tuple[int, int, _Phrase]) -> tuple[int, int, int, int]:
            start, end, phrase = hit
            category = phrase.category
            order = (
                SAFEGUARDING_CATEGORIES.index(category)
                if category in SAFEGUARDING_CATEGORIES
                else len(SAFEGUARDING_CATEGORIES)
            )
            # Aliases make "hayang paeh" (su) equal to "ingin mati" (id): on a tie, name
            # the language whose phrase was typed as written.
            literal = phrase.text.replace("*", "").casefold() in folded
            return order, start, start - end, 0 if literal else 1

        best = min(hits, key=rank)[2]
        return SafeguardingHit(category=best.category, phrase=best.text, language=best.language)


# --------------------------------------------------------------------------- defaults


@functools.lru_cache(maxsize=1)
def load_default() -> TipLibrary:
    """Return the tip library of the repository's locales/ (loaded once)."""
    return TipLibrary.load(LOCALES_DIR)


@functools.lru_cache(maxsize=1)
def load_default_lexicon() -> SafeguardingLexicon:
    """Return the safeguarding lexicon of the repository's locales/ (loaded once)."""
    return SafeguardingLexicon.load(LOCALES_DIR)


def default_resources(region: str | None) -> list[Resource]:
    """Return SAPA 129 and the region's resources from the repository's locales/."""
    return region_resources(LOCALES_DIR, region)


__all__ = [
    "AUDIENCES",
    "BANDS",
    "LOCALES_DIR",
    "AgeBand",
    "Audience",
    "ContentError",
    "Problem",
    "Resource",
    "SafeguardingHit",
    "SafeguardingLexicon",
    "Tip",
    "TipLibrary",
    "age_band",
    "default_resources",
    "load_default",
    "load_default_lexicon",
    "region_resources",
]
