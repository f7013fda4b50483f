"""The metric suite: per-sample scores and sufficient statistics for a list of (hypothesis, reference).

:func:`score_texts` runs every metric of the mode (:func:`cxrgen.metrics.registry.for_mode`, plus
any model-based metrics asked for) on one :class:`~cxrgen.metrics.base.Context`, so tokens and
n-gram counts are computed once, and joins their per-sample statistics into one ``(n, K)`` matrix.
Point estimates, bootstrap intervals and paired tests (:mod:`cxrgen.metrics.bootstrap`,
:mod:`cxrgen.metrics.significance`) are all computed from that matrix through
:meth:`Scores.from_sums`, which hands each metric the sums of its own columns.

Modes (``compat``):

* ``None`` (default): tokenizer ``cxr-v1``; BLEU ``corpus`` with ``exp``-smoothed sentence BLEU per
  sample; ROUGE-L ``lcs-f1`` (rouge-score's F-measure); CIDEr-D; METEOR from NLTK when its WordNet
  data exist.
* ``"pycocoevalcap"``: cleaner ``pycoco-strip``; pycocoevalcap 1.2's BLEU arithmetic (corpus and per
  image), ROUGE-L with beta 1.2, CIDEr-D; no METEOR.
* ``"radeval"``: RadEval's lexical metrics: BLEU-1..4 with pycocoevalcap's arithmetic on the raw
  text split on whitespace, ROUGE-1/2/L from rouge-score with the Porter stemmer; no CIDEr-D and no
  METEOR.

Metric keys (values on a 0-1 scale, CIDEr-D on its usual 0-10 scale): ``bleu_1`` .. ``bleu_4``,
``rouge_l`` (and ``rouge_1``, ``rouge_2`` in RadEval mode), ``cider_d``, ``meteor``; clinical keys
from :func:`cxrgen.metrics.clinical.metric_keys`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from cxrgen.metrics import registry
from cxrgen.metrics.base import Context, Metric
from cxrgen.metrics.tokenize import COMPAT_MODES, tokenizer_for  # noqa: F401  (re-exported)


@dataclass
class Scores:
    """Everything computed for one system on one aligned set of samples.

    ``metrics``: the metrics computed, in order; ``cols[name]``: each one's columns of ``stats``;
    ``keys[name]``: its corpus keys; ``unavailable``: name -> why a metric of the mode was not
    computed; ``components``: ``(group, signature component)`` of every metric of the mode."""

    n: int
    stats: np.ndarray
    metrics: list[Metric]
    cols: dict[str, slice]
    keys: dict[str, tuple[str, ...]]
    per_sample: dict[str, np.ndarray]
    unavailable: dict[str, str] = field(default_factory=dict)
    components: list[tuple[str, str]] = field(default_factory=list)
    hyp_labels: np.ndarray | None = None
    ref_labels: np.ndarray | None = None
    context: Context | None = None

    def from_sums(self, sums: np.ndarray, resampled: bool = False) -> dict[str, np.ndarray]:
        """Every metric value from column sums of ``stats``, shape ``(..., K)``. ``resampled``: the sums are
        bootstrap resamples of these samples (metrics that keep what they average over fixed get the whole
        sample's sums as their support)."""
        sums = np.asarray(sums, dtype=np.float64)
        whole = self.stats.sum(axis=0) if resampled else None
        out: dict[str, np.ndarray] = {}
        for m in self.metrics:
            cols = self.cols[m.name]
            values = m.aggregate(sums[..., cols], support=whole[cols]) if resampled and m.uses_support \
                else m.aggregate(sums[..., cols])
            out.update({k: np.asarray(v) for k, v in values.items()})
        return out

    def key_columns(self, key: str) -> np.ndarray:
        """Indices of the columns of ``stats`` that the corpus value ``key`` depends on."""
        for m in self.metrics:
            if key in self.keys[m.name]:
                cols = np.arange(self.stats.shape[1])[self.cols[m.name]]
                own = m.key_columns(key)
                return cols if own is None else cols[own]
        raise KeyError(key)

    def point(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.from_sums(self.stats.sum(axis=0)).items()}

    def metric_keys(self, groups: Sequence[str] | None = None) -> list[str]:
        """The corpus keys in order (optionally only those of some groups)."""
        return [k for m in self.metrics if groups is None or m.group in groups for k in self.keys[m.name]]


def metrics_for(compat: str | None, model_metrics: Sequence[str] = ()) -> list[Metric]:
    """The metrics of a mode, then one per requested model-based metric."""
    if compat is not None and compat not in COMPAT_MODES:
        raise ValueError(f"unknown compatibility mode {compat!r}; known: {', '.join(COMPAT_MODES)}")
    out = registry.for_mode(compat)
    if model_metrics:
        from cxrgen.metrics import model_metric

        out += model_metric.for_names(model_metrics)
    return out


def score_texts(
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    compat: str | None = None,
    clinical_metrics: bool = True,
    uncertain: str = "positive",
    use_meteor: bool = True,
    label_reports: Callable[[list[str]], list[dict]] | None = None,
    ref_labels: Sequence[dict] | None = None,
    metrics: Sequence[Metric] | None = None,
    ref_cache: dict | None = None,
    skip: Sequence[str] = (),
) -> Scores:
    """Per-sample statistics of every metric for ``hyps[i]`` against ``refs[i]``.

    Empty hypotheses ("") score 0 on every text metric. ``label_reports`` replaces the default
    labeler; ``ref_labels`` supplies precomputed reference labels. ``metrics`` replaces the
    mode's metric list (default :func:`metrics_for`); ``ref_cache`` is shared between the systems
    of a comparison so that what depends on the references alone is computed once; metrics named
    in ``skip`` are reported unavailable without being asked.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    n = len(hyps)
    if n == 0:
        raise ValueError("no samples to score")
    tokenizer_for(compat)  # an unknown mode is an error before anything runs
    ctx = Context(
        hyps=list(hyps), refs=list(refs), compat=compat, uncertain=uncertain, use_meteor=use_meteor,
        clinical=clinical_metrics, label_reports=label_reports,
        ref_cache=ref_cache if ref_cache is not None else {},
    )
    if ref_labels is not None:
        ctx.ref_cache["clinical_labels"] = list(ref_labels)
    chosen = list(metrics) if metrics is not None else metrics_for(compat)
    blocks: list[np.ndarray] = []
    width = 0
    done: list[Metric] = []
    cols: dict[str, slice] = {}
    keys: dict[str, tuple[str, ...]] = {}
    per_sample: dict[str, np.ndarray] = {}
    unavailable: dict[str, str] = {}
    components: list[tuple[str, str]] = []
    hyp_labels = ref_labels_codes = None
    for m in chosen:
        why = "not available" if m.name in skip else m.unavailable(ctx)
        if why is None:
            out = m.compute(ctx)
            stats = np.asarray(out.stats, dtype=np.float64).reshape(n, -1)
            cols[m.name] = slice(width, width + stats.shape[1])
            width += stats.shape[1]
            blocks.append(stats)
            keys[m.name] = tuple(out.keys if out.keys is not None else m.keys)
            per_sample.update(out.per_sample)
            done.append(m)
            if out.hyp_labels is not None and m.group == "clinical":
                hyp_labels, ref_labels_codes = out.hyp_labels, out.ref_labels
            component = out.component or m.signature(ctx, True)
        else:
            unavailable[m.name] = why
            component = m.signature(ctx, False)
        if component:
            components.append((m.group, component))
    matrix = np.hstack(blocks) if blocks else np.zeros((n, 0))
    return Scores(
        n=n, stats=matrix, metrics=done, cols=cols, keys=keys, per_sample=per_sample, unavailable=unavailable,
        components=components, hyp_labels=hyp_labels, ref_labels=ref_labels_codes, context=ctx,
    )
