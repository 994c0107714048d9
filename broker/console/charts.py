"""Small SVG charts rendered on the server: stacked vertical bars, stacked horizontal bars.

Accessible: every chart is ``role="img"`` with a ``<title>`` and a ``<desc>`` that says
what it shows in words, and the page puts the same figures in a table beside it. Colours
are SVG presentation attributes (``fill=``), not inline styles, so the console's CSP
(no inline style) holds; the palette is distinguishable for the common colour-vision
deficiencies (Okabe-Ito). Text is escaped (markupsafe); nothing else reaches the SVG.

Left to others: the figures (``broker.console.queries.chart_stats``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

__all__ = ["Chart", "axis", "hbars", "render_all", "vbars"]

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MAX_SERIES = 8  # more are folded into "other"
MAX_ROWS = 30


@dataclass
class Chart:
    id: str
    title: str
    svg: Markup = field(default_factory=Markup)
    empty: bool = False
    note: str = ""
    table: dict[str, Any] = field(default_factory=dict)


def _fold(series: Sequence[str], totals: Mapping[str, int]) -> list[str]:
    ranked = sorted(series, key=lambda s: (-totals.get(s, 0), s))
    return ranked[:MAX_SERIES]


def axis(v: int) -> tuple[int, int]:
    """The top of an axis for values up to ``v`` and its tick step: a step of 1, 2 or 5
    times a power of ten, at most 5 steps, so every tick is a distinct whole number."""
    v = max(v, 1)
    magnitude = 1
    while True:
        for m in (1, 2, 5):
            step = m * magnitude
            steps = -(-v // step)  # ceil
            if steps <= 5:
                return steps * step, step
        magnitude *= 10


def _legend(series: Sequence[str], x: int, y: int) -> list[str]:
    out = []
    for i, name in enumerate(series):
        yy = y + i * 18
        out.append(f'<rect x="{x}" y="{yy}" width="12" height="12" fill="{PALETTE[i]}"/>')
        out.append(f'<text x="{x + 18}" y="{yy + 10}" class="legend">{escape(name)}</text>')
    return out


def vbars(
    cid: str,
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[str],
    values: Mapping[str, Mapping[str, int]],
) -> Markup:
    """Stacked vertical bars: one per category (e.g. a day), stacked by series."""
    width, height, left, bottom, top, legend_w = 1000, 300, 50, 60, 16, 190
    plot_w = width - left - legend_w - 20
    plot_h = height - bottom - top
    totals = [sum(values.get(c, {}).get(s, 0) for s in series) for c in categories]
    vmax, step = axis(max(totals, default=1))
    n = max(1, len(categories))
    slot = plot_w / n
    bar = max(2.0, min(40.0, slot * 0.7))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{cid}-t {cid}-d" class="chart-svg">',
        f'<title id="{cid}-t">{escape(title)}</title><desc id="{cid}-d">{escape(desc)}</desc>',
    ]
    for v in range(0, vmax + 1, step):
        y = top + plot_h - plot_h * v / vmax
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{v}</text>'
        )
    label_every = max(1, n // 12)
    for i, c in enumerate(categories):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        for j, s in enumerate(series):
            v = values.get(c, {}).get(s, 0)
            if not v:
                continue
            h = plot_h * v / vmax
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j]}"><title>{escape(c)} · {escape(s)}: {v}</title></rect>'
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" class="axis" '
                f'text-anchor="middle">{escape(c[5:] if len(c) == 10 else c)}</text>'
            )
    parts += _legend(series, left + plot_w + 20, top)
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  # every value above is escaped or a number


def hbars(
    cid: str,
    title: str,
    desc: str,
    categories: Sequence[str],
    series: Sequence[str],
    values: Mapping[str, Mapping[str, int]],
) -> Markup:
    """Stacked horizontal bars: one per category (e.g. an agency), stacked by series."""
    row_h, left, right, top, legend_w = 22, 150, 20, 10, 220
    width = 1000
    plot_w = width - left - right - legend_w
    height = max(top * 2 + row_h * len(categories) + 20, top * 2 + 18 * len(series))
    totals = [sum(values.get(c, {}).get(s, 0) for s in series) for c in categories]
    vmax, _step = axis(max(totals, default=1))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{cid}-t {cid}-d" class="chart-svg">',
        f'<title id="{cid}-t">{escape(title)}</title><desc id="{cid}-d">{escape(desc)}</desc>',
    ]
    for i, c in enumerate(categories):
        y = top + i * row_h
        parts.append(
            f'<text x="{left - 6}" y="{y + 15}" class="axis" text-anchor="end">{escape(c)}</text>'
        )
        x = float(left)
        for j, s in enumerate(series):
            v = values.get(c, {}).get(s, 0)
            if not v:
                continue
            w = plot_w * v / vmax
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                f'fill="{PALETTE[j]}"><title>{escape(c)} · {escape(s)}: {v}</title></rect>'
            )
            x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 15}" class="axis">{totals[i]}</text>')
    parts += _legend(series, left + plot_w + 40, top)
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  # every value above is escaped or a number


def word(_: Callable[..., str], kind: str, code: str) -> str:
    """The word for ``code`` when the translator has words (the console's has), else it."""
    lookup = getattr(_, "word", None)
    return str(lookup(kind, code)) if lookup is not None else code


def render_all(stats: Mapping[str, Any], _: Callable[..., str]) -> list[Chart]:
    """The three pictures of the charts page, with their tables."""
    charts: list[Chart] = []

    # 1. Bulletins per day by topic.
    per_day: Mapping[str, Mapping[str, int]] = stats["per_day"]
    days = list(stats["days"])
    topic_totals = {t: sum(d.get(t, 0) for d in per_day.values()) for t in stats["topics"]}
    topics = _fold(stats["topics"], topic_totals)
    c = Chart("per-day", _("charts.per_day"), empty=not days)
    if days:
        total = sum(topic_totals.values())
        desc = f"{_('charts.n_bulletins', n=total)}, {_('charts.n_days', n=len(days))}: " + (
            ", ".join(f"{word(_, 'topic', t)} {topic_totals[t]}" for t in topics)
        )
        named = {d: {word(_, "topic", t): v for t, v in per_day[d].items()} for d in days}
        c.svg = vbars(c.id, c.title, desc, days, [word(_, "topic", t) for t in topics], named)
        c.table = {
            "head": [_("charts.day"), *(word(_, "topic", t) for t in topics)],
            "rows": [[d, *(per_day[d].get(t, 0) for t in topics)] for d in days],
        }
    charts.append(c)

    # 2. Denials per agency and reason.
    denials: Mapping[str, Mapping[str, int]] = stats["denials"]
    reason_totals = {r: sum(d.get(r, 0) for d in denials.values()) for r in stats["reasons"]}
    reasons = _fold(stats["reasons"], reason_totals)
    ranked = sorted(denials, key=lambda a: (-sum(denials[a].values()), a))
    agencies = ranked[:MAX_ROWS]  # the chart; the table has every agency
    c = Chart("denials", _("charts.denials"), empty=not agencies)
    if agencies:
        desc = ", ".join(f"{a} {sum(denials[a].values())}" for a in agencies[:10])
        shown = [word(_, "reason", r) for r in reasons]
        named = {a: {word(_, "reason", r): v for r, v in denials[a].items()} for a in agencies}
        c.svg = hbars(c.id, c.title, desc, agencies, shown, named)
        if len(ranked) > len(agencies):
            c.note = _("charts.top", shown=len(agencies), total=len(ranked))
        c.table = {
            "head": [_("log.agency"), *shown],
            "rows": [[a, *(denials[a].get(r, 0) for r in reasons)] for a in ranked],
        }
    charts.append(c)

    # 3. Deliveries and receipts: how long recipients take to acknowledge.
    buckets: list[tuple[str, int]] = list(stats["ack_buckets"])
    delivered, received = int(stats["delivered"]), int(stats["received"])
    c = Chart("ack", _("charts.ack"), empty=delivered == 0)
    if delivered:
        label = _("charts.bucket")
        values = {b: {label: n} for b, n in buckets}
        values[_("charts.unacknowledged")] = {label: delivered - received}
        cats = [b for b, _n in buckets] + [_("charts.unacknowledged")]
        median = stats["median_ack_s"]
        desc = (
            f"{_('charts.delivered')} {delivered}, {_('charts.received')} {received}; "
            f"{_('charts.median')}: {median if median is not None else '-'} s"
        )
        c.svg = hbars(c.id, c.title, desc, cats, [label], values)
        c.note = desc
        c.table = {
            "head": [_("charts.bucket"), _("charts.count")],
            "rows": [[b, n] for b, n in buckets]
            + [[_("charts.unacknowledged"), delivered - received]],
        }
    charts.append(c)
    return charts
