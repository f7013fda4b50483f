"""The run directory and its one owner.

A run writes into ``<output.dir>/<output.run_name>/``::

    parts/shard-<i>-of-<n>.csv        rows of shard i, appended as reports finish (parts.py)
    parts/shard-<i>-of-<n>.committed  {"run": RUN_ID, "bytes": N}: how much of the part holds committed rows
    parts/shard-<i>-of-<n>.json       what shard i ran on and the history of its starts (store.py)
    parts/shard-<i>-of-<n>.lock       held by the process working on shard i (lock.py)
    parts/merge.lock                  held by the process finishing the run
    parts/run-config.json             the settings that decide the reports and the run id derived from them
    parts/selection.json              the selected study ids in dataset order (what the merge checks against)
    reports.csv, metrics.json, report.html, run.json   the finished outputs, each written atomically

Modules: ``rows`` (the result row and the CSV dialect), ``files`` (atomic writes, JSON), ``parts`` (part files and
commit markers), ``lock`` (the lock files), ``store`` (:class:`RunStore`, the run folder as one object),
``training`` (:class:`TrainingStore`, a fine-tuning run's folder: settings, checkpoints, adapters). Nothing outside
this package opens a part, a marker, a record or a lock.
"""

from .files import RunError, atomic_write, read_json, write_json
from .lock import FileLock, LockHeldError, LockLostError
from .parts import PartFile, PartReadBackError, is_part
from .rows import (COL, COLUMNS, LABELLED, LEAKAGE_RULES, TEXT_COLUMNS, ResultRow, clean_text, empty_frame,
                   leakage_counts, read_reports_csv, reports_csv, rows_to_csv)
from .store import (OUTPUTS, RUN_DEFINING, Merged, RunPlan, RunStore, SettingsChangedError, ShardWriter, defining,
                    read_part)
from .training import TRAINING_DEFINING, TrainingStore

__all__ = [
    "COL", "COLUMNS", "FileLock", "LABELLED", "LEAKAGE_RULES", "LockHeldError", "LockLostError", "Merged", "OUTPUTS",
    "PartFile", "PartReadBackError", "RUN_DEFINING", "ResultRow", "RunError", "RunPlan", "RunStore",
    "SettingsChangedError", "ShardWriter", "TEXT_COLUMNS", "TRAINING_DEFINING", "TrainingStore", "atomic_write",
    "clean_text", "defining", "empty_frame", "is_part", "leakage_counts", "read_json", "read_part",
    "read_reports_csv", "reports_csv", "rows_to_csv", "write_json",
]
