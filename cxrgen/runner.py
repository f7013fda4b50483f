"""The report-generation run: studies in, one report per study out, resumable and shardable.

The run directory's files and the crash-safe part files are defined in :mod:`cxrgen.runstore`. The runner knows no
model by name: it loads one through :func:`cxrgen.models.load` and talks to it through the interface of
:mod:`cxrgen.models.base` (an image preparer that runs in DataLoader workers, and a stream of prepared studies in,
finished reports out).

Crash safety: finished rows are appended to the shard's part file, read back and committed as they come (see
runstore). A process killed at any moment leaves a part whose committed prefix holds whole rows only; on resume the
part is cut back to that length, the ids in it are skipped and the rest is generated again. At most the rows in
flight are lost and no row is ever duplicated or torn.

The run id is a digest of the settings that decide the reports, the number of shards and the selected ids. Parts
and shard records of another run id (an earlier run in the same folder, e.g. before ``--no-resume``) are never
resumed from nor merged. A run folder whose earlier start committed no row at all may be started again with other
settings: there is nothing to protect.

SIGTERM and SIGUSR1 (what Slurm sends before preemption or the time limit) and SIGINT (Ctrl-C) stop feeding new
studies to the model; the studies in flight are finished and committed, and the run returns EXIT_INTERRUPTED
(EXIT_SIGINT for Ctrl-C), so that a requeued job resumes where it stopped. A second Ctrl-C raises
KeyboardInterrupt at once (rows in flight are lost, committed rows are kept). Image-decoding workers ignore these
signals, so a signal to the whole process group does not break the rows in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from . import __version__
from . import runstore
from .config import Config
from .datasets import Selection, Study, load_studies
from .models import Item, ModelError, identity
from .runstore import PartFile, RunError, read_reports_csv
from .threads import allotted_cpus, configure_threads

log = logging.getLogger("cxrgen")

EXIT_OK = 0
EXIT_ROW_ERRORS = 3  # the run finished but some studies have status=error (1 is Python's own crash code)
EXIT_USAGE = 2  # bad configuration or input: nothing was generated
EXIT_INCOMPLETE = 4  # the shard could not commit every row (e.g. rows that did not read back); the message says why
EXIT_INTERRUPTED = 75  # stopped by SIGTERM/SIGUSR1 after committing its work; run again to resume
EXIT_SIGINT = 130  # stopped by Ctrl-C after committing its work; run again to resume

#: Settings that change the reports: a resumed or merged run must have the same values (model.backend resolved).
RUN_DEFINING = ["model.backend", "model.name_or_path", "model.revision", "model.dtype", "model.adapter",
                "model.quantization", "model.trust_remote_code", "prompt.system", "prompt.user",
                "generation.max_new_tokens", "generation.temperature", "generation.top_p", "generation.seed",
                "generation.batch_invariant", "data", "loader.max_pixels", "loader.percentile_window"]


class IncompleteShardError(RunError):
    """A shard that ended without committing every one of its studies; the message says why."""


class SettingsChangedError(RunError):
    """A run folder with committed rows of other settings: resuming would mix reports."""


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


# -- images in background workers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Prepare:
    """Picklable per-study work for DataLoader workers: read the image, hand it to the backend's preparer."""

    prepare_image: Callable[[Any], Any]
    max_pixels: int
    percentile_window: tuple[float, float] | None

    def __call__(self, study: Study) -> tuple[Study, Any, str]:
        from .imaging import ImageReadError, read_image

        try:
            image = read_image(study.image_paths[0], max_pixels=self.max_pixels,
                               percentile_window=self.percentile_window)
            return study, self.prepare_image(image), ""
        except ImageReadError as e:
            return study, None, str(e)
        except Exception as e:  # a decoder or preprocessing bug must cost one row, not the run
            return study, None, f"{study.image_paths[0]}: {type(e).__name__}: {e}"


class _StudyDataset:
    def __init__(self, studies: list[Study], prepare: _Prepare):
        self.studies, self.prepare = studies, prepare

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int):
        return self.prepare(self.studies[index])


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1/SIGINT to the main process, which finishes its rows and stops them."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _one(item):
    return item


