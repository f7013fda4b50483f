"""What a run records about where it ran: the project's commit, package versions, the data files it read.

Cheap on purpose: package versions come from the installed distributions' metadata, so recording them imports
neither PyTorch nor transformers.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    """Versions of Python, cxrgen, PyTorch, transformers, and the CUDA that PyTorch was built with (when PyTorch is
    already imported; None otherwise)."""
    torch = sys.modules.get("torch")
    return {"cxrgen": __version__, "python": platform.python_version(),
            "torch": torch.__version__ if torch else _version("torch"), "transformers": _version("transformers"),
            "cuda": torch.version.cuda if torch else None}


def project_commit() -> dict[str, Any]:
    """The project's git commit and whether its tracked files had local changes; the version outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            return {"commit": commit.stdout.strip(), "local_changes": bool(status.stdout.strip()),
                    "version": __version__}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "local_changes": None, "version": __version__}


def data_files(data_cfg) -> list[dict]:
    """sha256 and row count of the data files that decide the selection (``data_cfg``: a
    :class:`cxrgen.config.DataConfig`): the manifest, or the tables (CSV, JSON) at the top of data.root and the
    reports/projections tables named in the config."""
    d = data_cfg
    paths: list[Path] = []
    if d.manifest:
        paths.append(Path(d.manifest))
    if d.root and Path(d.root).is_dir():
        paths += sorted(p for p in Path(d.root).iterdir()
                        if p.is_file() and p.name.endswith((".csv", ".csv.gz", ".json", ".jsonl")))
    paths += [Path(p) for p in (d.reports, d.projections) if p]
    out = []
    for path in dict.fromkeys(paths):
        if not path.is_file():
            continue
        digest, lines = hashlib.sha256(), 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                lines += block.count(b"\n")
        out.append({"path": str(path.resolve()), "sha256": digest.hexdigest(), "lines": lines})
    return out
