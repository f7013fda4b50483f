"""The retrieval index: the embeddings and reports of one split's studies, built once, resumably, and cached.

An index is a folder ``<retrieval.index_dir>/<first 16 hex digits of its key>/``::

    index.json        what it is: the full key and the fields it was made from, the counts, the encoder; written
                      last, so an index without it is not finished
    embeddings.npy    float32 [N, dim], unit vectors, one row per study that could be read, in selection order
    entries.json      per row: id, study, image_path, report, digest (of the grey pixels), subject (patient or "")
    batch-<first>-<last>.npz   while it is being built: one committed batch of studies (their selection
                      positions, embeddings, image digests and read errors)
    build.lock        held by the process building it (another one waits for it, then uses its index)

**Key.** A sha256 of: the encoder (its Hub commit or the digest of its weight files, model type, pooling rule, the
dtype it computes in, its image processor's class and settings), the dataset the index is read from (``data:`` with
``data.split`` replaced by ``retrieval.split``: format, folder or manifest, views, reference section, columns), the
sha256 of the data tables that decide the selection (:func:`cxrgen.provenance.data_files`: the split files, the
reports and projections tables, the manifest) and the image limits of ``loader:``. A change to any of them is
another key, hence another folder: the index is built again and the old one is left alone. Report text files that
sit in folders (MIMIC-CXR's ``files/``) are not hashed; their sectioned CSV is.

**Crash safety**, with the run store's primitives: a batch of studies is encoded and written as one file through
:func:`cxrgen.runstore.atomic_write` (temporary file, fsync, rename), which is its commit. A build killed at any
moment loses at most the batch in flight; the next build reads the committed batches and encodes only the studies
they do not hold, in the same fixed batches (positions ``j*B .. (j+1)*B - 1``, B = ``generation.batch_size``), so
the finished index equals that of an uninterrupted build. The finished files are written the same way, index.json
last, and only then are the batch files removed. One process builds an index at a time
(:class:`cxrgen.runstore.FileLock`, stale locks of dead builders taken over).

Studies of the split without the chosen reference section are left out by the dataset's own selection and counted
(``skipped_empty_reference``); studies whose image cannot be read are left out, counted (``unreadable``) and logged.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from ...datasets import DatasetError, MissingSplitError, Study, describe_counts, load_studies
from ...loader import PrepareStudy, prepared_studies, worker_count
from ...provenance import data_files
from ...runstore import FileLock, LockHeldError, atomic_write, read_json, write_json
from ..base import ModelError

log = logging.getLogger("cxrgen")

KEY_VERSION = 1
WAIT_SECONDS = 10.0  # between looks at another process's build lock
_LOG_EVERY = 60.0  # seconds between progress lines while building


class BuildInterrupted(Exception):
    """The build was asked to stop (a signal); the batches committed so far are kept."""


@dataclass
class Index:
    """A finished index, in memory: ``embeddings`` [N, dim] float32 and one entry per row."""

    folder: Path
    info: dict
    embeddings: np.ndarray
    entries: list[dict]

    def __post_init__(self):
        self.by: dict[str, dict[str, list[int]]] = {"id": {}, "image": {}, "patient": {}}
        for position, entry in enumerate(self.entries):
            for rule, value in (("id", entry["study"]), ("image", entry["digest"]), ("patient", entry["subject"])):
                if value:
                    self.by[rule].setdefault(value, []).append(position)

    def leaks(self, study_id: str, digest: str, subject: str) -> tuple[list[int], tuple[str, ...]]:
        """The positions a study must not be given (same study id, same image content, same patient) and the rules
        that found any."""
        positions: set[int] = set()
        rules = []
        for rule, value in (("id", study_id), ("image", digest), ("patient", subject)):
            found = self.by[rule].get(value, []) if value else []
            if found:
                rules.append(rule)
                positions.update(found)
        return sorted(positions), tuple(rules)


def index_data(cfg):
    """The data settings the index is read from: the run's, with ``retrieval.split`` as the split."""
    return replace(cfg.data, split=cfg.retrieval.split)


