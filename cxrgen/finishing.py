"""The finishing step of a run: merge the parts, evaluate, write the results page.

Called by the last shard to finish (:mod:`cxrgen.runner`) and by ``generate_cxr.py --merge RUN_DIR``, with the
caller's settings: ``evaluation.*`` and ``output.html`` given now win over the saved ones (and are what run.json
records); the settings that made the reports (:data:`cxrgen.runstore.RUN_DEFINING`) stay as the run was made, and a
different value is refused by name.

1. **Merge** (:meth:`RunStore.merged_rows`): every selected study exactly once, in dataset order.
2. **Evaluate** with the same code as ``evaluate.py``. A run whose rows cannot be scored (all are error rows) gets
   no metrics: one log line says why, and the rows are still written.
3. **Write** ``reports.csv`` (rows and per-sample scores), ``metrics.json``, ``report.html`` and, last, ``run.json``,
   each atomically: a kill at any moment leaves every file either as it was or as it is meant to be.

One process finishes a run at a time (the run's merge lock); another finding it held says so and does nothing. A
run whose outputs are already those of its current rows and settings (run.json says so) is not finished again.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from .config import Config
from .exits import EXIT_OK, EXIT_ROW_ERRORS
from .provenance import project_commit, versions
from .runstore import (COL, RunError, RunStore, SettingsChangedError, atomic_write, leakage_counts, read_reports_csv,
                       reports_csv, write_json)

log = logging.getLogger("cxrgen")

#: Settings a finishing step may change (a whole section, or one key).
FINISHING_SETTINGS = ("evaluation", "output.html")


def finishing_config(store: RunStore, caller: Config | None) -> Config:
    """The run's saved settings with the caller's finishing settings laid over them; refuses a caller whose
    run-defining settings differ from the run's, naming them."""
    saved = store.saved_config()
    if caller is None:
        return saved
    changed = store.changed_settings(caller)
    if changed:
        raise SettingsChangedError(f"{store.dir}: made with other settings than given now: {'; '.join(changed)}. "
                                   f"Only {', '.join(FINISHING_SETTINGS)} may change when a run is finished")
    merged, given = saved.to_dict(), caller.to_dict()
    for key in FINISHING_SETTINGS:
        section, _, name = key.partition(".")
        if name:
            merged[section][name] = given[section][name]
        else:
            merged[section] = given[section]
    return Config.from_dict(merged)


def finish(store: RunStore, settings: Config | None = None) -> int:
    """Merge, evaluate and write the outputs of the run in ``store`` (module docstring); returns the run's exit code
    (0, or 3 when some rows are errors). Raises :class:`~cxrgen.runstore.LockHeldError` while another process
    finishes the run, :class:`RunError` when a study has no row or more than one."""
    cfg = finishing_config(store, settings)
    with store.merge_lock():
        clock = _Clock()
        store.clean_outputs()
        merged = store.merged_rows()
        rows = merged.rows
        n_error = int((rows[COL.status] == "error").sum())
        code = EXIT_ROW_ERRORS if n_error else EXIT_OK
        state = {**merged.state, "evaluation": cfg.to_dict()["evaluation"], "html": cfg.output.html}
        done = store.finished() or {}
        if done.get("finishing", {}).get("state") == state and all(
                store.output(name).exists() for name in done["finishing"].get("written", [])):
            log.info("%s: already finished with these rows and settings at %s; nothing to do", store.dir,
                     done.get("finished"))
            return code
        clock.lap("merge")
        evaluation = _evaluate(rows, cfg, store)
        report = rows if evaluation is None else rows.join(
            evaluation.per_sample.drop(columns=["id", "empty_hyp"], errors="ignore"))
        clock.lap("evaluate")
        written = ["reports.csv"]
        _write_reports(store, report)
        if evaluation is not None:
            from .evaluation import metrics_json

            write_json(store.output("metrics.json"), metrics_json(evaluation))
            written.append("metrics.json")
        else:
            store.output("metrics.json").unlink(missing_ok=True)
        clock.lap("reports.csv and metrics.json")
        run_info = _run_info(store, cfg, merged, n_error, state)
        clock.lap("provenance")
        if cfg.output.html:
            _write_page(store, cfg, report, evaluation, run_info)
            written.append("report.html")
        else:
            store.output("report.html").unlink(missing_ok=True)
        clock.lap("report.html")
        run_info["finishing"].update(written=written + ["run.json"], seconds=clock.laps)
        write_json(store.output("run.json"), run_info)
    log.info("merged %d studies into %s (%d ok, %d error)%s", len(rows), store.output("reports.csv"),
             len(rows) - n_error, n_error, "" if evaluation is None else f"; metrics in {store.output('metrics.json')}")
    leaked = leakage_counts(rows)
    if leaked:
        log.info("retrieval: %d of %d studies had index rows left out by the leakage rules (same study id %d, same "
                 "image content %d, same patient %d); run.json counts.leakage_*", leaked["studies"], len(rows),
                 leaked["id"], leaked["image"], leaked["patient"])
    if evaluation is not None:
        log.info("%s", _headline(evaluation.summary))
    return code


