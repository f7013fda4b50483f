"""The train/val/test split of IU X-ray (Kaggle layout) used by the benchmark this project replaces.

:func:`make_split` writes ``indiana_train.csv``, ``indiana_val.csv`` and ``indiana_test.csv`` next to
``indiana_reports.csv`` the way the benchmark made them:

1. keep the rows of ``indiana_reports.csv`` that have a value in every one of :data:`REQUIRED_COLUMNS`
   (pandas ``dropna(subset=...)`` after a default ``read_csv``: a cell is missing when it is empty or exactly
   one of :data:`PANDAS_NA_STRINGS`, pandas' default NA strings; ``" NA"`` or ``"None."`` are values);
2. split them like scikit-learn's ``train_test_split(rows, test_size=0.2, random_state=42)``: train is 80%,
   the held-out part 20% (rounded up);
3. split the held-out part again with ``test_size=0.5, random_state=42``: its first part is val, its second
   part test.

On the Kaggle download (3,851 reports, 2,459 of them complete) this gives 1,967 train, 246 val and 246 test
studies. scikit-learn is not needed: ``train_test_split`` with a float ``test_size`` and an integer seed takes
``n_test = ceil(test_size * n)`` and ``n_train = n - n_test`` and returns the rows at
``numpy.random.RandomState(seed).permutation(n)[n_test:]`` (train) and ``[:n_test]`` (test), in that order;
:func:`shuffle_split` does exactly that (the tests compare it with scikit-learn itself).

Each split file holds its rows in split order with every column of ``indiana_reports.csv``, the cells' text as
it is in that file (read as strings, so nothing is reformatted), written by pandas ``to_csv(index=False)`` in
UTF-8 with ``\\n`` line ends. Existing split files with the same columns and rows are left as they are; split
files with other content are not replaced unless ``force`` is set.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .common import DatasetError, find_file, load_csv
from .iu_xray_kaggle import REPORTS_FILE, SPLIT_FILES

log = logging.getLogger("cxrgen")

# Columns that must all have a value for a report to enter the split (the benchmark's dropna subset).
REQUIRED_COLUMNS = ("uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression")

# pandas' default NA strings for read_csv (pandas >= 2.0, the version requirements.txt asks for; 2.0 added
# "None"). A cell is missing when its whole text, quoted or not, is one of these; "" is the empty cell.
PANDAS_NA_STRINGS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})

SEED = 42
HELD_OUT_FRACTION = 0.2  # first split: train vs the held-out part
TEST_FRACTION_OF_HELD_OUT = 0.5  # second split of the held-out part: val vs test
SPLITS = ("train", "val", "test")


class SplitFilesDifferError(DatasetError):
    """Split files already exist with other content; ``paths`` lists them."""

    def __init__(self, message: str, paths: tuple[Path, ...]):
        super().__init__(message)
        self.paths = paths


@dataclass
class SplitResult:
    """What :func:`make_split` did.

    counts  reports (rows of indiana_reports.csv), incomplete (rows dropped for a missing value), kept,
            train, val, test
    files   split name -> path of its file
    status  split name -> 'written' (new file), 'unchanged' (the file already held these rows) or
            'replaced' (force was set and the file held other rows)
    """

    reports: Path
    counts: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)


def shuffle_split(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) that scikit-learn's ``train_test_split(range(n), test_size=..., random_state=seed)``
    gives for a float ``test_size`` in (0, 1): ceil(test_size * n) test rows, the rest train.

    Raises DatasetError where scikit-learn raises ValueError (train part would be empty, bad test_size).
    """
    if not 0 < test_size < 1:
        raise DatasetError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    if n_train <= 0:
        raise DatasetError(f"{n} rows cannot be split with test_size={test_size}: the train part would be empty")
    permutation = np.random.RandomState(seed).permutation(n)
    return permutation[n_test:n_test + n_train], permutation[:n_test]


