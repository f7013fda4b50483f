"""ROUGE-L (Lin, 2004) of one hypothesis against one reference, from the longest common subsequence.

With ``l`` the LCS length in tokens, ``P = l / len(hypothesis)`` and ``R = l / len(reference)``:

* default mode, ``lcs-f1``: ``F = 2PR / (P + R)``, the F-measure (beta = 1) that Google's
  ``rouge-score`` package reports as ``rougeL`` (no stemming; tokens come from our tokenizer);
  0 when either side is empty or ``l = 0``.
* compatibility mode, ``lcs-b1.2``: pycocoevalcap 1.2's ``Rouge``:
  ``F = (1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2``, 0 when ``P`` or ``R`` is 0. pycocoevalcap
  splits on single spaces, so an empty hypothesis has one empty token (length 1) and scores 0.

The corpus ROUGE-L is the mean of the per-sample F values (so the bootstrap resamples those).

The LCS length is computed with the bit-parallel algorithm of Allison & Dix (1986) / Hyyrö (2004):
one Python integer is the bit vector over the positions of ``a``, and each token of ``b`` costs
a few integer operations, instead of a ``len(a) x len(b)`` table.
"""

from __future__ import annotations

import numpy as np

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
