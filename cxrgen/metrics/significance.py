"""Paired approximate-randomization (AR) test on per-sample sufficient statistics.

The test of system A against baseline Z on the same n studies (Noreen 1989; Riezler & Maxwell
2005), as sacrebleu's ``--paired-ar`` and RadEval's ``compare_systems`` run it:

1. the observed statistic is ``|f(A) - f(Z)|``, the absolute difference of the corpus metric;
2. in each of T trials, every study's pair of outputs is swapped between the two systems with
   probability 1/2, independently, and the difference ``|f(A_t) - f(Z_t)|`` of the two pseudo
   systems is recomputed;
3. ``p = (1 + #{t : |f(A_t) - f(Z_t)| >= |f(A) - f(Z)|}) / (T + 1)``.

The two sources differ in the last step: sacrebleu counts trials *strictly* above the observed
difference and adds one to both counts; RadEval counts trials *at or above* it and adds nothing.
This module counts at-or-above (a tie is as extreme as the observation, so two identical systems
get p = 1, not a small p) and adds one (the observed assignment is itself one of the possible
swaps, so p is never 0 and the test does not reject more often than its level says). Ties are judged with a
relative tolerance of :data:`TIE_TOLERANCE`, so sums taken in another order do not decide them. A trial in which the
metric is undefined for a pseudo system (a precision whose pseudo system writes the finding nowhere) counts as
extreme: the test never gains confidence from a trial it cannot score. This is the default test of evaluate.py: in
bench/bench_rare_findings.py it stayed at its level for every metric, common findings and findings with one to ten
positive studies in 20 to 500, and kept the most power (bench/RESULTS.md).

Every metric is a function of summed per-sample statistics, so a trial needs no re-scoring: with
``S_A``, ``S_Z`` the column sums and ``D = stats_A - stats_Z``, the pseudo systems of a trial with
swap mask ``m`` (1 = swapped) have sums ``S_A - m @ D`` and ``S_Z + m @ D``. Trials are done in
blocks of :data:`BLOCK` as one matrix product each, for all metrics at once.

Swaps: ``numpy.random.default_rng(seed).random((block, n)) < 0.5``, row by row; the draws depend
only on ``(seed, n, trials)``, and a study is swapped in trial t iff the t-th row's uniform for it
is below 1/2. Intervals are not part of this test: the interval of the difference still comes
from the paired bootstrap.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import numpy as np

from cxrgen.metrics.bootstrap import block_sizes

DEFAULT_TRIALS = 10_000
BLOCK = 500
TIE_TOLERANCE = 1e-10
METHOD = (
    "paired approximate randomization, two-sided, each study's outputs swapped with probability 1/2: "
    "p = (1 + #{|d_t| >= |d_obs|}) / (T + 1)"
)
MIN_STUDIES = 30


def swap_masks(n: int, trials: int, seed: int) -> Iterator[np.ndarray]:
    """Yield boolean swap masks, shape ``(block, n)``, ``trials`` rows in all (module docstring)."""
    if n <= 0:
        raise ValueError("cannot randomise an empty set of samples")
    rng = np.random.default_rng(seed)
    for b in block_sizes(trials, BLOCK):
        yield rng.random((b, n)) < 0.5


def approximate_randomization(
    stats_sys: np.ndarray,
    stats_base: np.ndarray,
    values: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    observed: Mapping[str, float],
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
) -> dict[str, float | None]:
    """Two-sided AR p-value of every key in ``observed`` (key -> observed difference system -
    baseline). ``stats_*``: the aligned ``(n, K)`` sufficient statistics of both systems;
    ``values(sums)``: every metric value from sums of shape ``(B, K)``. A trial in which a metric is
    undefined (NaN) counts as extreme; an observed difference that is undefined has no p-value (None)."""
    a = np.asarray(stats_sys, dtype=np.float64)
    z = np.asarray(stats_base, dtype=np.float64)
    if a.shape != z.shape:
        raise ValueError(f"statistics of different shapes: {a.shape} and {z.shape}")
    if trials <= 0:
        raise ValueError("the number of trials must be positive")
    delta = a - z
    sum_a, sum_z = a.sum(axis=0), z.sum(axis=0)
    threshold = {k: abs(float(d)) * (1 - TIE_TOLERANCE) - TIE_TOLERANCE for k, d in observed.items()}
    extreme = dict.fromkeys(observed, 0)
    for mask in swap_masks(a.shape[0], trials, seed):
        moved = mask.astype(np.float64) @ delta
        va = values(sum_a - moved)
        vz = values(sum_z + moved)
        for k in observed:
            d = np.abs(np.asarray(va[k], dtype=np.float64) - np.asarray(vz[k], dtype=np.float64))
            extreme[k] += int(np.count_nonzero((d >= threshold[k]) | np.isnan(d)))
    return {k: (1 + c) / (trials + 1) if np.isfinite(observed[k]) else None for k, c in extreme.items()}
