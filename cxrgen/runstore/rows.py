"""The result row, defined once: its columns, their types, and how rows are written to and read from CSV.

Every table of results the project writes — the part files and ``reports.csv`` — starts with the columns of
:class:`ResultRow`, in its field order; ``reports.csv`` adds the per-sample scores after them. The evaluation and
the results page take the names from here (:data:`COL`), never restate them.

**CSV dialect**: UTF-8, comma-separated, ``\\n`` between records, every text field in double quotes (``"`` doubled
inside), numbers and booleans bare (``csv.QUOTE_NONNUMERIC``). A text field may hold any character — line breaks, a
bare ``\\r``, other C0/C1 controls, U+2028/U+2029, quotes, commas — and reads back identically with Python's ``csv``
module (``newline=""``), with pandas and with ``evaluate.py``. Two things cannot be stored as they are and are
replaced by U+FFFD before writing: NUL (several CSV readers stop at it) and lone surrogates (not encodable as
UTF-8). Floats are written in Python's shortest round-trip form and read back with pandas' round-trip parser, so a
row reads back equal to the one written.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import typing
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pandas as pd

from .files import RunError

REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class ResultRow:
    """One study's outcome. ``status`` is ``ok`` (a report was generated) or ``error`` (``error`` says why, e.g. an
    unreadable image); ``n_new_tokens`` counts the generated tokens without the end-of-sequence token,
    ``stopped_at_eos`` is False when ``max_new_tokens`` was reached first, ``seconds`` is the wall time since the
    previous reports were handed back, shared among the reports that finished together. A backend that takes its
    reports from other studies (the retrieval backend) names that study in ``retrieved_id`` and
    ``retrieved_image``, the cosine ``similarity`` of the two images, and in ``leakage`` the rules that left index
    entries out of this study's candidates (``id``, ``image``, ``patient``, comma-separated); a generator leaves
    them empty. A field's ``label`` (metadata) is how the results page names it."""

    id: str
    image_path: str
    reference: str
    generated_report: str
    status: str
    error: str
    n_new_tokens: int = field(metadata={"label": "new tokens"})
    stopped_at_eos: bool
    seconds: float = field(metadata={"label": "seconds"})
    retrieved_id: str = ""
    retrieved_image: str = ""
    similarity: float | None = field(default=None, metadata={"label": "similarity"})
    leakage: str = ""

    def record(self) -> dict[str, Any]:
        """The row as it is stored: a dict in column order, text cleaned (:func:`clean_text`)."""
        return {c: clean_text(getattr(self, c)) if c in TEXT_COLUMNS else getattr(self, c) for c in COLUMNS}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "ResultRow":
        """A row from a dict of its columns (extra keys ignored), each converted to its field's type; an optional
        number that is missing (None, NaN, '') is None."""
        return cls(**{c: None if c in OPTIONAL and _missing(record[c]) else TYPES[c](record[c]) for c in COLUMNS})


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and value != value)


_HINTS = typing.get_type_hints(ResultRow)
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ResultRow))
#: Columns whose value may be missing (``float | None``): written as an empty field, read back as None.
OPTIONAL: frozenset[str] = frozenset(c for c in COLUMNS if type(None) in typing.get_args(_HINTS[c]))
TYPES: dict[str, type] = {c: next(a for a in typing.get_args(_HINTS[c]) if a is not type(None)) if c in OPTIONAL
                          else _HINTS[c] for c in COLUMNS}
TEXT_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if TYPES[c] is str)
#: Columns added after the first results were written, with the value an older file's rows take.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ResultRow)
                            if f.default is not dataclasses.MISSING}
#: Column names as attributes (``COL.generated_report``), so that no other module spells them out.
COL = SimpleNamespace(**{c: c for c in COLUMNS})
#: Columns the results page shows beside the scores, with their labels.
LABELLED: tuple[tuple[str, str], ...] = tuple((f.name, f.metadata["label"]) for f in dataclasses.fields(ResultRow)
                                              if "label" in f.metadata)
_PANDAS_TYPES = {str: str, int: "int64", float: "float64", bool: "bool"}
# pandas 3 parses floats exactly by default (and deprecates the option); pandas 2 needs to be asked.
_EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def clean_text(value: Any) -> str:
    """Text as it is stored: NUL and lone surrogates become U+FFFD, everything else is kept."""
    text = "" if value is None else str(value)
    if "\0" in text:
        text = text.replace("\0", REPLACEMENT)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (a pair would have been one code point)
        text = "".join(REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def rows_to_csv(rows: list[ResultRow], header: bool) -> bytes:
    """Rows as CSV bytes in the run directory's dialect (text cleaned), with the header line when asked."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    writer.writerows([list(row.record().values()) for row in rows])
    return buffer.getvalue().encode("utf-8")


def empty_frame() -> pd.DataFrame:
    """A frame with the result columns and no row."""
    return pd.DataFrame({c: pd.Series(dtype=object if TYPES[c] is str else _PANDAS_TYPES[TYPES[c]])
                         for c in COLUMNS})


def read_reports_csv(source, name: str) -> pd.DataFrame:
    """A results CSV as written here (a part or reports.csv): the row columns typed (text as strings, '' for
    empty), any further columns as pandas reads them. Raises :class:`RunError` naming ``name``."""
    try:
        frame = pd.read_csv(source, dtype={c: _PANDAS_TYPES[TYPES[c]] for c in COLUMNS}, keep_default_na=False,
                            na_values={c: [""] for c in OPTIONAL}, **_EXACT_FLOATS)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise RunError(f"{name}: not a readable results CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in frame.columns and c not in DEFAULTS]
    if missing:
        raise RunError(f"{name}: missing columns {', '.join(missing)}")
    for column in (c for c in COLUMNS if c not in frame.columns):  # written before the column existed
        default = DEFAULTS[column]
        frame.insert(COLUMNS.index(column), column, pd.Series(
            [default] * len(frame), index=frame.index, dtype=_PANDAS_TYPES[TYPES[column]] if default is not None
            else "float64"))
    for column in TEXT_COLUMNS:  # pandas 3 reads strings as its own string dtype; keep plain objects
        frame[column] = frame[column].astype(object)
    return frame


def reports_csv(frame: pd.DataFrame) -> bytes:
    """``reports.csv``'s bytes: the row columns first, then any score columns, in the same dialect."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].map(clean_text)
    return frame.to_csv(index=False, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC).encode("utf-8")


LEAKAGE_RULES = ("id", "image", "patient")


def leakage_counts(frame: pd.DataFrame) -> dict[str, int] | None:
    """How many rows had index entries left out of their candidates, per leakage rule (``id``, ``image``,
    ``patient``), and how many by any rule (``studies``); None when no row was retrieved from an index."""
    if COL.retrieved_id not in frame.columns or not (frame[COL.retrieved_id].astype(str) != "").any():
        return None
    rules = frame[COL.leakage].fillna("").astype(str).str.split(",")
    counts = {rule: int(rules.map(lambda found, r=rule: r in found).sum()) for rule in LEAKAGE_RULES}
    return {"studies": int((frame[COL.leakage].fillna("").astype(str) != "").sum()), **counts}
