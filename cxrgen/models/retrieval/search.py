"""Exact nearest neighbours by cosine similarity, and the rule that picks one report among k.

:func:`nearest` compares every query with every index row: one matrix product per ``chunk_size`` index rows on the
device (queries [B, d] times a chunk [C, d] transposed, in full float32: TF32 is switched off for it on CUDA),
keeping each chunk's k best and then the k best of those. Vectors are unit length, so the product is the cosine
similarity. Nothing is approximated: the result is the true k nearest, ordered by similarity, and among equal
similarities by index position (the earlier study first), so ties never depend on the chunking or on the kernel.
Index rows a query must not see (the leakage rules) are set to -inf before the selection and never returned.

The cost per query is one pass over the index, N x d multiply-adds: at MIMIC-CXR's size (370,000 x 768) that is
0.28 G multiply-adds per study, and the index takes 1.1 GB in float32 (bench/RESULTS.md gives the measured
queries per second). An approximate index (FAISS IVF/HNSW, product quantisation) becomes worth its error only
when the matrix no longer fits the device's memory — some tens of millions of vectors on a GPU — or when CPU-only
runs must answer many more queries than a test split holds.

:func:`consensus` is the rule for k > 1: among the k nearest studies' reports, the one with the highest mean
similarity to the other k - 1, the similarity of two reports being the cosine of their word-count vectors (tokens
of the project's ``cxr-v1`` tokenizer that start with a letter or digit, so punctuation does not count). A report
shared by several neighbours therefore wins (a vote), and an outlier among the neighbours never does; ties go to
the nearer image.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def nearest(queries, matrix, k: int, chunk_size: int, excluded: Sequence[Sequence[int]] | None = None):
    """The k nearest index rows of each query: (similarities [B, k], positions [B, k]) as CPU tensors, best first,
    ties by lower position. ``queries`` [B, d] and ``matrix`` [N, d] are unit vectors on one device;
    ``excluded[b]`` lists the positions query b must not get. A query with fewer than k rows left gets -inf
    similarities (position -1) in the places it cannot fill."""
    import torch

    batch, total = queries.shape[0], matrix.shape[0]
    rows, cols = _pairs(excluded, batch, queries.device)
    values, positions = [], []
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False  # full float32
    try:
        for start in range(0, total, chunk_size):
            _chunk(queries, matrix[start:start + chunk_size], start, k, rows, cols, values, positions)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    sims, where = torch.cat(values, dim=1), torch.cat(positions, dim=1)  # per query: ascending positions
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]  # stable: ties keep position order
    sims, where = sims.gather(1, order).cpu(), where.gather(1, order).cpu()
    where[torch.isinf(sims)] = -1
    if sims.shape[1] < k:  # an index smaller than k
        pad = k - sims.shape[1]
        sims = torch.cat([sims, torch.full((batch, pad), float("-inf"))], dim=1)
        where = torch.cat([where, torch.full((batch, pad), -1, dtype=where.dtype)], dim=1)
    return sims, where


def _chunk(queries, block, start: int, k: int, rows, cols, values: list, positions: list) -> None:
    """The k best of one chunk of index rows (``start``: its first position) for every query, appended to
    ``values`` and ``positions`` in ascending position order; the (query ``rows``, position ``cols``) pairs that
    are excluded count as -inf."""
    sims = queries @ block.T
    inside = (cols >= start) & (cols < start + block.shape[0])
    sims[rows[inside], cols[inside] - start] = float("-inf")
    take = _first_k(sims, min(k, block.shape[0]))
    picked = take.nonzero(as_tuple=True)  # row-major: per query, positions in ascending order
    width = int(take[0].sum())
    values.append(sims[picked].view(queries.shape[0], width))
    positions.append((picked[1] + start).view(queries.shape[0], width))


def _pairs(excluded, batch: int, device):
    import torch

    rows = [b for b in range(batch) for _ in (excluded[b] if excluded else ())]
    cols = [p for b in range(batch) for p in (excluded[b] if excluded else ())]
    return (torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device))


def _first_k(sims, k: int):
    """A mask with exactly k True per row: the k largest values, equal values at the cut taken by lower column."""
    threshold = sims.topk(k, dim=1).values[:, -1:]
    above = sims > threshold
    equal = sims == threshold
    need = k - above.sum(dim=1, keepdim=True)
    return above | (equal & (equal.cumsum(dim=1) <= need))


def _words(text: str) -> Counter:
    from ...metrics.tokenize import tokenize_cxr

    return Counter(t for t in tokenize_cxr(text) if t[0].isalnum())


def text_similarity(a: Counter, b: Counter) -> float:
    """Cosine of two word-count vectors (0 when either is empty)."""
    dot = sum(count * b[word] for word, count in a.items())
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm if norm else 0.0


def consensus(reports: Sequence[str]) -> int:
    """Index of the report with the highest mean text similarity to the others (module docstring); ties and a
    single report: the first, which is the nearest image."""
    if len(reports) < 2:
        return 0
    words = [_words(r) for r in reports]
    scores = [sum(text_similarity(w, other) for j, other in enumerate(words) if j != i) / (len(words) - 1)
              for i, w in enumerate(words)]
    return max(range(len(reports)), key=lambda i: (scores[i], -i))
