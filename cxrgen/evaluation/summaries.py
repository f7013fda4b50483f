"""Summaries: the per-system summary dict, ``per_sample.csv``'s frame, ``summary.json`` and
``metrics.json``, and writing the output files.

A system's summary (``summary.json["systems"][name]``) holds the counts (``n``, ``n_empty``,
``n_rows``, ``n_error``, ``n_empty_reference``, ``n_not_shared``), ``metrics`` (every metric
without a block of its own, in registry order: ``{"value", "ci": [low, high] | null}``), the
blocks of metrics that have one (``clinical``: its ``metrics``, labeler, policy and
per-observation table), ``unavailable`` (metric -> why it was not computed), ``empty_ids`` and
``excluded``; under a published protocol also ``published`` (key -> ``{"value", "ci", "scale", "how"}``: the
value as the published code reports it, :func:`cxrgen.metrics.protocols.published_values`). ``summary.json`` then
names the protocol under ``protocol`` (name, title, the code it follows, its reference).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from cxrgen.evaluation.alignment import Prepared
from cxrgen.evaluation.common import EvaluationInputError, is_empty_text
from cxrgen.evaluation.inputs import HYP
from cxrgen.metrics import bootstrap, clinical, significance
from cxrgen.metrics.suite import Scores

if TYPE_CHECKING:
    from cxrgen.evaluation.scoring import Evaluation, Report


def metric_entry(value: float, boot: np.ndarray | None) -> dict:
    """``{"value", "ci"}`` of one metric; ``value`` None where the metric is undefined (a recall without
    reference positives), ``ci`` the percentile interval of the bootstrap values (None without resamples, for an
    undefined value, or when too many resamples are undefined: :func:`cxrgen.metrics.bootstrap.percentile_interval`)."""
    if not np.isfinite(value):
        return {"value": None, "ci": None}
    return {"value": float(value),
            "ci": bootstrap.percentile_interval(boot) if boot is not None and len(boot) else None}


def system_summary(p: Prepared, s: Scores, point: dict[str, float], boot: dict[str, np.ndarray] | None) -> dict:
    """The summary of one system (module docstring)."""
    empty_ids = [i for i, v in zip(p.ids, p.frame[HYP]) if is_empty_text(v)]
    excluded = {k: list(v) for k, v in p.excluded.items()}
    summary = {
        "n": s.n,
        "n_empty": len(empty_ids),
        "n_rows": p.n_rows,
        "n_error": len(excluded.get("error", [])),
        "n_empty_reference": len(excluded.get("empty_reference", [])),
        "metrics": {},
    }
    if "not_shared" in excluded:
        summary["n_not_shared"] = len(excluded["not_shared"])
    summary["lengths"] = report_lengths(p.frame)
    summary["empty_ids"] = empty_ids
    summary["excluded"] = excluded
    blocks = {}
    for m in s.metrics:
        keys = s.keys[m.name]
        block = m.summary_block(keys, point, boot, s.stats[:, s.cols[m.name]], metric_entry, s.context)
        if block is None:
            for k in keys:
                summary["metrics"][k] = metric_entry(point[k], boot[k] if boot else None)
        else:
            blocks[m.name] = block
    summary["unavailable"] = dict(s.unavailable)
    summary.update(blocks)
    return summary


def report_lengths(frame: pd.DataFrame) -> dict:
    """Length of the generated reports that were scored: mean, median, 95th percentile and maximum, in generated
    tokens where the rows say (``n_new_tokens``, the runner's column), else in whitespace-separated words; the
    share that stopped at the token limit (``stopped_at_eos`` false) where the rows say, and the share empty."""
    if "n_new_tokens" in frame.columns:
        unit, lengths = "tokens", pd.to_numeric(frame["n_new_tokens"], errors="coerce").fillna(0).to_numpy()
    else:
        unit = "words"
        lengths = np.array([len(str(v).split()) if not is_empty_text(v) else 0 for v in frame[HYP]])
    out = {"unit": unit, "mean": None, "median": None, "p95": None, "max": None, "stopped_at_limit": None,
           "empty": None}
    if len(lengths):
        out.update(mean=float(lengths.mean()), median=float(np.median(lengths)),
                   p95=float(np.percentile(lengths, 95)), max=int(lengths.max()),
                   empty=float(np.mean([is_empty_text(v) for v in frame[HYP]])))
        if "stopped_at_eos" in frame.columns:
            stopped = frame["stopped_at_eos"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))
            out["stopped_at_limit"] = float((~stopped & (lengths > 0)).mean())
    return out


def per_sample_frame(p: Prepared, s: Scores) -> pd.DataFrame:
    """``per_sample.csv``'s rows of one system, indexed like its scored input rows: ``id``,
    ``empty_hyp``, every metric's per-sample columns, and the label strings of both texts."""
    data = {"id": p.ids, "empty_hyp": [is_empty_text(v) for v in p.frame[HYP]]}
    data.update(s.per_sample)
    if s.hyp_labels is not None:
        data["hyp_labels"] = clinical.labels_string(s.hyp_labels)
        data["ref_labels"] = clinical.labels_string(s.ref_labels)
    return pd.DataFrame(data, index=p.frame.index)


def summary_dict(report: "Report") -> dict:
    """The ``summary.json`` content of a report."""
    tests = {"bootstrap": bootstrap.TEST_METHOD, "ar": significance.METHOD}
    out = {
        "signature": report.signature,
        "interval_method": bootstrap.METHOD,
        "test_method": tests[report.settings.get("significance") or "ar"],
        "settings": report.settings,
        "systems": {name: ev.summary for name, ev in report.systems.items()},
        "baseline": report.baseline,
        "comparisons": report.comparisons,
        "warnings": list(report.warnings),
    }
    if report.alignment is not None:
        out["alignment"] = report.alignment
    if report.settings.get("protocol"):
        from cxrgen.metrics import protocols

        p = protocols.get(report.settings["protocol"])
        out["protocol"] = {"name": p.name, "title": p.title, "source": p.source,
                           "reference": p.reference.description}
    return out


def metrics_json(evaluation: "Evaluation") -> dict:
    """A run's ``metrics.json`` content: signature, n, n_empty, lengths, metrics and clinical."""
    s = evaluation.summary
    return {
        "signature": evaluation.signature,
        "n": s["n"],
        "n_empty": s["n_empty"],
        "lengths": s.get("lengths"),
        "metrics": s["metrics"],
        "clinical": s.get("clinical", {}),
    }


def write_metrics_json(evaluation: "Evaluation", path: str | os.PathLike) -> Path:
    """Write :func:`metrics_json` to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics_json(evaluation), indent=2) + "\n")
    return path


def evaluation_identity(report: "Report", inputs: Sequence[tuple[str | None, Path]] = ()) -> dict:
    """What makes two evaluations the same one: the input files (as given: ``NAME=PATH`` or ``PATH``, resolved)
    and the settings. Stored in ``summary.json`` as ``evaluation``."""
    return {"inputs": [[name, str(Path(path).resolve())] for name, path in inputs],
            "systems": list(report.systems), "settings": report.settings}


def check_output_dir(output_dir: str | os.PathLike, identity: dict) -> None:
    """Refuse to write into a folder that holds the outputs of another evaluation (other inputs or settings):
    :class:`EvaluationInputError` naming it and what it holds. The same evaluation again replaces its outputs."""
    path = Path(output_dir) / "summary.json"
    try:
        previous = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        previous = {}
    if previous.get("evaluation") == identity:
        return
    held = ", ".join(previous.get("evaluation", {}).get("systems") or previous.get("systems") or ["unknown systems"])
    raise EvaluationInputError(f"{output_dir} holds the outputs of another evaluation ({held}); choose another "
                               "output folder or replace them on purpose")


def write_outputs(report: "Report", output_dir: str | os.PathLike, identity: dict | None = None) -> dict[str, Path]:
    """Write per_sample.csv, summary.json (with ``identity`` as its ``evaluation``, see
    :func:`evaluation_identity`), summary.md and summary.csv into ``output_dir``."""
    from cxrgen.evaluation import tables

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for n, ev in report.systems.items():
        f = ev.per_sample.copy()
        f.insert(0, "system", n)
        frames.append(f)
    paths = {
        "per_sample": out / "per_sample.csv",
        "summary_json": out / "summary.json",
        "summary_md": out / "summary.md",
        "summary_csv": out / "summary.csv",
    }
    summary = report.summary_dict()
    if identity is not None:
        summary["evaluation"] = identity
    pd.concat(frames, ignore_index=True).to_csv(paths["per_sample"], index=False)
    paths["summary_json"].write_text(json.dumps(summary, indent=2) + "\n")
    paths["summary_md"].write_text(tables.markdown(summary))
    pd.DataFrame(tables.csv_rows(summary)).to_csv(paths["summary_csv"], index=False)
    return paths
