"""Evaluation of generated reports: read result CSVs, validate, align systems, score, summarise.

One job per module:

=============  ===================================================================================
inputs         CSV reading (strict; shard parts up to their committed length), system names,
               which column is the id / generated report / reference, image paths
alignment      row rules (status errors, empty references, empty reports, duplicates) and the
               alignment of several systems on the studies they share
sections       the reference a published protocol scores (findings, ReXrank's findings + impression)
scoring        the metrics of the registry on every system, bootstrap intervals, comparisons with
               the baseline (paired bootstrap or approximate randomization)
summaries      ``summary.json``, ``per_sample.csv``, ``metrics.json``; writing the output files
tables         the terminal table, ``summary.md``, ``summary.csv`` and the shared number formats
labels         label-only mode
common         the errors and the empty-cell rule
=============  ===================================================================================

Input rows: one study per row with an id, a generated report and a reference; the column names
are found by their common names (``id``/``uid``/``study_id``, ``generated_report``/``prediction``/
..., ``reference``/``ground_truth_report``/``target``/...) or given. Library errors are
:class:`EvaluationInputError` with a one-line message naming the file, column, line or ids; the
library logs through ``logging.getLogger("cxrgen")``.
"""

from cxrgen.evaluation.alignment import Prepared, align, prepare
from cxrgen.evaluation.common import (
    EMPTY_STRINGS,
    EvaluationInputError,
    MetricError,
    MetricUnavailableError,
    MissingColumnError,
    NothingToScoreError,
    is_empty_text,
    text_or_empty,
)
from cxrgen.evaluation.inputs import (
    COLUMN_NAMES,
    Columns,
    ImageCheck,
    default_output_dir,
    expand_inputs,
    load_systems,
    read_results_csv,
    resolve_columns,
    resolve_images,
    source_paths,
    standardise,
    system_of,
)
from cxrgen.evaluation.labels import label_csv
from cxrgen.evaluation.scoring import SIGNIFICANCE_TESTS, Evaluation, Report, evaluate_frame, evaluate_systems
from cxrgen.evaluation.summaries import (check_output_dir, evaluation_identity, metrics_json, write_metrics_json,
                                        write_outputs)
from cxrgen.evaluation.tables import csv_rows, fmt_entry, fmt_p, fmt_value, format_table, markdown

__all__ = [
    "COLUMN_NAMES", "Columns", "EMPTY_STRINGS", "Evaluation", "EvaluationInputError", "ImageCheck",
    "MetricError", "MetricUnavailableError", "MissingColumnError", "NothingToScoreError", "Prepared", "Report",
    "SIGNIFICANCE_TESTS", "align",
    "csv_rows", "default_output_dir", "evaluate_frame", "evaluate_systems", "expand_inputs", "fmt_entry", "fmt_p",
    "fmt_value", "format_table", "is_empty_text", "label_csv", "load_systems", "markdown", "metrics_json",
    "prepare", "read_results_csv", "resolve_columns", "resolve_images", "source_paths", "standardise",
    "system_of", "text_or_empty", "write_metrics_json", "write_outputs", "check_output_dir", "evaluation_identity",
]
