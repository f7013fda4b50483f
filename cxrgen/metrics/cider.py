"""CIDEr-D (Vedantam et al., 2015) with one reference per sample, as in the coco-caption code.

For n = 1..4, every n-gram g of a text gets the weight ``tf(g) * (log N - log max(1, df(g)))`` where
``tf`` is its count in the text, ``N`` the number of samples and ``df(g)`` the number of samples
whose reference contains g. Document frequencies come from the references of the evaluated set
and stay fixed: the bootstrap resamples the per-sample scores computed with the full set's ``df``
and ``N`` (it does not recompute them per resample), so its interval reflects the sampling of
studies, not of the vocabulary statistics.

Per sample and order n, with ``h`` and ``r`` the weight vectors of hypothesis and reference::

    s_n = sum_g min(h_g, r_g) * r_g / (|h| |r|)  *  exp(-(len_h - len_r)^2 / (2 sigma^2)),  sigma = 6

(the ``min`` is CIDEr-D's clipping; ``s_n = 0`` when a norm is 0). The sample's CIDEr-D is
``10 * mean(s_1..s_4)`` and the corpus CIDEr-D is the mean over samples.

``len`` in the length penalty is the number of tokens (the paper's definition). pycocoevalcap 1.2
counts bigrams instead (``max(0, tokens - 1)``); the difference of two bigram counts equals the
difference of the token counts whenever both texts have at least one token, and a sample whose
hypothesis is empty scores 0 either way, so both modes use this one implementation.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from cxrgen.metrics.base import Column, Context, MeanMetric

SIGMA = 6.0


def document_frequency(ref_counts: list[list[Counter]]) -> Counter:
    """Number of references containing each n-gram (all orders in one Counter)."""
    df: Counter = Counter()
    for per_order in ref_counts:
        for counts in per_order:
            df.update(counts.keys())
    return df


def _weights(counts: Counter, idf: dict, log_n: float) -> tuple[dict, float]:
    get = idf.get
    vec = {gram: tf * get(gram, log_n) for gram, tf in counts.items()}
    return vec, math.sqrt(sum(w * w for w in vec.values()))


def cider_d_scores(
    hyp_counts: list[list[Counter]],
    ref_counts: list[list[Counter]],
    hyp_lens: list[int],
    ref_lens: list[int],
    sigma: float = SIGMA,
) -> np.ndarray:
    """Per-sample CIDEr-D. ``*_counts[i]`` are the per-order n-gram Counters of sample i (see
    :func:`cxrgen.metrics.bleu.ngram_counts`), ``*_lens[i]`` the token counts."""
    n = len(ref_counts)
    if n == 0:
        return np.zeros(0)
    df = document_frequency(ref_counts)
    log_n = math.log(float(n))
    # idf of every n-gram seen in a reference; any other n-gram has df 0 -> log(max(1, 0)) = 0
    idf = {gram: log_n - (math.log(d) if d > 1 else 0.0) for gram, d in df.items()}
    out = np.zeros(n)
    for i in range(n):
        delta = float(hyp_lens[i] - ref_lens[i])
        penalty = math.exp(-(delta**2) / (2 * sigma**2))
        total = 0.0
        for hk, rk in zip(hyp_counts[i], ref_counts[i]):
            vh, nh = _weights(hk, idf, log_n)
            vr, nr = _weights(rk, idf, log_n)
            val = 0.0
            for gram, wh in vh.items():
                wr = vr.get(gram)
                if wr is not None:
                    val += (wh if wh < wr else wr) * wr
            if nh != 0 and nr != 0:
                val /= nh * nr
            total += val * penalty
        out[i] = 10.0 * total / len(hyp_counts[i])
    return out


class CiderD(MeanMetric):
    """CIDEr-D (module docstring) on the mode's tokens; not part of RadEval mode."""

    name = "cider"
    keys = ("cider_d",)
    labels = {"cider_d": "CIDEr-D"}
    columns = (Column("cider_d", "CIDEr-D", scale=10.0),)
    modes = (None, "pycocoevalcap")

    def values(self, ctx: Context) -> np.ndarray:
        from cxrgen.metrics.bleu import counts, tokens

        h_tok, r_tok = tokens(ctx)
        h_counts, r_counts = counts(ctx)
        return cider_d_scores(h_counts, r_counts, [len(t) for t in h_tok], [len(t) for t in r_tok])

    def signature(self, ctx: Context, available: bool) -> str:
        return "cider:d-s6-df:refs"
