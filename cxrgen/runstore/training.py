"""The fine-tuning run folder and its one owner (what :class:`~cxrgen.runstore.store.RunStore` is to generation).

``<output.dir>/<training.run_name>/``::

    train.lock                      held by the process that trains here (rank 0 under torchrun; lock.py)
    train-config.json               the run id and what it is a digest of: the settings that decide the adapter,
                                    the model's identity, the number of processes, the selected studies
    train-history.json              one entry per start: host, pid, command, steps before and after, outcome
    checkpoints/checkpoint-<step>/  transformers' Trainer checkpoint: the adapter, optimizer, scheduler, the RNG
                                    states of every process, the trainer state (step and epoch: the data
                                    position; log history, best validation loss, early-stopping counter), and
                                    best-adapter*: the best adapter so far
    checkpoints/latest.json         the newest complete checkpoint
    best/, last/                    adapter folders (adapter_config.json, adapter_model.safetensors)
    train.json, loss.svg            the training record and its loss curve, written when training ends

**Commits.** The Trainer writes a checkpoint's files in place. Once every process has written its part, the
folder is fsync'ed, ``latest.json`` is replaced atomically to name it, and only then are older checkpoint folders
removed. A start resumes from the checkpoint ``latest.json`` names; any other checkpoint folder (a kill in the
middle of a save leaves one) is removed first, and ``best/`` is put back as that checkpoint knew it. Each file of
an adapter folder is replaced atomically, and a run's adapter_config.json is the same at every save, so a folder
always holds a config and a whole weights file.

**Settings.** A run folder with a committed checkpoint is resumed only with the same run id; otherwise the start
is refused naming the settings that differ. A folder without one is simply started again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .files import RunError, atomic_write, fsync_tree, read_json, write_json
from .lock import FileLock
from .store import SettingsChangedError

log = logging.getLogger("cxrgen")

#: Settings that change the adapter a run writes (a section name stands for all its keys but those listed in
#: NOT_DEFINING); a resumed run must have the same values.
TRAINING_DEFINING = ["model.backend", "model.name_or_path", "model.revision", "model.dtype", "model.adapter",
                     "model.quantization", "model.trust_remote_code", "prompt.system", "prompt.user", "data",
                     "loader.max_pixels", "loader.percentile_window", "training"]
#: Keys of those sections that do not change the adapter.
NOT_DEFINING = ("training.run_name", "training.checkpoint_every")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_BEST_COPY = ("best-adapter_config.json", "best-adapter_model.safetensors")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def run_id(settings: dict[str, Any]) -> str:
    """A digest of the settings that decide the adapter (see :data:`TRAINING_DEFINING`)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrainingStore:
    """A fine-tuning run folder (see :mod:`cxrgen.runstore.training`)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.checkpoints = self.dir / "checkpoints"

    # -- layout ----------------------------------------------------------------------------------------------------

    def adapter_dir(self, name: str) -> Path:
        """``best`` or ``last``: an adapter folder as ``model.adapter`` reads it."""
        return self.dir / name

    def output(self, name: str) -> Path:
        """``train.json`` or ``loss.svg``."""
        return self.dir / name

    def lock(self) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.dir / "train.lock", f"fine-tuning run {self.dir}")

    # -- settings ----------------------------------------------------------------------------------------------------

    def saved(self) -> dict | None:
        return read_json(self.dir / "train-config.json")

    def begin(self, settings: dict[str, Any], record: dict[str, Any], resume: bool) -> str:
        """Record the run's settings on its first start; refuse to resume a run that has a committed checkpoint
        under other settings, naming them. ``record``: what else train-config.json keeps (selection counts, data
        files). ``resume`` False starts over (checkpoints and adapters are removed). Returns the run id."""
        rid = run_id(settings)
        saved = self.saved() if resume else None
        if not resume:
            self.start_over()
        if saved is not None and saved.get("run_id") != rid:
            if self.latest() is not None:
                before = saved.get("settings", {})
                diff = [f"{k} ({v!r} now, {before.get(k)!r} in the run)" for k, v in settings.items()
                        if before.get(k) != v]
                diff += [f"{k} (not set now)" for k in before if k not in settings]
                raise SettingsChangedError(
                    f"{self.dir}: trained with other settings ({'; '.join(diff) or 'the selected studies'}); "
                    "resuming would mix two trainings. Use another training.run_name, or start over without "
                    "resuming")
            log.info("%s: an earlier start with other settings committed no checkpoint; its records are replaced",
                     self.dir)
            self.start_over()
        if saved is None or saved.get("run_id") != rid:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.dir / "train-config.json", {"run_id": rid, "settings": settings, **record})
        return rid

    def start_over(self) -> None:
        """Forget the checkpoints, adapters, record and history (``--no-resume``)."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        for name in ("best", "last"):
            shutil.rmtree(self.adapter_dir(name), ignore_errors=True)
        for name in ("train.json", "loss.svg", "train-history.json", "train-config.json"):
            self.output(name).unlink(missing_ok=True)

    # -- checkpoints ---------------------------------------------------------------------------------------------------

    def latest(self) -> tuple[Path, dict] | None:
        """The newest committed checkpoint folder and its commit record (step, epoch, ...), or None."""
        record = read_json(self.checkpoints / "latest.json")
        if not record:
            return None
        folder = self.checkpoints / record["checkpoint"]
        if not folder.is_dir():
            raise RunError(f"{self.checkpoints / 'latest.json'} names {folder}, which is missing; delete "
                           f"{self.checkpoints} to start over")
        return folder, record

    def prepare_resume(self) -> tuple[Path, dict] | None:
        """Before a start: remove checkpoint folders that were never committed (a save cut short), put ``best/``
        back as the committed checkpoint knew it; returns :meth:`latest`."""
        latest = self.latest()
        keep = latest[0].name if latest else None
        if self.checkpoints.is_dir():
            for folder in self.checkpoints.iterdir():
                if folder.is_dir() and folder.name != keep:
                    log.info("%s: removing %s, which was not committed", self.dir, folder.name)
                    shutil.rmtree(folder, ignore_errors=True)
        best = self.adapter_dir("best")
        if latest is None or not (latest[0] / _BEST_COPY[1]).is_file():
            shutil.rmtree(best, ignore_errors=True)
        else:
            best.mkdir(parents=True, exist_ok=True)
            for copy, name in zip(_BEST_COPY, ADAPTER_FILES):
                atomic_write(best / name, (latest[0] / copy).read_bytes())
        return latest

    def commit(self, folder: Path, record: dict[str, Any]) -> None:
        """Commit checkpoint ``folder`` (every process has written its part): keep a copy of ``best/`` in it, make
        it durable, name it in ``latest.json``, then remove the checkpoints before it."""
        folder = Path(folder)
        best = self.adapter_dir("best")
        if all((best / name).is_file() for name in ADAPTER_FILES):
            for copy, name in zip(_BEST_COPY, ADAPTER_FILES):
                atomic_write(folder / copy, (best / name).read_bytes())
        fsync_tree(folder)
        write_json(self.checkpoints / "latest.json", {"checkpoint": folder.name, **record, "committed": _now()})
        for other in self.checkpoints.iterdir():
            if other.is_dir() and other.name != folder.name:
                shutil.rmtree(other, ignore_errors=True)

    # -- outputs -------------------------------------------------------------------------------------------------------

    def write_adapter(self, name: str, config: dict[str, Any], weights: bytes) -> Path:
        """Write adapter folder ``name`` (``best``, ``last``): adapter_config.json, then the safetensors bytes, each
        file atomically. Returns the folder."""
        folder = self.adapter_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / ADAPTER_FILES[0], (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        atomic_write(folder / ADAPTER_FILES[1], weights)
        return folder

    def finished(self, rid: str) -> dict | None:
        """train.json of a run with id ``rid`` that has ended (None otherwise)."""
        record = read_json(self.output("train.json"))
        return record if record and record.get("run_id") == rid else None

    def write_record(self, record: dict[str, Any], figure: str) -> None:
        """The loss curve, then train.json (last: it says the outputs are complete)."""
        atomic_write(self.output("loss.svg"), figure.encode("utf-8"))
        write_json(self.output("train.json"), record)

    # -- history -------------------------------------------------------------------------------------------------------

    def history(self) -> list[dict]:
        return read_json(self.dir / "train-history.json") or []

    def note_start(self, step: int, details: dict[str, Any]) -> list[dict]:
        """Add this start to the history (host, pid, command, the step it resumes at, ``details``)."""
        entries = self.history()
        entries.append({"started": _now(), "finished": None, "host": socket.gethostname(), "pid": os.getpid(),
                        "command": sys.argv, "step_before": step, **details})
        write_json(self.dir / "train-history.json", entries)
        return entries

    def note_end(self, **details: Any) -> list[dict]:
        """Close this start's history entry (its outcome, the step reached, seconds, ...)."""
        entries = self.history()
        if entries:
            entries[-1].update(finished=_now(), **details)
            write_json(self.dir / "train-history.json", entries)
        return entries


__all__ = ["ADAPTER_FILES", "NOT_DEFINING", "TRAINING_DEFINING", "TrainingStore", "run_id"]
