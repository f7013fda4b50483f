"""The run directory as one object: its settings, selection, parts, shard records, locks and finished outputs.

:class:`RunStore` is the only code that knows where a run keeps what. The runner asks it to start a shard
(:meth:`RunStore.begin`, :meth:`RunStore.open_shard`) and appends rows through the :class:`ShardWriter` it gets
back; the finishing step asks it for the merged rows (:meth:`RunStore.merged_rows`) and writes the outputs into
it; ``evaluate.py`` reads a part through :func:`read_part`.

The run id is a digest of the settings that decide the reports (:data:`RUN_DEFINING`, with the model's identity laid
over them: resolved backend, checkpoint commit or digest, adapter digest, resolved dtype and device kind), the number
of shards, the ``--limit`` and the selected ids. Parts and shard records of another run id (an earlier run in the
same folder, e.g. before ``--no-resume``) are never resumed from nor merged. A run folder whose earlier start
committed no row at all may be started again with other settings: there is nothing to protect.

A shard record (``parts/shard-<i>-of-<n>.json``) keeps what its rows were made with — the model's description and
the rendered prompt of the last start that loaded the model — and a ``history`` with one entry per start (started,
finished, host, pid, command, rows committed before and after, the device, threads and package versions when a
model was loaded, and any failure): a later start adds to it, never replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import Config
from .files import RunError, atomic_write, read_json, remove_temporaries, write_json
from .lock import FileLock, LockHeldError
from .parts import PART_NAME, PartFile, is_part
from .rows import COL, ResultRow

log = logging.getLogger("cxrgen")

#: Settings that change the reports: a resumed or merged run must have the same values. A section name stands for
#: every key of that section.
RUN_DEFINING = ["model.backend", "model.name_or_path", "model.revision", "model.dtype", "model.adapter",
                "model.quantization", "model.trust_remote_code", "prompt.system", "prompt.user",
                "generation.max_new_tokens", "generation.temperature", "generation.top_p", "generation.seed",
                "generation.batch_invariant", "data", "loader.max_pixels", "loader.percentile_window"]
#: The finished outputs, in the order the finishing step writes them (run.json last: it says the others are done).
OUTPUTS = ("reports.csv", "metrics.json", "report.html", "run.json")


class SettingsChangedError(RunError):
    """A run folder with committed rows of other settings: resuming would mix reports."""


def defining(cfg: Config, identity: dict | None = None, keys: list[str] = RUN_DEFINING) -> dict[str, Any]:
    """The run-defining settings (``keys``; a fine-tuning run has its own) as dotted keys, with the model's
    identity laid over them."""
    d = cfg.to_dict()
    out: dict[str, Any] = {}
    for key in keys:
        section, _, name = key.partition(".")
        names = [name] if name else list(d[section])
        for n in names:
            out[f"{section}.{n}"] = d[section][n]
    out.update({k: v for k, v in (identity or {}).items() if v is not None})
    return out


@dataclass(frozen=True)
class RunPlan:
    """What a shard is started with: the settings, the shard, and what they select. ``identity``: what decides the
    reports beyond the settings (:func:`cxrgen.models.identity`); ``dataset_counts`` and ``data_files``: what the
    selection was made from, for run.json."""

    config: Config
    shard: tuple[int, int]
    limit: int | None
    ids: list[str]
    identity: dict = field(default_factory=dict)
    dataset_counts: dict = field(default_factory=dict)
    data_files: list = field(default_factory=list)

    @property
    def run_id(self) -> str:
        """A digest of what decides the reports: settings, model identity, number of shards, limit, selected ids."""
        digest = hashlib.sha256(json.dumps({"settings": defining(self.config, self.identity), "shards": self.shard[1],
                                            "limit": self.limit}, sort_keys=True, default=str).encode())
        for study_id in self.ids:
            digest.update(study_id.encode("utf-8") + b"\0")
        return digest.hexdigest()[:16]


@dataclass
class Merged:
    """Every selected study's row, in selection order, with what the merge read: the shard records, the saved run
    settings, and ``state`` (the run id and each part's committed length) to tell whether outputs are current."""

    rows: pd.DataFrame
    records: list[dict]
    saved: dict
    state: dict


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class RunStore:
    """A run folder ``<output.dir>/<output.run_name>/`` (see :mod:`cxrgen.runstore`)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.parts = self.dir / "parts"

    # -- layout ----------------------------------------------------------------------------------------------------

    def part_path(self, shard: tuple[int, int]) -> Path:
        return self.parts / f"shard-{shard[0]}-of-{shard[1]}.csv"

    def _record_path(self, shard: tuple[int, int]) -> Path:
        return self.part_path(shard).with_suffix(".json")

    def output(self, name: str) -> Path:
        """The path of a finished output (one of :data:`OUTPUTS`)."""
        return self.dir / name

    # -- settings and selection ------------------------------------------------------------------------------------

    def saved(self) -> dict | None:
        """``parts/run-config.json``: run id, settings, model identity, limit, shards; None before the first start."""
        return read_json(self.parts / "run-config.json")

    def _saved_or_fail(self) -> dict:
        saved = self.saved()
        if saved is None:
            raise RunError(f"{self.dir}: not a run directory (no parts/run-config.json)")
        return saved

    def saved_config(self) -> Config:
        """The settings the run was started with."""
        return Config.from_dict(self._saved_or_fail()["config"], f"{self.parts / 'run-config.json'}")

    def changed_settings(self, cfg: Config) -> list[str]:
        """The run-defining settings of ``cfg`` whose values differ from the run's, as ``key (now X, run made with
        Y)``."""
        before, now = defining(self.saved_config()), defining(cfg)
        return [f"{k} ({now[k]!r} now, {before.get(k)!r} in the run)" for k in now if before.get(k) != now[k]]

    def selection(self) -> list[str]:
        """The selected study ids in dataset order."""
        return read_json(self.parts / "selection.json") or []

    def begin(self, plan: RunPlan, resume: bool) -> str:
        """Record the run's settings and selection on its first start; refuse to resume under different ones.
        Returns the run id."""
        run_id = plan.run_id
        saved = self.saved() if resume else None
        if saved is not None:
            if saved.get("run_id") == run_id:
                return run_id
            if self._has_rows(saved.get("run_id", ""), int(saved.get("shards") or 0)):
                before = defining(Config.from_dict(saved["config"]), saved.get("model_identity"))
                diff = [k for k, v in defining(plan.config, plan.identity).items() if before.get(k) != v]
                if saved.get("shards") != plan.shard[1]:
                    diff.append(f"number of shards ({saved.get('shards')} before)")
                if saved.get("limit") != plan.limit:
                    diff.append(f"the limit on the number of studies ({saved.get('limit')} before)")
                if not diff:
                    diff.append("the selected studies")
                raise SettingsChangedError(
                    f"{self.dir}: started with other settings ({', '.join(diff)}); resuming would mix reports. "
                    "Use another output.run_name, or start this run over without resuming")
            log.info("%s: an earlier start with other settings committed no row; its records are replaced", self.dir)
        atomic_write(self.parts / "selection.json", json.dumps(plan.ids).encode())
        write_json(self.parts / "run-config.json", {
            "run_id": run_id, "model_identity": plan.identity, "config": plan.config.to_dict(), "limit": plan.limit,
            "shards": plan.shard[1], "dataset_counts": plan.dataset_counts, "data_files": plan.data_files})
        return run_id

    def _has_rows(self, run_id: str, shards: int) -> bool:
        return any(PartFile(self.part_path((i, shards)), run_id).committed_length() > 0 for i in range(shards))

    # -- shards ----------------------------------------------------------------------------------------------------

    def shard_lock(self, shard: tuple[int, int]) -> FileLock:
        """The lock a process holds while it works on ``shard`` (use as a context manager)."""
        self.parts.mkdir(parents=True, exist_ok=True)
        return FileLock(self.part_path(shard).with_suffix(".lock"), f"{self.dir} shard {shard[0]}/{shard[1]}")

    def start_over(self, shard: tuple[int, int]) -> None:
        """Forget a shard's rows and record, and the run's finished outputs (``--no-resume``)."""
        PartFile(self.part_path(shard)).remove()
        self._record_path(shard).unlink(missing_ok=True)
        for name in OUTPUTS:
            self.output(name).unlink(missing_ok=True)

    def record(self, shard: tuple[int, int]) -> dict | None:
        """What shard ``shard`` ran on and its history (module docstring); None before it started."""
        return read_json(self._record_path(shard))

    def open_shard(self, plan: RunPlan, lock: FileLock) -> "ShardWriter":
        """After :meth:`begin`: the shard's part cut back to its committed rows, and a new entry in its history.
        ``lock``: the shard's lock, which the caller holds."""
        lock.verify()
        run_id = plan.run_id
        for path in (self._record_path(plan.shard), self.part_path(plan.shard).with_suffix(".committed")):
            remove_temporaries(path)
        part = PartFile(self.part_path(plan.shard), run_id)
        part.recover()
        record = self.record(plan.shard)
        if not record or record.get("run_id") != run_id:
            record = {"run_id": run_id, "shard": f"{plan.shard[0]}/{plan.shard[1]}", "complete": False,
                      "model": None, "prompt": None, "history": []}
        record["studies"] = len(plan.ids[plan.shard[0]::plan.shard[1]])
        record.setdefault("history", []).append({
            "started": _now(), "finished": None, "host": socket.gethostname(), "pid": os.getpid(),
            "command": sys.argv, "committed_before": len(part.read())})
        writer = ShardWriter(self._record_path(plan.shard), part, lock, record)
        writer.save()
        return writer

    def complete(self, run_id: str, shards: int) -> bool:
        """Whether every shard of run ``run_id`` has ended with all its studies committed."""
        records = [self.record((i, shards)) for i in range(shards)]
        return all(r and r.get("run_id") == run_id and r.get("complete") for r in records)

    # -- the merge -------------------------------------------------------------------------------------------------

    def merge_lock(self) -> FileLock:
        """The run-wide lock of the finishing step: one process merges at a time."""
        self.parts.mkdir(parents=True, exist_ok=True)
        return FileLock(self.parts / "merge.lock", f"{self.dir} merge")

    def merged_rows(self) -> Merged:
        """Every selected study's committed row, in selection order. Raises :class:`RunError` when a shard has not
        run, a study has no row or more than one, or a row is not in the selection."""
        saved = self._saved_or_fail()
        run_id, n = saved["run_id"], saved["shards"]
        expected = self.selection()
        frames, records, lengths = [], [], {}
        for i in range(n):
            part = PartFile(self.part_path((i, n)), run_id)
            record = self.record((i, n))
            if not part.path.exists() or record is None or record.get("run_id") != run_id:
                raise RunError(f"{part.path}: missing or from an earlier run; shard {i}/{n} has not run")
            data = part.snapshot()
            frames.append(part.parse(data))
            records.append(record)
            lengths[part.path.name] = len(data)
        rows = pd.concat(frames, ignore_index=True)
        ids = rows[COL.id]
        duplicated = sorted(set(ids[ids.duplicated()]))
        if duplicated:
            raise RunError(f"{self.dir}: ids present more than once across the parts: {', '.join(duplicated[:10])}")
        present = set(ids)
        missing = [i for i in expected if i not in present]
        if missing:
            raise RunError(f"{self.dir}: {len(missing)} studies have no row yet (e.g. {', '.join(missing[:5])}); "
                           "run the unfinished shards first")
        extra = sorted(present - set(expected))
        if extra:
            raise RunError(f"{self.dir}: rows for ids that are not in the selection: {', '.join(extra[:10])}")
        order = {sid: k for k, sid in enumerate(expected)}
        rows = rows.iloc[np.argsort(ids.map(order).to_numpy(), kind="stable")].reset_index(drop=True)
        return Merged(rows, records, saved, {"run_id": run_id, "parts": lengths})

    def finished(self) -> dict | None:
        """``run.json``: what the last finishing step wrote (None before)."""
        return read_json(self.output("run.json"))

    def clean_outputs(self) -> None:
        """Remove the temporary files a killed finishing step left (the caller holds the merge lock)."""
        for name in OUTPUTS:
            remove_temporaries(self.output(name))


