#!/usr/bin/env python
"""Evaluate generated chest X-ray reports: text and clinical metrics with bootstrap intervals,
a reproducibility signature, and paired comparisons between systems.

Examples:
  python evaluate.py runs/cxr-llava/reports.csv
  python evaluate.py 'runs/cxr-llava/parts/shard-*.csv'
  python evaluate.py base=runs/a/reports.csv new=runs/b/reports.csv --baseline base
  python evaluate.py runs/a/reports.csv --compat pycocoevalcap
  python evaluate.py --label-only reports.csv --text-col report --output labels.csv

The definitions of every number are in the docstrings of cxrgen/metrics/*.py and the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrgen import evaluation
from cxrgen.report import ResultsPageError, attach_scores, write_results_page
from cxrgen.metrics import clinical, model_based


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description=(
            "Score generated reports against references: BLEU-1..4 (corpus), ROUGE-L, CIDEr-D,\n"
            "METEOR (when NLTK's WordNet data are installed) and CheXpert-label precision/recall/F1,\n"
            "each with a 95% bootstrap interval; with several systems, a paired bootstrap p-value\n"
            "against the baseline. Every summary carries a signature naming how it was computed."
        ),
        epilog=(
            "inputs:\n"
            "  CSV files or glob patterns. Shard parts <run>/parts/shard-<i>-of-<n>.csv of one run are\n"
            "  joined into one system named after <run>. A file called reports/results/predictions/\n"
            "  generated_reports.csv is named after its folder, any other after its stem; NAME=PATH\n"
            "  names a system explicitly. Several systems are aligned on the study ids they share.\n"
            "rows:\n"
            "  status other than 'ok' and empty references are excluded and counted; empty generated\n"
            "  reports score 0 and are counted (n_empty); duplicate ids and malformed CSV are errors.\n"
            "outputs (--output-dir, default beside the first CSV):\n"
            "  per_sample.csv, summary.json, summary.md, summary.csv\n"
            "examples:\n"
            "  python evaluate.py runs/cxr-llava/reports.csv\n"
            "  python evaluate.py 'runs/cxr-llava/parts/shard-*.csv'\n"
            "  python evaluate.py base=runs/a/reports.csv new=runs/b/reports.csv --baseline base\n"
            "  python evaluate.py runs/a/reports.csv --compat pycocoevalcap\n"
            "  python evaluate.py --label-only reports.csv --text-col report --output labels.csv"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="RESULTS.csv", help="result CSVs, shard parts or glob patterns; NAME=PATH to name a system")
    cols = p.add_argument_group("columns")
    cols.add_argument("--id-col", default=evaluation.DEFAULT_ID_COL, help="study id column (default: %(default)s)")
    cols.add_argument("--hyp-col", default=evaluation.DEFAULT_HYP_COL, help="generated report column (default: %(default)s)")
    cols.add_argument("--ref-col", default=evaluation.DEFAULT_REF_COL, help="reference report column (default: %(default)s)")
    cols.add_argument(
        "--status-col",
        default=evaluation.DEFAULT_STATUS_COL,
        help="generation status column; rows whose status is not 'ok' are excluded and counted "
        "(default: %(default)s; ignored when the column is absent; '' to disable)",
    )
    m = p.add_argument_group("metrics")
    m.add_argument(
        "--compat",
        choices=["pycocoevalcap"],
        default=None,
        help="reproduce R2Gen-style numbers: pycocoevalcap's Bleu(4), Rouge(), Cider() on text lower-cased, "
        "ASCII punctuation deleted and whitespace collapsed",
    )
    m.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: %(default)s; 0 = no intervals)")
    m.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    m.add_argument("--baseline", default=None, help="system the others are compared with (default: the first)")
    m.add_argument("--no-clinical", action="store_true", help="skip the CheXpert-label metrics")
    m.add_argument(
        "--uncertain",
        choices=list(clinical.POLICIES),
        default="positive",
        help="how an 'uncertain' label counts in the clinical metrics (default: %(default)s; "
        "exclude = leave that study out of that observation)",
    )
    m.add_argument("--no-meteor", action="store_true", help="skip METEOR even when NLTK's WordNet data are present")
    m.add_argument(
        "--model-metrics",
        default="",
        metavar="LIST",
        help=f"comma-separated model-based metrics ({', '.join(model_based.KNOWN)}, or all); used only when "
        "the package and its weights are installed locally",
    )
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", type=Path, default=None, help="where to write the outputs (default: beside the first CSV)")
    o.add_argument(
        "--html",
        metavar="FILE",
        help="also write a self-contained results page (images, reports, scores, findings) to FILE",
    )
    lab = p.add_argument_group("labelling only")
    lab.add_argument("--label-only", type=Path, metavar="REPORTS.csv", help="label the reports of a CSV and exit")
    lab.add_argument("--text-col", default=None, help="report text column for --label-only")
    lab.add_argument("--output", type=Path, default=None, metavar="LABELS.csv", help="labels CSV written by --label-only")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.label_only is not None:
            if args.inputs:
                parser.error("--label-only takes no RESULTS.csv arguments")
            if not args.text_col or args.output is None:
                parser.error("--label-only needs --text-col COLUMN and --output LABELS.csv")
            out = evaluation.label_csv(args.label_only, args.text_col, args.output, id_col=args.id_col)
            print(f"labelled {len(out)} reports -> {args.output}")
            return 0
        if not args.inputs:
            parser.error("give at least one RESULTS.csv (or --label-only)")
        try:
            model_names = model_based.resolve(args.model_metrics)
        except ValueError as exc:
            parser.error(str(exc))
        frames = evaluation.load_systems(args.inputs)
        report = evaluation.evaluate_systems(
            frames,
            baseline=args.baseline,
            id_col=args.id_col,
            hyp_col=args.hyp_col,
            ref_col=args.ref_col,
            status_col=args.status_col or None,
            n_boot=args.n_boot,
            seed=args.seed,
            compat=args.compat,
            clinical_metrics=not args.no_clinical,
            uncertain=args.uncertain,
            use_meteor=not args.no_meteor,
            model_metrics=model_names,
        )
        first = evaluation.expand_inputs(args.inputs)[0][1]
        out_dir = args.output_dir or evaluation.default_output_dir(first)
        paths = evaluation.write_outputs(report, out_dir)
        if args.html:
            scored = {name: attach_scores(frames[name], report.systems[name].per_sample, id_col=args.id_col)
                      for name in report.systems}
            paths["html"] = write_results_page(
                args.html, scored, report.summary_dict(), baseline=report.baseline, id_col=args.id_col,
                hyp_col=args.hyp_col, ref_col=args.ref_col, status_col=args.status_col or None)
    except (evaluation.EvaluationInputError, ResultsPageError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    print(evaluation.format_table(report))
    print("")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
