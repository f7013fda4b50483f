"""The results page's figures, drawn with matplotlib's Agg canvas into embedded PNGs.

Figures (each only when its data exist):

* ``distributions``: per per-study score (the registry's score columns, see
  :mod:`cxrgen.metrics.registry`, and model-based metrics), a histogram of the scores of every
  system (rows without a score, e.g. generation errors, are left out); the axis runs to the
  score's usual range (1, or 10 for CIDEr-D).
* ``observation-f1``: per CheXpert observation, each system's F1 with its 95% interval from the
  summary; observations with no positive in either report are marked "n/a".
* ``differences``: for each system against the baseline, the difference of every metric on a 0-1
  scale in the summary's own table (CIDEr-D excepted: its 0-10 scale is in the table) and of the
  F1 averages, with the paired bootstrap interval; a filled marker where the interval excludes 0.

No pyplot and no global backend switch: every figure is a ``matplotlib.figure.Figure`` printed
through ``FigureCanvasAgg``, so drawing a page leaves matplotlib's state alone.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrgen.metrics import registry

DPI = 96


def _scale(key: str) -> float:
    """The usual upper end of a per-sample score or corpus key (the registry's column scale)."""
    for c in registry.columns():
        if c.key == key:
            return c.scale
    return 1.0


@dataclass
class Plot:
    """One embedded figure: ``name`` (used in the element id), ``caption`` and a PNG data URI."""

    name: str
    caption: str
    data_uri: str


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def distributions(
    frames: Mapping[str, pd.DataFrame], order: Sequence[str], keys: Sequence[str], labels: Mapping[str, str]
) -> Plot | None:
    from matplotlib.figure import Figure

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
    fig = Figure(figsize=(1.75 * ncols, 1.75 * nrows + 0.35), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = _colors(len(order))
    for ax, (k, vals) in zip(axes.flat, series.items()):
        hi = 1.0 if _scale(k) <= 1 else max(1.0, max((float(v.max()) for v in vals if len(v)), default=1.0))
        bins = np.linspace(0.0, hi, 21)
        for n, v, c in zip(order, vals, colors):
            if len(v):
                ax.hist(np.clip(v, 0.0, hi), bins=bins, histtype="step", linewidth=1.6, color=c, label=n)
                ax.axvline(float(v.mean()), color=c, linestyle="--", linewidth=1)
        ax.set_title(labels.get(k, k), fontsize=9)
        ax.set_xlim(0, hi)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(series):]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel("studies", fontsize=9)
    if len(order) > 1:
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(order), 5), fontsize=9)
    return Plot(
        "distributions",
        "Per-study scores of each system (dashed: mean of the per-study scores; corpus BLEU and CIDEr-D in the "
        "summary are not these means).",
        _png(fig),
    )


def observation_f1(summary: Mapping, order: Sequence[str]) -> Plot | None:
    from matplotlib.figure import Figure

    per = {}
    for n in order:
        obs = ((summary.get("systems") or {}).get(n) or {}).get("clinical", {}).get("per_observation")
        if obs:
            per[n] = obs
    if not per:
        return None
    names = list(per)
    cols = list(per[names[0]])
    k = len(names)
    height = 0.8 / k
    fig = Figure(figsize=(6.4, 0.26 * len(cols) * max(1.0, 0.6 * k) + 1.0), layout="constrained")
    ax = fig.subplots()
    colors = _colors(len(order))
    y = np.arange(len(cols))
    for i, n in enumerate(names):
        vals, lo, hi = [], [], []
        for col in cols:
            f1 = (per[n].get(col) or {}).get("f1")
            if f1 is None:
                vals.append(np.nan)
                lo.append(0.0)
                hi.append(0.0)
                continue
            v = float(f1["value"])
            ci = f1.get("ci") or [v, v]
            vals.append(v)
            lo.append(max(0.0, v - float(ci[0])))
            hi.append(max(0.0, float(ci[1]) - v))
        pos = y - 0.4 + height * (i + 0.5)
        arr = np.asarray(vals)
        ok = np.isfinite(arr)
        ax.barh(pos[ok], arr[ok], height=height, color=colors[order.index(n)], label=n,
                xerr=np.asarray([lo, hi])[:, ok], error_kw={"elinewidth": 0.8, "capsize": 2})
        for p in pos[~ok]:
            ax.text(0.01, p, "n/a", va="center", fontsize=7, color="0.4")
    ref_pos = [(per[names[0]].get(c) or {}).get("ref_positive") for c in cols]
    ax.set_yticks(y, [f"{c.replace('_', ' ')} (ref+ {r})" if r is not None else c.replace("_", " ") for c, r in zip(cols, ref_pos)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    if k > 1:
        ax.legend(fontsize=8, loc="lower right")
    return Plot(
        "observation-f1",
        "Clinical F1 per CheXpert observation with 95% intervals (ref+: studies whose reference is positive; "
        "n/a: never positive in either report).",
        _png(fig),
    )


def differences(summary: Mapping, order: Sequence[str]) -> Plot | None:
    from matplotlib.figure import Figure

    from cxrgen.evaluation import tables

    own = {k for k, block in tables.metric_keys(summary, order) if block is None and _scale(k) <= 1}
    comps = [c for c in summary.get("comparisons") or [] if c.get("system") in order]
    keep = [c for c in comps if c.get("metric") in own or str(c.get("metric")).endswith("_f1")]
    if not keep:
        return None
    metrics = list(dict.fromkeys(c["metric"] for c in keep))
    others = [n for n in order if any(c["system"] == n for c in keep)]
    fig = Figure(figsize=(6.0, 0.26 * len(metrics) + 1.1), layout="constrained")
    ax = fig.subplots()
    colors = _colors(len(order))
    step = 0.6 / max(1, len(others))
    for i, n in enumerate(others):
        for c in keep:
            if c["system"] != n:
                continue
            yv = metrics.index(c["metric"]) - 0.3 + step * (i + 0.5)
            ci = c.get("ci")
            color = colors[order.index(n)]
            excludes_zero = bool(ci) and (ci[0] > 0 or ci[1] < 0)
            if ci:
                ax.plot([ci[0], ci[1]], [yv, yv], color=color, linewidth=1.2)
            ax.plot([c["diff"]], [yv], marker="o", markersize=5, color=color,
                    markerfacecolor=color if excludes_zero else "white",
                    label=f"{n} − {c.get('baseline')}" if c is next(x for x in keep if x["system"] == n) else None)
    ax.axvline(0, color="0.3", linewidth=0.8)
    ax.set_yticks(np.arange(len(metrics)), metrics, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference to the baseline", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8, loc="best")
    return Plot(
        "differences",
        "Difference of each system to the baseline with its paired bootstrap 95% interval (filled: the interval "
        "excludes 0; CIDEr-D, on a 0–10 scale, is in the table).",
        _png(fig),
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
