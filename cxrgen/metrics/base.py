"""What a metric is: the interface every corpus metric of the evaluation implements.

A metric (a :class:`Metric`) is computed in two steps, so that intervals and significance tests
never re-run it:

1. :meth:`Metric.compute` turns the aligned ``(hypothesis, reference)`` pairs of a
   :class:`Context` into **per-sample sufficient statistics**: an ``(n, k)`` float matrix whose
   rows can be summed (n-gram matches and lengths for BLEU, ``[score, 1]`` for a metric that is a
   mean of per-sample scores, tp/fp/fn/tn indicators for label metrics), plus the per-sample
   columns written to ``per_sample.csv``.
2. :meth:`Metric.aggregate` turns **column sums** of that matrix, shape ``(..., k)``, into the
   corpus values, one array per key, NaN where a value is undefined (a recall without positives). It
   must be vectorised over the leading axes: a bootstrap resample or a randomisation trial is just
   another row of sums.

Each metric also declares its keys (``bleu_1``...), whether higher is better, the group it is
reported in (``text``, ``clinical``, ``model``), the per-sample columns it writes, the
compatibility modes it takes part in, and its **signature component** (``key:value``, e.g.
``bleu:corpus+sent:exp-eff``) that says how it was computed. The list of metrics lives in
:mod:`cxrgen.metrics.registry`; everything that shows metrics (summaries, tables, the signature,
the results page, the plots) takes it from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

GROUPS = ("text", "clinical", "model")


@dataclass(frozen=True)
class Column:
    """A per-sample column a metric writes to ``per_sample.csv`` (and the results page shows).

    ``kind``: ``"score"`` (a per-study score: shown, sortable and plotted), ``"extra"`` (a count
    or length: shown and sortable, not plotted) or ``"data"`` (written to the CSV only).
    ``scale``: the upper end of the score's usual range (1, or 10 for CIDEr-D)."""

    key: str
    label: str
    kind: str = "score"
    higher_is_better: bool = True
    scale: float = 1.0


@dataclass
class Context:
    """The aligned samples of one system and the evaluation settings, shared by all metrics.

    ``shared(name, fn)`` computes a value once per context (tokens, n-gram counts) for every
    metric that needs it. ``clinical`` and ``use_meteor`` switch those metrics off (they are then
    reported as disabled and say so in the signature)."""

    hyps: list[str]
    refs: list[str]
    compat: str | None = None
    uncertain: str = "positive"
    use_meteor: bool = True
    clinical: bool = True
    label_reports: Callable[[list[str]], list[dict]] | None = None
    cache: dict = field(default_factory=dict)
    ref_cache: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.hyps)

    def shared(self, name: str, fn: Callable[[], object]):
        if name not in self.cache:
            self.cache[name] = fn()
        return self.cache[name]

    def shared_refs(self, name: str, fn: Callable[[], object]):
        """Like :meth:`shared` for values of the references alone: ``ref_cache`` is one dict for
        all systems of a comparison (their references are the same), so these are computed once."""
        if name not in self.ref_cache:
            self.ref_cache[name] = fn()
        return self.ref_cache[name]


@dataclass
class Computed:
    """What :meth:`Metric.compute` returns: ``stats`` ``(n, k)``, the ``per_sample`` columns, and
    optionally the keys (when only known after computing), a signature component that overrides
    :meth:`Metric.signature` (when it depends on what ran, e.g. a package version), and label
    matrices ``(n, 14)`` of both texts for label-based metrics."""

    stats: np.ndarray
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    keys: tuple[str, ...] | None = None
    component: str | None = None
    hyp_labels: np.ndarray | None = None
    ref_labels: np.ndarray | None = None


class Metric:
    """Base class of a corpus metric; see the module docstring. Subclasses set the class
    attributes and implement :meth:`compute`, :meth:`aggregate` and :meth:`signature`."""

    name: str = ""
    keys: tuple[str, ...] = ()
    labels: dict[str, str] = {}
    higher_is_better: bool = True
    group: str = "text"
    columns: tuple[Column, ...] = ()
    modes: tuple[str | None, ...] = (None,)
    #: True when :meth:`aggregate` takes ``support``, the whole sample's sums, to keep what it averages over
    #: fixed across resamples (the clinical macro averages)
    uses_support: bool = False

    def unavailable(self, ctx: Context) -> str | None:
        """Why the metric cannot be computed in this context (shown in the summary), or None."""
        return None

    def compute(self, ctx: Context) -> Computed:
        raise NotImplementedError

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def signature(self, ctx: Context, available: bool) -> str | None:
        """The signature component ``"name:value"`` (None: the metric adds none)."""
        raise NotImplementedError

    def label(self, key: str) -> str:
        return self.labels.get(key, key)

    def key_columns(self, key: str) -> list[int] | None:
        """The columns of the metric's statistics that ``key`` depends on (None: all of them); a paired comparison
        counts the studies whose statistics differ there (the discordant studies)."""
        return None

    def for_mode(self, compat: str | None) -> "Metric":
        """The metric as used in mode ``compat`` (a metric whose corpus arithmetic depends on the
        mode returns a configured copy)."""
        return self

    def summary_block(self, keys: Sequence[str], point: dict, boot: dict | None, stats: np.ndarray,
                      entry: Callable[[float, np.ndarray | None], dict], ctx: Context) -> dict | None:
        """A block of its own in the system's summary, stored under ``summary[self.name]`` and
        holding the metric's values (the clinical metrics: values, labeler, per-observation
        table); None (the default) puts the values under ``summary["metrics"]``."""
        return None


def mean_stats(values: np.ndarray) -> np.ndarray:
    """Sufficient statistics of a metric that is the mean of per-sample ``values``: ``[value, 1]``
    per sample, so the corpus value is ``sum(value) / sum(1)`` under any resampling or swapping."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.column_stack([values, np.ones_like(values)])


def mean_of_sums(sums: np.ndarray) -> np.ndarray:
    """The mean from the column sums of :func:`mean_stats`."""
    sums = np.asarray(sums, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return sums[..., 0] / sums[..., 1]


class MeanMetric(Metric):
    """A metric that is the mean of one per-sample score (``keys`` has one key); subclasses
    implement :meth:`values`."""

    def values(self, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def compute(self, ctx: Context) -> Computed:
        v = np.asarray(self.values(ctx), dtype=np.float64).reshape(ctx.n)
        return Computed(stats=mean_stats(v), per_sample={self.keys[0]: v})

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return {self.keys[0]: mean_of_sums(sums)}
