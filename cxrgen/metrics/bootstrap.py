"""Bootstrap confidence intervals and paired significance tests on per-sample sufficient statistics.

Every corpus metric here is ``f(S)`` where ``S`` is the column sum of a per-sample statistics matrix
(n-gram matches and lengths for BLEU, per-sample scores for ROUGE-L / CIDEr-D / METEOR, outcome
indicators for the clinical metrics). A bootstrap resample draws n studies with replacement; it is
represented by the vector of how often each study was drawn, so the resampled sums are one matrix
product ``counts (B x n) @ stats (n x k)`` and no metric is re-run.

* Resampling: ``numpy.random.default_rng(seed)``; resamples are drawn in blocks of
  :data:`BLOCK` as ``rng.integers(0, n, size=(block, n))``, so the draws depend only on
  ``(seed, n, n_boot)``. Systems evaluated on the same aligned studies share the same resamples.
* Interval: the percentile interval, the 2.5th and 97.5th percentiles (numpy's linear
  interpolation) of the B resampled metric values.
* Paired test of system A against baseline Z: for each resample b the difference
  ``d_b = f_A(b) - f_Z(b)``; with ``d`` the observed difference, the two-sided p-value is
  ``(1 + #{b : |d_b - mean(d_b)| >= |d|}) / (B + 1)``, the shifted-null paired bootstrap test
  (Koehn 2004; the form sacrebleu's ``--paired-bs`` uses). The interval of the difference is the
  percentile interval of ``d_b``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

BLOCK = 200
LEVEL = 0.95
METHOD = "percentile bootstrap, 95%, studies resampled with replacement"
TEST_METHOD = "paired bootstrap, two-sided, shifted null: p = (1 + #{|d_b - mean(d)| >= |d_obs|}) / (B + 1)"


def block_sizes(total: int, block: int) -> Iterator[int]:
    """Sizes of consecutive blocks of at most ``block`` rows, ``total`` rows in all."""
    done = 0
    while done < total:
        b = min(block, total - done)
        yield b
        done += b


def resample_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield blocks of resample count matrices, shape ``(block, n)``, ``n_boot`` rows in all."""
    if n <= 0:
        raise ValueError("cannot bootstrap an empty set of samples")
    rng = np.random.default_rng(seed)
    for b in block_sizes(n_boot, BLOCK):
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def resampled_sums(stats: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """For each ``(n, k)`` matrix in ``stats`` (same n, rows aligned), the ``(n_boot, k)`` sums
    under the same resamples."""
    n = stats[0].shape[0]
    widths = [s.shape[1] for s in stats]
    joined = np.hstack([np.asarray(s, dtype=np.float64) for s in stats])
    blocks = [counts @ joined for counts in resample_counts(n, n_boot, seed)]
    allsums = np.vstack(blocks) if blocks else np.zeros((0, joined.shape[1]))
    out, start = [], 0
    for w in widths:
        out.append(allsums[:, start : start + w])
        start += w
    return out


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """``[low, high]`` percentile interval of bootstrap values. NaN values (a resample in which the
    metric is undefined, e.g. an observation never positive in it) are left out; ``None`` when
    every value is NaN."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    alpha = (1 - level) / 2
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return [float(low), float(high)]


def paired_test(boot_sys: np.ndarray, boot_base: np.ndarray, observed_diff: float) -> dict:
    """p-value and interval of the difference ``system - baseline`` from paired resamples."""
    d = np.asarray(boot_sys, dtype=np.float64) - np.asarray(boot_base, dtype=np.float64)
    if not np.isfinite(observed_diff):  # an undefined difference has no p-value (not a tiny one)
        return {"diff": float(observed_diff), "ci": percentile_interval(d), "p_value": None}
    extreme = np.abs(d - d.mean()) >= abs(observed_diff) - 1e-12
    p = (1 + int(extreme.sum())) / (len(d) + 1)
    return {"diff": float(observed_diff), "ci": percentile_interval(d), "p_value": float(p)}
