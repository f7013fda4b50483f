"""What every part of the evaluation shares: its errors and the rule for an empty cell."""

from __future__ import annotations

import logging
import math

import pandas as pd

log = logging.getLogger("cxrgen")

EMPTY_STRINGS = {"", "nan", "none", "null"}
# Columns the reader adds to every frame: the file and line each row came from.
SOURCE_FILE = "_source_file"
SOURCE_LINE = "_source_line"


class EvaluationInputError(ValueError):
    """Bad input: the message names the file, column, line or ids concerned."""


class NothingToScoreError(EvaluationInputError):
    """Every row of a system is excluded (status error, empty reference): no metric can be computed."""


class MissingColumnError(EvaluationInputError):
    """A column the evaluation needs is absent; ``role`` is ``id``, ``hyp``, ``ref`` or ``text``
    (a command line can name the option that sets it)."""

    def __init__(self, message: str, role: str):
        super().__init__(message)
        self.role = role


class MetricError(EvaluationInputError):
    """A metric failed on this input (a model-based scorer's error, one line)."""


class MetricUnavailableError(EvaluationInputError):
    """A metric that was asked for cannot run here (package or weights missing); the message
    says what to install or fetch."""


def is_empty_text(value) -> bool:
    """Whether a cell counts as no text: None, NaN, blank, or 'nan'/'none'/'null' in any case."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip().lower() in EMPTY_STRINGS


def text_or_empty(value) -> str:
    """The cell as text, '' for what :func:`is_empty_text` calls empty."""
    return "" if is_empty_text(value) else str(value)


def where(df: pd.DataFrame) -> str:
    """The file (or files) a frame was read from, for messages."""
    if SOURCE_FILE in df.columns and len(df):
        files = list(dict.fromkeys(df[SOURCE_FILE].astype(str)))
        return files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more parts)"
    return "the results table"


def row_ref(df: pd.DataFrame, i) -> str:
    """Where row ``i`` of a frame came from: ``file, line N`` (or ``row i``)."""
    if SOURCE_FILE in df.columns:
        return f"{df.at[i, SOURCE_FILE]}, line {df.at[i, SOURCE_LINE]}"
    return f"row {i}"


def visible_columns(df: pd.DataFrame) -> list[str]:
    """The frame's columns without the reader's source columns."""
    return [str(c) for c in df.columns if c not in (SOURCE_FILE, SOURCE_LINE)]


def duplicated_ids(ids: pd.Series, shown: int = 10) -> str:
    """The ids that occur more than once (as a list for a message: the first ``shown`` and how
    many more), or ``""`` when every id is unique."""
    dup = ids[ids.duplicated(keep=False)]
    if not len(dup):
        return ""
    uniq = list(dict.fromkeys(dup))
    return ", ".join(map(str, uniq[:shown])) + (f" and {len(uniq) - shown} more" if len(uniq) > shown else "")