def prepared_studies(studies: list[Study], prepare: _Prepare, num_workers: int, prefetch: int):
    """(study, inputs or None, error) in order, prepared ``prefetch`` studies ahead per worker process."""
    if num_workers == 0:
        for study in studies:
            yield prepare(study)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_StudyDataset(studies, prepare), batch_size=None, shuffle=False, num_workers=num_workers,
                        collate_fn=_one, prefetch_factor=max(2, prefetch), worker_init_fn=_ignore_stop_signals,
                        persistent_workers=False)
    yield from loader


# -- the run -----------------------------------------------------------------------------------------------------

class _StopFlag:
    """Set by SIGTERM/SIGUSR1/SIGINT; the run stops feeding studies, commits the rows in flight and stops.

    A second SIGINT raises KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            hint = "; Ctrl-C again to stop at once" if signum == signal.SIGINT else ""
            log.warning("received %s: finishing the studies in flight, then stopping (run again to resume)%s",
                        signal.Signals(signum).name, hint)
        self.signal = signum

    @property
    def exit_code(self) -> int:
        return EXIT_SIGINT if self.signal == signal.SIGINT else EXIT_INTERRUPTED

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _defining(cfg: Config, model_identity: dict | None = None) -> dict:
    """The run-defining settings, with the model's identity (resolved backend, adapter digest) laid over them."""
    d = cfg.to_dict()
    out = {}
    for key in RUN_DEFINING:
        section, _, name = key.partition(".")
        out[key] = d[section][name] if name else d[section]
    out.update({k: v for k, v in (model_identity or {}).items() if v is not None})
    return out


