"""BLEU-1..4 (Papineni et al., 2002) from per-sample sufficient statistics, one reference per sample.

Per sample the statistics are the row ``[m1, m2, m3, m4, g1, g2, g3, g4, c, r]`` (:data:`STAT_NAMES`):

* ``m_k`` clipped k-gram matches: the sum over the hypothesis' k-grams of
  ``min(count in hypothesis, count in reference)``;
* ``g_k = max(0, c - k + 1)`` the number of hypothesis k-grams;
* ``c`` hypothesis length and ``r`` reference length in tokens.

Corpus BLEU is a function of the column sums only, so a bootstrap resample is one weighted sum.

``corpus`` variant (default mode), with ``M_k, G_k, C, R`` the corpus sums::

    p_k = M_k / G_k
    BP  = 1 if C > R else exp(1 - R / C)        (0 when C == 0)
    BLEU-N = BP * exp(sum_{k<=N} log(p_k) / N)  (0 when any p_k, k <= N, is 0)

No smoothing and no epsilon: this is the textbook corpus BLEU (sacrebleu's with ``smooth:none``).

``pycoco`` variant (compatibility mode) reproduces pycocoevalcap 1.2's ``BleuScorer`` with its
constants ``tiny = 1e-15`` and ``small = 1e-9``::

    BLEU-N = prod_{k<=N} ((M_k + tiny) / (G_k + small)) ** (1 / N)
             * (exp(1 - 1 / ratio) if ratio < 1 else 1),   ratio = (C + tiny) / (R + small)

applied to the corpus sums for the corpus score and to one sample's row for that sample's score
(pycocoevalcap's per-image list). With one reference, its "closest" reference length is ``r``.

``sacrebleu`` variant (the ``llava-rad`` protocol) reproduces sacrebleu 2.x's ``BLEU().corpus_score`` with its
defaults (``smooth_method="exp"``, ``effective_order=False``), on the 0-1 scale instead of sacrebleu's 0-100::

    BLEU-N = 0                                  if M_1 == 0 or any G_k == 0 (k <= N)
    p_k    = M_k / G_k, or 1 / (2**z_k * G_k) where M_k == 0 (z_k: the zero-match orders up to k)
    BP     = exp(1 - R / C) if C < R else 1
    BLEU-N = BP * exp(sum_{k<=N} log(p_k) / N)

Per-sample score in the default mode: smoothed sentence BLEU with the ``exp`` smoothing of
Chen & Cherry (2014, method 3; sacrebleu's sentence-BLEU default) and effective order: only orders
with ``g_k > 0`` take part (``N' = min(N, c)``); walking k = 1..N', a zero match count ``m_k = 0``
is replaced by the precision ``1 / (2**z * g_k)`` where ``z`` counts the zero-match orders seen so
far (1 for the first, 2 for the second, ...). ``BLEU = BP * exp(sum log p_k / N')`` with the
sentence's own brevity penalty; an empty hypothesis scores 0.

Modes (:class:`Bleu`, the registered metric): default ``corpus`` arithmetic on ``cxr-v1`` tokens
with ``exp``-smoothed sentence BLEU per sample; ``--compat pycocoevalcap`` the ``pycoco``
arithmetic (corpus and per sample) on cleaned tokens; ``--compat radeval`` the same ``pycoco``
arithmetic on the raw text split on whitespace, which is RadEval's BLEU (its ``bleu`` key is
BLEU-4; ``bleu_1``..``bleu_3`` are its detailed keys).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from cxrgen.metrics.base import Column, Computed, Context, Metric
from cxrgen.metrics.tokenize import tokenizer_for

MAX_N = 4
STAT_NAMES = ("m1", "m2", "m3", "m4", "g1", "g2", "g3", "g4", "hyp_len", "ref_len")
N_STATS = len(STAT_NAMES)
_TINY = 1e-15
_SMALL = 1e-9


def ngram_counts(tokens: list[str], max_n: int = MAX_N) -> list[Counter]:
    """``[Counter of 1-grams, ..., Counter of max_n-grams]`` of ``tokens`` (n-grams as tuples)."""
    return [Counter(zip(*[tokens[i:] for i in range(k)])) for k in range(1, max_n + 1)]


def bleu_stats_row(hyp_counts: list[Counter], ref_counts: list[Counter], hyp_len: int, ref_len: int) -> list[int]:
    """The statistics row ``[m1..m4, g1..g4, c, r]`` of one sample from its n-gram counts."""
    matches = []
    for hk, rk in zip(hyp_counts, ref_counts):
        m = 0
        for gram, count in hk.items():
            rc = rk.get(gram)
            if rc:
                m += count if count < rc else rc
        matches.append(m)
    guesses = [max(0, hyp_len - k + 1) for k in range(1, MAX_N + 1)]
    return matches + guesses + [hyp_len, ref_len]


def bleu_stats(hyps: list[list[str]], refs: list[list[str]]) -> np.ndarray:
    """Statistics matrix, shape ``(n, 10)``, for token lists ``hyps[i]`` against ``refs[i]``."""
    rows = [
        bleu_stats_row(ngram_counts(h), ngram_counts(r), len(h), len(r)) for h, r in zip(hyps, refs)
    ]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), N_STATS)


def corpus_bleu(sums: np.ndarray, order: int, variant: str = "corpus") -> np.ndarray:
    """BLEU-``order`` from statistics sums of shape ``(..., 10)``; returns shape ``(...)``.

    ``variant`` is ``"corpus"`` (default mode) or ``"pycoco"`` (pycocoevalcap 1.2's arithmetic).
    """
    sums = np.asarray(sums, dtype=np.float64)
    m = sums[..., 0:order]
    g = sums[..., MAX_N : MAX_N + order]
    c = sums[..., 2 * MAX_N]
    r = sums[..., 2 * MAX_N + 1]
    if variant == "pycoco":
        prod = np.prod((m + _TINY) / (g + _SMALL), axis=-1)
        score = prod ** (1.0 / order)
        ratio = (c + _TINY) / (r + _SMALL)
        with np.errstate(divide="ignore", over="ignore"):
            bp = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
        return score * bp
    if variant == "sacrebleu":
        return _sacrebleu(m, g, c, r)
    if variant != "corpus":
        raise ValueError(f"unknown BLEU variant {variant!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(m) - np.log(g)
        mean_log = np.where(np.all(m > 0, axis=-1), logp.sum(axis=-1) / order, -np.inf)
        bp = np.where(c > r, 1.0, np.exp(1 - r / c))
    score = np.exp(mean_log) * np.where(c > 0, bp, 0.0)
    return np.nan_to_num(score, nan=0.0)


def _sacrebleu(m: np.ndarray, g: np.ndarray, c: np.ndarray, r: np.ndarray) -> np.ndarray:
    """sacrebleu's corpus BLEU with ``exp`` smoothing (module docstring) from the match and n-gram counts of the
    orders used, ``(..., N)``, and the lengths ``(...)``; 0-1 scale."""
    z = np.cumsum(m == 0, axis=-1)
    defined = (m[..., 0] > 0) & np.all(g > 0, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(m > 0, m / g, 1.0 / (2.0**z * g))
        score = np.exp(np.log(np.where(defined[..., None], p, 1.0)).mean(axis=-1))
        bp = np.where(c < r, np.exp(1 - r / np.where(c > 0, c, 1.0)), 1.0)
    return np.where(defined, bp * score, 0.0)


def sentence_bleu_exp(stats: np.ndarray, order: int) -> np.ndarray:
    """Smoothed sentence BLEU-``order`` of each row of ``stats`` (shape ``(n, 10)``), ``exp``
    smoothing with effective order as defined in the module docstring."""
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, N_STATS)
    m = stats[:, :order]
    g = stats[:, MAX_N : MAX_N + order]
    c = stats[:, 2 * MAX_N]
    r = stats[:, 2 * MAX_N + 1]
    used = g > 0  # g_k decreases with k, so the used orders are a prefix
    zero = used & (m == 0)
    z = np.cumsum(zero, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(m > 0, m / g, 1.0 / (2.0**z * g))
        log_sum = np.where(used, np.log(np.where(used, p, 1.0)), 0.0).sum(axis=1)
        n_used = used.sum(axis=1)
        bp = np.where(c > r, 1.0, np.exp(1 - r / np.where(c > 0, c, 1.0)))
        score = bp * np.exp(log_sum / np.maximum(n_used, 1))
    return np.where(c > 0, score, 0.0)


def tokens(ctx: Context) -> tuple[list[list[str]], list[list[str]]]:
    """The hypothesis and reference tokens of the context's mode (computed once per context)."""

    def run():
        tok = tokenizer_for(ctx.compat)
        return [tok(h) for h in ctx.hyps], [tok(r) for r in ctx.refs]

    return ctx.shared("tokens", run)


def counts(ctx: Context) -> tuple[list[list[Counter]], list[list[Counter]]]:
    """Per-order n-gram Counters of the context's tokens (computed once per context)."""

    def run():
        h, r = tokens(ctx)
        return [ngram_counts(t) for t in h], [ngram_counts(t) for t in r]

    return ctx.shared("ngram_counts", run)


class Bleu(Metric):
    """BLEU-1..4 (module docstring), in every mode."""

    name = "bleu"
    keys = tuple(f"bleu_{k}" for k in range(1, MAX_N + 1))
    labels = {f"bleu_{k}": f"BLEU-{k}" for k in range(1, MAX_N + 1)}
    columns = tuple(Column(f"bleu_{k}", f"BLEU-{k}") for k in range(1, MAX_N + 1)) + (
        Column("hyp_tokens", "tokens", kind="extra"),
        Column("ref_tokens", "reference tokens", kind="data"),
    )
    modes = (None, "pycocoevalcap", "radeval")

    def compute(self, ctx: Context) -> Computed:
        h_tok, r_tok = tokens(ctx)
        h_counts, r_counts = counts(ctx)
        rows = [bleu_stats_row(hc, rc, len(h), len(r)) for hc, rc, h, r in zip(h_counts, r_counts, h_tok, r_tok)]
        stats = np.asarray(rows, dtype=np.float64).reshape(ctx.n, N_STATS)
        per_sample = {"hyp_tokens": stats[:, 2 * MAX_N].astype(int), "ref_tokens": stats[:, 2 * MAX_N + 1].astype(int)}
        for k in range(1, MAX_N + 1):
            if ctx.compat is None:
                per_sample[f"bleu_{k}"] = sentence_bleu_exp(stats, k)
            else:
                per_sample[f"bleu_{k}"] = corpus_bleu(stats, k, "pycoco")
        return Computed(stats=stats, per_sample=per_sample)

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return {f"bleu_{k}": corpus_bleu(sums, k, self._variant) for k in range(1, MAX_N + 1)}

    def signature(self, ctx: Context, available: bool) -> str:
        return "bleu:corpus+sent:exp-eff" if ctx.compat is None else "bleu:pycoco+sent:pycoco"

    # The corpus arithmetic is the only mode-dependent part of ``aggregate``; it is fixed per
    # instance by :func:`for_mode` so that ``aggregate`` takes sums alone.
    _variant = "corpus"

    def for_mode(self, compat: str | None) -> "Bleu":
        other = Bleu()
        other._variant = "corpus" if compat is None else "pycoco"
        return other
