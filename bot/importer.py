"""Import families from the spreadsheet coordinators already keep (CSV, one row a person).

The column layout is in docs/import.md: one row per member, rows of one family sharing a
``family_ref``; Indonesian column names and role words are understood too (``desa``,
``nama``, ``anak``...). Comma, semicolon (Excel in Indonesian) or tab separated, UTF-8
with or without a byte-order mark.

Everything is checked first, and every error is reported with its line number. Only a
file without errors is imported, in one transaction: a bad row imports nothing. A dry
run goes all the way through the database work and rolls it back, so it finds exactly
what a real run would.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import tuple_
from sqlmodel import Session, col, select

from bot.config import Config
from bot.privacy import normalise_e164
from storage.models import AuditLog, ChannelIdentity, Village
from storage.repo import FamilySpec, MemberSpec, ValidationError, create_family, is_chat_id

COLUMNS = ("family_ref", "village", "district", "language", "role", "name", "birth_year",
           "whatsapp", "telegram_chat_id", "timezone", "consent_given_by", "consent_method",
           "member_language")
REQUIRED = ("family_ref", "village", "role", "name")
FAMILY_FIELDS = ("village", "district", "language", "consent_given_by", "consent_method")
# Column names as coordinators write them in their own sheets.
HEADER_ALIASES = {
    "family": "family_ref", "family_id": "family_ref", "keluarga": "family_ref",
    "no_keluarga": "family_ref", "kode_keluarga": "family_ref", "ref": "family_ref",
    "desa": "village", "kabupaten": "district", "kab": "district", "bahasa": "language",
    "peran": "role", "status": "role", "nama": "name", "nama_panggilan": "name",
    "tahun_lahir": "birth_year", "lahir": "birth_year", "wa": "whatsapp", "no_wa": "whatsapp",
    "nomor_wa": "whatsapp", "hp": "whatsapp", "no_hp": "whatsapp", "telegram": "telegram_chat_id",
    "zona_waktu": "timezone", "tz": "timezone", "persetujuan_oleh": "consent_given_by",
    "wali": "consent_given_by", "cara_persetujuan": "consent_method",
    "bahasa_anggota": "member_language",
}
ROLE_ALIASES = {
    "child": "child", "anak": "child", "carer": "carer", "caregiver": "carer",
    "pengasuh": "carer", "wali": "carer", "keluarga_asuh": "carer", "nenek": "carer",
    "kakek": "carer", "parent": "parent", "orang_tua": "parent", "orangtua": "parent",
    "ortu": "parent", "pmi": "parent", "tki": "parent",
}
MAX_ROWS = 200_000
_TZ_RE = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")

Progress = Callable[[int, int], None]



@dataclass
class RowError:
    """A problem on one line of the file."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass
class ImportReport:
    """What an import did, or would do."""

    rows: int = 0
    families: int = 0
    members: int = 0
    errors: list[RowError] = field(default_factory=list)
    dry_run: bool = False
    family_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Tell whether the file has no errors."""
        return not self.errors


@dataclass
class _Row:
    line: int
    values: dict[str, str]


@dataclass
class _Group:
    ref: str
    rows: list[_Row] = field(default_factory=list)
    family: dict[str, str] = field(default_factory=dict)


class ImportScope:
    """Where an importer (a coordinator) may register families; None means anywhere."""

    def __init__(self, village_ids: frozenset[int], district: str | None) -> None:
        self.village_ids = village_ids
        self.district = district  # a district coordinator may add villages of it

    def allows(self, village: Village | None, district: str) -> bool:
        """Tell whether families may be registered in this (maybe new) village."""
        if village is not None:
            return village.id in self.village_ids
        return bool(self.district) and (not district or district == self.district)


def _header_key(name: str) -> str:
    key = re.sub(r"[\s\-./]+", "_", name.strip().lstrip("\ufeff").strip().lower()).strip("_")
    return HEADER_ALIASES.get(key, key)


def _cell(value: str) -> str:
    value = value.strip()
    # Our own CSV export guards cells against spreadsheet formulas with a leading quote.
    if value.startswith("'") and len(value) > 1 and value[1] in "=+-@":
        value = value[1:]
    return value


def decode(data: bytes) -> str:
    """Decode a file's bytes: UTF-8 (with or without BOM), or explain what to do."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"line {line}: the file is not UTF-8; in the spreadsheet, save it as "
                         "'CSV UTF-8'") from exc


