"""The metric suite: per-sample scores and sufficient statistics for a list of (hypothesis, reference).

:func:`score_texts` tokenizes once, computes every per-sample statistic, and returns them as one
``(n, K)`` matrix with, for every corpus metric, the columns it reads and the function that turns
their column sums into the metric (:class:`MetricDef`). Point estimates, bootstrap intervals and
paired comparisons (:mod:`cxrgen.metrics.bootstrap`) are all computed from that matrix.

Modes (``compat``):

* ``None`` (default): tokenizer ``cxr-v1``; BLEU ``corpus`` with ``exp``-smoothed sentence BLEU per
  sample; ROUGE-L ``lcs-f1`` (rouge-score's F-measure); CIDEr-D with token-count length penalty;
  METEOR from NLTK when its WordNet data exist.
* ``"pycocoevalcap"``: cleaner ``pycoco-strip``; pycocoevalcap 1.2's BLEU arithmetic (corpus and per
  image), ROUGE-L with beta 1.2, CIDEr-D with its bigram-count length penalty; no METEOR.

Metric keys (values on a 0-1 scale, CIDEr-D on its usual 0-10 scale): ``bleu_1`` .. ``bleu_4``,
``rouge_l``, ``cider_d``, ``meteor``; clinical keys from :func:`cxrgen.metrics.clinical.metric_keys`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from cxrgen.metrics import bleu, cider, clinical, meteor, rouge
from cxrgen.metrics.tokenize import tokenize_cxr, tokenize_pycoco

COMPAT_MODES = ("pycocoevalcap",)


@dataclass
class MetricDef:
    """A corpus metric: ``fn(stats[..., cols].sum over samples)`` -> value."""

    key: str
    cols: slice
    fn: Callable[[np.ndarray], np.ndarray]
    group: str  # "text" | "clinical" | "model"


@dataclass
class Scores:
    """Everything computed for one system on one aligned set of samples."""

    n: int
    stats: np.ndarray
    metrics: list[MetricDef]
    per_sample: dict[str, np.ndarray]
    unavailable: dict[str, str] = field(default_factory=dict)
    hyp_labels: np.ndarray | None = None
    ref_labels: np.ndarray | None = None
    outcome_cols: slice | None = None

    def point(self) -> dict[str, float]:
        total = self.stats.sum(axis=0)
        return {m.key: float(m.fn(total[m.cols])) for m in self.metrics}

    def from_sums(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return {m.key: np.asarray(m.fn(sums[:, m.cols])) for m in self.metrics}

    def add_mean_metric(self, key: str, values: np.ndarray, group: str) -> None:
        """Append a metric that is the mean of the per-sample ``values`` (also kept per sample)."""
        values = np.asarray(values, dtype=np.float64).reshape(self.n)
        col = self.stats.shape[1]
        self.stats = np.hstack([self.stats, values[:, None]])
        n = self.n
        self.metrics.append(MetricDef(key, slice(col, col + 1), lambda s, n=n: s[..., 0] / n, group))
        self.per_sample[key] = values


class _Builder:
    def __init__(self, n: int):
        self.n = n
        self.blocks: list[np.ndarray] = []
        self.width = 0
        self.metrics: list[MetricDef] = []

    def add_stats(self, block: np.ndarray) -> slice:
        block = np.asarray(block, dtype=np.float64).reshape(self.n, -1)
        s = slice(self.width, self.width + block.shape[1])
        self.blocks.append(block)
        self.width += block.shape[1]
        return s

    def add_mean(self, key: str, values: np.ndarray, group: str) -> None:
        n = self.n
        cols = self.add_stats(values)
        self.metrics.append(MetricDef(key, cols, lambda s, n=n: s[..., 0] / n, group))

    def matrix(self) -> np.ndarray:
        return np.hstack(self.blocks) if self.blocks else np.zeros((self.n, 0))


def tokenizer_for(compat: str | None) -> Callable[[str], list[str]]:
    if compat is None:
        return tokenize_cxr
    if compat == "pycocoevalcap":
        return tokenize_pycoco
    raise ValueError(f"unknown compatibility mode {compat!r}; known: {', '.join(COMPAT_MODES)}")


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
) -> Scores:
    """Per-sample statistics of every metric for ``hyps[i]`` against ``refs[i]``.

    Empty hypotheses ("" ) score 0 on every text metric. ``label_reports`` replaces the default
    labeler; ``ref_labels`` supplies precomputed reference labels (labels of the references are the
    same for every system and are computed once by the caller in a comparison).
    """
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    n = len(hyps)
    if n == 0:
        raise ValueError("no samples to score")
    tok = tokenizer_for(compat)
    h_tok = [tok(h) for h in hyps]
    r_tok = [tok(r) for r in refs]
    h_counts = [bleu.ngram_counts(t) for t in h_tok]
    r_counts = [bleu.ngram_counts(t) for t in r_tok]
    h_len = [len(t) for t in h_tok]
    r_len = [len(t) for t in r_tok]

    b = _Builder(n)
    per_sample: dict[str, np.ndarray] = {
        "hyp_tokens": np.asarray(h_len),
        "ref_tokens": np.asarray(r_len),
    }
    unavailable: dict[str, str] = {}

    bstats = np.asarray(
        [bleu.bleu_stats_row(hc, rc, hl, rl) for hc, rc, hl, rl in zip(h_counts, r_counts, h_len, r_len)],
        dtype=np.float64,
    ).reshape(n, bleu.N_STATS)
    bcols = b.add_stats(bstats)
    variant = "pycoco" if compat else "corpus"
    for k in range(1, 5):
        b.metrics.append(MetricDef(f"bleu_{k}", bcols, lambda s, k=k: bleu.corpus_bleu(s, k, variant), "text"))
        if compat:
            per_sample[f"bleu_{k}"] = bleu.corpus_bleu(bstats, k, "pycoco")
        else:
            per_sample[f"bleu_{k}"] = bleu.sentence_bleu_exp(bstats, k)

    rl = rouge.rouge_l_scores(h_tok, r_tok, "lcs-b1.2" if compat else "lcs-f1")
    per_sample["rouge_l"] = rl
    b.add_mean("rouge_l", rl, "text")

    cd = cider.cider_d_scores(h_counts, r_counts, h_len, r_len)
    per_sample["cider_d"] = cd
    b.add_mean("cider_d", cd, "text")

    if compat:
        unavailable["meteor"] = "not part of --compat pycocoevalcap (coco-caption's METEOR is a Java program)"
    elif not use_meteor:
        unavailable["meteor"] = "disabled"
    else:
        ok, why = meteor.meteor_availability()
        if ok:
            mt = meteor.meteor_scores(h_tok, r_tok)
            per_sample["meteor"] = mt
            b.add_mean("meteor", mt, "text")
        else:
            unavailable["meteor"] = why

    scores = Scores(n=n, stats=np.zeros((n, 0)), metrics=b.metrics, per_sample=per_sample, unavailable=unavailable)
    if clinical_metrics:
        add_clinical(scores, b, hyps, refs, uncertain, label_reports, ref_labels)
    scores.stats = b.matrix()
    return scores


def _observation_value(sums: np.ndarray, j: int, stat: str) -> np.ndarray:
    """Per-observation metric; NaN where the observation is never positive (undefined)."""
    per = clinical.per_observation(sums)
    return np.where(per["defined"][..., j], per[stat][..., j], np.nan)


def add_clinical(
    scores: Scores,
    b: _Builder,
    hyps: Sequence[str],
    refs: Sequence[str],
    uncertain: str,
    label_reports: Callable[[list[str]], list[dict]] | None,
    ref_labels: Sequence[dict] | None,
) -> None:
    """Label both sides and add the clinical metrics to ``scores`` (see :mod:`clinical`)."""
    if uncertain not in clinical.POLICIES:
        raise ValueError(f"uncertain policy must be one of {', '.join(clinical.POLICIES)}, not {uncertain!r}")
    if ref_labels is None:
        ref_labels = clinical.label_texts(list(refs), label_reports)
    hyp_labels = clinical.label_texts(list(hyps), label_reports)
    hc = clinical.label_codes(hyp_labels, "generated-report labels")
    rc = clinical.label_codes(ref_labels, "reference labels")
    outcomes = clinical.outcome_counts(hc, rc, uncertain)  # (n, 14, 4)
    n_obs = len(clinical.COLUMNS)
    cols = b.add_stats(outcomes.reshape(b.n, n_obs * 4))

    def make(key):
        return lambda s: clinical.set_metrics(s.reshape(*s.shape[:-1], n_obs, 4))[key]

    for key in clinical.metric_keys():
        b.metrics.append(MetricDef(key, cols, make(key), "clinical"))
    for j, col in enumerate(clinical.COLUMNS):
        for stat in clinical.STATS:
            b.metrics.append(
                MetricDef(
                    f"obs:{col}:{stat}",
                    cols,
                    lambda s, j=j, stat=stat: _observation_value(s.reshape(*s.shape[:-1], n_obs, 4), j, stat),
                    "observation",
                )
            )
    totals = outcomes.sum(axis=1)  # (n, 4) over the 14 observations
    for k, name in enumerate(clinical.OUTCOMES):
        scores.per_sample[f"ce_{name}"] = totals[:, k]
    judged = totals.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores.per_sample["ce_agreement"] = np.where(judged > 0, (totals[:, 0] + totals[:, 3]) / judged, np.nan)
    scores.hyp_labels = hc
    scores.ref_labels = rc
    scores.outcome_cols = cols