class _Clock:
    """Seconds spent in each phase of the finishing step, for run.json (where the time goes)."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(now - self._last, 4)
        self._last = now


def _evaluate(rows, cfg: Config, store: RunStore):
    """The evaluation of the merged rows, or None (with one log line) when no row can be scored."""
    from .evaluation import NothingToScoreError, evaluate_frame

    try:
        return evaluate_frame(rows, name=cfg.output.run_name, n_boot=cfg.evaluation.bootstrap,
                              seed=cfg.evaluation.seed, clinical=cfg.evaluation.clinical,
                              uncertain=cfg.evaluation.uncertain)
    except NothingToScoreError as e:
        log.warning("%s: metrics.json and the scores are left out: %s", store.dir, e)
        return None


def _write_reports(store: RunStore, report) -> None:
    """reports.csv, checked to read back to the same ids and reports before anything else is written."""
    path = store.output("reports.csv")
    data = reports_csv(report)
    atomic_write(path, data)
    back = read_reports_csv(path, str(path))
    if list(back[COL.id]) != list(report[COL.id]) or \
            list(back[COL.generated_report]) != list(report[COL.generated_report]):
        raise RunError(f"{path}: does not read back as written ({len(back)} of {len(report)} rows)")


def _run_info(store: RunStore, cfg: Config, merged, n_error: int, state: dict) -> dict:
    """run.json: the settings, model, prompt and provenance of the rows the run holds."""
    records, saved = merged.records, merged.saved
    loaded = [entry for r in records for entry in r.get("history", []) if entry.get("versions")]
    return {
        "run_dir": str(store.dir),
        "run_id": saved["run_id"],
        "project": project_commit(),
        "config": cfg.to_dict(),
        "limit": saved.get("limit"),
        "model": next((r["model"] for r in records if r.get("model")), None),
        "model_identity": saved.get("model_identity"),
        "prompt": next((r["prompt"] for r in records if r.get("prompt") is not None), None),
        "data_files": saved.get("data_files"),
        "versions": loaded[-1]["versions"] if loaded else versions(),
        "shards": records,
        "started": min((e["started"] for r in records for e in r.get("history", [])), default=None),
        "finished": datetime.now(timezone.utc).isoformat(),
        "counts": {"selected": len(merged.rows), "ok": len(merged.rows) - n_error, "error": n_error,
                   **{f"dataset_{k}": v for k, v in saved.get("dataset_counts", {}).items()},
                   **{f"leakage_{k}": v for k, v in (leakage_counts(merged.rows) or {}).items()}},
        "finishing": {"state": state},
    }


def _write_page(store: RunStore, cfg: Config, report, evaluation, run_info: dict) -> None:
    from .report import write_results_page

    name = cfg.output.run_name
    summary = {"signature": evaluation.signature if evaluation else None,
               "systems": {name: evaluation.summary} if evaluation else {}, "comparisons": [],
               "run": {"model": run_info["model"], "project": run_info["project"]}}
    write_results_page(store.output("report.html"), {name: report}, summary)


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
