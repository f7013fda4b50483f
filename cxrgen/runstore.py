"""The run directory: its files, the crash-safe part files and how rows are written to and read from CSV.

A run writes into ``<output.dir>/<output.run_name>/``::

    parts/shard-<i>-of-<n>.csv        rows of shard i, appended as reports finish
    parts/shard-<i>-of-<n>.committed  {"run": RUN_ID, "bytes": N}: the first N bytes of the part are whole rows of
                                      that run; bytes after them belong to rows being written when the process
                                      stopped, and every reader ignores them
    parts/shard-<i>-of-<n>.json       what shard i ran on (device, model, times, counts, run id)
    parts/run-config.json             the settings that decide the reports and the run id derived from them
    parts/selection.json              the selected study ids in dataset order (what the merge checks against)
    reports.csv                       all rows in dataset order, written atomically once every shard is done
    metrics.json, run.json, report.html

**CSV dialect** (part files and reports.csv): UTF-8, comma-separated, ``\\n`` between records, every text field in
double quotes (``"`` doubled inside), numbers and booleans bare (``csv.QUOTE_NONNUMERIC``). A text field may hold
any character — line breaks, a bare ``\\r``, other C0/C1 controls, U+2028/U+2029, quotes, commas — and reads back
identically with Python's ``csv`` module (``newline=""``), with pandas and with ``evaluate.py``. Two things cannot
be stored as they are and are replaced by U+FFFD before writing: NUL (several CSV readers stop at it) and lone
surrogates (not encodable as UTF-8).

**Crash safety**: rows are appended in one write, flushed and fsync'ed, read back from disk through the reader the
merge uses and compared with what was meant to be written; only then is the committed length advanced (temporary
file, fsync, rename). A row that does not read back stops the shard with :class:`PartReadBackError`, naming the part
file, before it is committed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger("cxrgen")

COLUMNS = ["id", "image_path", "reference", "generated_report", "status", "error", "n_new_tokens",
           "stopped_at_eos", "seconds"]
TEXT_COLUMNS = ["id", "image_path", "reference", "generated_report", "status", "error"]
REPLACEMENT = "\ufffd"


class RunError(RuntimeError):
    """A run that cannot start, continue or be merged; the message names the file or setting."""


class PartReadBackError(RunError):
    """Rows written to a part file did not read back as written (nothing of them was committed)."""


# -- files -------------------------------------------------------------------------------------------------------

def part_name(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]}-of-{shard[1]}"


def part_path(run_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(run_dir) / "parts" / f"{part_name(shard)}.csv"


def shard_record_path(run_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(run_dir) / "parts" / f"{part_name(shard)}.json"


def run_config_path(run_dir: Path) -> Path:
    return Path(run_dir) / "parts" / "run-config.json"


def selection_path(run_dir: Path) -> Path:
    return Path(run_dir) / "parts" / "selection.json"


OUTPUT_FILES = ("reports.csv", "metrics.json", "run.json", "report.html")


def read_json(path: Path) -> Any | None:
    """A JSON file of the run directory, or None when it does not exist."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise RunError(f"{path}: not valid JSON ({e}); delete the run's parts/ to start over") from None


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2, default=str).encode("utf-8"))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- commit markers ----------------------------------------------------------------------------------------------

def marker_path(part: Path) -> Path:
    return Path(part).with_suffix(".committed")


