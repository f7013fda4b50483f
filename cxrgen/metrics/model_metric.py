"""Model-based metrics (CheXbert, RadGraph, BERTScore, RaTEScore, GREEN) as registry metrics.

The scorers themselves are in :mod:`cxrgen.metrics.model_based`; this module adapts what its
``score(name, hyps, refs)`` returns (a ``ModelScores``: ``per_sample`` arrays whose mean is the
corpus value, optional ``hyp_labels``/``ref_labels`` ``(n, 14)`` 0/1 matrices in
:data:`cxrgen.metrics.clinical.COLUMNS` order, and a ``signature`` naming package version and
scorer) to the :class:`~cxrgen.metrics.base.Metric` interface, so that the bootstrap, the
significance tests, the summaries and the signature treat them like every other metric:

* each per-sample array ``v`` becomes the sufficient statistics ``[v, 1]``, so the corpus value is
  the mean and every resample or randomisation trial is a weighted sum;
* label matrices become the clinical outcome counts (tp/fp/fn/tn per observation, a 0/1 label:
  1 positive), giving ``<name>_chexpert14_micro_f1``, ``..._macro_f1`` and the same for
  ``chexbert5``, computed as :mod:`cxrgen.metrics.clinical` computes them;
* an empty generated report scores 0 and has every label negative, as for every other metric;
* the signature component is ``<name>:<ModelScores.signature>``.

A returned array whose length is not the number of samples, or a scorer that fails, is a
:class:`ModelMetricFailure` naming the metric (one line).

A scorer runs once per context (:func:`scored`): metrics built on the same scorer's values (ReXrank's
RadCliQ-v1 on its BERTScore, SembScore and RadGraph; LLaVA-Rad's label F1 on CheXbert's labels) reuse them.
"""

from __future__ import annotations

import numpy as np

from cxrgen.metrics import clinical
from cxrgen.metrics.base import Column, Computed, Context, Metric

LABEL_SETS = ("chexpert14", "chexbert5")
AVERAGES = ("micro", "macro")


class ModelMetricFailure(RuntimeError):
    """A model-based scorer failed or returned something unusable (one line naming it)."""


def _model_based():
    from cxrgen.metrics import model_based

    return model_based


def scored(ctx: Context, scorer: str):
    """``model_based.score(scorer, ...)`` on the context's pairs, run once per context; a failure is a
    :class:`ModelMetricFailure` (one line naming the scorer)."""

    def run():
        try:
            return _model_based().score(scorer, list(ctx.hyps), list(ctx.refs))
        except (ValueError, RuntimeError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelMetricFailure(f"model metric {scorer} failed: {first}") from None

    return ctx.shared(f"model:{scorer}", run)


def unavailable_scorers(scorers: tuple[str, ...]) -> str | None:
    """Why some of ``scorers`` cannot run here (``model_based.check_available``), or None."""
    reasons = _model_based().check_available(list(scorers))
    return "; ".join(f"{n}: {why}" if len(scorers) > 1 else why for n, why in reasons.items()) or None


class ModelBased(Metric):
    """One model-based metric: the values of one scorer of ``model_based.SCORERS`` (``scorer``), reported as
    metric ``name`` (default: the scorer's name) with display ``labels`` per key. ``optional``: a protocol
    reports it as unavailable where it cannot run instead of stopping (``scorers`` lists what it needs)."""

    group = "model"
    modes = (None, "pycocoevalcap", "radeval")

    def __init__(self, scorer: str, name: str | None = None, labels: dict[str, str] | None = None,
                 optional: bool = False):
        self.scorer = scorer
        self.name = name or scorer
        self.scorers = (scorer,)
        self.labels = dict(labels or {})
        self.optional = optional
        self.keys = tuple(self.labels)  # the keys it is expected to report; the scorer's own, once computed
        self._layout: tuple[tuple[str, ...], bool] | None = None  # (value keys, has labels)
        self._component: str | None = None

    @property
    def columns(self) -> tuple[Column, ...]:  # type: ignore[override]
        return tuple(Column(k, self.label(k)) for k in (self._layout[0] if self._layout else ()))

    def unavailable(self, ctx: Context) -> str | None:
        return unavailable_scorers(self.scorers)

    def compute(self, ctx: Context) -> Computed:
        result = scored(ctx, self.scorer)
        n = ctx.n
        empty = np.array([not h.strip() for h in ctx.hyps], dtype=bool)
        per_sample: dict[str, np.ndarray] = {}
        for key, values in dict(result.per_sample).items():
            v = np.asarray(values, dtype=np.float64).reshape(-1)
            if v.shape[0] != n:
                raise ModelMetricFailure(f"model metric {self.name}: {v.shape[0]} values of {key!r} for {n} reports")
            per_sample[str(key)] = np.where(empty, 0.0, v)
        blocks = [np.column_stack([per_sample[k] for k in per_sample] + [np.ones(n)])]
        hyp_labels = getattr(result, "hyp_labels", None)
        ref_labels = getattr(result, "ref_labels", None)
        has_labels = hyp_labels is not None and ref_labels is not None
        if has_labels:
            hl = self._labels(hyp_labels, n, "hyp_labels")
            rl = self._labels(ref_labels, n, "ref_labels")
            hl[empty] = 0
            blocks.append(clinical.outcome_counts(hl, rl, "negative").reshape(n, len(clinical.COLUMNS) * 4))
        layout = (tuple(per_sample), has_labels)
        if self._layout is not None and layout != self._layout:
            raise ModelMetricFailure(f"model metric {self.name}: returned other keys for another system ({layout[0]} vs {self._layout[0]})")
        self._layout = layout
        self.keys = layout[0] + (self._label_keys() if has_labels else ())
        self._component = f"{self.name}:{getattr(result, 'signature', '') or 'unknown'}"
        return Computed(stats=np.hstack(blocks), per_sample=per_sample, keys=self.keys, component=self._component)

    def _labels(self, labels, n: int, what: str) -> np.ndarray:
        arr = np.asarray(labels)
        if arr.shape != (n, len(clinical.COLUMNS)):
            raise ModelMetricFailure(f"model metric {self.name}: {what} has shape {arr.shape}, expected ({n}, {len(clinical.COLUMNS)})")
        return (arr == 1).astype(np.int8)

    def _label_keys(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{s}_{a}_f1" for s in LABEL_SETS for a in AVERAGES)

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        if self._layout is None:
            raise RuntimeError(f"model metric {self.name}: aggregate before compute")
        keys, has_labels = self._layout
        sums = np.asarray(sums, dtype=np.float64)
        m = len(keys)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = {k: sums[..., j] / sums[..., m] for j, k in enumerate(keys)}
        if has_labels:
            values = clinical.set_metrics(sums[..., m + 1:].reshape(*sums.shape[:-1], len(clinical.COLUMNS), 4))
            for s in LABEL_SETS:
                for a in AVERAGES:
                    out[f"{self.name}_{s}_{a}_f1"] = values[f"{s}_{a}_f1"]
        return out

    def signature(self, ctx: Context, available: bool) -> str:
        return self._component or f"{self.name}:none"


def for_names(names) -> list[ModelBased]:
    """One metric per requested name (already checked against ``model_based.KNOWN``)."""
    return [ModelBased(n) for n in names]