def read_rows(text: str, errors: list[RowError]) -> list[_Row]:
    """Parse CSV text into rows keyed by our column names; record layout errors."""
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        errors.append(RowError(1, "the file is empty"))
        return []
    except csv.Error as exc:
        errors.append(RowError(1, f"not a CSV file ({exc})"))
        return []
    keys = [_header_key(h) for h in header]
    missing = [c for c in REQUIRED if c not in keys]
    if missing:
        errors.append(RowError(1, f"missing column(s): {', '.join(missing)} (the first line "
                                  "must name the columns; see docs/import.md)"))
        return []
    dupes = sorted({k for k in keys if k in COLUMNS and keys.count(k) > 1})
    if dupes:
        errors.append(RowError(1, f"column(s) named twice: {', '.join(dupes)}"))
        return []
    rows: list[_Row] = []
    line = 1
    try:
        for cells in reader:
            start = line + 1
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(rows) >= MAX_ROWS:
                errors.append(RowError(start, f"more than {MAX_ROWS} rows: split the file"))
                break
            if len(cells) > len(keys) and any(c.strip() for c in cells[len(keys):]):
                errors.append(RowError(start, f"{len(cells)} cells but {len(keys)} columns"))
                continue
            values = {k: _cell(c) for k, c in zip(keys, cells, strict=False) if k in COLUMNS}
            rows.append(_Row(start, values))
    except csv.Error as exc:
        errors.append(RowError(line + 1, f"cannot read the line ({exc})"))
    return rows


def _check_row(row: _Row, config: Config, now: datetime, errors: list[RowError]) -> None:
    """Check one row's own fields (normalising them in place)."""
    v = row.values

    def bad(message: str) -> None:
        errors.append(RowError(row.line, message))

    for column in REQUIRED:
        if not v.get(column):
            bad(f"{column}: required")
    for column, limit in (("family_ref", 60), ("village", 120), ("district", 120),
                          ("name", 80), ("consent_given_by", 80), ("consent_method", 40)):
        if len(v.get(column, "")) > limit:
            bad(f"{column}: at most {limit} characters")
    if any("\x00" in s for s in v.values()):
        bad("contains a NUL character")
    role = v.get("role", "")
    if role:
        key = re.sub(r"[\s\-]+", "_", role.strip().lower())
        if key in ROLE_ALIASES:
            v["role"] = ROLE_ALIASES[key]
        else:
            bad(f"role: {role[:20]!r} is not child, carer or parent (anak, pengasuh, "
                "orang tua)")
    for column in ("language", "member_language"):
        lang = v.get(column, "").lower()
        if lang:
            v[column] = lang
            if lang not in config.bot.languages:
                bad(f"{column}: {lang[:8]!r} is not one of {', '.join(config.bot.languages)}")
    year = v.get("birth_year", "")
    if year:
        if not year.isdecimal() or not 1900 <= int(year) <= now.year:
            bad(f"birth_year: {year[:10]!r} is not a year between 1900 and {now.year}")
        elif v.get("role") == "child" and now.year - int(year) > 18:
            bad("birth_year: a child is under 18")
    phone = v.get("whatsapp", "")
    if phone:
        number = normalise_e164(phone)
        if number is None:
            bad(f"whatsapp: {phone[:20]!r} is not a phone number like +6281234567890")
        else:
            v["whatsapp"] = number
    chat = v.get("telegram_chat_id", "")
    if chat and (len(chat) > 20 or not is_chat_id(chat)):
        bad(f"telegram_chat_id: {chat[:20]!r} is not a number")
    tz = v.get("timezone", "")
    if tz and not _valid_tz(tz):
        bad(f"timezone: {tz[:30]!r} is not a time zone like Asia/Taipei")