def benchmark_split(n: int) -> dict[str, np.ndarray]:
    """Row indices (into the ``n`` complete reports, in their file order) of train, val and test."""
    train, held_out = shuffle_split(n, HELD_OUT_FRACTION, SEED)
    val, test = shuffle_split(len(held_out), TEST_FRACTION_OF_HELD_OUT, SEED)
    return {"train": train, "val": held_out[val], "test": held_out[test]}


def incomplete_rows(frame: pd.DataFrame, columns=REQUIRED_COLUMNS) -> pd.Series:
    """True for each row of ``frame`` (read as strings, no NA conversion) missing a value in any of ``columns``."""
    mask = pd.Series(False, index=frame.index)
    for column in columns:
        values = frame[column]
        mask |= values.isna() | values.isin(PANDAS_NA_STRINGS)
    return mask


def make_split(root, force: bool = False) -> SplitResult:
    """Write the benchmark's split files into ``root`` (see the module docstring); return what was done.

    Raises DatasetError when indiana_reports.csv is missing, unreadable, lacks a required column, repeats a uid
    or has too few complete rows, and SplitFilesDifferError (nothing written) when a split file exists with
    other content and ``force`` is not set.
    """
    root = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not root.is_dir():
        raise DatasetError(f"data.root {root} is not an existing folder")
    reports_path = find_file(root, REPORTS_FILE)
    if reports_path is None:
        raise DatasetError(f"{root / REPORTS_FILE} not found: the split is made from it")
    reports = load_csv(reports_path, "reports file")
    lacking = [c for c in REQUIRED_COLUMNS if c not in reports.columns]
    if lacking:
        raise DatasetError(
            f"reports file {reports_path} lacks column(s) {', '.join(lacking)} (has: {', '.join(reports.columns)})"
        )
    incomplete = incomplete_rows(reports)
    uids = reports["uid"].str.strip()
    has_uid = ~incomplete_rows(reports, ("uid",))
    repeated = uids[has_uid & uids.duplicated(keep=False)].unique().tolist()
    if repeated:
        shown = ", ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        raise DatasetError(f"reports file {reports_path}: uid(s) {shown} occur more than once")

    kept = reports[~incomplete].reset_index(drop=True)
    try:
        parts = benchmark_split(len(kept))
    except DatasetError as exc:
        raise DatasetError(f"reports file {reports_path}: {len(kept)} complete report(s) are too few ({exc})") from None
    frames = {name: kept.iloc[parts[name]] for name in SPLITS}
    texts = {name: frame.to_csv(index=False, lineterminator="\n") for name, frame in frames.items()}
    files = {name: root / SPLIT_FILES[name] for name in SPLITS}

    status: dict[str, str] = {}
    for name, path in files.items():
        if not path.exists():
            status[name] = "written"
        elif _same_rows(path, frames[name]):
            status[name] = "unchanged"
        else:
            status[name] = "replaced"
    differing = tuple(files[name] for name in SPLITS if status[name] == "replaced")
    if differing and not force:
        raise SplitFilesDifferError(
            f"split file(s) {', '.join(map(str, differing))} already exist with other rows than the split made "
            f"from {reports_path}; not replaced",
            differing,
        )
    for name in SPLITS:
        if status[name] != "unchanged":
            _write_atomic(files[name], texts[name])
            log.debug("%s %s (%d studies)", status[name], files[name], len(frames[name]))
    counts = {
        "reports": len(reports), "incomplete": int(incomplete.sum()), "kept": len(kept),
        **{name: len(frames[name]) for name in SPLITS},
    }
    return SplitResult(reports=reports_path, counts=counts, files=files, status=status)


def _same_rows(path: Path, expected: pd.DataFrame) -> bool:
    """Whether the CSV at ``path`` holds exactly ``expected``'s columns and cells (as text), in the same order."""
    try:
        existing = load_csv(path, "split file")
    except DatasetError:
        return False
    if list(existing.columns) != list(expected.columns) or len(existing) != len(expected):
        return False
    return bool((existing.fillna("").to_numpy() == expected.fillna("").to_numpy()).all())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot write split file {path}: {exc}") from None
