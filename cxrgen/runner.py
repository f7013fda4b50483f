"""The report-generation run: studies in, one report per study out, resumable and shardable.

A run writes into ``<output.dir>/<output.run_name>/``::

    parts/shard-<i>-of-<n>.csv        rows of shard i, appended after every batch
    parts/shard-<i>-of-<n>.committed  run id and byte length of the part that is complete (see cxrgen.parts)
    parts/shard-<i>-of-<n>.json       what shard i ran on (device, versions, times, counts, run id)
    parts/run-config.json             the settings that decide the reports and the run id derived from them
    parts/selection.json              the selected study ids in dataset order (what the merge checks against)
    reports.csv                       all rows in dataset order, written atomically once every shard is done
    metrics.json, run.json, report.html

Crash safety: a batch's rows are written in one append, flushed and fsync'ed, and only then is the committed length
advanced (write to a temporary file, fsync, rename). A process killed at any moment therefore leaves a part whose
committed prefix holds whole rows only; on resume the part is cut back to that length, the ids in it are skipped
and the rest is generated again. At most the batch in flight is lost and no row is ever duplicated or torn.

The run id is a digest of the settings that decide the reports, the number of shards and the selected ids. Parts
and shard records of another run id (an earlier run in the same folder, e.g. before ``--no-resume``) are never
resumed from nor merged.

SIGTERM and SIGUSR1 (what Slurm sends before preemption or the time limit) finish the batch in flight, commit it and
exit with EXIT_INTERRUPTED, so that a requeued job resumes where it stopped. Image-decoding workers ignore them,
so a signal to the whole process group does not break the batch in flight.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .config import Config
from .datasets import Selection, Study, load_studies
from .parts import atomic_write, read_marker, write_marker

log = logging.getLogger("cxrgen")

EXIT_OK = 0
EXIT_ROW_ERRORS = 3  # the run finished but some studies have status=error (1 is Python's own crash code)
EXIT_USAGE = 2  # bad configuration or input: nothing was generated
EXIT_INTERRUPTED = 75  # stopped by SIGTERM/SIGUSR1 after committing its work; run again to resume

COLUMNS = ["id", "image_path", "reference", "generated_report", "status", "error", "n_new_tokens",
           "stopped_at_eos", "seconds"]

#: Settings that change the reports: a resumed or merged run must have the same values.
RUN_DEFINING = ["model.name_or_path", "model.revision", "model.dtype", "prompt.system", "prompt.user",
                "generation.max_new_tokens", "generation.temperature", "generation.top_p", "generation.seed",
                "data", "loader.max_pixels", "loader.percentile_window"]


class RunError(RuntimeError):
    """A run that cannot start or be merged; the message names the file or setting."""


# -- shards ------------------------------------------------------------------------------------------------------

def parse_shard(text: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``i/n`` from ``--shard``, else from Slurm's array or task variables, else 0/1."""
    env = os.environ if env is None else env
    if text:
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise RunError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
        source = "--shard"
    elif env.get("SLURM_ARRAY_TASK_COUNT") and env.get("SLURM_ARRAY_TASK_ID"):
        offset = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        i, n = int(env["SLURM_ARRAY_TASK_ID"]) - offset, int(env["SLURM_ARRAY_TASK_COUNT"])
        source = "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"
    elif env.get("SLURM_NTASKS") and env.get("SLURM_PROCID") and int(env["SLURM_NTASKS"]) > 1:
        i, n = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        source = "SLURM_PROCID/SLURM_NTASKS"
    else:
        return 0, 1
    if not 0 <= i < n:
        raise RunError(f"{source}: shard {i}/{n} is out of range (need 0 <= i < n)")
    return i, n


def shard_studies(studies: list[Study], shard: tuple[int, int]) -> list[Study]:
    """Deterministic split: shard i takes studies i, i+n, i+2n, ... of the selection's order."""
    i, n = shard
    return studies[i::n]


def part_name(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]}-of-{shard[1]}"


# -- the crash-safe part file ------------------------------------------------------------------------------------

