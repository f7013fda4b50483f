#!/usr/bin/env python
"""Evaluate generated chest X-ray reports: text and clinical metrics with bootstrap intervals,
a reproducibility signature, and paired comparisons between systems.

Examples:
  python evaluate.py runs/cxr-llava/reports.csv
  python evaluate.py 'runs/cxr-llava/parts/shard-*.csv'
  python evaluate.py base=runs/a/reports.csv new=runs/b/reports.csv --baseline base --significance ar
  python evaluate.py runs/a/reports.csv --compat radeval
  python evaluate.py runs/a/reports.csv --protocol llava-rad --skip-unavailable
  python evaluate.py --label-only reports.csv --text-col report --output labels.csv

The definitions of every number are in the docstrings of cxrgen/metrics/*.py and the README.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxrgen import evaluation
from cxrgen.metrics import clinical, protocols, significance
from cxrgen.metrics.tokenize import COMPAT_MODES
from cxrgen.report import ResultsPageError, attach_scores, write_results_page

FLAGS = {"id": "--id-col", "hyp": "--hyp-col", "ref": "--ref-col", "text": "--text-col"}
EXIT_OK, EXIT_INPUT = 0, 2


class _Stderr(logging.Handler):
    """Log records as ``evaluate.py: message`` lines on the current sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"evaluate.py: {record.getMessage()}\n")
        except Exception:  # noqa: BLE001 - a broken stderr must not stop the evaluation
            self.handleError(record)


def _model_help() -> str:
    try:
        from cxrgen.metrics import model_based

        return ", ".join(model_based.KNOWN)
    except (ImportError, AttributeError):
        return "see cxrgen/metrics/model_based.py"