def _valid_tz(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not _TZ_RE.match(name) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _group(rows: list[_Row], errors: list[RowError]) -> list[_Group]:
    """Group rows by family_ref; family fields must agree within a family."""
    groups: dict[str, _Group] = {}
    for row in rows:
        ref = row.values.get("family_ref", "")
        if not ref:
            continue
        group = groups.setdefault(ref, _Group(ref))
        group.rows.append(row)
        for column in FAMILY_FIELDS:
            value = row.values.get(column, "")
            if not value:
                continue
            known = group.family.get(column)
            if known is None:
                group.family[column] = value
            elif known != value:
                errors.append(RowError(row.line, f"{column}: {value[:40]!r} differs from "
                                                  f"{known[:40]!r} earlier in family "
                                                  f"{ref[:20]!r}"))
    for group in groups.values():
        if len(group.rows) > 30:
            errors.append(RowError(group.rows[30].line,
                                   f"family {group.ref[:20]!r}: at most 30 members"))
    return list(groups.values())


def _check_addresses(session: Session, rows: list[_Row], errors: list[RowError]) -> None:
    """Refuse a number or chat given twice in the file, or already someone else's."""
    seen: dict[tuple[str, str], int] = {}
    for row in rows:
        for channel, column, prefix in (("whatsapp", "whatsapp", "whatsapp:"),
                                        ("telegram", "telegram_chat_id", "")):
            value = row.values.get(column, "")
            if not value:
                continue
            key = (channel, prefix + value)
            if key in seen:
                errors.append(RowError(row.line, f"{column}: also on line {seen[key]}"))
            else:
                seen[key] = row.line
    pairs = list(seen)
    for start in range(0, len(pairs), 500):
        chunk = pairs[start:start + 500]
        taken = session.exec(select(ChannelIdentity.channel, ChannelIdentity.address).where(  # type: ignore[call-overload]
            tuple_(col(ChannelIdentity.channel), col(ChannelIdentity.address)).in_(chunk))).all()
        for channel, address in taken:
            column = "whatsapp" if channel == "whatsapp" else "telegram_chat_id"
            errors.append(RowError(seen[(channel, address)],
                                   f"{column}: already registered to another member"))


def _check_scope(session: Session, groups: list[_Group], scope: ImportScope,
                 errors: list[RowError]) -> None:
    names = {g.family.get("village", "") for g in groups} - {""}
    villages = {v.name: v for v in session.exec(select(Village).where(
        col(Village.name).in_(names))).all()} if names else {}
    for g in groups:
        name = g.family.get("village", "")
        if name and not scope.allows(villages.get(name), g.family.get("district", "")):
            errors.append(RowError(g.rows[0].line, f"village: {name[:40]!r} is not one of "
                                                   "your villages"))


_MEMBER_ERROR = re.compile(r"^members\[(\d+)\]\.(\w+): (.*)$")


def import_families(session: Session, data: bytes | str, *, now: datetime, config: Config,
                    actor: str, dry_run: bool = False, scope: ImportScope | None = None,
                    progress: Progress | None = None) -> ImportReport:
    """Check a CSV file and, when it has no errors and this is no dry run, import it.

    Runs in a savepoint of the caller's session: after errors or a dry run nothing of it
    stays; otherwise the caller's commit keeps every family at once.
    """
    report = ImportReport(dry_run=dry_run)
    errors = report.errors
    try:
        text = data if isinstance(data, str) else decode(data)
    except ValueError as exc:
        errors.append(RowError(0, str(exc)))
        return report
    rows = read_rows(text, errors)
    report.rows = len(rows)
    if not rows and not errors:
        errors.append(RowError(2, "no rows under the header"))
    for row in rows:
        _check_row(row, config, now, errors)
    groups = _group(rows, errors)
    if scope is not None:
        _check_scope(session, groups, scope, errors)
    _check_addresses(session, rows, errors)
    if errors:
        errors.sort(key=lambda e: e.line)
        return report

    savepoint = session.begin_nested()
    try:
        total = len(groups)
        for done, group in enumerate(groups, 1):
            family = _create(session, group, now=now, config=config, actor=actor,
                             errors=errors)
            if family is not None:
                report.families += 1
                report.members += len(group.rows)
                report.family_ids.append(family)
            if progress is not None:
                progress(done, total)
        if not errors:
            session.add(AuditLog(at=now, actor=actor[:64], action="families.import",
                                 details=json.dumps({"families": report.families,
                                                     "members": report.members,
                                                     "dry_run": dry_run})))
            session.flush()
    except BaseException:
        savepoint.rollback()
        raise
    if errors or dry_run:
        savepoint.rollback()
        if errors:
            report.family_ids = []
    else:
        savepoint.commit()
    errors.sort(key=lambda e: e.line)
    return report


def _create(session: Session, group: _Group, *, now: datetime, config: Config, actor: str,
            errors: list[RowError]) -> int | None:
    """Create one family in its own savepoint; record an error at the right line."""
    fam = group.family
    spec = FamilySpec(
        village=fam.get("village", ""), district=fam.get("district", ""),
        language=fam.get("language") or config.bot.default_language,
        consent_given_by=fam.get("consent_given_by") or None,
        consent_method=fam.get("consent_method") or None,
        members=[MemberSpec(role=r.values["role"], name=r.values["name"],
                            birth_year=int(r.values["birth_year"])
                            if r.values.get("birth_year") else None,
                            whatsapp=r.values.get("whatsapp") or None,
                            telegram_chat_id=r.values.get("telegram_chat_id") or None,
                            timezone=r.values.get("timezone") or None,
                            language=r.values.get("member_language") or None)
                 for r in group.rows])
    nested = session.begin_nested()
    try:
        family, _members = create_family(session, spec, now=now,
                                         languages=config.bot.languages, actor=actor)
        nested.commit()
        return family.id
    except ValidationError as exc:
        nested.rollback()
        message = str(exc)
        match = _MEMBER_ERROR.match(message)
        if match and int(match[1]) < len(group.rows):
            errors.append(RowError(group.rows[int(match[1])].line,
                                   f"{match[2]}: {match[3]}"))
        else:
            errors.append(RowError(group.rows[0].line, message))
        return None


def family_csv_columns() -> list[str]:
    """Return the import columns (the export writes these first, so files round-trip)."""
    return list(COLUMNS)


def guard_cell(value: Any) -> str:
    """Return a cell for a CSV export, guarded against spreadsheet formulas."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "@") or (text[:1] in ("+", "-")
                                  and not re.fullmatch(r"[+-]?[\d ]+", text)):
        return "'" + text
    return text
