#!/usr/bin/env python
"""Benchmark: the evaluation's full text suite with 1,000-resample intervals against pycocoevalcap.

Pairs: the Open-i report XMLs in ../shared/data/iu_xray_sample/reports (FINDINGS + IMPRESSION),
each report scored as the hypothesis for the references of the next two reports and, for every
other report, of the third one too (about 2.5 pairs per report, ~3,000 pairs from 1,200 reports).

Timed, on the same pairs, best of ``--repeat`` runs each:

* ``ours``: ``cxrgen.evaluation.evaluate_systems`` in the default mode, text metrics only
  (tokenizing, BLEU-1..4 statistics, ROUGE-L, CIDEr-D, point estimates and 1,000 bootstrap
  resamples for every metric).
* ``ours --compat pycocoevalcap``: the same in the compatibility mode.
* ``pycocoevalcap``: ``Bleu(4)``, ``Rouge()`` and ``Cider()`` ``compute_score`` on the cleaned text
  (cleaning not timed), no intervals.
* ``clinical``: labelling both sides with the rule labeler plus the clinical metrics and their
  intervals, reported separately (it is not part of pycocoevalcap's suite).

Writes a Markdown section to ``--output`` (default bench/RESULTS_metrics.md) and prints it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrgen.evaluation import evaluate_systems  # noqa: E402
from cxrgen.metrics.tokenize import clean_pycoco  # noqa: E402

SHARED_REPORTS = ROOT.parent / "shared" / "data" / "iu_xray_sample" / "reports"  # 1,200 XMLs beside a checkout
BUNDLED_REPORTS = ROOT / "tests" / "data" / "iu_reports"  # 300 of them, in every clone
DEFAULT_REPORTS = SHARED_REPORTS if SHARED_REPORTS.is_dir() else BUNDLED_REPORTS


def load_reports(folder: Path) -> list[tuple[str, str]]:
    out = []
    for path in sorted(folder.glob("*.xml"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0):
        sections = {a.get("Label"): (a.text or "").strip() for a in ET.parse(path).getroot().iter("AbstractText")}
        text = " ".join(t for t in (sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")) if t)
        if text:
            out.append((path.stem, text))
    return out


def make_pairs(reports: list[tuple[str, str]]) -> pd.DataFrame:
    n = len(reports)
    rows = []
    for i, (rid, text) in enumerate(reports):
        offsets = (1, 2, 3) if i % 2 == 0 else (1, 2)
        for k in offsets:
            ref_id, ref = reports[(i + k) % n]
            rows.append({"id": f"{rid}>{ref_id}", "generated_report": text, "reference": ref, "status": "ok"})
    return pd.DataFrame(rows)


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def run_pycoco(df: pd.DataFrame):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [clean_pycoco(r)] for i, r in enumerate(df["reference"])}
    res = {i: [clean_pycoco(h)] for i, h in enumerate(df["generated_report"])}

    def score():
        b, _ = Bleu(4).compute_score(gts, res, verbose=0)
        r, _ = Rouge().compute_score(gts, res)
        c, _ = Cider().compute_score(gts, res)
        return list(b) + [r, c]

    return score


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="folder of Open-i report XMLs")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS_metrics.md")
    args = p.parse_args(argv)

    reports = load_reports(args.reports)
    if not reports:
        print(f"no report XMLs in {args.reports}", file=sys.stderr)
        return 2
    df = make_pairs(reports)
    n = len(df)

    def ours(compat=None, clinical=False):
        return lambda: evaluate_systems(
            {"bench": df}, n_boot=args.n_boot, seed=0, compat=compat, clinical_metrics=clinical
        )

    t_coco, coco = best_of(args.repeat, run_pycoco(df))
    t_ours, rep = best_of(args.repeat, ours())
    t_compat, rep_c = best_of(args.repeat, ours("pycocoevalcap"))
    t_clin, rep_clin = best_of(1, ours(clinical=True))

    keys = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"]
    compat_vals = [rep_c.systems["bench"].summary["metrics"][k]["value"] for k in keys]
    max_diff = float(np.max(np.abs(np.array(compat_vals) - np.array(coco))))
    ours_vals = rep.systems["bench"].summary["metrics"]

    lines = [
        "## Evaluation metrics (bench/bench_metrics.py)",
        "",
        f"Command: `python bench/bench_metrics.py --n-boot {args.n_boot} --repeat {args.repeat}` (from the repository root)",
        "",
        f"Data: {len(reports)} Open-i reports from `{args.reports.relative_to(ROOT.parent) if args.reports.is_relative_to(ROOT.parent) else args.reports}`, "
        f"{n} (hypothesis, reference) pairs, each report paired with the next 2 or 3 reports' text.",
        f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        "2 shared CPU cores; best of the repeats, wall clock.",
        "",
        "| run | what | seconds |",
        "|---|---|---|",
        f"| pycocoevalcap 1.2 | Bleu(4) + Rouge() + Cider(), no intervals | {t_coco:.2f} |",
        f"| evaluate (default mode) | BLEU-1..4, ROUGE-L, CIDEr-D + {args.n_boot}-resample intervals | {t_ours:.2f} |",
        f"| evaluate --compat pycocoevalcap | same scorers as pycocoevalcap + {args.n_boot}-resample intervals | {t_compat:.2f} |",
        f"| evaluate clinical block | rule labeler on both sides + 18 clinical metrics + intervals (1 run) | {t_clin:.2f} |",
        "",
        f"Ratio pycocoevalcap / evaluate (default mode, with intervals): **{t_coco / t_ours:.1f}x** "
        f"(compat mode: {t_coco / t_compat:.1f}x). Target: above 1.",
        "",
        f"Check: compat-mode BLEU-1..4, ROUGE-L, CIDEr-D minus pycocoevalcap's, largest absolute difference {max_diff:.1e}.",
        "Default-mode values on these pairs: "
        + ", ".join(f"{k} {ours_vals[k]['value']:.4f} [{ours_vals[k]['ci'][0]:.4f}, {ours_vals[k]['ci'][1]:.4f}]" for k in keys)
        + ".",
        "",
    ]
    text = "\n".join(lines)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
