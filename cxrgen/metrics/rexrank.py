"""The metrics of ReXrank's leaderboard (rajpurkarlab/ReXrank, scored with rajpurkarlab/CXR-Report-Metric), as
Metric classes.

ReXrank's columns and where each is defined (the protocol is :data:`cxrgen.metrics.protocols.REXRANK`):

* **BLEU** (:class:`SentenceBleu2`), ``CXRMetric/run_eval.py:72-93``: BLEU-2 of each report on its own, averaged
  over the studies. Tokens: ``str(text).lower().replace(".", " .").split(" ")`` with empty tokens dropped (only
  the space separates: a line break stays inside a token, other punctuation stays attached). Per report, with
  clipped n-gram matches ``m_k`` over ``max(1, g_k)`` hypothesis n-grams: 0 when ``m_1 = 0``; otherwise
  ``p_k = m_k / max(1, g_k)``, a zero ``m_2`` replaced by ``0.1 / max(1, g_2)`` (NLTK's smoothing method 1, as
  fast-bleu implements it); ``BP = 1`` if the hypothesis is longer than the reference, else
  ``exp(1 - r / c)``; ``BLEU-2 = BP * sqrt(p_1 p_2)``.
* **BertScore**: BERTScore F1 of ``distilroberta-base`` layer 5, rescaled with its published baseline, **idf off**
  (CXR-Report-Metric's ``USE_IDF = False``), mean over studies (RadEval scorer ``bertscore_distilroberta``).
* **SembScore**: cosine of the CheXbert [CLS] embeddings, mean (RadEval scorer ``sembscore``).
* **RadGraph**: (entity F1 + relation F1) / 2 of the original RadGraph model, mean (RadEval scorer
  ``radgraph_combined``).
* **RadCliQ-v1** (:class:`RadCliQ`) and **1/RadCliQ-v1** (:class:`InvRadCliQ`), ``run_eval.py:39-69`` with the
  constants of ``CXRMetric/radcliq-v1.pkl`` (:data:`RADCLIQ_V1`): per study
  ``RadCliQ_i = sum_j coef_j (x_ij - mean_j) / scale_j + intercept`` over (RadGraph, BERTScore, SembScore,
  BLEU-2); the corpus value is the mean, and the leaderboard's 1/RadCliQ-v1 is **the reciprocal of that mean**
  (undefined where the mean is 0). The formula is linear, so it equals RadCliQ-v1 of the four column means.
  BERTScore here is the idf-off one above: RadEval's own ``radcliq`` computes it with idf on.
* **RaTEScore** and **GREEN**: RadEval's scorers (:mod:`cxrgen.metrics.model_based`), where installed.

An empty generated report scores 0 on every component (so its RadCliQ-v1 is that of four zeros, about 2.45).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from cxrgen.metrics.base import Column, Computed, Context, MeanMetric, Metric, mean_of_sums, mean_stats
from cxrgen.metrics.model_metric import scored, unavailable_scorers

#: RadCliQ-v1 (``CXRMetric/radcliq-v1.pkl``): per input, (scaler mean, scaler scale, coefficient), in its column
#: order, then the intercept. The scale is the square root of the pickled scaler's variance.
RADCLIQ_V1 = {
    "radgraph": (0.5379231241355762, 0.3028258411486429, -0.37708368261038905),
    "bertscore": (0.6175725628125001, 0.22430938459304575, -0.37030009974480316),
    "sembscore": (0.7647942121140658, 0.2539439110169773, -0.25261621789593225),
    "bleu_2": (0.44738335396242174, 0.2989271671041838, 4.3150484050247560e-12),
}
RADCLIQ_V1_INTERCEPT = 2.4665525613232559e-10
#: The RadEval scorers RadCliQ-v1 needs besides BLEU-2, and the value each gives.
RADCLIQ_SCORERS = {"radgraph": "radgraph_combined", "bertscore": "bertscore_distilroberta", "sembscore": "sembscore"}


def rexrank_tokens(text: str) -> list[str]:
    """CXR-Report-Metric's ``prep_reports`` for one report (module docstring)."""
    return [t for t in str(text).lower().replace(".", " .").split(" ") if t != ""]


def sentence_bleu2(hyp: list[str], ref: list[str]) -> float:
    """BLEU-2 of one tokenized hypothesis against one reference, with NLTK's smoothing method 1 (module
    docstring)."""
    precisions = []
    for k in (1, 2):
        h = Counter(zip(*[hyp[i:] for i in range(k)]))
        r = Counter(zip(*[ref[i:] for i in range(k)]))
        matches = sum(min(c, r[g]) for g, c in h.items())
        total = max(1, sum(h.values()))
        if k == 1 and matches == 0:
            return 0.0
        precisions.append((matches if matches else 0.1) / total)
    c, r_len = len(hyp), len(ref)
    bp = 1.0 if c > r_len else float(np.exp(1 - r_len / c))
    return bp * float(np.exp(0.5 * np.log(precisions[0]) + 0.5 * np.log(precisions[1])))


