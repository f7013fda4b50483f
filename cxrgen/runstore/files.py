"""Whole files of the run directory: written atomically, read as JSON.

:func:`atomic_write` is the only way a file of the run directory is replaced: the bytes go to a temporary file in
the same folder (written, then fsync'ed), which is then renamed over the target, and the folder is fsync'ed. A
process killed at any moment leaves either the previous file or the new one, never a mix; at worst a temporary
file ``.<name>.tmp-<host>-<pid>-<thread>`` stays behind, which the next writer of that file removes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("cxrgen")


class RunError(RuntimeError):
    """A run that cannot start, continue or be merged; the message names the file or setting."""


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old or the new file."""
    path = Path(path)
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable (where the filesystem lets a folder be fsync'ed)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Make every file under ``folder``, and the folders themselves, durable (files written by other code, e.g. a
    checkpoint, before a commit marker names them)."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            fsync_folder(path)
    fsync_folder(folder)
    fsync_folder(folder.parent)


def remove_temporaries(path: Path) -> None:
    """Delete temporary files that a killed writer of ``path`` left behind (the caller holds the lock that makes
    it the only writer of ``path``)."""
    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.tmp-*"):
        leftover.unlink(missing_ok=True)


def read_json(path: Path) -> Any | None:
    """A JSON file of the run directory, or None when it does not exist."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise RunError(f"{path}: not valid JSON ({e}); delete the run's parts/ to start over") from None


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2, default=str) + "\n").encode("utf-8"))
