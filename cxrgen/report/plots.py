"""The results page's figures, written as SVG (embedded as data URIs; no plotting library, nothing to import).

Figures (each only when its data exist):

* ``distributions``: per per-study score (the registry's score columns, see
  :mod:`cxrgen.metrics.registry`, and model-based metrics), a histogram of the scores of every
  system (rows without a score, e.g. generation errors, are left out) with a dashed line at its mean; the axis runs
  to the score's usual range (1, or the largest value for CIDEr-D).
* ``observation-f1``: per CheXpert observation, each system's F1 with its 95% interval from the
  summary; observations with no positive in either report are marked "n/a".
* ``differences``: for each system against the baseline, the difference of every metric on a 0-1
  scale in the summary's own table (CIDEr-D excepted: its 0-10 scale is in the table) and of the
  F1 averages, with the paired bootstrap interval; a filled marker where the interval excludes 0.

Every bar, line and marker carries a ``<title>`` with its numbers (a tooltip in the browser). Drawing is a few
milliseconds and grows with the number of studies only through the histogram counts.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrgen.metrics import registry

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")  # matplotlib's tab10
FONT = 'font-family="sans-serif"'


def _scale(key: str) -> float:
    """The usual upper end of a per-sample score or corpus key (the registry's column scale)."""
    for c in registry.columns():
        if c.key == key:
            return c.scale
    return 1.0


@dataclass
class Plot:
    """One embedded figure: ``name`` (used in the element id), ``caption`` and an SVG data URI."""

    name: str
    caption: str
    data_uri: str


def _f(x: float) -> str:
    return f"{x:.1f}"


@dataclass
class Svg:
    """An SVG document built element by element; text is escaped."""

    width: float
    height: float
    parts: list[str] = field(default_factory=list)

    def add(self, tag: str, title: str | None = None, text: str | None = None, **attrs) -> None:
        attributes = " ".join(f'{k.rstrip("_").replace("_", "-")}="{html.escape(str(v))}"' for k, v in attrs.items())
        inner = (f"<title>{html.escape(title)}</title>" if title else "") + (html.escape(text) if text else "")
        self.parts.append(f"<{tag} {attributes}>{inner}</{tag}>" if inner else f"<{tag} {attributes}/>")

    def text(self, x: float, y: float, text: str, size: int = 11, anchor: str = "start", **attrs) -> None:
        self.parts.append(f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}" {FONT}'
                          + "".join(f' {k.replace("_", "-")}="{html.escape(str(v))}"' for k, v in attrs.items())
                          + f">{html.escape(text)}</text>")

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str = "#444", width: float = 1, **attrs) -> None:
        self.add("line", x1=_f(x1), y1=_f(y1), x2=_f(x2), y2=_f(y2), stroke=color, stroke_width=width, **attrs)

    def document(self) -> str:
        """The SVG file's text."""
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_f(self.width)}" height="{_f(self.height)}" '
                f'viewBox="0 0 {_f(self.width)} {_f(self.height)}"><rect width="100%" height="100%" fill="white"/>'
                + "".join(self.parts) + "</svg>")

    def data_uri(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(self.document().encode("utf-8")).decode("ascii")


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (about ``count`` of them)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count - 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


@dataclass
class Axes:
    """A plotting area at (``left``, ``top``) of ``width`` x ``height`` pixels mapping [x0, x1] x [y0, y1]."""

    svg: Svg
    left: float
    top: float
    width: float
    height: float
    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * self.width

    def y(self, v: float) -> float:
        return self.top + self.height - (v - self.y0) / (self.y1 - self.y0) * self.height

    def frame(self, xticks: Sequence[float] = (), yticks: Sequence[float] = (), fmt: str = "{:g}") -> None:
        s = self.svg
        s.add("rect", x=_f(self.left), y=_f(self.top), width=_f(self.width), height=_f(self.height), fill="none",
              stroke="#888")
        bottom = self.top + self.height
        for t in xticks:
            s.line(self.x(t), bottom, self.x(t), bottom + 3)
            s.text(self.x(t), bottom + 13, fmt.format(t), size=9, anchor="middle")
        for t in yticks:
            s.line(self.left - 3, self.y(t), self.left, self.y(t))
            s.text(self.left - 5, self.y(t) + 3, fmt.format(t), size=9, anchor="end")


def _color(order: Sequence[str], name: str) -> str:
    """A system's colour: by its place among all systems, the same in every figure."""
    return COLORS[order.index(name) % len(COLORS)]


def _legend(svg: Svg, entries: Sequence[tuple[str, str]], x: float, y: float) -> None:
    """One line per ``(label, colour)``."""
    for i, (label, color) in enumerate(entries):
        svg.add("rect", x=_f(x), y=_f(y + 16 * i - 8), width=10, height=10, fill=color)
        svg.text(x + 14, y + 16 * i + 1, label, size=10)


def distributions(
    frames: Mapping[str, pd.DataFrame], order: Sequence[str], keys: Sequence[str], labels: Mapping[str, str]
) -> Plot | None:
    series: dict[str, list[np.ndarray]] = {}
    for k in keys:
        vals = []
        for n in order:
            df = frames[n]
            v = pd.to_numeric(df[k], errors="coerce").to_numpy(dtype=float) if k in df.columns else np.zeros(0)
            vals.append(v[np.isfinite(v)])
        if any(len(v) for v in vals):
            series[k] = vals
    if not series:
        return None
    ncols = min(8, len(series))
    nrows = -(-len(series) // ncols)
    cell_w, cell_h, legend = 168.0, 150.0, (16 * len(order) + 8 if len(order) > 1 else 0)
    svg = Svg(cell_w * ncols + 10, cell_h * nrows + legend + 6)
    for index, (k, vals) in enumerate(series.items()):
        left, top = 44 + cell_w * (index % ncols), 22 + cell_h * (index // ncols)
        hi = 1.0 if _scale(k) <= 1 else max(1.0, max((float(v.max()) for v in vals if len(v)), default=1.0))
        edges = np.linspace(0.0, hi, 21)
        counts = [np.histogram(np.clip(v, 0.0, hi), bins=edges)[0] for v in vals]
        top_count = max(1, max(int(c.max()) for c in counts if len(c)))
        ax = Axes(svg, left, top, cell_w - 56, cell_h - 50, 0.0, hi, 0.0, top_count * 1.05)
        ax.frame(ticks(0, hi, 3), ticks(0, top_count, 4))
        svg.text(left + ax.width / 2, top - 8, labels.get(k, k), size=11, anchor="middle")
        for n, v, c in zip(order, vals, counts):
            if not len(v):
                continue
            color = _color(order, n)
            points = [(ax.x(edges[0]), ax.y(0))]
            for j, count in enumerate(c):
                points += [(ax.x(edges[j]), ax.y(count)), (ax.x(edges[j + 1]), ax.y(count))]
            points.append((ax.x(edges[-1]), ax.y(0)))
            mean = float(v.mean())
            svg.add("polyline", title=f"{n}: {len(v)} studies, mean {mean:.3f}", fill="none", stroke=color,
                    stroke_width=1.6, points=" ".join(f"{_f(px)},{_f(py)}" for px, py in points))
            svg.line(ax.x(min(mean, hi)), ax.y(0), ax.x(min(mean, hi)), ax.y(top_count * 1.05), color, 1,
                     stroke_dasharray="4 3")
        if index == 0:
            svg.text(12, top + ax.height / 2, "studies", size=10, anchor="middle",
                     transform=f"rotate(-90 12 {_f(top + ax.height / 2)})")
    if len(order) > 1:
        _legend(svg, [(n, _color(order, n)) for n in order], 44, cell_h * nrows + 14)
    return Plot(
        "distributions",
        "Per-study scores of each system (dashed: mean of the per-study scores; corpus BLEU and CIDEr-D in the "
        "summary are not these means).",
        svg.data_uri(),
    )


def observation_f1(summary: Mapping, order: Sequence[str]) -> Plot | None:
    per = {}
    for n in order:
        obs = ((summary.get("systems") or {}).get(n) or {}).get("clinical", {}).get("per_observation")
        if obs:
            per[n] = obs
    if not per:
        return None
    names = list(per)
    cols = list(per[names[0]])
    row_h = 8.0 * max(2, len(names)) + 6
    svg = Svg(640, row_h * len(cols) + 52 + (16 * len(names) if len(names) > 1 else 0))
    ax = Axes(svg, 230, 10, 390, row_h * len(cols), 0.0, 1.0, 0.0, 1.0)
    ax.frame(ticks(0, 1, 5))
    svg.text(ax.left + ax.width / 2, ax.top + ax.height + 30, "F1", size=11, anchor="middle")
    bar = (row_h - 6) / len(names)
    for r, col in enumerate(cols):
        ref = (per[names[0]].get(col) or {}).get("ref_positive")
        label = col.replace("_", " ") + (f" (ref+ {ref})" if ref is not None else "")
        svg.text(ax.left - 6, ax.top + row_h * (r + 0.5) + 4, label, size=10, anchor="end")
        for i, n in enumerate(names):
            y = ax.top + row_h * r + 3 + bar * i
            color = _color(order, n)
            f1 = (per[n].get(col) or {}).get("f1")
            if f1 is None:
                svg.text(ax.x(0.01), y + bar / 2 + 3, "n/a", size=9, fill="#666")
                continue
            value = float(f1["value"])
            ci = f1.get("ci") or [value, value]
            interval = f" [{float(ci[0]):.3f}, {float(ci[1]):.3f}]" if f1.get("ci") else ""
            svg.add("rect", title=f"{n}, {col.replace('_', ' ')}: F1 {value:.3f}{interval}", x=_f(ax.x(0)),
                    y=_f(y), width=_f(ax.x(value) - ax.x(0)), height=_f(bar), fill=color)
            if f1.get("ci"):
                svg.line(ax.x(float(ci[0])), y + bar / 2, ax.x(float(ci[1])), y + bar / 2, "#222", 0.8)
    if len(names) > 1:
        _legend(svg, [(n, _color(order, n)) for n in names], ax.left, ax.top + ax.height + 46)
    return Plot(
        "observation-f1",
        "Clinical F1 per CheXpert observation with 95% intervals (ref+: studies whose reference is positive; "
        "n/a: never positive in either report).",
        svg.data_uri(),
    )


def differences(summary: Mapping, order: Sequence[str]) -> Plot | None:
    from cxrgen.evaluation import tables

    own = {k for k, block in tables.metric_keys(summary, order) if block is None and _scale(k) <= 1}
    comps = [c for c in summary.get("comparisons") or [] if c.get("system") in order and c.get("diff") is not None]
    keep = [c for c in comps if c.get("metric") in own or str(c.get("metric")).endswith("_f1")]
    if not keep:
        return None
    metrics = list(dict.fromkeys(c["metric"] for c in keep))
    others = [n for n in order if any(c["system"] == n for c in keep)]
    values = [0.0] + [float(c["diff"]) for c in keep] + [float(x) for c in keep for x in (c.get("ci") or [])]
    low, high = min(values), max(values)
    pad = 0.05 * (high - low) or 0.05
    row_h = 18.0
    svg = Svg(600, row_h * len(metrics) + 52 + 16 * len(others))
    ax = Axes(svg, 190, 10, 390, row_h * len(metrics), low - pad, high + pad, 0.0, 1.0)
    ax.frame([t for t in ticks(low, high, 5) if low - pad <= t <= high + pad])
    svg.line(ax.x(0), ax.top, ax.x(0), ax.top + ax.height, "#555", 0.8)
    svg.text(ax.left + ax.width / 2, ax.top + ax.height + 30, "difference to the baseline", size=11, anchor="middle")
    step = (row_h - 6) / max(1, len(others))
    for r, metric in enumerate(metrics):
        svg.text(ax.left - 6, ax.top + row_h * (r + 0.5) + 4, metric, size=10, anchor="end")
    for i, n in enumerate(others):
        color = _color(order, n)
        for c in keep:
            if c["system"] != n:
                continue
            y = ax.top + row_h * metrics.index(c["metric"]) + 3 + step * (i + 0.5)
            ci = c.get("ci")
            if ci:
                svg.line(ax.x(float(ci[0])), y, ax.x(float(ci[1])), y, color, 1.2)
            excludes_zero = bool(ci) and (ci[0] > 0 or ci[1] < 0)
            interval = f" [{float(ci[0]):+.4f}, {float(ci[1]):+.4f}]" if ci else ""
            unreliable = f" ({c['discordant']} discordant studies: unreliable)" if c.get("reliable") is False else ""
            svg.add("circle", title=f"{n} − {c.get('baseline')}, {c['metric']}: {float(c['diff']):+.4f}{interval}"
                    f"{unreliable}",
                    cx=_f(ax.x(float(c["diff"]))), cy=_f(y), r=3.5, stroke=color, stroke_width=1.4,
                    fill=color if excludes_zero else "white")
    _legend(svg, [(f"{n} − {keep[0].get('baseline')}", _color(order, n)) for n in others], ax.left,
            ax.top + ax.height + 46)
    tests = {"ar": "paired approximate randomization", "bootstrap": "the paired bootstrap"}
    test = tests.get(keep[0].get("test"), keep[0].get("test") or "no test")
    return Plot(
        "differences",
        "Difference of each system to the baseline with its paired bootstrap 95% interval (filled: the interval "
        f"excludes 0; CIDEr-D, on a 0–10 scale, is in the table). The table's p-values come from {test}; a "
        "difference marked † there rests on too few discordant studies to be relied on.",
        svg.data_uri(),
    )


def summary_plots(
    frames: Mapping[str, pd.DataFrame],
    summary: Mapping,
    order: Sequence[str],
    keys: Sequence[str],
    labels: Mapping[str, str],
) -> list[Plot]:
    """Every figure whose data exist, in page order."""
    out = [distributions(frames, order, keys, labels), observation_f1(summary, order)]
    if len(order) > 1:
        out.append(differences(summary, order))
    return [p for p in out if p is not None]
