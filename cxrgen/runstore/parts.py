"""Part files: the append-only CSV of a shard's finished rows, and the commit marker that says how much of it holds.

``shard-<i>-of-<n>.csv`` takes rows as they finish; ``shard-<i>-of-<n>.committed`` holds
``{"run": RUN_ID, "bytes": N}``: the first N bytes of the part are whole rows of that run. Bytes after them belong to
rows being written when a process stopped; every reader ignores them and the next writer cuts them off. A part
without a marker has no committed rows.

**Appending** (:meth:`PartFile.append`): the rows go in one write, flushed and fsync'ed; they are read back from
disk through the reader the merge uses and compared with what was meant to be written; only then is the marker
advanced (:func:`~cxrgen.runstore.files.atomic_write`). Rows that do not read back raise
:class:`PartReadBackError`, naming the part, and stay uncommitted.

**Reading** (:meth:`PartFile.snapshot`, :meth:`PartFile.read`) is a consistent snapshot without any lock: the
marker first, then at most that many bytes, then the marker again; when the marker changed in between (a commit, or
a part started over) the read is repeated. A writer never changes the bytes below its committed length, so the
snapshot is always whole rows.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import pandas as pd

from .files import RunError, atomic_write
from .rows import ResultRow, empty_frame, read_reports_csv, rows_to_csv

log = logging.getLogger("cxrgen")

PART_NAME = re.compile(r"shard-(\d+)-of-(\d+)")
_ATTEMPTS = 50


class PartReadBackError(RunError):
    """Rows written to a part file did not read back as written (nothing of them was committed)."""


def is_part(path: Path) -> bool:
    """Whether ``path`` is named like a shard part (``shard-<i>-of-<n>.csv``)."""
    path = Path(path)
    return path.suffix == ".csv" and PART_NAME.fullmatch(path.stem) is not None


class PartFile:
    """A shard's part file and its commit marker. ``run_id``: the run whose rows count (None: any run)."""

    def __init__(self, path: Path, run_id: str | None = None):
        self.path = Path(path)
        self.run_id = run_id

    @property
    def marker_path(self) -> Path:
        return self.path.with_suffix(".committed")

    def marker(self) -> tuple[str | None, int] | None:
        """(run id, committed bytes) from the marker, or None when there is none."""
        try:
            text = self.marker_path.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            value = json.loads(text) if text else 0
            if isinstance(value, int):  # a bare byte count
                return None, value
            return str(value["run"]), int(value["bytes"])
        except (ValueError, KeyError, TypeError):
            raise RunError(f"{self.marker_path}: not a commit marker (expected {{\"run\": ..., \"bytes\": ...}}); "
                           "delete the run's parts/ to start over") from None

    def _counted(self, marker: tuple[str | None, int] | None) -> int:
        if marker is None or (self.run_id is not None and marker[0] != self.run_id):
            return 0
        return marker[1]

    def committed_length(self) -> int:
        """Committed bytes of this run; 0 when there is no marker or it belongs to another run."""
        return self._counted(self.marker())

    def snapshot(self) -> bytes:
        """The committed bytes, read consistently while a writer may be appending (see the module docstring)."""
        short = None
        for _ in range(_ATTEMPTS):
            before = self.marker()
            length = self._counted(before)
            if length == 0:
                return b""
            try:
                with open(self.path, "rb") as f:
                    data = f.read(length)
            except FileNotFoundError:
                data = b""
            if self.marker() != before:  # committed or started over meanwhile: read again
                continue
            if len(data) < length:  # replaced between the two reads of the marker, or damaged: read again to tell
                short = len(data)
                continue
            return data
        if short is not None:
            raise RunError(f"{self.path}: shorter ({short} bytes) than its committed length ({length}): damaged")
        raise RunError(f"{self.path}: its commit marker changed on each of {_ATTEMPTS} reads")

    def read(self) -> pd.DataFrame:
        """The committed rows (typed columns; no row when nothing is committed)."""
        return self.parse(self.snapshot())

    def parse(self, data: bytes) -> pd.DataFrame:
        """The rows of committed bytes of this part (from :meth:`snapshot`)."""
        return read_reports_csv(io.BytesIO(data), str(self.path)) if data else empty_frame()

    def recover(self) -> None:
        """Cut anything beyond the committed length: rows being written when the process died, or the rows of an
        earlier run with other settings. Only the process holding the shard's lock may call this."""
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
        if self.run_id is not None and self.marker() != (self.run_id, length):
            self._commit(length)

    def remove(self) -> None:
        """Delete the part, the marker first: a part without one is read as empty, never as damaged."""
        self.marker_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)

    def _commit(self, length: int) -> None:
        atomic_write(self.marker_path, json.dumps({"run": self.run_id or "", "bytes": length}).encode())

    def append(self, rows: list[ResultRow]) -> int:
        """Append and commit ``rows``; returns the number of rows committed (``len(rows)``).

        The bytes are read back from disk and parsed before the commit; rows that do not come back as written
        raise :class:`PartReadBackError` and are left uncommitted (cut on the next start).
        """
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
        self._commit(length + len(data))
        return len(rows)


def _differences(frame: pd.DataFrame, rows: list[ResultRow]) -> list[str]:
    """Ids of rows that did not read back exactly as written (or a count mismatch)."""
    if len(frame) != len(rows):
        return [f"{len(rows)} rows written, {len(frame)} read back"]
    wanted = [ResultRow.from_record(row.record()) for row in rows]  # as stored: text cleaned
    return [f"id {want.id!r}" for got, want in zip(frame.to_dict("records"), wanted)
            if ResultRow.from_record(got) != want]