def _protocol_help() -> str:
    return "; ".join(f"{p.name}: {p.title}" for p in protocols.PROTOCOLS.values())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description=(
            "Score generated reports against references: BLEU-1..4 (corpus), ROUGE-L, CIDEr-D,\n"
            "METEOR (when NLTK's WordNet data are installed), CheXpert-label precision/recall/F1 and,\n"
            "on request, model-based metrics, each with a 95% bootstrap interval; with several systems,\n"
            "a paired p-value against the baseline. Every summary carries a signature naming how it\n"
            "was computed."
        ),
        epilog=(
            "inputs:\n"
            "  CSV files or glob patterns. Shard parts <run>/parts/shard-<i>-of-<n>.csv of one run are\n"
            "  joined into one system named after <run>. A file called reports/results/predictions/\n"
            "  generated_reports.csv is named after its folder, any other after its stem; NAME=PATH\n"
            "  names a system explicitly. Several systems are aligned on the study ids they share.\n"
            "columns:\n"
            "  found by name unless given: id (id, uid, study_id, ...), generated report\n"
            "  (generated_report, prediction, generated, hypothesis, ...), reference (reference,\n"
            "  ground_truth_report, ground_truth, target, report, findings, ...); the choice is logged.\n"
            "rows:\n"
            "  status other than 'ok' and empty references are excluded and counted; empty generated\n"
            "  reports score 0 and are counted (n_empty); duplicate ids and malformed CSV are errors.\n"
            "outputs:\n"
            "  per_sample.csv, summary.json, summary.md, summary.csv in --output-dir (default: beside\n"
            "  the CSV for one system; for several, a new folder named after them, e.g. a-vs-b, beside\n"
            "  the first CSV's run folder). --html writes report.html there (or FILE).\n"
            "exit codes:\n"
            "  0 done; 2 bad input or settings, or a metric that cannot run (one line on stderr)\n"
            "examples:\n"
            "  python evaluate.py runs/cxr-llava/reports.csv\n"
            "  python evaluate.py 'runs/cxr-llava/parts/shard-*.csv'\n"
            "  python evaluate.py base=runs/a/reports.csv new=runs/b/reports.csv --baseline base --html\n"
            "  python evaluate.py a.csv b.csv --significance ar --ar-trials 10000\n"
            "  python evaluate.py runs/a/reports.csv --compat pycocoevalcap\n"
            "  python evaluate.py runs/a/reports.csv --compat radeval --model-metrics chexbert,radgraph\n"
            "  python evaluate.py runs/a/reports.csv --protocol rexrank --skip-unavailable\n"
            "  python evaluate.py --fetch-metric-models chexbert,radgraph\n"
            "  python evaluate.py --fetch-metric-models rexrank\n"
            "  python evaluate.py --label-only reports.csv --text-col report --output labels.csv"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="RESULTS.csv", help="result CSVs, shard parts or glob patterns; NAME=PATH to name a system")
    cols = p.add_argument_group("columns (default: found by their common names)")
    cols.add_argument("--id-col", default=None, help="study id column")
    cols.add_argument("--hyp-col", default=None, help="generated report column")
    cols.add_argument("--ref-col", default=None, help="reference report column")
    cols.add_argument(
        "--status-col",
        default="status",
        help="generation status column; rows whose status is not 'ok' are excluded and counted "
        "(default: %(default)s; ignored when the column is absent; '' to disable)",
    )
    m = p.add_argument_group("metrics")
    m.add_argument(
        "--compat",
        choices=list(COMPAT_MODES),
        default=None,
        help="pycocoevalcap: R2Gen-style numbers (pycocoevalcap's Bleu(4), Rouge(), Cider() on text lower-cased, "
        "ASCII punctuation deleted); radeval: RadEval's BLEU-1..4 (pycocoevalcap's scorer on the raw text split "
        "on whitespace) and ROUGE-1/2/L (rouge-score F-measure, Porter stemmer)",
    )
    m.add_argument(
        "--protocol",
        choices=list(protocols.PROTOCOLS),
        default=None,
        help="a published evaluation as a preset: its metrics and their definitions, its reference section and "
        f"formatting, its resamples, named in the signature ({_protocol_help()}); model-based parts need "
        "RadEval (--skip-unavailable reports them as unavailable); takes no --compat, --model-metrics or "
        "--uncertain",
    )
    m.add_argument("--n-boot", type=int, default=None,
                   help="bootstrap resamples (default: 1000, or the protocol's: 500 for llava-rad; 0 = no intervals)")
    m.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the randomization test (default: %(default)s)")
    m.add_argument("--baseline", default=None, help="system the others are compared with (default: the first)")
    m.add_argument(
        "--significance",
        choices=["ar", "bootstrap"],
        default="ar",
        help="p-values from paired approximate randomization (ar, the default: it held its level for common and "
        "rare findings in bench/bench_rare_findings.py) or the paired bootstrap",
    )
    m.add_argument("--ar-trials", type=int, default=significance.DEFAULT_TRIALS,
                   help="trials of the randomization test (default: %(default)s)")
    m.add_argument("--no-clinical", action="store_true", help="skip the CheXpert-label metrics")
    m.add_argument(
        "--uncertain",
        choices=list(clinical.POLICIES),
        default=None,
        help="how an 'uncertain' label counts in the clinical metrics (default: positive; "
        "exclude = leave that study out of that observation)",
    )
    m.add_argument("--no-meteor", action="store_true", help="skip METEOR even when NLTK's WordNet data are present")
    m.add_argument(
        "--model-metrics",
        default="",
        metavar="NAMES",
        help=f"comma-separated model-based metrics ({_model_help()}, or all); a metric whose package or "
        "weights are missing stops the evaluation, naming the command that installs or fetches them",
    )
    m.add_argument("--skip-unavailable", action="store_true",
                   help="report model-based metrics that cannot run as unavailable instead of stopping")
    m.add_argument("--fetch-metric-models", metavar="NAMES", default=None,
                   help="download the weights of these model-based metrics, or of every one a protocol uses "
                   "(e.g. rexrank), and exit (needs internet)")
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", type=Path, default=None, help="where to write the outputs (default: see below)")
    o.add_argument("--force", action="store_true",
                   help="replace the outputs of another evaluation (other inputs or settings) in the output folder")
    o.add_argument(
        "--html",
        nargs="?",
        const="report.html",
        default=None,
        metavar="FILE",
        help="also write a self-contained results page (images, reports, scores, findings); a bare file name "
        "(default report.html) goes into the output folder",
    )
    lab = p.add_argument_group("labelling only")
    lab.add_argument("--label-only", type=Path, metavar="REPORTS.csv", help="label the reports of a CSV and exit")
    lab.add_argument("--text-col", default=None, help="report text column for --label-only")
    lab.add_argument("--output", type=Path, default=None, metavar="LABELS.csv", help="labels CSV written by --label-only")
    return p


def _fetch_names(text: str) -> list[str]:
    """The scorers named in ``--fetch-metric-models``: model-based metric names (``all``: those of
    ``--model-metrics``), or protocol names standing for every scorer the protocol uses."""
    from cxrgen.metrics import model_based

    groups = {"all": list(model_based.KNOWN), **{n: p.scorers() for n, p in protocols.PROTOCOLS.items()}}
    expanded = [s for part in text.split(",") for s in groups.get(part.strip().lower(), [part])]
    try:
        return model_based.parse_names(",".join(expanded), known=model_based.SCORERS)
    except ValueError as exc:
        raise ValueError(f"{exc}, or a protocol: {', '.join(protocols.PROTOCOLS)}") from None


