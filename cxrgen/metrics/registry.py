"""The list of metrics: the one place that says which metrics the evaluation computes, in which order.

Everything that shows metrics takes them from here: the suite that computes them
(:mod:`cxrgen.metrics.suite`), the bootstrap and the significance tests (through the suite's
statistics), the summaries and tables (:mod:`cxrgen.evaluation`), the signature
(:mod:`cxrgen.metrics.signature`), and the results page and its plots (:mod:`cxrgen.report`).

Adding a metric: write a module with a :class:`~cxrgen.metrics.base.Metric` subclass and add one
line to :data:`_METRICS` below (or call :func:`register` at run time). Its keys then appear in
``summary.json``, ``summary.md``, ``summary.csv``, the terminal table, the comparisons, the
signature and the results page.

The metrics of the published protocols (:mod:`cxrgen.metrics.protocols`) are listed there, not here; the
look-ups below (:func:`columns`, :func:`label`, :func:`higher_is_better`, :func:`group`) know them too, after the
registered ones, so their per-sample columns are labelled and sorted the right way on the results page.
"""

from __future__ import annotations

from cxrgen.metrics import bleu, cider, clinical, meteor, rouge
from cxrgen.metrics.base import Column, Metric

_METRICS: list[Metric] = [
    bleu.Bleu(),
    rouge.RougeL(),
    rouge.RougeScore(),
    cider.CiderD(),
    meteor.Meteor(),
    clinical.Clinical(),
]


def registered() -> list[Metric]:
    """Every registered metric, in order (all modes)."""
    return list(_METRICS)


def for_mode(compat: str | None) -> list[Metric]:
    """The metrics of one mode (``None``: default), configured for it, in registry order."""
    return [m.for_mode(compat) for m in _METRICS if compat in m.modes]


def register(metric: Metric, *, before: str | None = None) -> Metric:
    """Add ``metric`` (at the end, or before the metric named ``before``). Its name must not be
    taken by another metric of a mode it takes part in, nor its keys."""
    for other in _METRICS:
        shared_modes = set(other.modes) & set(metric.modes)
        if not shared_modes:
            continue
        if other.name == metric.name:
            raise ValueError(f"a metric named {metric.name!r} is already registered")
        clash = set(other.keys) & set(metric.keys)
        if clash:
            raise ValueError(f"metric {metric.name!r}: keys {', '.join(sorted(clash))} belong to {other.name!r}")
    if before is None:
        _METRICS.append(metric)
    else:
        names = [m.name for m in _METRICS]
        if before not in names:
            raise ValueError(f"no registered metric {before!r}")
        _METRICS.insert(names.index(before), metric)
    return metric


def unregister(name: str) -> None:
    """Remove every registered metric named ``name``."""
    _METRICS[:] = [m for m in _METRICS if m.name != name]


def _known() -> list[Metric]:
    """The registered metrics, then those of the published protocols."""
    from cxrgen.metrics import protocols

    return _METRICS + protocols.catalogue()


def columns() -> list[Column]:
    """The per-sample columns of every registered metric (then of the protocols' metrics), in registry order,
    each key once."""
    seen: dict[str, Column] = {}
    for m in _known():
        for c in m.columns:
            seen.setdefault(c.key, c)
    return list(seen.values())


def metric_of(key: str) -> Metric | None:
    """The registered metric (else protocol metric) that reports the corpus key ``key``, or None."""
    for m in _known():
        if key in m.keys:
            return m
    return None


def label(key: str) -> str:
    """Display name of a corpus key or per-sample column (the key itself when unknown)."""
    m = metric_of(key)
    if m is not None:
        return m.label(key)
    for c in columns():
        if c.key == key:
            return c.label
    return key


def higher_is_better(key: str) -> bool:
    """Direction of a corpus key or per-sample column (True when unknown)."""
    m = metric_of(key)
    if m is not None:
        return m.higher_is_better
    for c in columns():
        if c.key == key:
            return c.higher_is_better
    return True


def group(key: str) -> str:
    """Group of a corpus key: ``text``, ``clinical`` or ``model`` (unknown keys: ``model``)."""
    m = metric_of(key)
    return m.group if m is not None else "model"
