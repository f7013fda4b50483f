#!/usr/bin/env python
"""Do the paired tests hold their level when a finding is rare, and what power do they keep?

Label-level simulation of two report generators on the same studies. Each study's reference has a
rare finding (pleural effusion: exactly ``k`` positive studies) and a common one (cardiomegaly:
positive with probability 0.3); the other 12 observations are never mentioned. A system writes a
reference-positive finding with probability ``sens`` and a reference-negative one with probability
``fpr`` (0.02), independently per study, observation and system. Under the null both systems have
the same ``sens`` (0.7), so any difference is noise; under the alternative the second one is better
(``sens`` 0.95 against 0.7). The clinical metrics are the project's own (cxrgen.metrics.clinical),
scored from the simulated labels exactly as evaluate.py scores labelled reports.

For every metric the script counts how often each test rejects at 0.05:

* ``boot-shift``: the shifted-null paired bootstrap, ``p = (1 + #{|d_b - mean(d)| >= |d|}) / (B + 1)``,
  undefined resamples counted as not extreme and macro averages over each resample's own findings (this
  project's test before; sacrebleu's form);
* ``boot``: the paired bootstrap test as now defined (cxrgen.metrics.bootstrap.paired_test, macro averages over
  the whole sample's findings);
* ``ar-nan-calm``: paired approximate randomization with undefined trials counted as not extreme (before);
* ``ar``: paired approximate randomization as now defined (cxrgen.metrics.significance).

Monte-Carlo error of a rejection rate near 0.05 over R repetitions: about ``sqrt(0.05 * 0.95 / R)``.

  python bench/bench_rare_findings.py                     # the table in bench/RESULTS.md (~4 minutes)
  python bench/bench_rare_findings.py --reps 60 --quick   # a few settings, a minute
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrgen.metrics import bootstrap, clinical, significance  # noqa: E402

KEYS = ["obs:pleural_effusion:f1", "obs:pleural_effusion:recall", "obs:cardiomegaly:f1", "chexbert5_micro_f1",
        "chexbert5_macro_f1", "chexpert14_macro_recall", "chexpert14_micro_f1"]
RARE, COMMON = clinical.COLUMNS.index("pleural_effusion"), clinical.COLUMNS.index("cardiomegaly")


def simulate(rng, n: int, k: int, sens: tuple[float, float], fpr: float = 0.02, prevalence: float = 0.3):
    """Outcome statistics ``(n, 56)`` of two systems on the same simulated references."""
    ref = np.full((n, len(clinical.COLUMNS)), clinical.NOT_MENTIONED, dtype=np.int8)
    ref[:, [RARE, COMMON]] = 0
    ref[rng.choice(n, size=k, replace=False), RARE] = 1
    ref[rng.random(n) < prevalence, COMMON] = 1
    out = []
    for s in sens:
        hyp = np.full_like(ref, clinical.NOT_MENTIONED)
        for j in (RARE, COMMON):
            positive = np.where(ref[:, j] == 1, rng.random(n) < s, rng.random(n) < fpr)
            hyp[:, j] = np.where(positive, 1, 0)
        out.append(clinical.outcome_counts(hyp, ref).reshape(n, -1))
    return out


def values(sums):
    return clinical.values_from_outcome_sums(sums)


def shifted_null(boot_a, boot_z, observed):
    """The paired bootstrap test before: shifted null, an undefined resample not extreme."""
    d = np.asarray(boot_a) - np.asarray(boot_z)
    if not np.isfinite(observed):
        return None
    extreme = np.abs(d - np.nanmean(d)) >= abs(observed) - 1e-12
    return (1 + int(extreme.sum())) / (len(d) + 1)


def ar_undefined_calm(a, z, observed, trials, seed):
    """Approximate randomization before: an undefined trial counted as not extreme."""
    delta, sum_a, sum_z = a - z, a.sum(0), z.sum(0)
    count = dict.fromkeys(observed, 0)
    for mask in significance.swap_masks(a.shape[0], trials, seed):
        moved = mask.astype(np.float64) @ delta
        va, vz = values(sum_a - moved), values(sum_z + moved)
        for k, d in observed.items():
            diff = np.abs(va[k] - vz[k])
            count[k] += int(np.count_nonzero(diff >= abs(d) * (1 - 1e-10) - 1e-10))
    return {k: (1 + c) / (trials + 1) if np.isfinite(observed[k]) else None for k, c in count.items()}


TESTS = ("boot-shift", "boot", "ar-nan-calm", "ar")


def one_setting(n, k, sens, reps, n_boot, trials, seed):
    """Rejection rate at 0.05 of each test (:data:`TESTS`) for every metric of :data:`KEYS`."""
    rng = np.random.default_rng(seed)
    rejected = {t: dict.fromkeys(KEYS, 0) for t in TESTS}
    tested = {t: dict.fromkeys(KEYS, 0) for t in TESTS}
    for r in range(reps):
        a, z = simulate(rng, n, k, sens)
        point_a, point_z = values(a.sum(0)), values(z.sum(0))
        observed = {key: float(point_a[key] - point_z[key]) for key in KEYS}
        sums_a, sums_z = bootstrap.resampled_sums([a, z], n_boot, seed + r)
        before_a, before_z = values(sums_a), values(sums_z)  # macro averages over each resample's own findings
        boot_a = clinical.values_from_outcome_sums(sums_a, a.sum(0))  # over the whole sample's, as evaluate.py
        boot_z = clinical.values_from_outcome_sums(sums_z, z.sum(0))
        p = {"ar": significance.approximate_randomization(a, z, values, observed, trials=trials, seed=seed + r),
             "ar-nan-calm": ar_undefined_calm(a, z, observed, trials, seed + r),
             "boot-shift": {key: shifted_null(before_a[key], before_z[key], observed[key]) for key in KEYS},
             "boot": {key: bootstrap.paired_test(boot_a[key], boot_z[key], observed[key])["p_value"]
                      for key in KEYS}}
        for t in TESTS:
            for key in KEYS:
                if p[t][key] is not None:
                    tested[t][key] += 1
                    rejected[t][key] += p[t][key] < 0.05
    return {t: {key: (rejected[t][key] / tested[t][key] if tested[t][key] else None) for key in KEYS}
            for t in TESTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="two settings only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    settings = [(20, 1), (20, 3), (100, 1), (100, 3), (100, 10), (500, 1), (500, 3), (500, 10)]
    if args.quick:
        settings = [(20, 1), (100, 3)]
    mc = (0.05 * 0.95 / args.reps) ** 0.5
    print(f"{args.reps} repetitions per row, {args.n_boot} resamples, {args.trials} randomization trials; "
          f"Monte-Carlo error of a 0.05 rate: {mc:.3f} (level + 2 MC errors: {0.05 + 2 * mc:.3f})\n")
    header = "| hypothesis | studies | effusion positives | test | " + " | ".join(KEYS) + " |"
    print(header)
    print("|---|---|---|---|" + "---|" * len(KEYS))
    t0 = time.time()
    for hypothesis, sens in (("null", (0.7, 0.7)), ("alternative", (0.7, 0.95))):
        for i, (n, k) in enumerate(settings):
            rates = one_setting(n, k, sens, args.reps, args.n_boot, args.trials, args.seed + 1000 * i)
            for test, row in rates.items():
                cells = ["-" if v is None else f"{v:.3f}" for v in row.values()]
                print(f"| {hypothesis} | {n} | {k} | {test} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
