"""Charts for the dashboard: inline SVG drawn on the server from SQL aggregates.

No JavaScript and no library: a chart is markup, so it shows on the cheapest phone, prints,
and passes a strict Content-Security-Policy. Every chart scales to its container
(``viewBox``), has a title and a description for screen readers, and the page puts the
same numbers in a table beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from markupsafe import Markup, escape
from sqlmodel import Session, col, func, select

from storage.models import FUND_STATUSES, Family, FundRequest, Member, Relay, Village

# Colour-blind-safe (Okabe-Ito), dark enough for white text nearby.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999")
STATUS_COLOURS = dict(zip(FUND_STATUSES, ("#E69F00", "#56B4E9", "#009E73", "#D55E00",
                                          "#0072B2", "#999999"), strict=True))


@dataclass
class Series:
    """One named row of numbers in a chart."""

    name: str
    values: list[int]
    colour: str


@dataclass
class ChartData:
    """What a chart shows: labels along one axis and one or more series."""

    labels: list[str]
    series: list[Series]

    def total(self) -> int:
        """Return the sum of every value."""
        return sum(sum(s.values) for s in self.series)


def _scale(value: int) -> tuple[int, int]:
    """Return a round top for an axis and its step (1, 2 or 5 times a power of ten)."""
    raw = max(value, 4) / 4
    step = 1
    while step * 10 <= raw:
        step *= 10
    for m in (1, 2, 5, 10):
        if m * step >= raw:
            step = m * step
            break
    return step * -(-max(value, 4) // step), step


def _svg_open(width: int, height: int, title: str, desc: str, cid: str) -> list[str]:
    return [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{cid}-t {cid}-d" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{cid}-t">{escape(title)}</title>',
        f'<desc id="{cid}-d">{escape(desc)}</desc>',
    ]


def _legend(series: Sequence[Series], x0: float, y: float, max_x: float
            ) -> tuple[list[str], float]:
    """Draw the legend from (x0, y), wrapping lines; return it and where it ends."""
    out = []
    x = x0
    for s in series:
        width = 26 + 7.4 * len(s.name)
        if x + width > max_x and x > x0:
            x, y = x0, y + 16
        out.append(f'<rect x="{x:.0f}" y="{y - 9:.0f}" width="10" height="10" '
                   f'fill="{s.colour}"/>')
        out.append(f'<text x="{x + 14:.0f}" y="{y:.0f}" class="legend">{escape(s.name)}</text>')
        x += width
    return out, y


def stacked_columns(data: ChartData, *, title: str, desc: str, cid: str,
                    width: int = 640, height: int = 260) -> Markup:
    """Draw stacked columns, one per label, with a legend above."""
    left, right, bottom = 36, 8, 34
    legend, legend_end = _legend(data.series, left, 14, width - right)
    top = legend_end + 16
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(data.labels))
    totals = [sum(s.values[i] for s in data.series) for i in range(len(data.labels))]
    ymax, ystep = _scale(max(totals, default=0))
    out = _svg_open(width, height, title, desc, cid)
    out += legend
    for v in range(0, ymax + 1, ystep):  # grid lines and the scale
        y = top + plot_h - plot_h * v / ymax
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                   'class="grid"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="axis" '
                   f'text-anchor="end">{v}</text>')
    slot = plot_w / n
    bar = max(4.0, slot * 0.62)
    step = max(1, -(-n // 12))  # at most about 12 labels under the columns
    for i, label in enumerate(data.labels):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        for s in data.series:
            v = s.values[i]
            if not v:
                continue
            h = plot_h * v / ymax
            y -= h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                       f'fill="{s.colour}"><title>{escape(label)}: {escape(s.name)} {v}'
                       '</title></rect>')
        if totals[i]:
            out.append(f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" class="value" '
                       f'text-anchor="middle">{totals[i]}</text>')
        if i % step == 0:
            out.append(f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" class="axis" '
                       f'text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text above is escaped


def horizontal_bars(rows: Sequence[tuple[str, int, int]], *, title: str, desc: str,
                    cid: str, part_name: str, whole_name: str, width: int = 640) -> Markup:
    """Draw one bar per row: the part (e.g. silent families) over the whole (all families)."""
    row_h, label_w = 26, 150
    legend, legend_end = _legend([Series(part_name, [], PALETTE[5]),
                                  Series(whole_name, [], "#d9d9d9")], label_w, 14, width - 8)
    top = legend_end + 12
    height = int(top + row_h * max(1, len(rows)) + 8)
    plot_w = width - label_w - 60
    vmax = max((whole for _, _, whole in rows), default=0) or 1
    out = _svg_open(width, height, title, desc, cid)
    out += legend
    for i, (label, part, whole) in enumerate(rows):
        y = top + i * row_h
        shown = label if len(label) <= 20 else label[:19] + "…"
        out.append(f'<text x="{label_w - 6}" y="{y + 16:.0f}" class="axis" '
                   f'text-anchor="end">{escape(shown)}</text>')
        w_whole = plot_w * whole / vmax
        w_part = plot_w * part / vmax
        out.append(f'<rect x="{label_w}" y="{y + 4:.0f}" width="{w_whole:.1f}" height="16" '
                   f'fill="#d9d9d9"><title>{escape(label)}: {whole}</title></rect>')
        out.append(f'<rect x="{label_w}" y="{y + 4:.0f}" width="{w_part:.1f}" height="16" '
                   f'fill="{PALETTE[5]}"><title>{escape(label)}: {part} / {whole}</title></rect>')
        out.append(f'<text x="{label_w + w_whole + 6:.1f}" y="{y + 16:.0f}" class="value">'
                   f'{part} / {whole}</text>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text above is escaped


# --- the numbers ----------------------------------------------------------------------


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def week_starts(now: datetime, weeks: int) -> list[date]:
    """Return the Mondays of the last ``weeks`` weeks, oldest first."""
    monday = now.date() - timedelta(days=now.weekday())
    return [monday - timedelta(weeks=k) for k in range(weeks - 1, -1, -1)]


def relays_per_week(session: Session, village_ids: Iterable[int], now: datetime,
                    weeks: int = 12) -> tuple[list[date], list[int], list[int]]:
    """Count family messages (KABAR) per week: from parents, and from home (children, carers)."""
    starts = week_starts(now, weeks)
    since = datetime.combine(starts[0], datetime.min.time(), tzinfo=UTC)
    parents, home = [0] * weeks, [0] * weeks
    index = {d: i for i, d in enumerate(starts)}
    rows = session.exec(
        select(Relay.at, Relay.from_role).join(Family, col(Family.id) == Relay.family_id)
        .where(col(Family.village_id).in_(list(village_ids)), col(Relay.at) >= since)).all()
    for at, role in rows:
        day = _aware(at).date()
        i = index.get(day - timedelta(days=day.weekday()))
        if i is None:
            continue
        if role == "parent":
            parents[i] += 1
        else:
            home[i] += 1
    return starts, parents, home


def month_starts(now: datetime, months: int) -> list[date]:
    """Return the first days of the last ``months`` months, oldest first."""
    y, m = now.year, now.month
    out = []
    for _ in range(months):
        out.append(date(y, m, 1))
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


def fund_requests_by_month(session: Session, village_ids: Iterable[int], now: datetime,
                           months: int = 6) -> tuple[list[date], dict[str, list[int]]]:
    """Count fund requests made each month, by their status now."""
    starts = month_starts(now, months)
    since = datetime.combine(starts[0], datetime.min.time(), tzinfo=UTC)
    index = {(d.year, d.month): i for i, d in enumerate(starts)}
    counts = {s: [0] * months for s in FUND_STATUSES}
    rows = session.exec(
        select(FundRequest.created_at, FundRequest.status)
        .where(col(FundRequest.village_id).in_(list(village_ids)),
               col(FundRequest.created_at) >= since)).all()
    for created, status in rows:
        c = _aware(created)
        i = index.get((c.year, c.month))
        if i is not None and status in counts:
            counts[status][i] += 1
    return starts, counts


def silent_families(session: Session, village_ids: Iterable[int], now: datetime,
                    days: int) -> list[tuple[str, int, int]]:
    """Per village: families whose parents have not written for ``days`` (or ever), of all.

    Families without a parent registered are not counted.
    """
    ids = list(village_ids)
    names = dict(session.exec(select(Village.id, Village.name).where(  # type: ignore[call-overload]
        col(Village.id).in_(ids))).all())
    cutoff = now - timedelta(days=days)
    silent: dict[int, int] = {}
    total: dict[int, int] = {}
    rows = session.exec(
        select(Family.village_id, Family.id, func.max(Member.last_inbound_at))
        .join(Member, col(Member.family_id) == Family.id)
        .where(col(Family.village_id).in_(ids), col(Member.role) == "parent")
        .group_by(col(Family.village_id), col(Family.id))).all()
    for vid, _fid, last in rows:
        total[vid] = total.get(vid, 0) + 1
        if last is None or _aware(last) < cutoff:
            silent[vid] = silent.get(vid, 0) + 1
    out = [(names.get(vid, "?"), silent.get(vid, 0), n) for vid, n in total.items()]
    return sorted(out, key=lambda r: (-r[1], r[0]))
