"""Shard part files of a generation run: an append-only CSV of finished rows and its commit marker.

``<part>.csv`` grows one batch at a time. ``<part>.committed`` holds ``{"run": RUN_ID, "bytes": N}``: the first N
bytes of the CSV are whole rows written by the run whose id is RUN_ID. Bytes after them belong to a batch that was
being written when the process stopped; readers use the committed prefix only. The marker is replaced atomically
(temporary file, fsync, rename) after the CSV has been fsync'ed, so it never points past data on disk.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path


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