def index_key(cfg, encoder_fields: dict) -> tuple[str, dict]:
    """(key, the fields it digests): see the module docstring."""
    data = index_data(cfg)
    fields = {
        "version": KEY_VERSION,
        "encoder": encoder_fields,
        "data": {**{k: v for k, v in vars(data).items()},
                 "root": _absolute(data.root), "manifest": _absolute(data.manifest)},
        "data_files": [{"path": f["path"], "sha256": f["sha256"]} for f in data_files(data)],
        "loader": {"max_pixels": cfg.loader.max_pixels, "percentile_window": cfg.loader.percentile_window},
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return key, fields


def _absolute(path: str | None) -> str | None:
    return None if not path else str(Path(path).expanduser().resolve())


def index_folder(cfg, key: str) -> Path:
    return Path(cfg.retrieval.index_dir).expanduser() / key[:16]


def open_index(cfg, encoder, stop: Callable[[], bool] | None = None) -> Index:
    """The index of ``cfg`` for ``encoder``: read when finished, else built (resuming what is committed). ``stop``
    is asked after each batch; when it says so the build raises :class:`BuildInterrupted`."""
    key, fields = index_key(cfg, encoder.fields)
    folder = index_folder(cfg, key)
    index = _read(folder, key)
    if index is not None:
        return index
    folder.mkdir(parents=True, exist_ok=True)
    lock = _wait_for_lock(folder)
    try:
        index = _read(folder, key)  # finished by another process while this one waited
        if index is None:
            index = _build(cfg, encoder, folder, key, fields, stop, lock)
    finally:
        lock.release()
    return index


def _wait_for_lock(folder: Path) -> FileLock:
    lock = FileLock(folder / "build.lock", f"the retrieval index {folder}")
    said = False
    while True:
        try:
            return lock.acquire()
        except LockHeldError as e:
            if not said:
                log.info("%s; waiting for that build to finish", e)
                said = True
            time.sleep(WAIT_SECONDS)


def _read(folder: Path, key: str) -> Index | None:
    """The finished index in ``folder`` (None when it is not finished or holds another key)."""
    info = read_json(folder / "index.json")
    if info is None or info.get("key") != key:
        return None
    embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
    entries = json.loads((folder / "entries.json").read_text(encoding="utf-8"))
    if embeddings.shape != (info["count"], info["dim"]) or len(entries) != info["count"]:
        raise ModelError(f"{folder}: embeddings.npy or entries.json do not match index.json (damaged); delete the "
                         "folder to build the index again")
    for leftover in folder.glob("batch-*.npz"):  # a build killed after finishing, before its clean-up
        leftover.unlink(missing_ok=True)
    return Index(folder, info, embeddings, entries)


def select_index_studies(cfg) -> tuple[list[Study], dict]:
    """The studies of ``retrieval.split`` and the dataset's counts; a DatasetError names ``retrieval.split``."""
    data = index_data(cfg)
    try:
        selection = load_studies(data)
    except MissingSplitError as e:
        raise MissingSplitError(f"retrieval.split={data.split} (the index): {e}", e.path, e.root, e.reports) from None
    except DatasetError as e:
        raise DatasetError(f"retrieval.split={data.split} (the index): {e}") from None
    return selection.studies, selection.counts


def _committed(folder: Path) -> dict[int, dict]:
    """Position -> (embedding or None, digest, error) of every committed batch file."""
    out: dict[int, dict] = {}
    for path in sorted(folder.glob("batch-*.npz")):
        with np.load(path, allow_pickle=False) as batch:
            embeddings = iter(batch["embeddings"])
            for position, ok, digest, error in zip(batch["positions"], batch["ok"], batch["digests"],
                                                   batch["errors"]):
                out[int(position)] = {"embedding": next(embeddings) if ok else None, "digest": str(digest),
                                      "error": str(error)}
    return out


def _build(cfg, encoder, folder: Path, key: str, fields: dict, stop, lock: FileLock) -> Index:
    for leftover in folder.glob(".*.tmp-*"):  # temporary files of a killed writer (this process holds the lock)
        leftover.unlink(missing_ok=True)
    studies, counts = select_index_studies(cfg)
    done = _committed(folder)
    todo = [i for i in range(len(studies)) if i not in done]
    size = cfg.generation.batch_size
    log.info("retrieval index %s (split %s, %s): %d studies, %d already encoded, %d to go", folder,
             cfg.retrieval.split, cfg.data.reference, len(studies), len(done), len(todo))
    prepare = PrepareStudy.for_loader(encoder.image_preparer(), cfg.loader)
    workers = worker_count(cfg.loader.num_workers, len(todo))
    prepared = prepared_studies([studies[i] for i in todo], prepare, workers, cfg.loader.prefetch_batches * size)
    groups: dict[int, list[int]] = {}
    for position in todo:  # fixed batches: a resumed build encodes what an uninterrupted one would have
        groups.setdefault(position // size, []).append(position)
    started = last_said = time.monotonic()
    encoded = 0
    for positions in groups.values():
        batch = [next(prepared) for _ in positions]
        lock.verify()
        _commit_batch(folder, positions, batch, encoder)
        encoded += len(positions)
        if time.monotonic() - last_said > _LOG_EVERY:
            last_said = time.monotonic()
            log.info("retrieval index: %d of %d studies encoded (%.1f images/s)", len(done) + encoded,
                     len(studies), encoded / (last_said - started))
        if stop is not None and stop() and encoded < len(todo):
            raise BuildInterrupted(f"{folder}: stopped after committing {len(done) + encoded} of {len(studies)} "
                                   "studies; run the same command to resume")
    return _finish(folder, key, fields, studies, counts, encoder, lock, cfg.retrieval.split)


def _commit_batch(folder: Path, positions: list[int], batch: list, encoder) -> None:
    ok = [not error for _, _, error in batch]
    pixels = [inputs["pixel_values"] for _, inputs, error in batch if not error]
    vectors = encoder.embed(np.concatenate(pixels)).cpu().numpy() if pixels else np.zeros((0, encoder.dim),
                                                                                           np.float32)
    digests = [inputs["digest"] if not error else "" for _, inputs, error in batch]
    errors = [error for _, _, error in batch]
    for (study, _, error) in batch:
        if error:
            log.warning("retrieval index: %s left out: %s", study.id, error)
    buffer = io.BytesIO()
    np.savez(buffer, positions=np.array(positions, dtype=np.int64), ok=np.array(ok, dtype=bool),
             embeddings=vectors.astype(np.float32), digests=np.array(digests, dtype=str),
             errors=np.array(errors, dtype=str))
    atomic_write(folder / f"batch-{positions[0]:09d}-{positions[-1]:09d}.npz", buffer.getvalue())


def _finish(folder: Path, key: str, fields: dict, studies: list[Study], counts: dict, encoder,
            lock: FileLock, split: str) -> Index:
    done = _committed(folder)
    rows = [i for i in range(len(studies)) if done[i]["embedding"] is not None]
    embeddings = np.stack([done[i]["embedding"] for i in rows]) if rows else np.zeros((0, encoder.dim), np.float32)
    entries = [{"id": studies[i].id, "study": str(studies[i].metadata.get("study_id", studies[i].id)),
                "image_path": studies[i].image_paths[0], "report": studies[i].reference,
                "digest": done[i]["digest"], "subject": str(studies[i].metadata.get("subject_id") or "")}
               for i in rows]
    if not entries:
        raise ModelError(f"retrieval.split={split}: none of the {len(studies)} studies' images "
                         f"could be read, so the index {folder} would be empty")
    unreadable = len(studies) - len(rows)
    buffer = io.BytesIO()
    np.save(buffer, embeddings.astype(np.float32), allow_pickle=False)
    lock.verify()
    atomic_write(folder / "embeddings.npy", buffer.getvalue())
    atomic_write(folder / "entries.json", json.dumps(entries, ensure_ascii=False).encode("utf-8"))
    info = {"key": key, "fields": fields, "count": len(entries), "dim": int(embeddings.shape[1]),
            "counts": {**counts, "unreadable": unreadable, "indexed": len(entries)},
            "encoder": encoder.describe(), "built": datetime.now(timezone.utc).isoformat()}
    write_json(folder / "index.json", info)  # last: the index is finished
    for path in folder.glob("batch-*.npz"):
        path.unlink(missing_ok=True)
    log.info("retrieval index %s: %d studies indexed (%s)", folder, len(entries), describe_counts(info["counts"]))
    return Index(folder, info, embeddings, entries)