def rows_to_csv(rows: list[dict], header: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


class PartFile:
    """An append-only CSV of finished rows, crash-safe through its commit marker (see cxrgen.parts)."""

    def __init__(self, path: Path, run_id: str | None = None):
        self.path = path
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
        """Cut anything beyond the committed length: a batch being written when the process died, or the rows of
        an earlier run with other settings."""
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

    def append(self, rows: list[dict]) -> None:
        length = self.committed_length()
        data = rows_to_csv(rows, header=length == 0)
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        write_marker(self.path, self.run_id or "", length + len(data))


def read_reports_csv(source, name: str) -> pd.DataFrame:
    """A reports CSV as written here, with text columns as strings ('' for empty) and typed numbers."""
    frame = pd.read_csv(source, dtype={"id": str, "image_path": str, "reference": str, "generated_report": str,
                                        "status": str, "error": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise RunError(f"{name}: missing columns {', '.join(missing)}")
    return frame


# -- images in background workers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Prepare:
    """Picklable per-study work for DataLoader workers: read the image, preprocess it (numpy only)."""

    image_size: int
    mean: float
    std: float
    max_pixels: int
    percentile_window: tuple[float, float] | None

    def __call__(self, study: Study) -> tuple[Study, np.ndarray | None, str]:
        from .imaging import ImageReadError, read_image
        from .models.cxr_llava.preprocess import preprocess_image

        try:
            image = read_image(study.image_paths[0], max_pixels=self.max_pixels,
                               percentile_window=self.percentile_window)
            return study, preprocess_image(image, self.image_size, self.mean, self.std), ""
        except ImageReadError as e:
            return study, None, str(e)
        except Exception as e:  # a decoder bug must cost one row, not the run
            return study, None, f"{study.image_paths[0]}: {type(e).__name__}: {e}"


class _StudyDataset:
    def __init__(self, studies: list[Study], prepare: _Prepare):
        self.studies, self.prepare = studies, prepare

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int):
        return self.prepare(self.studies[index])


@dataclass
class Batch:
    studies: list[Study]
    errors: list[str]  # '' where the image was read
    pixels: Any  # torch tensor [n_ok, 1, S, S] of the studies without error, in order

    def pin_memory(self):  # called by the DataLoader's pinning thread when pin_memory=True
        self.pixels = self.pixels.pin_memory()
        return self


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1 to the main process, which finishes its batch and stops them."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def _collate(items) -> Batch:
    import torch

    arrays = [px for _, px, err in items if px is not None]
    pixels = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0)
    return Batch([s for s, _, _ in items], [err for _, _, err in items], pixels)


def iterate_batches(studies: list[Study], prepare: _Prepare, batch_size: int, num_workers: int,
                    prefetch: int, pin_memory: bool):
    """Batches in order, images read and preprocessed ``prefetch`` batches ahead by worker processes."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_StudyDataset(studies, prepare), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, pin_memory=pin_memory,
                        prefetch_factor=prefetch if num_workers > 0 else None,
                        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None, persistent_workers=False)
    yield from loader


# -- the run -----------------------------------------------------------------------------------------------------

class _StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop finishes the batch in flight, commits it and stops."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is None:
            log.warning("received %s: finishing the batch in flight, then stopping (run again to resume)",
                        signal.Signals(signum).name)
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _defining(cfg: Config) -> dict:
    d = cfg.to_dict()
    out = {}
    for key in RUN_DEFINING:
        section, _, name = key.partition(".")
        out[key] = d[section][name] if name else d[section]
    return out


def run_id_of(cfg: Config, shards: int, limit: int | None, ids: list[str]) -> str:
    """A digest of what decides the reports: settings, number of shards, --limit and the selected ids."""
    digest = hashlib.sha256(json.dumps({"settings": _defining(cfg), "shards": shards, "limit": limit},
                                       sort_keys=True, default=str).encode())
    for study_id in ids:
        digest.update(study_id.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def _start_run(run_dir: Path, cfg: Config, shard: tuple[int, int], resume: bool, limit: int | None,
               selection: Selection) -> str:
    """Record the run's settings and selection on first start; refuse to resume under different ones."""
    ids = [s.id for s in selection.studies]
    run_id = run_id_of(cfg, shard[1], limit, ids)
    path = run_dir / "parts" / "run-config.json"
    if path.exists() and resume:
        saved = json.loads(path.read_text())
        if saved.get("run_id") != run_id:
            saved_cfg = Config.from_dict(saved["config"])
            diff = [k for k, v in _defining(cfg).items() if _defining(saved_cfg).get(k) != v]
            if saved.get("shards") != shard[1]:
                diff.append(f"number of shards ({saved.get('shards')} before)")
            if saved.get("limit") != limit:
                diff.append(f"--limit ({saved.get('limit')} before)")
            if not diff:
                diff.append("the selected studies")
            raise RunError(
                f"{run_dir}: started with other settings ({', '.join(diff)}); resuming would mix reports. "
                "Use another output.run_name, or --no-resume to start this run over"
            )
        return run_id
    atomic_write(run_dir / "parts" / "selection.json", json.dumps(ids).encode())
    atomic_write(path, json.dumps({"run_id": run_id, "config": cfg.to_dict(), "limit": limit, "shards": shard[1],
                                   "dataset_counts": selection.counts}, indent=2).encode())
    return run_id


def select_studies(cfg: Config, limit: int | None = None) -> Selection:
    selection = load_studies(cfg.data)
    if limit is not None:
        selection = Selection(studies=selection.studies[:limit], counts={**selection.counts, "limit": limit})
    return selection


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"cxrgen": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": str(torch.version.cuda)}


def load_model(cfg: Config):
    from .models.cxr_llava import CheckpointError, CxrLlava
    from .models.cxr_llava.tiny import ensure_tiny_checkpoint

    if cfg.model.build_tiny_if_missing and not Path(cfg.model.name_or_path).exists():
        log.info("building a tiny random checkpoint at %s (reports will be noise)", cfg.model.name_or_path)
        ensure_tiny_checkpoint(cfg.model.name_or_path)
    try:
        return CxrLlava.from_pretrained(cfg.model.name_or_path, revision=cfg.model.revision,
                                        device=cfg.model.device, dtype=cfg.model.dtype,
                                        allow_download=cfg.model.allow_download)
    except CheckpointError:
        raise
    except ValueError as e:  # e.g. model.device: cuda on a machine without CUDA
        raise RunError(f"model {cfg.model.name_or_path} on device {cfg.model.device}: {e}") from None


def _shard_record(run_dir: Path, shard: tuple[int, int]) -> dict | None:
    path = run_dir / "parts" / f"{part_name(shard)}.json"
    return json.loads(path.read_text()) if path.exists() else None


def generate(cfg: Config, *, shard: tuple[int, int] = (0, 1), resume: bool = True, limit: int | None = None,
             model=None, progress: bool = True) -> int:
    """Run (or resume) shard ``shard`` of the configured run; merge when every shard is done. Returns an exit code."""
    with _StopFlag() as stop:  # from the start: a signal during a long model load must not kill the process
        return _generate(cfg, shard, resume, limit, model, progress, stop)


def _generate(cfg, shard, resume, limit, model, progress, stop: "_StopFlag") -> int:
    started = datetime.now(timezone.utc)
    run_dir = cfg.run_dir
    selection = select_studies(cfg, limit)
    studies = shard_studies(selection.studies, shard)
    (run_dir / "parts").mkdir(parents=True, exist_ok=True)
    run_id = _start_run(run_dir, cfg, shard, resume, limit, selection)
    part = PartFile(run_dir / "parts" / f"{part_name(shard)}.csv", run_id)
    if not resume:
        part.path.unlink(missing_ok=True)
        (run_dir / "parts" / f"{part_name(shard)}.json").unlink(missing_ok=True)
        for name in ("reports.csv", "metrics.json", "run.json", "report.html"):
            (run_dir / name).unlink(missing_ok=True)
    part.recover()
    done = part.read()
    done_ids = set(done["id"])
    todo = [s for s in studies if s.id not in done_ids]
    log.info("run %s (id %s), shard %d/%d: %d studies selected (%s); %d in this shard, %d already done, %d to go",
             run_dir, run_id, shard[0], shard[1], len(selection.studies), _counts_text(selection.counts),
             len(studies), len(studies) - len(todo), len(todo))

    interrupted = False
    device_info: dict[str, Any] = {}
    if todo:
        if model is None:
            model = load_model(cfg)
        device_info = {**_device_info(model), "model_source": model.source, "model_revision": model.revision}
        log.info("model %s (revision %s) on %s in %s", model.source, model.revision or "local",
                 device_info.get("gpu") or model.device, str(model.dtype).replace("torch.", ""))
        prompt = model.prompt_ids(**{k: v for k, v in (("system", cfg.prompt.system), ("user", cfg.prompt.user))
                                     if v is not None})
        mcfg = model.config
        prepare = _Prepare(mcfg.vision.image_size, mcfg.image_mean, mcfg.image_std, cfg.loader.max_pixels,
                           tuple(cfg.loader.percentile_window) if cfg.loader.percentile_window else None)
        bar = _progress(len(todo), progress)
        interrupted = stop.signal is not None
        batches = [] if interrupted else iterate_batches(
            todo, prepare, cfg.generation.batch_size, cfg.loader.num_workers, cfg.loader.prefetch_batches,
            model.device.type == "cuda")
        for batch in batches:
            t0 = time.perf_counter()
            good = [s for s, err in zip(batch.studies, batch.errors) if not err]
            reports = []
            if good:
                reports = model.generate_reports(
                    batch.pixels.to(model.device, non_blocking=True), prompt=prompt,
                    max_new_tokens=cfg.generation.max_new_tokens, temperature=cfg.generation.temperature,
                    top_p=cfg.generation.top_p, seed=[study_seed(cfg.generation.seed, s.id) for s in good])
            seconds = (time.perf_counter() - t0) / max(len(good), 1)
            generated = {s.id: r for s, r in zip(good, reports)}
            rows = []
            for study, error in zip(batch.studies, batch.errors):
                report = generated.get(study.id)
                rows.append({
                    "id": study.id, "image_path": study.image_paths[0], "reference": study.reference,
                    "generated_report": report.text if report else "",
                    "status": "ok" if report else "error", "error": error,
                    "n_new_tokens": report.n_new_tokens if report else 0,
                    "stopped_at_eos": report.stopped_at_eos if report else False,
                    "seconds": round(seconds, 4) if report else 0.0,
                })
                if error:
                    log.warning("error row %s: %s", study.id, error)
            part.append(rows)
            bar.update(len(rows))
            if stop.signal is not None:
                interrupted = True
                break
        bar.close()

    done = part.read()
    counts = {"ok": int((done["status"] == "ok").sum()), "error": int((done["status"] == "error").sum())}
    shard_info = {"run_id": run_id, "shard": f"{shard[0]}/{shard[1]}", "started": started.isoformat(),
                  "finished": datetime.now(timezone.utc).isoformat(), "studies": len(studies),
                  "complete": len(done) == len(studies) and not interrupted, **counts, **device_info}
    atomic_write(run_dir / "parts" / f"{part_name(shard)}.json", json.dumps(shard_info, indent=2).encode())
    if interrupted:
        log.warning("stopped after committing %d of %d studies of this shard; run the same command to resume",
                    len(done), len(studies))
        return EXIT_INTERRUPTED
    log.info("shard %d/%d done: %d ok, %d error", shard[0], shard[1], counts["ok"], counts["error"])
    records = [_shard_record(run_dir, (i, shard[1])) for i in range(shard[1])]
    if all(r and r.get("run_id") == run_id and r.get("complete") for r in records):
        return merge(run_dir)
    log.info("waiting for the other shards; the last one to finish merges (or: generate_cxr.py --merge %s)", run_dir)
    return EXIT_ROW_ERRORS if counts["error"] else EXIT_OK


def merge(run_dir: Path) -> int:
    """Check that every selected study is present exactly once across the parts; write reports.csv and metrics.

    Works from the run directory alone (parts/run-config.json and parts/selection.json), from any folder.
    """
    from .evaluation import evaluate_frame, write_metrics_json

    run_dir = Path(run_dir)
    config_path = run_dir / "parts" / "run-config.json"
    if not config_path.exists():
        raise RunError(f"{run_dir}: not a run directory (no parts/run-config.json)")
    saved = json.loads(config_path.read_text())
    cfg = Config.from_dict(saved["config"])
    run_id, n = saved["run_id"], saved["shards"]
    expected = json.loads((run_dir / "parts" / "selection.json").read_text())
    frames, shards = [], []
    for i in range(n):
        part = PartFile(run_dir / "parts" / f"{part_name((i, n))}.csv", run_id)
        record = _shard_record(run_dir, (i, n))
        if not part.path.exists() or record is None or record.get("run_id") != run_id:
            raise RunError(f"{part.path}: missing or from an earlier run; shard {i}/{n} has not run")
        frames.append(part.read())
        shards.append(record)
    rows = pd.concat(frames, ignore_index=True)
    duplicated = sorted(set(rows["id"][rows["id"].duplicated()]))
    if duplicated:
        raise RunError(f"{run_dir}: ids present more than once across the parts: {', '.join(duplicated[:10])}")
    present = set(rows["id"])
    missing = [i for i in expected if i not in present]
    if missing:
        raise RunError(f"{run_dir}: {len(missing)} studies have no row yet (e.g. {', '.join(missing[:5])}); "
                       "run the unfinished shards first")
    extra = sorted(present - set(expected))
    if extra:
        raise RunError(f"{run_dir}: rows for ids that are not in the selection: {', '.join(extra[:10])}")
    order = {sid: k for k, sid in enumerate(expected)}
    rows = rows.iloc[np.argsort(rows["id"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)

    evaluation = evaluate_frame(rows, name=cfg.output.run_name, n_boot=cfg.evaluation.bootstrap,
                                seed=cfg.evaluation.seed, clinical=cfg.evaluation.clinical,
                                uncertain=cfg.evaluation.uncertain)
    scores = evaluation.per_sample.drop(columns=["id", "empty_hyp"], errors="ignore")
    report = rows.join(scores)
    atomic_write(run_dir / "reports.csv", report.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    write_metrics_json(evaluation, run_dir / "metrics.json")

    n_error = int((rows["status"] == "error").sum())
    run_info = {
        "run_dir": str(run_dir),
        "run_id": run_id,
        "config": cfg.to_dict(),
        "limit": saved.get("limit"),
        "model": {"source": next((s["model_source"] for s in shards if s.get("model_source")), None),
                  "revision": next((s["model_revision"] for s in shards if s.get("model_revision")), None)},
        "versions": versions(),
        "shards": shards,
        "started": min(s["started"] for s in shards),
        "finished": datetime.now(timezone.utc).isoformat(),
        "counts": {"selected": len(expected), "ok": len(rows) - n_error, "error": n_error,
                   **{f"dataset_{k}": v for k, v in saved.get("dataset_counts", {}).items()}},
    }
    atomic_write(run_dir / "run.json", json.dumps(run_info, indent=2, default=str).encode())
    if cfg.output.html:
        from .report import write_results_page

        summary = {"signature": evaluation.signature, "systems": {cfg.output.run_name: evaluation.summary},
                   "comparisons": []}
        write_results_page(run_dir / "report.html", {cfg.output.run_name: report}, summary)
    log.info("merged %d studies into %s (%d ok, %d error); metrics in %s", len(rows), run_dir / "reports.csv",
             len(rows) - n_error, n_error, run_dir / "metrics.json")
    log.info("%s", _headline(evaluation.summary))
    return EXIT_ROW_ERRORS if n_error else EXIT_OK


def _headline(summary: dict) -> str:
    """One log line with the main corpus metrics and their intervals."""
    parts = []
    entries = {**summary.get("metrics", {}), **summary.get("clinical", {}).get("metrics", {})}
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider_d", "cxrllava6_micro_f1"):
        entry = entries.get(key)
        if entry and entry.get("value") is not None:
            ci = entry.get("ci")
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            parts.append(f"{key} {entry['value']:.3f}{interval}")
    return "metrics: " + ", ".join(parts)


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items() if v)


def study_seed(seed: int, study_id: str) -> int:
    """The sampling seed of one study: the configured seed plus a hash of its id (independent of batching)."""
    import zlib

    return (seed + zlib.crc32(study_id.encode("utf-8"))) % (2 ** 63)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, unit="study", disable=not enabled, dynamic_ncols=interactive,
                mininterval=0.5 if interactive else 60, smoothing=0.1 if interactive else 0)


def _device_info(model) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(model.device), "dtype": str(model.dtype).replace("torch.", "")}
    if model.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(model.device)
    return info