def read_marker(part: Path) -> tuple[str | None, int] | None:
    """(run id, committed bytes) of a part, or None when it has no marker. Raises ValueError for a bad marker."""
    marker = marker_path(part)
    try:
        text = marker.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(text) if text else 0
        if isinstance(value, int):  # a bare byte count
            return None, value
        return str(value["run"]), int(value["bytes"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{marker}: not a commit marker (expected {{\"run\": ..., \"bytes\": ...}})") from None


def write_marker(part: Path, run_id: str, length: int) -> None:
    atomic_write(marker_path(part), json.dumps({"run": run_id, "bytes": length}).encode())


# -- rows as CSV -------------------------------------------------------------------------------------------------

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


def clean_row(row: dict) -> dict:
    return {k: clean_text(v) if k in TEXT_COLUMNS else v for k, v in row.items()}


def rows_to_csv(rows: list[dict], header: bool) -> bytes:
    """Rows (already cleaned) as CSV bytes in the run directory's dialect."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def read_reports_csv(source, name: str) -> pd.DataFrame:
    """A reports CSV as written here, with text columns as strings ('' for empty) and typed numbers."""
    try:
        frame = pd.read_csv(source, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{name}: not a readable reports CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise RunError(f"{name}: missing columns {', '.join(missing)}")
    for column in TEXT_COLUMNS:  # pandas 3 reads strings as its own string dtype; keep plain objects
        frame[column] = frame[column].astype(object)
    return frame


def write_reports_csv(frame: pd.DataFrame, path: Path) -> None:
    """reports.csv: the part files' columns first, then any score columns, in the same dialect; atomic."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].map(clean_text)
    data = frame.to_csv(index=False, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    atomic_write(path, data.encode("utf-8"))


def _differences(frame: pd.DataFrame, rows: list[dict]) -> list[str]:
    """Ids of rows that did not read back exactly as written (or a count mismatch)."""
    if len(frame) != len(rows):
        return [f"{len(rows)} rows written, {len(frame)} read back"]
    bad = []
    for got, want in zip(frame.to_dict("records"), rows):
        if any(str(got[c]) != str(want[c]) for c in TEXT_COLUMNS) or int(got["n_new_tokens"]) != int(
                want["n_new_tokens"]):
            bad.append(f"id {want['id']!r}")
    return bad


class PartFile:
    """An append-only CSV of finished rows, crash-safe through its commit marker."""

    def __init__(self, path: Path, run_id: str | None = None):
        self.path = Path(path)
        self.run_id = run_id

    def committed_length(self) -> int:
        """Committed bytes of this run; 0 when the part is absent or was written by another run."""
        try:
            marker = read_marker(self.path)
        except ValueError as e:
            raise RunError(f"{e}; delete the run's parts/ to start over") from None
        if marker is None:
            return 0
        run_id, length = marker
        if self.run_id is not None and run_id != self.run_id:
            return 0
        return length

    def recover(self) -> None:
        """Cut anything beyond the committed length: rows being written when the process died, or the rows of an
        earlier run with other settings."""
        length = self.committed_length()
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < length:
            raise RunError(f"{self.path}: shorter ({size} bytes) than its committed length ({length}): damaged")
        if size > length:
            with open(self.path, "r+b") as f:
                f.truncate(length)
                f.flush()
                os.fsync(f.fileno())
            log.warning("%s: dropped %d bytes not committed by this run", self.path.name, size - length)
        if self.run_id is not None:
            write_marker(self.path, self.run_id, length)

    def read(self) -> pd.DataFrame:
        length = self.committed_length()
        if length == 0:
            return pd.DataFrame(columns=COLUMNS)
        with open(self.path, "rb") as f:
            data = f.read(length)
        return read_reports_csv(io.BytesIO(data), str(self.path))

    def append(self, rows: list[dict]) -> int:
        """Append and commit ``rows``; returns the number of rows committed (``len(rows)``).

        The bytes are read back from disk and parsed before the commit; rows that do not come back as written
        raise :class:`PartReadBackError` and are left uncommitted (cut on the next start).
        """
        rows = [clean_row(r) for r in rows]
        length = self.committed_length()
        data = rows_to_csv(rows, header=length == 0)
        with open(self.path, "ab") as f:
            f.seek(0, os.SEEK_END)
            start = f.tell()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if start != length:
            raise RunError(f"{self.path}: {start} bytes on disk where {length} are committed; another process is "
                           "writing this part (two jobs on the same shard?)")
        with open(self.path, "rb") as f:
            f.seek(start)
            written = f.read(len(data))
        chunk = written if length == 0 else rows_to_csv([], header=True) + written
        try:
            back = read_reports_csv(io.BytesIO(chunk), str(self.path))
        except RunError as e:
            raise PartReadBackError(f"{self.path}: rows just written do not read back ({e})") from None
        bad = _differences(back, rows)
        if bad:
            raise PartReadBackError(f"{self.path}: rows just written do not read back as written "
                                    f"({', '.join(bad[:5])}); they were not committed")
        write_marker(self.path, self.run_id or "", length + len(data))
        return len(rows)
