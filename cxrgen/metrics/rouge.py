"""ROUGE-L (Lin, 2004) of one hypothesis against one reference, from the longest common subsequence.

With ``l`` the LCS length in tokens, ``P = l / len(hypothesis)`` and ``R = l / len(reference)``:

* default mode, ``lcs-f1``: ``F = 2PR / (P + R)``, the F-measure (beta = 1) that Google's
  ``rouge-score`` package reports as ``rougeL`` (no stemming; tokens come from our tokenizer);
  0 when either side is empty or ``l = 0``.
* compatibility mode, ``lcs-b1.2``: pycocoevalcap 1.2's ``Rouge``:
  ``F = (1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2``, 0 when ``P`` or ``R`` is 0. pycocoevalcap
  splits on single spaces, so an empty hypothesis has one empty token (length 1) and scores 0.

The corpus ROUGE-L is the mean of the per-sample F values (so the bootstrap resamples those).

RadEval mode (``--compat radeval``, :class:`RougeScore`): ROUGE-1, ROUGE-2 and ROUGE-L exactly as
RadEval reports them: Google's ``rouge-score`` package, ``RougeScorer(["rouge1", "rouge2",
"rougeL"], use_stemmer=True)`` (its own tokenizer: lower case, every non-alphanumeric character a
separator, Porter stemmer on words longer than 3 letters), the F-measure of each pair, averaged
over samples. Keys ``rouge_1``, ``rouge_2``, ``rouge_l``.

The LCS length is computed with the bit-parallel algorithm of Allison & Dix (1986) / Hyyrö (2004):
one Python integer is the bit vector over the positions of ``a``, and each token of ``b`` costs
a few integer operations, instead of a ``len(a) x len(b)`` table.
"""

from __future__ import annotations

import numpy as np

from cxrgen.metrics.base import Column, Computed, Context, Metric, mean_of_sums, mean_stats

BETA_PYCOCO = 1.2


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of the token lists ``a`` and ``b``."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = (v + u) | (v - u)
    return len(a) - (v & full).bit_count()


def rouge_l_f1(lcs: int, hyp_len: int, ref_len: int) -> float:
    """ROUGE-L F-measure with beta = 1 (rouge-score's ``rougeL`` fmeasure)."""
    if lcs == 0 or hyp_len == 0 or ref_len == 0:
        return 0.0
    p = lcs / hyp_len
    r = lcs / ref_len
    return 2 * p * r / (p + r)


def rouge_l_pycoco(lcs: int, hyp_len: int, ref_len: int, beta: float = BETA_PYCOCO) -> float:
    """ROUGE-L as pycocoevalcap 1.2 computes it for one reference (lengths from ``split(" ")``)."""
    p = lcs / float(hyp_len)
    r = lcs / float(ref_len)
    if p != 0 and r != 0:
        return ((1 + beta**2) * p * r) / float(r + beta**2 * p)
    return 0.0


def rouge_l_scores(hyps: list[list[str]], refs: list[list[str]], variant: str = "lcs-f1") -> np.ndarray:
    """Per-sample ROUGE-L of token lists; ``variant`` is ``"lcs-f1"`` or ``"lcs-b1.2"``."""
    out = np.zeros(len(hyps))
    for i, (h, r) in enumerate(zip(hyps, refs)):
        lcs = lcs_length(h, r)
        if variant == "lcs-f1":
            out[i] = rouge_l_f1(lcs, len(h), len(r))
        elif variant == "lcs-b1.2":
            # pycocoevalcap splits "" into [""]: an empty side has length 1.
            out[i] = rouge_l_pycoco(lcs, max(len(h), 1), max(len(r), 1))
        else:
            raise ValueError(f"unknown ROUGE-L variant {variant!r}")
    return out


class RougeL(Metric):
    """ROUGE-L F on the mode's tokens: ``lcs-f1`` by default, ``lcs-b1.2`` with pycocoevalcap."""

    name = "rouge"
    keys = ("rouge_l",)
    labels = {"rouge_l": "ROUGE-L"}
    columns = (Column("rouge_l", "ROUGE-L"),)
    modes = (None, "pycocoevalcap")

    def compute(self, ctx: Context) -> Computed:
        from cxrgen.metrics.bleu import tokens

        h, r = tokens(ctx)
        values = rouge_l_scores(h, r, "lcs-b1.2" if ctx.compat else "lcs-f1")
        return Computed(stats=mean_stats(values), per_sample={"rouge_l": values})

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return {"rouge_l": mean_of_sums(sums)}

    def signature(self, ctx: Context, available: bool) -> str:
        return "rouge:lcs-b1.2" if ctx.compat else "rouge:lcs-f1"


_RS_TYPES = (("rouge1", "rouge_1", "ROUGE-1"), ("rouge2", "rouge_2", "ROUGE-2"), ("rougeL", "rouge_l", "ROUGE-L"))


class RougeScore(Metric):
    """rouge-score F-measures averaged over samples: RadEval's ROUGE-1/2/L with the Porter stemmer (module
    docstring) by default; ``types`` (rouge-score names) and ``stemmer`` give other settings of the same package
    (the ``llava-rad`` protocol: ``rougeL`` without the stemmer), ``modes`` the compatibility modes it is part of."""

    name = "rouge"

    def __init__(self, types: tuple[str, ...] = ("rouge1", "rouge2", "rougeL"), stemmer: bool = True,
                 modes: tuple[str | None, ...] = ("radeval",)):
        known = {t: (k, label) for t, k, label in _RS_TYPES}
        unknown = [t for t in types if t not in known]
        if unknown:
            raise ValueError(f"unknown rouge-score types {unknown}; known: {', '.join(known)}")
        self.types, self.stemmer, self.modes = tuple(types), stemmer, tuple(modes)
        self.keys = tuple(known[t][0] for t in self.types)
        self.labels = {known[t][0]: known[t][1] for t in self.types}
        self.columns = tuple(Column(k, label) for k, label in self.labels.items())

    def compute(self, ctx: Context) -> Computed:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(self.types), use_stemmer=self.stemmer)
        values = np.zeros((ctx.n, len(self.types)))
        for i, (h, r) in enumerate(zip(ctx.hyps, ctx.refs)):
            if not h.strip():
                continue  # rouge-score gives 0 for an empty side too; skip the work
            s = scorer.score(r, h)
            values[i] = [s[t].fmeasure for t in self.types]
        stats = np.column_stack([values, np.ones(ctx.n)])
        return Computed(stats=stats, per_sample={k: values[:, j] for j, k in enumerate(self.keys)})

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        sums = np.asarray(sums, dtype=np.float64)
        count = sums[..., len(self.types)]
        with np.errstate(divide="ignore", invalid="ignore"):
            return {k: sums[..., j] / count for j, k in enumerate(self.keys)}

    def signature(self, ctx: Context, available: bool) -> str:
        import importlib.metadata

        try:
            version = importlib.metadata.version("rouge-score")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        short = {"rouge1": "r1", "rouge2": "r2", "rougeL": "rL"}
        return (f"rouge:rouge-score-{version}+{','.join(short[t] for t in self.types)}"
                f"+{'porter' if self.stemmer else 'nostem'}+f")
