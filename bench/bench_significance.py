#!/usr/bin/env python
"""Benchmark: the paired approximate-randomization test on cached sufficient statistics.

Pairs: the Open-i report XMLs in ../shared/data/iu_xray_sample/reports (FINDINGS + IMPRESSION), the
same ~3,000 pairs as bench/bench_metrics.py (each report as the hypothesis for the next 2 or 3
reports). System A is those pairs; system B replaces every third hypothesis by its reference.

Timed (best of ``--repeat``, wall clock), with ``--trials`` trials (default 10,000):

* ``ar, one metric``: :func:`cxrgen.metrics.significance.approximate_randomization` on one metric's
  columns alone (BLEU-4: 10 columns; ROUGE-L: 2), as a caller testing a single metric would;
* ``ar, all metrics``: every comparable key of the default mode with the clinical block (the text
  and clinical keys, METEOR off) in one call on all statistic columns, as
  ``evaluate.py --significance ar`` runs it.

Scoring the texts is done once beforehand and not timed. Prints a Markdown section.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_metrics import DEFAULT_REPORTS, load_reports, make_pairs  # noqa: E402

from cxrgen.metrics import significance  # noqa: E402
from cxrgen.metrics.suite import score_texts  # noqa: E402


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reports", type=Path, default=DEFAULT_REPORTS)
    p.add_argument("--trials", type=int, default=significance.DEFAULT_TRIALS)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    pairs = make_pairs(load_reports(args.reports))
    hyps_a = pairs["generated_report"].tolist()
    refs = pairs["reference"].tolist()
    hyps_b = [r if i % 300 == 0 else h for i, (h, r) in enumerate(zip(hyps_a, refs))]
    sa = score_texts(hyps_a, refs, use_meteor=False)
    sb = score_texts(hyps_b, refs, use_meteor=False)
    pa, pb = sa.point(), sb.point()
    rows = []
    for name, key in (("bleu", "bleu_4"), ("rouge", "rouge_l")):
        cols = sa.cols[name]
        metric = next(m for m in sa.metrics if m.name == name)
        secs, p_value = best(lambda: significance.approximate_randomization(
            sa.stats[:, cols], sb.stats[:, cols], metric.aggregate, {key: pa[key] - pb[key]},
            trials=args.trials, seed=args.seed), args.repeat)
        rows.append((f"ar, one metric ({key}, {cols.stop - cols.start} columns)", secs, p_value[key]))
    keys = sa.metric_keys()
    secs, p_all = best(lambda: significance.approximate_randomization(
        sa.stats, sb.stats, sb.from_sums, {k: pa[k] - pb[k] for k in keys}, trials=args.trials, seed=args.seed),
        args.repeat)
    rows.append((f"ar, all metrics ({len(keys)} keys, {sa.stats.shape[1]} columns)", secs, p_all["bleu_4"]))
    print("## Significance test: paired approximate randomization (`bench/bench_significance.py`)\n")
    print(f"Command: `python bench/bench_significance.py --trials {args.trials} --repeat {args.repeat}` "
          "(from the repository root)\n")
    print(f"Data: {len(refs)} (hypothesis, reference) pairs from {args.reports.name}/ (as bench_metrics.py); "
          "system B = system A with every 300th hypothesis replaced by its reference.")
    print(f"Machine: {platform.machine()}, Python {platform.python_version()}, 2 shared CPU cores; best of the "
          "repeats, wall clock; scoring not included.\n")
    print(f"| run | {args.trials} trials, seconds | p (BLEU-4 or the metric) |")
    print("|---|---|---|")
    for what, s, pv in rows:
        print(f"| {what} | {s:.2f} | {pv:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