def bleu2_values(ctx: Context) -> np.ndarray:
    """Per-pair ReXrank BLEU-2 of the context (computed once per context); an empty hypothesis scores 0."""

    def run():
        refs = ctx.shared_refs("tokens:rexrank", lambda: [rexrank_tokens(r) for r in ctx.refs])
        return np.array([sentence_bleu2(rexrank_tokens(h), r) if h.strip() else 0.0 for h, r in zip(ctx.hyps, refs)])

    return ctx.shared("rexrank_bleu2", run)


class SentenceBleu2(MeanMetric):
    """ReXrank's BLEU column: the mean of per-report BLEU-2 (module docstring)."""

    name = "bleu"
    keys = ("bleu_2",)
    labels = {"bleu_2": "BLEU-2 (ReXrank: per report, smoothing method 1, mean)"}
    columns = (Column("bleu_2", "BLEU-2"),)
    modes = ()

    def values(self, ctx: Context) -> np.ndarray:
        return bleu2_values(ctx)

    def signature(self, ctx: Context, available: bool) -> str:
        return "bleu:rexrank-sent2+tok:lc-dot-space+smooth:method1+mean"


def radcliq_v1(values: dict[str, np.ndarray]) -> np.ndarray:
    """Per-study RadCliQ-v1 from the four inputs of :data:`RADCLIQ_V1` (arrays of one shape)."""
    total = np.full(np.shape(values["radgraph"]), RADCLIQ_V1_INTERCEPT, dtype=np.float64)
    for key, (mean, scale, coef) in RADCLIQ_V1.items():
        total = total + coef * (np.asarray(values[key], dtype=np.float64) - mean) / scale
    return total


class RadCliQ(Metric):
    """RadCliQ-v1, the mean of the per-study values (lower is better); its inputs come from the same scorers as
    the protocol's BERTScore, SembScore and RadGraph, and from :class:`SentenceBleu2`."""

    name = "radcliq"
    keys = ("radcliq_v1",)
    labels = {"radcliq_v1": "RadCliQ-v1 (mean; lower is better)"}
    higher_is_better = False
    group = "model"
    columns = (Column("radcliq_v1", "RadCliQ-v1", higher_is_better=False, scale=3.0),)
    modes = ()
    scorers = tuple(RADCLIQ_SCORERS.values())
    optional = False

    def unavailable(self, ctx: Context) -> str | None:
        return unavailable_scorers(self.scorers)

    def per_study(self, ctx: Context) -> np.ndarray:
        """Per-study RadCliQ-v1 of the context (computed once per context)."""

        def run():
            values = {k: scored(ctx, s).per_sample[k] for k, s in RADCLIQ_SCORERS.items()}  # 0 for empty reports
            return radcliq_v1({**values, "bleu_2": bleu2_values(ctx)})

        return ctx.shared("radcliq_v1", run)

    def compute(self, ctx: Context) -> Computed:
        v = self.per_study(ctx)
        return Computed(stats=mean_stats(v), per_sample={"radcliq_v1": v})

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return {"radcliq_v1": mean_of_sums(sums)}

    def signature(self, ctx: Context, available: bool) -> str:
        if not available:
            return f"{self.name}:none"
        return f"{self.name}:v1-cxr-report-metric-pkl(radgraph,bertscore,sembscore,bleu_2)+mean"


class InvRadCliQ(RadCliQ):
    """ReXrank's ranking column 1/RadCliQ-v1: the reciprocal of the mean RadCliQ-v1 (higher is better; undefined
    where the mean is 0). No per-study column: the reciprocal of one study's value means nothing."""

    name = "inv_radcliq"
    keys = ("inv_radcliq_v1",)
    labels = {"inv_radcliq_v1": "1/RadCliQ-v1 (reciprocal of the mean)"}
    higher_is_better = True
    columns = ()

    def compute(self, ctx: Context) -> Computed:
        return Computed(stats=mean_stats(self.per_study(ctx)))

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        mean = mean_of_sums(sums)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"inv_radcliq_v1": np.where(mean != 0, 1.0 / np.where(mean != 0, mean, 1.0), np.nan)}

    def signature(self, ctx: Context, available: bool) -> str:
        return f"{self.name}:1/mean" if available else f"{self.name}:none"