class ShardWriter:
    """The part and record of one shard, written by the process that holds the shard's lock.

    Every append first checks that the lock is still this process's (:meth:`FileLock.verify`)."""

    def __init__(self, record_path: Path, part: PartFile, lock: FileLock, record: dict):
        self.record_path, self.part, self.lock, self.record = record_path, part, lock, record

    @property
    def entry(self) -> dict:
        return self.record["history"][-1]

    def save(self) -> None:
        write_json(self.record_path, self.record)

    def committed(self) -> pd.DataFrame:
        return self.part.read()

    def append(self, rows: list[ResultRow]) -> int:
        self.lock.verify()
        return self.part.append(rows)

    def note_model(self, description: dict, prompt: str, **details: Any) -> None:
        """The model this start loaded (what the shard's rows are made with from now on) and how it ran."""
        self.record.update(model=description, prompt=prompt)
        self.entry.update(device=description.get("gpu") or description.get("device"), **details)

    def end(self, shard_ids: list[str], failure: BaseException | None) -> dict:
        """Close this start's history entry and record the shard's state (``complete``: every one of ``shard_ids``
        committed once and no ``failure``; ``committed``, ``ok``, ``error``: row counts); returns the record."""
        done = self.part.read()
        counts = {"ok": int((done[COL.status] == "ok").sum()), "error": int((done[COL.status] == "error").sum())}
        complete = set(done[COL.id]) == set(shard_ids) and len(done) == len(shard_ids) and failure is None
        self.record.update(complete=complete, committed=len(done), failure=None, **counts)
        self.entry.update(finished=_now(), committed=len(done))
        if failure is not None:
            self.record["failure"] = self.entry["failure"] = f"{type(failure).__name__}: {failure}"
        self.save()
        return self.record


def read_part(path: Path) -> bytes:
    """The committed bytes of a shard part, read consistently (b"" when nothing is committed). A part inside a run
    folder whose marker names another run than the folder's is an error: it is left from an earlier run."""
    path = Path(path)
    marker = PartFile(path).marker()
    if marker is None:
        return b""
    if path.parent.name == "parts" and marker[0] is not None:
        saved = RunStore(path.parent.parent).saved()
        if saved and saved.get("run_id") not in (None, marker[0]):
            raise RunError(f"{path}: written by run {marker[0]}, but its run folder is now run {saved.get('run_id')}: "
                           "a part left from an earlier run, not part of this one")
    return PartFile(path, marker[0]).snapshot()


__all__ = ["LockHeldError", "Merged", "OUTPUTS", "PART_NAME", "RUN_DEFINING", "RunPlan", "RunStore",
           "SettingsChangedError", "ShardWriter", "defining", "is_part", "read_part"]