def run_id_of(cfg: Config, shards: int, limit: int | None, ids: list[str], model_identity: dict | None = None) -> str:
    """A digest of what decides the reports: settings, model identity, number of shards, --limit, selected ids."""
    digest = hashlib.sha256(json.dumps({"settings": _defining(cfg, model_identity), "shards": shards, "limit": limit},
                                       sort_keys=True, default=str).encode())
    for study_id in ids:
        digest.update(study_id.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def _committed_rows_of(run_dir: Path, run_id: str, shards: int) -> bool:
    """Whether any shard part of run ``run_id`` holds a committed row."""
    for i in range(shards):
        part = PartFile(runstore.part_path(run_dir, (i, shards)), run_id)
        if part.path.exists() and len(part.read()):
            return True
    return False


def _start_run(run_dir: Path, cfg: Config, shard: tuple[int, int], resume: bool, limit: int | None,
               selection: Selection, model_identity: dict) -> str:
    """Record the run's settings and selection on first start; refuse to resume under different ones."""
    ids = [s.id for s in selection.studies]
    run_id = run_id_of(cfg, shard[1], limit, ids, model_identity)
    path = runstore.run_config_path(run_dir)
    saved = runstore.read_json(path) if resume else None
    if saved is not None:
        if saved.get("run_id") == run_id:
            return run_id
        if _committed_rows_of(run_dir, saved.get("run_id", ""), int(saved.get("shards") or 0)):
            saved_cfg = Config.from_dict(saved["config"])
            before = _defining(saved_cfg, saved.get("model_identity"))
            diff = [k for k, v in _defining(cfg, model_identity).items() if before.get(k) != v]
            if saved.get("shards") != shard[1]:
                diff.append(f"number of shards ({saved.get('shards')} before)")
            if saved.get("limit") != limit:
                diff.append(f"the limit on the number of studies ({saved.get('limit')} before)")
            if not diff:
                diff.append("the selected studies")
            raise SettingsChangedError(
                f"{run_dir}: started with other settings ({', '.join(diff)}); resuming would mix reports. "
                "Use another output.run_name, or start this run over without resuming"
            )
        log.info("%s: an earlier start with other settings committed no row; its records are replaced", run_dir)
    runstore.atomic_write(runstore.selection_path(run_dir), json.dumps(ids).encode())
    runstore.write_json(path, {"run_id": run_id, "model_identity": model_identity, "config": cfg.to_dict(),
                               "limit": limit, "shards": shard[1], "dataset_counts": selection.counts,
                               "data_files": data_files(cfg)})
    return run_id


def select_studies(cfg: Config, limit: int | None = None) -> Selection:
    selection = load_studies(cfg.data)
    if limit is not None:
        selection = Selection(studies=selection.studies[:limit], counts={**selection.counts, "limit": limit})
    return selection


def data_files(cfg: Config) -> list[dict]:
    """sha256 and row count of the data files that decide the selection: the manifest, or the tables (CSV, JSON)
    at the top of data.root and the reports/projections tables named in the config."""
    d = cfg.data
    paths: list[Path] = []
    if d.format == "manifest" and d.manifest:
        paths.append(Path(d.manifest))
    elif d.root and Path(d.root).is_dir():
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


def versions() -> dict[str, Any]:
    import torch
    import transformers

    return {"cxrgen": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda}


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


def _shard_record(run_dir: Path, shard: tuple[int, int]) -> dict | None:
    return runstore.read_json(runstore.shard_record_path(run_dir, shard))


def generate(cfg: Config, *, shard: tuple[int, int] = (0, 1), resume: bool = True, limit: int | None = None,
             model=None, progress: bool = True) -> int:
    """Run (or resume) shard ``shard`` of the configured run; merge when every shard is done. Returns an exit code.

    ``model``: an already loaded backend (a :class:`cxrgen.models.ReportGenerator`); default: load ``cfg.model``.
    """
    with _StopFlag() as stop:  # from the start: a signal during a long model load must not kill the process
        return _generate(cfg, shard, resume, limit, model, progress, stop)


def _error_row(study: Study, error: str) -> dict:
    return {"id": study.id, "image_path": study.image_paths[0], "reference": study.reference,
            "generated_report": "", "status": "error", "error": error, "n_new_tokens": 0,
            "stopped_at_eos": False, "seconds": 0.0}


def _report_row(study: Study, report, seconds: float) -> dict:
    return {"id": study.id, "image_path": study.image_paths[0], "reference": study.reference,
            "generated_report": report.text, "status": "ok", "error": "", "n_new_tokens": report.n_new_tokens,
            "stopped_at_eos": report.stopped_at_eos, "seconds": round(seconds, 4)}


def _generate(cfg, shard, resume, limit, model, progress, stop: "_StopFlag") -> int:
    started = datetime.now(timezone.utc)
    run_dir = cfg.run_dir
    selection = select_studies(cfg, limit)
    studies = shard_studies(selection.studies, shard)
    model_identity = identity(cfg.model, getattr(model, "name", None))
    (run_dir / "parts").mkdir(parents=True, exist_ok=True)
    run_id = _start_run(run_dir, cfg, shard, resume, limit, selection, model_identity)
    part = PartFile(runstore.part_path(run_dir, shard), run_id)
    if not resume:  # the marker first: a part without one is read as empty, never as damaged
        runstore.marker_path(part.path).unlink(missing_ok=True)
        part.path.unlink(missing_ok=True)
        runstore.shard_record_path(run_dir, shard).unlink(missing_ok=True)
        for name in runstore.OUTPUT_FILES:
            (run_dir / name).unlink(missing_ok=True)
    part.recover()
    done_ids = set(part.read()["id"])
    todo = [s for s in studies if s.id not in done_ids]
    log.info("run %s (id %s), shard %d/%d: %s; %d in this shard, %d already done, %d to go",
             run_dir, run_id, shard[0], shard[1], _counts_text(selection.counts), len(studies),
             len(studies) - len(todo), len(todo))

    record: dict[str, Any] = {"run_id": run_id, "shard": f"{shard[0]}/{shard[1]}", "started": started.isoformat(),
                              "host": socket.gethostname(), "pid": os.getpid(), "command": sys.argv,
                              "studies": len(studies)}
    failure: Exception | None = None
    crash: BaseException | None = None
    if todo:
        if model is None:
            from . import models

            model = models.load(cfg.model)
        record["model"] = model.describe()
        record["prompt"] = model.render_prompt(cfg.prompt)
        threads = configure_threads(model.device)
        workers = _workers(cfg.loader.num_workers, len(todo))
        record.update(threads=threads, loader_workers=workers)
        info = record["model"]
        log.info("model %s (%s, revision %s) on %s in %s; %d threads, %d image workers", info.get("source"),
                 info.get("backend"), info.get("revision") or info.get("digest") or "local",
                 info.get("gpu") or info.get("device"), info.get("dtype"), threads, workers)
        try:
            _run_studies(cfg, model, todo, part, stop, progress, workers)
        except (RunError, ModelError) as e:  # a part that does not read back, a model that fails mid-run
            failure = e
        except BaseException as e:  # a crash or a second Ctrl-C: record what was committed, then let it through
            failure = crash = e

    done = part.read()
    counts = {"ok": int((done["status"] == "ok").sum()), "error": int((done["status"] == "error").sum())}
    interrupted = stop.signal is not None
    complete = set(done["id"]) == {s.id for s in studies} and len(done) == len(studies)
    record.update(finished=datetime.now(timezone.utc).isoformat(), complete=complete and failure is None,
                  committed=len(done), **counts)
    if failure is not None:
        record["failure"] = f"{type(failure).__name__}: {failure}"
    runstore.write_json(runstore.shard_record_path(run_dir, shard), record)
    if crash is not None:
        raise crash
    if failure is not None:
        raise IncompleteShardError(f"shard {shard[0]}/{shard[1]} stopped after committing {len(done)} of "
                                   f"{len(studies)} studies: {failure}")
    if interrupted and not complete:
        log.warning("stopped after committing %d of %d studies of this shard; run the same command to resume",
                    len(done), len(studies))
        return stop.exit_code
    if not complete:
        raise IncompleteShardError(f"{part.path}: shard {shard[0]}/{shard[1]} ended with {len(done)} of "
                                   f"{len(studies)} studies committed; run the same command to resume")
    log.info("shard %d/%d done: %d ok, %d error", shard[0], shard[1], counts["ok"], counts["error"])
    records = [_shard_record(run_dir, (i, shard[1])) for i in range(shard[1])]
    if all(r and r.get("run_id") == run_id and r.get("complete") for r in records):
        return merge(run_dir)
    log.info("waiting for the other shards of %s; the last one to finish merges them", run_dir)
    return EXIT_ROW_ERRORS if counts["error"] else EXIT_OK


def _workers(setting, n_studies: int) -> int:
    """loader.num_workers, with auto = one per allotted CPU beyond the first, at most 8, never more than studies."""
    if setting != "auto":
        return int(setting)
    return max(0, min(allotted_cpus() - 1, 8, n_studies - 1))


def _run_studies(cfg: Config, model, todo: list[Study], part: PartFile, stop: "_StopFlag", progress: bool,
                 workers: int) -> None:
    """Prepare the studies in workers, stream them through the model, commit rows as they finish."""
    window = tuple(cfg.loader.percentile_window) if cfg.loader.percentile_window else None
    prepare = _Prepare(model.image_preparer(), cfg.loader.max_pixels, window)
    pending: list[dict] = []  # error rows waiting for the next commit
    taken: dict[int, Item] = {}  # studies handed to the model and not handed back yet

    def items() -> Iterator[Item]:
        if stop.signal is not None:
            return
        for study, inputs, error in prepared_studies(todo, prepare, workers,
                                                     cfg.loader.prefetch_batches * cfg.generation.batch_size):
            if error:
                log.warning("error row %s: %s", study.id, error)
                pending.append(_error_row(study, error))
            else:
                item = Item(study, inputs, study_seed(cfg.generation.seed, study.id))
                taken[id(item)] = item
                yield item
            if stop.signal is not None:  # what the model has taken is finished; nothing new is fed
                return

    bar = _progress(len(todo), progress)
    try:
        t0 = time.perf_counter()
        for finished in model.stream(items(), cfg.prompt, cfg.generation):
            now = time.perf_counter()
            seconds = (now - t0) / max(len(finished), 1)
            t0 = now
            for item, _ in finished:  # every study taken is handed back once, and no other
                if taken.pop(id(item), None) is not item:
                    raise RuntimeError(f"the model handed back study {getattr(item.key, 'id', item.key)!r}, which "
                                       "it was not given or had handed back already")
            rows = pending + [_report_row(item.key, report, seconds) for item, report in finished]
            pending.clear()
            bar.update(part.append(rows))
    finally:
        try:
            if pending:  # error rows of unreadable images are committed whatever stopped the model
                bar.update(part.append(list(pending)))
                pending.clear()
        finally:
            bar.close()


def merge(run_dir: Path) -> int:
    """Check that every selected study is present exactly once across the parts; write reports.csv and metrics.

    Works from the run directory alone (parts/run-config.json and parts/selection.json), from any folder.
    """
    from .evaluation import evaluate_frame, write_metrics_json

    run_dir = Path(run_dir)
    saved = runstore.read_json(runstore.run_config_path(run_dir))
    if saved is None:
        raise RunError(f"{run_dir}: not a run directory (no parts/run-config.json)")
    cfg = Config.from_dict(saved["config"])
    run_id, n = saved["run_id"], saved["shards"]
    expected = runstore.read_json(runstore.selection_path(run_dir)) or []
    frames, shards = [], []
    for i in range(n):
        part = PartFile(runstore.part_path(run_dir, (i, n)), run_id)
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
    runstore.write_reports_csv(report, run_dir / "reports.csv")
    back = read_reports_csv(run_dir / "reports.csv", str(run_dir / "reports.csv"))
    if list(back["id"]) != list(rows["id"]) or list(back["generated_report"]) != list(rows["generated_report"]):
        raise RunError(f"{run_dir / 'reports.csv'}: does not read back as written ({len(back)} of {len(rows)} rows)")
    write_metrics_json(evaluation, run_dir / "metrics.json")

    n_error = int((rows["status"] == "error").sum())
    model_info = next((s["model"] for s in shards if s.get("model")), None)
    run_info = {
        "run_dir": str(run_dir),
        "run_id": run_id,
        "project": project_commit(),
        "config": cfg.to_dict(),
        "limit": saved.get("limit"),
        "model": model_info,
        "prompt": next((s["prompt"] for s in shards if s.get("prompt") is not None), None),
        "data_files": saved.get("data_files"),
        "versions": versions(),
        "shards": shards,
        "started": min(s["started"] for s in shards),
        "finished": datetime.now(timezone.utc).isoformat(),
        "counts": {"selected": len(expected), "ok": len(rows) - n_error, "error": n_error,
                   **{f"dataset_{k}": v for k, v in saved.get("dataset_counts", {}).items()}},
    }
    runstore.write_json(run_dir / "run.json", run_info)
    if cfg.output.html:
        from .report import write_results_page

        summary = {"signature": evaluation.signature, "systems": {cfg.output.run_name: evaluation.summary},
                   "comparisons": [], "run": {"model": model_info, "project": run_info["project"]}}
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
    """'4 studies selected of 10 (not_in_split=6)': the selection and what was left out, each number once."""
    selected = counts.get("selected", 0)
    studies = counts.get("selected_studies", selected)
    head = f"{selected} rows ({studies} studies)" if studies != selected else f"{selected} studies"
    left = {k: v for k, v in counts.items() if v and k not in ("total", "selected", "selected_studies")}
    tail = f" ({', '.join(f'{k}={v}' for k, v in left.items())})" if left else ""
    total = counts.get("total")
    return f"{head} selected of {total}{tail}" if total is not None and total != studies else f"{head} selected{tail}"


def study_seed(seed: int, study_id: str) -> int:
    """The sampling seed of one study: the configured seed plus a hash of its id (independent of batching)."""
    import zlib

    return (seed + zlib.crc32(study_id.encode("utf-8"))) % (2 ** 63)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, unit="study", disable=not enabled, dynamic_ncols=interactive,
                mininterval=0.5 if interactive else 60, smoothing=0.1 if interactive else 0)
