"""The report-generation run: studies in, one report per study out, resumable and shardable.

The runner keeps generation: it selects the studies, takes the shard's lock, resumes after what is committed, feeds
the studies to the backend and commits the rows as they finish, and stops cleanly on a signal. The run directory —
settings, parts, records, locks — belongs to :class:`cxrgen.runstore.RunStore`; when the last shard is done the
runner hands the run to :func:`cxrgen.finishing.finish` (merge, evaluation, results page). The runner knows no model
by name: it loads one through :func:`cxrgen.models.load` and talks to it through the interface of
:mod:`cxrgen.models.base` (an image preparer that runs in DataLoader workers, and a stream of prepared studies in,
finished reports out).

Crash safety: finished rows are appended to the shard's part file, read back and committed as they come (see
:mod:`cxrgen.runstore.parts`). A process killed at any moment leaves a part whose committed prefix holds whole rows
only; on resume the part is cut back to that length, the ids in it are skipped and the rest is generated again. At
most the rows in flight are lost and no row is ever duplicated or torn. Only the process holding the shard's lock
writes its part; a second one stops before touching anything.

SIGTERM and SIGUSR1 (what Slurm sends before preemption or the time limit) and SIGINT (Ctrl-C) stop feeding new
studies to the model; the studies in flight are finished and committed, and the run returns EXIT_INTERRUPTED
(EXIT_SIGINT for Ctrl-C), so that a requeued job resumes where it stopped. A second Ctrl-C raises
KeyboardInterrupt at once (rows in flight are lost, committed rows are kept). Image-decoding workers ignore these
signals, so a signal to the whole process group does not break the rows in flight.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterator

from .config import Config
from .datasets import Selection, Study, load_studies
from .exits import (EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_ROW_ERRORS, EXIT_SIGINT,  # noqa: F401
                    EXIT_USAGE, StopFlag)
from .finishing import finish
from .loader import PrepareStudy, prepared_studies, worker_count
from .models import Item, ModelError, identity
from .provenance import data_files, versions
from .runstore import COL, LockHeldError, ResultRow, RunError, RunPlan, RunStore, SettingsChangedError, ShardWriter
from .threads import configure_threads

log = logging.getLogger("cxrgen")

__all__ = ["EXIT_INCOMPLETE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_ROW_ERRORS", "EXIT_SIGINT", "EXIT_USAGE",
           "IncompleteShardError", "RunError", "SettingsChangedError", "generate", "parse_shard", "select_studies",
           "shard_studies", "study_seed"]


class IncompleteShardError(RunError):
    """A shard that ended without committing every one of its studies; the message says why."""


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


# -- the run -----------------------------------------------------------------------------------------------------

def select_studies(cfg: Config, limit: int | None = None) -> Selection:
    selection = load_studies(cfg.data)
    if limit is not None:
        selection = Selection(studies=selection.studies[:limit], counts={**selection.counts, "limit": limit})
    return selection


def generate(cfg: Config, *, shard: tuple[int, int] = (0, 1), resume: bool = True, limit: int | None = None,
             model=None, progress: bool = True) -> int:
    """Run (or resume) shard ``shard`` of the configured run; finish the run when every shard is done. Returns an
    exit code (:mod:`cxrgen.exits`).

    ``model``: an already loaded backend (a :class:`cxrgen.models.ReportGenerator`); default: load ``cfg.model``.
    """
    with StopFlag() as stop:  # from the start: a signal during a long model load must not kill the process
        store = RunStore(cfg.run_dir)
        with store.shard_lock(shard) as lock:  # another process on this shard: LockHeldError, nothing touched
            return _generate(cfg, store, lock, shard, resume, limit, model, progress, stop)


def _error_row(study: Study, error: str) -> ResultRow:
    return ResultRow(id=study.id, image_path=study.image_paths[0], reference=study.reference, generated_report="",
                     status="error", error=error, n_new_tokens=0, stopped_at_eos=False, seconds=0.0)


def _report_row(study: Study, report, seconds: float) -> ResultRow:
    source = report.source
    retrieved = {} if source is None else {
        "retrieved_id": source.id, "retrieved_image": source.image_path, "similarity": source.similarity,
        "leakage": ",".join(source.leakage)}
    return ResultRow(id=study.id, image_path=study.image_paths[0], reference=study.reference,
                     generated_report=report.text, status="ok", error="", n_new_tokens=report.n_new_tokens,
                     stopped_at_eos=report.stopped_at_eos, seconds=round(seconds, 4), **retrieved)


def _generate(cfg, store: RunStore, lock, shard, resume, limit, model, progress, stop: "StopFlag") -> int:
    selection = select_studies(cfg, limit)
    studies = shard_studies(selection.studies, shard)
    plan = RunPlan(cfg, shard, limit, [s.id for s in selection.studies],
                   identity(cfg, getattr(model, "name", None)), selection.counts, data_files(cfg.data))
    if not resume:
        store.start_over(shard)
    run_id = store.begin(plan, resume)
    writer = store.open_shard(plan, lock)
    done_ids = set(writer.committed()[COL.id])
    todo = [s for s in studies if s.id not in done_ids]
    log.info("run %s (id %s), shard %d/%d: %s; %d in this shard, %d already done, %d to go",
             store.dir, run_id, shard[0], shard[1], _counts_text(selection.counts), len(studies),
             len(studies) - len(todo), len(todo))
    shard_ids = [s.id for s in studies]
    failure: BaseException | None = None
    if todo:
        try:
            model = _load(cfg, model, writer, len(todo))
        except BaseException as e:  # recorded in the shard's history, then reported as it is
            writer.end(shard_ids, e)
            raise
        try:
            _run_studies(cfg, model, todo, writer, stop, progress, writer.entry["loader_workers"])
        except (RunError, ModelError) as e:  # a part that does not read back, a lost lock, a model failing mid-run
            failure = e
        except BaseException as e:  # a crash or a second Ctrl-C: record what was committed, then let it through
            writer.end(shard_ids, e)
            raise
    record = writer.end(shard_ids, failure)
    committed = record["committed"]
    if failure is not None:
        raise IncompleteShardError(f"shard {shard[0]}/{shard[1]} stopped after committing {committed} of "
                                   f"{len(studies)} studies: {failure}")
    if stop.signal is not None and not record["complete"]:
        log.warning("stopped after committing %d of %d studies of this shard; run the same command to resume",
                    committed, len(studies))
        return stop.exit_code
    if not record["complete"]:
        raise IncompleteShardError(f"{writer.part.path}: shard {shard[0]}/{shard[1]} ended with {committed} of "
                                   f"{len(studies)} studies committed; run the same command to resume")
    log.info("shard %d/%d done: %d ok, %d error", shard[0], shard[1], record["ok"], record["error"])
    own = EXIT_ROW_ERRORS if record["error"] else EXIT_OK
    if not store.complete(run_id, shard[1]):
        log.info("waiting for the other shards of %s; the last one to finish merges them", store.dir)
        return own
    try:
        return finish(store, cfg)
    except LockHeldError as e:
        log.info("%s; this shard's rows are committed and the merge is left to it", e)
        return own


def _load(cfg: Config, model, writer, n_todo: int):
    """The backend (loaded now unless given), its threads and image workers; recorded in the shard's history."""
    if model is None:
        from . import models

        model = models.load(cfg)
    threads = configure_threads(model.device)
    workers = worker_count(cfg.loader.num_workers, n_todo)
    info = model.describe()
    writer.note_model(info, model.render_prompt(cfg.prompt), threads=threads, loader_workers=workers,
                      versions=versions())
    log.info("model %s (%s, revision %s) on %s in %s; %d threads, %d image workers", info.get("source"),
             info.get("backend"), info.get("revision") or info.get("digest") or "local",
             info.get("gpu") or info.get("device"), info.get("dtype"), threads, workers)
    return model


def _run_studies(cfg: Config, model, todo: list[Study], writer: ShardWriter, stop: "StopFlag", progress: bool,
                 workers: int) -> None:
    """Prepare the studies in workers, stream them through the model, commit rows as they finish."""
    prepare = PrepareStudy.for_loader(model.image_preparer(), cfg.loader)
    pending: list[ResultRow] = []  # error rows waiting for the next commit
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

    bar = progress_bar(len(todo), progress)
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
            bar.update(writer.append(rows))
    finally:
        try:
            if pending:  # error rows of unreadable images are committed whatever stopped the model
                bar.update(writer.append(list(pending)))
                pending.clear()
        finally:
            bar.close()


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


def progress_bar(total: int, enabled: bool, unit: str = "study", initial: int = 0):
    """A tqdm bar on stderr: live in a terminal, a line a minute in a log file (a Slurm job's)."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit=unit, disable=not enabled, dynamic_ncols=interactive,
                mininterval=0.5 if interactive else 60, smoothing=0.1 if interactive else 0)