def _error(exc: Exception) -> str:
    text = str(exc)
    role = getattr(exc, "role", None)
    if role in FLAGS:
        text += f" (set it with {FLAGS[role]})"
    return text


def _html_path(value: str, out_dir: Path) -> Path:
    path = Path(value)
    return out_dir / path if path.parent == Path(".") and not path.is_absolute() else path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = logging.getLogger("cxrgen")
    handler = _Stderr()
    logger.addHandler(handler)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        return _run(parser, args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.fetch_metric_models is not None:
        from cxrgen.metrics import model_based

        try:
            names = _fetch_names(args.fetch_metric_models)
            done = model_based.fetch(names)
        except (ValueError, OSError, RuntimeError) as exc:
            print(f"evaluate.py: error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        for line in done:
            print(line)
        return EXIT_OK
    try:
        if args.label_only is not None:
            if args.inputs:
                parser.error("--label-only takes no RESULTS.csv arguments")
            if not args.text_col or args.output is None:
                parser.error("--label-only needs --text-col COLUMN and --output LABELS.csv")
            out = evaluation.label_csv(args.label_only, args.text_col, args.output, id_col=args.id_col)
            print(f"labelled {len(out)} reports -> {args.output}")
            return EXIT_OK
        if not args.inputs:
            parser.error("give at least one RESULTS.csv (or --label-only, or --fetch-metric-models)")
        if args.n_boot is not None and args.n_boot < 0:
            parser.error("--n-boot must be 0 or more")
        if args.protocol:
            clash = [flag for flag, given in (("--compat", args.compat), ("--model-metrics", args.model_metrics),
                                             ("--uncertain", args.uncertain)) if given]
            if clash:
                parser.error(f"--protocol {args.protocol} fixes the metrics and their definitions; "
                             f"drop {' and '.join(clash)}")
        if args.ar_trials <= 0:
            parser.error("--ar-trials must be positive")
        if args.html and args.html.lower().endswith(".csv"):
            parser.error(f"--html {args.html}: a results page is HTML; put --html after the RESULTS.csv arguments "
                         "or give it a .html file name")
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
            uncertain=args.uncertain or "positive",
            use_meteor=not args.no_meteor,
            model_metrics=args.model_metrics,
            skip_unavailable=args.skip_unavailable,
            significance_test=args.significance,
            ar_trials=args.ar_trials,
            protocol=args.protocol,
        )
        given = evaluation.expand_inputs(args.inputs)
        out_dir = args.output_dir or evaluation.default_output_dir(given[0][1], list(report.systems))
        identity = evaluation.evaluation_identity(report, given)
        if args.force:
            replaced = (Path(out_dir) / "summary.json").exists()
        else:
            evaluation.check_output_dir(out_dir, identity)
            replaced = False
        paths = evaluation.write_outputs(report, out_dir, identity)
        image_lines = []
        if args.html:
            scored = {}
            for name in report.systems:
                rows, check = evaluation.resolve_images(report.frames[name])
                if check.n_missing:
                    image_lines.append(
                        f"{name}: {check.n_missing} of {check.n_paths} images not found (e.g. {', '.join(check.missing)})"
                    )
                scored[name] = attach_scores(rows, report.systems[name].per_sample)
            summary = report.summary_dict()
            summary["warnings"] = summary["warnings"] + image_lines
            paths["html"] = write_results_page(_html_path(args.html, Path(out_dir)), scored, summary,
                                               baseline=report.baseline)
    except evaluation.EvaluationInputError as exc:
        hint = " (--output-dir DIR, or --force)" if "holds the outputs of another evaluation" in str(exc) else ""
        if isinstance(exc, evaluation.MetricUnavailableError) and args.protocol:
            hint = (f" (everything the protocol uses: python evaluate.py --fetch-metric-models {args.protocol}; "
                    "or --skip-unavailable)")
        print(f"evaluate.py: error: {_error(exc)}{hint}", file=sys.stderr)
        return EXIT_INPUT
    except ResultsPageError as exc:
        print(f"evaluate.py: error: {_error(exc)}", file=sys.stderr)
        return EXIT_INPUT
    print(evaluation.format_table(report))
    for line in image_lines:
        print(line)
    print("")
    print(("replaced another evaluation's outputs: " if replaced else "wrote ") + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
