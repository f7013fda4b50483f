"""Evaluation of generated reports: read result CSVs, validate, align systems, score, write summaries.

Input rows: one study per row with an id, a generated report and a reference (column names
configurable; the defaults match ``generate_cxr.py``'s output: ``id``, ``generated_report``,
``reference``, and ``status``). Row handling, all of it counted in the summary:

* ``status`` other than ``ok`` (the runner writes ``error`` when generation failed): the row has no
  report; it is excluded from the scores and counted as ``n_error`` (ids under ``excluded.error``).
* empty reference: excluded and counted as ``n_empty_reference`` (ids under ``excluded``).
* empty generated report (blank, or NaN/None, or one of the strings ``nan``, ``none``, ``null`` in any
  case after stripping): scored 0 on every text metric, all observations "not mentioned" for the
  clinical metrics, and counted as ``n_empty``.
* a duplicated id, a missing column, an empty id or a malformed CSV line is an error naming it.

Several systems (one CSV or set of shard parts per model) are aligned on the ids they all can be
scored on, in the baseline's order; ids dropped from a system are counted per reason. The
references of a shared id must be the same text in every system. Every system is then scored on
the shared studies and all of them are resampled with the same bootstrap draws, which makes the
paired comparison against the baseline possible (:mod:`cxrgen.metrics.bootstrap`).

Outputs (:func:`write_outputs`): ``per_sample.csv``, ``summary.json``, ``summary.md`` and
``summary.csv``; :func:`format_table` gives the aligned terminal table.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from cxrgen import parts
from cxrgen.metrics import bootstrap, clinical, meteor, model_based
from cxrgen.metrics.signature import make_signature
from cxrgen.metrics.suite import Scores, score_texts

DEFAULT_ID_COL = "id"
DEFAULT_HYP_COL = "generated_report"
DEFAULT_REF_COL = "reference"
DEFAULT_STATUS_COL = "status"
EMPTY_STRINGS = {"", "nan", "none", "null"}
GENERIC_STEMS = {"results", "generated", "generated_reports", "predictions", "outputs", "reports"}
_SHARD = re.compile(r"shard-\d+-of-\d+")
_SOURCE_FILE = "_source_file"
_SOURCE_LINE = "_source_line"


class EvaluationInputError(ValueError):
    """Bad input: the message names the file, column, line or ids concerned."""


# ----------------------------------------------------------------------------------------------
# Reading


def committed_length(path: Path) -> int | None:
    """The committed byte length of a runner shard part (see :mod:`cxrgen.parts`), or None."""
    if not _SHARD.fullmatch(path.stem):
        return None
    try:
        marker = parts.read_marker(path)
    except ValueError as exc:
        raise EvaluationInputError(str(exc)) from None
    return None if marker is None else marker[1]


def read_results_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV strictly: every value a string, quoting errors and rows whose field count
    differs from the header's are errors with the line number where the record starts. The frame
    gets two extra columns naming the source file and line of each row.

    A runner shard part with a ``.committed`` file is read up to its committed length; bytes
    after it (a batch being written when the run stopped) are ignored and reported on stderr."""
    path = Path(path)
    csv.field_size_limit(1 << 27)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EvaluationInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EvaluationInputError(f"{path}: is a folder, not a CSV file") from None
    limit = committed_length(path)
    if limit is not None and len(raw) > limit:
        print(
            f"evaluate.py: {path}: reading the committed {limit} bytes, ignoring {len(raw) - limit} bytes "
            "written after them (an unfinished batch)",
            file=sys.stderr,
        )
        raw = raw[:limit]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise EvaluationInputError(f"{path}, line {line}: not valid UTF-8 text") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise EvaluationInputError(f"{path}: the file is empty (no header line)") from None
        except csv.Error as exc:
            raise EvaluationInputError(f"{path}, line 1: malformed CSV header ({exc})") from None
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise EvaluationInputError(f"{path}: duplicate column names in the header: {', '.join(dup)}")
        rows, lines = [], []
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise EvaluationInputError(
                    f"{path}, line {start}: malformed CSV ({exc}); check the quoting of this record"
                ) from None
            if row and len(row) != len(header):
                raise EvaluationInputError(
                    f"{path}, line {start}: {len(row)} fields where the header has {len(header)}; "
                    "check the quoting of this record"
                )
            if row:
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df[_SOURCE_FILE] = str(path)
    df[_SOURCE_LINE] = lines
    return df


def expand_inputs(args: Sequence[str]) -> list[tuple[str | None, Path]]:
    """``NAME=PATH`` or ``PATH`` arguments, with glob patterns expanded (sorted), to
    ``(explicit name or None, path)`` pairs. A pattern matching nothing is an error."""
    out: list[tuple[str | None, Path]] = []
    for arg in args:
        name = None
        m = re.match(r"^([A-Za-z0-9_.+-]+)=(.+)$", arg)
        if m and not os.path.exists(arg):
            name, arg = m.group(1), m.group(2)
        if any(ch in arg for ch in "*?["):
            matches = sorted(glob.glob(arg))
            if not matches:
                raise EvaluationInputError(f"{arg}: the pattern matches no file")
            out += [(name, Path(p)) for p in matches]
        else:
            out.append((name, Path(arg)))
    return out


def system_of(path: Path) -> tuple[str, str]:
    """``(default name, grouping key)`` of a results file. Shard parts
    ``<run>/parts/shard-<i>-of-<n>.csv`` belong to the run folder ``<run>``; a file whose stem is
    generic (``results``, ``generated_reports``, ``predictions``, ...) is named after its folder;
    any other file after its stem."""
    if path.parent.name == "parts" and _SHARD.fullmatch(path.stem):
        run = path.parent.parent
        return (run.resolve().name or str(run)), str(run.resolve())
    if path.stem.lower() in GENERIC_STEMS and path.resolve().parent.name:
        return path.resolve().parent.name, str(path.resolve())
    return path.stem, str(path.resolve())


def load_systems(args: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Read all inputs; shard parts of one run are concatenated into one system."""
    groups: dict[str, tuple[str, list[Path]]] = {}
    for explicit, path in expand_inputs(args):
        default_name, key = system_of(path)
        name = explicit or default_name
        if explicit:
            key = f"named:{explicit}"
        if key in groups:
            groups[key][1].append(path)
        else:
            groups[key] = (name, [path])
    names = [n for n, _ in groups.values()]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        detail = "; ".join(
            f"{n}: " + ", ".join(str(p) for nm, ps in groups.values() if nm == n for p in ps) for n in clash
        )
        raise EvaluationInputError(
            f"several inputs have the same system name ({detail}); name them explicitly as NAME=PATH"
        )
    systems = {}
    for name, paths in groups.values():
        started = [p for p in paths if committed_length(p) != 0]
        for p in paths:
            if p not in started:
                print(f"evaluate.py: {p}: skipped, nothing committed yet (shard not started)", file=sys.stderr)
        if not started:
            raise EvaluationInputError(f"system {name}: none of its shard parts has committed rows")
        frames = [read_results_csv(p) for p in started]
        systems[name] = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return systems


# ----------------------------------------------------------------------------------------------
# Validation


def is_empty_text(value) -> bool:
    """Whether a cell counts as no text: None, NaN, blank, or 'nan'/'none'/'null' in any case."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip().lower() in EMPTY_STRINGS


def _where(df: pd.DataFrame) -> str:
    if _SOURCE_FILE in df.columns and len(df):
        files = list(dict.fromkeys(df[_SOURCE_FILE].astype(str)))
        return files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more parts)"
    return "the results table"


def _row_ref(df: pd.DataFrame, i) -> str:
    if _SOURCE_FILE in df.columns:
        return f"{df.at[i, _SOURCE_FILE]}, line {df.at[i, _SOURCE_LINE]}"
    return f"row {i}"


@dataclass
class Prepared:
    """The usable rows of one system and what was excluded."""

    name: str
    frame: pd.DataFrame  # usable rows only, original index
    ids: list[str]
    n_rows: int
    excluded: dict[str, list[str]] = field(default_factory=dict)


def prepare(
    df: pd.DataFrame,
    name: str,
    id_col: str = DEFAULT_ID_COL,
    hyp_col: str = DEFAULT_HYP_COL,
    ref_col: str = DEFAULT_REF_COL,
    status_col: str | None = DEFAULT_STATUS_COL,
) -> Prepared:
    """Validate one system's rows and split off the rows that cannot be scored."""
    where = _where(df)
    visible = [c for c in df.columns if c not in (_SOURCE_FILE, _SOURCE_LINE)]
    for col, flag in ((id_col, "--id-col"), (hyp_col, "--hyp-col"), (ref_col, "--ref-col")):
        if col not in df.columns:
            raise EvaluationInputError(
                f"{where}: no column {col!r} ({flag}); the columns are: {', '.join(map(str, visible))}"
            )
    ids = df[id_col]
    empty_id = [i for i in df.index if is_empty_text(ids[i])]
    if empty_id:
        raise EvaluationInputError(f"{where}: empty id at " + "; ".join(_row_ref(df, i) for i in empty_id[:5]))
    ids = ids.astype(str).str.strip()
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        uniq = list(dict.fromkeys(dup))
        shown = ", ".join(uniq[:10]) + (f" and {len(uniq) - 10} more" if len(uniq) > 10 else "")
        raise EvaluationInputError(f"{where}: duplicate ids in column {id_col!r}: {shown}")
    excluded: dict[str, list[str]] = {"error": [], "empty_reference": []}
    keep = np.ones(len(df), dtype=bool)
    if status_col and status_col in df.columns:
        status = df[status_col].map(lambda v: "" if is_empty_text(v) else str(v).strip().lower())
        bad = (status != "ok") & (status != "")
        excluded["error"] = ids[bad].tolist()
        keep &= ~bad.to_numpy()
    empty_ref = df[ref_col].map(is_empty_text).to_numpy() & keep
    excluded["empty_reference"] = ids[empty_ref].tolist()
    keep &= ~empty_ref
    frame = df.loc[keep].copy()
    frame[id_col] = ids[keep]
    return Prepared(name=name, frame=frame, ids=frame[id_col].tolist(), n_rows=len(df), excluded=excluded)


def align(prepared: list[Prepared], id_col: str, ref_col: str) -> tuple[list[str], dict[str, dict]]:
    """Ids usable in every system (in the first system's order) and, per system, the ids dropped
    because another system cannot score them, counted by reason."""
    usable = [set(p.ids) for p in prepared]
    shared_set = set.intersection(*usable)
    shared = [i for i in prepared[0].ids if i in shared_set]
    errors = [set(p.excluded.get("error", [])) for p in prepared]
    empty_refs = [set(p.excluded.get("empty_reference", [])) for p in prepared]
    dropped: dict[str, dict] = {}
    for k, p in enumerate(prepared):
        reasons: dict[str, int] = {}
        ids = []
        for i in p.ids:
            if i in shared_set:
                continue
            ids.append(i)
            for j, q in enumerate(prepared):
                if j == k or i in usable[j]:
                    continue
                if i in errors[j]:
                    why = f"status error in {q.name}"
                elif i in empty_refs[j]:
                    why = f"empty reference in {q.name}"
                else:
                    why = f"absent from {q.name}"
                reasons[why] = reasons.get(why, 0) + 1
        dropped[p.name] = {"n": len(ids), "reasons": reasons, "ids": ids}
    base = prepared[0].frame.set_index(id_col)[ref_col]
    for p in prepared[1:]:
        other = p.frame.set_index(id_col)[ref_col]
        differ = [i for i in shared if str(base[i]).strip() != str(other[i]).strip()]
        if differ:
            raise EvaluationInputError(
                f"systems {prepared[0].name} and {p.name} have different references for {len(differ)} "
                f"shared ids (e.g. {', '.join(differ[:5])}); they were not evaluated on the same data"
            )
    return shared, dropped


# ----------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Evaluation:
    """One system's result: ``per_sample`` (indexed like the input's scored rows), ``summary`` (the
    dict stored under ``summary.json["systems"][name]``) and the ``signature``."""

    name: str
    per_sample: pd.DataFrame
    summary: dict
    signature: str
    scores: Scores | None = None


@dataclass
class Report:
    """The evaluation of one or more systems, aligned, with comparisons against the baseline."""

    signature: str
    systems: dict[str, Evaluation]
    baseline: str
    comparisons: list[dict]
    alignment: dict | None
    settings: dict

    def summary_dict(self) -> dict:
        out = {
            "signature": self.signature,
            "interval_method": bootstrap.METHOD,
            "test_method": bootstrap.TEST_METHOD,
            "settings": self.settings,
            "systems": {name: ev.summary for name, ev in self.systems.items()},
            "baseline": self.baseline,
            "comparisons": self.comparisons,
        }
        if self.alignment is not None:
            out["alignment"] = self.alignment
        return out


def _labels_string(codes: np.ndarray) -> list[str]:
    out = []
    for row in codes:
        out.append(";".join(f"{c}:{int(v)}" for c, v in zip(clinical.COLUMNS, row) if v != clinical.NOT_MENTIONED))
    return out


def _metric_entry(value: float, boot: np.ndarray | None) -> dict:
    entry = {"value": float(value)}
    entry["ci"] = bootstrap.percentile_interval(boot) if boot is not None and len(boot) else None
    return entry


def evaluate_systems(
    frames: dict[str, pd.DataFrame],
    *,
    baseline: str | None = None,
    id_col: str = DEFAULT_ID_COL,
    hyp_col: str = DEFAULT_HYP_COL,
    ref_col: str = DEFAULT_REF_COL,
    status_col: str | None = DEFAULT_STATUS_COL,
    n_boot: int = 1000,
    seed: int = 0,
    compat: str | None = None,
    clinical_metrics: bool = True,
    uncertain: str = "positive",
    use_meteor: bool = True,
    model_metrics: Sequence[str] = (),
    label_reports: Callable[[list[str]], list[dict]] | None = None,
) -> Report:
    """Score every system in ``frames`` (name -> rows) on the studies they share and compare each
    with ``baseline`` (default: the first). See the module docstring for the row rules."""
    if not frames:
        raise EvaluationInputError("no results to evaluate")
    if n_boot < 0:
        raise EvaluationInputError("--n-boot must be 0 or more")
    if uncertain not in clinical.POLICIES:
        raise EvaluationInputError(f"--uncertain must be one of {', '.join(clinical.POLICIES)}, not {uncertain!r}")
    names = list(frames)
    baseline = baseline or names[0]
    if baseline not in frames:
        raise EvaluationInputError(f"baseline {baseline!r} is not one of the systems: {', '.join(names)}")
    order = [baseline] + [n for n in names if n != baseline]
    prepared = {n: prepare(frames[n], n, id_col, hyp_col, ref_col, status_col) for n in order}
    for p in prepared.values():
        if not p.ids:
            raise EvaluationInputError(
                f"{_where(frames[p.name])}: no row can be scored ({p.n_rows} rows, "
                f"{len(p.excluded['error'])} with status error, {len(p.excluded['empty_reference'])} with an empty reference)"
            )
    alignment = None
    if len(order) > 1:
        shared, dropped = align([prepared[n] for n in order], id_col, ref_col)
        if not shared:
            raise EvaluationInputError(f"the systems {', '.join(order)} share no scorable study id")
        alignment = {"n_shared": len(shared), "dropped": dropped}
        for n in order:
            p = prepared[n]
            pos = {i: k for k, i in enumerate(p.ids)}
            keep_rows = [pos[i] for i in shared]
            p.frame = p.frame.iloc[keep_rows]
            p.excluded["not_shared"] = dropped[n]["ids"]
            p.ids = list(shared)

    # Clinical labels of the references are the same for every system: label them once.
    clinical_reason = None
    labeler_version = None
    ref_labels = None
    if clinical_metrics:
        try:
            if label_reports is None:
                labeler_version = clinical.labeler_version()
            else:
                labeler_version = getattr(label_reports, "LABELER_VERSION", None) or getattr(
                    label_reports, "__name__", "custom"
                )
            refs0 = [text_or_empty(v) for v in prepared[baseline].frame[ref_col]]
            ref_labels = clinical.label_texts(refs0, label_reports)
        except ImportError as exc:
            clinical_reason = f"the CheXpert labeler could not be imported ({exc})"
            labeler_version = None
    use_clinical = clinical_metrics and clinical_reason is None

    model_names = model_based.resolve(model_metrics)
    meteor_version = None
    if use_meteor and compat is None and meteor.meteor_availability()[0]:
        meteor_version = meteor.nltk_version()
    signature = make_signature(
        compat=compat,
        n_boot=n_boot,
        seed=seed,
        meteor_version=meteor_version,
        labeler_version=labeler_version if use_clinical else None,
        uncertain=uncertain if use_clinical else None,
        model_metrics=tuple(model_names),
    )

    scores: dict[str, Scores] = {}
    for n in order:
        p = prepared[n]
        hyps = [text_or_empty(v) for v in p.frame[hyp_col]]
        refs = [text_or_empty(v) for v in p.frame[ref_col]]
        s = score_texts(
            hyps,
            refs,
            compat=compat,
            clinical_metrics=use_clinical,
            uncertain=uncertain,
            use_meteor=use_meteor,
            label_reports=label_reports,
            ref_labels=ref_labels,
        )
        if clinical_reason:
            s.unavailable["clinical"] = clinical_reason
        elif not clinical_metrics:
            s.unavailable["clinical"] = "disabled"
        model_based.add_model_metrics(s, model_names, hyps, refs, uncertain)
        scores[n] = s

    boot_sums = (
        bootstrap.resampled_sums([scores[n].stats for n in order], n_boot, seed) if n_boot > 0 else [None] * len(order)
    )
    boot_values = {n: (scores[n].from_sums(bs) if bs is not None else None) for n, bs in zip(order, boot_sums)}
    points = {n: scores[n].point() for n in order}

    evaluations = {}
    for n in order:
        p, s = prepared[n], scores[n]
        summary = _system_summary(p, s, points[n], boot_values[n], hyp_col, use_clinical, labeler_version, uncertain)
        per_sample = _per_sample_frame(p, s, id_col, hyp_col)
        evaluations[n] = Evaluation(name=n, per_sample=per_sample, summary=summary, signature=signature, scores=s)

    comparisons = []
    for n in order[1:]:
        for key in _comparable_keys(scores[n], scores[baseline]):
            diff = points[n][key] - points[baseline][key]
            if boot_values[n] is not None:
                test = bootstrap.paired_test(boot_values[n][key], boot_values[baseline][key], diff)
            else:
                test = {"diff": float(diff), "ci": None, "p_value": None}
            comparisons.append(
                {"system": n, "baseline": baseline, "metric": key, "n": scores[n].n, **test}
            )
    settings = {
        "id_col": id_col,
        "hyp_col": hyp_col,
        "ref_col": ref_col,
        "status_col": status_col,
        "n_boot": n_boot,
        "seed": seed,
        "compat": compat,
        "clinical": use_clinical,
        "uncertain": uncertain if use_clinical else None,
        "model_metrics": list(model_names),
    }
    return Report(
        signature=signature,
        systems=evaluations,
        baseline=baseline,
        comparisons=comparisons,
        alignment=alignment,
        settings=settings,
    )


def text_or_empty(value) -> str:
    """The cell as text, '' for what :func:`is_empty_text` calls empty."""
    return "" if is_empty_text(value) else str(value)


def _comparable_keys(a: Scores, b: Scores) -> list[str]:
    bk = {m.key for m in b.metrics}
    return [m.key for m in a.metrics if m.group != "observation" and m.key in bk]


def _system_summary(
    p: Prepared,
    s: Scores,
    point: dict[str, float],
    boot: dict[str, np.ndarray] | None,
    hyp_col: str,
    use_clinical: bool,
    labeler_version: str | None,
    uncertain: str,
) -> dict:
    hyps = p.frame[hyp_col]
    empty_ids = [i for i, v in zip(p.ids, hyps) if is_empty_text(v)]
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
    summary["empty_ids"] = empty_ids
    summary["excluded"] = excluded
    for m in s.metrics:
        if m.group in ("text", "model"):
            summary["metrics"][m.key] = _metric_entry(point[m.key], boot[m.key] if boot else None)
    summary["unavailable"] = dict(s.unavailable)
    if use_clinical and s.outcome_cols is not None:
        sums = s.stats[:, s.outcome_cols].sum(axis=0).reshape(len(clinical.COLUMNS), 4)
        defined = clinical.per_observation(sums)["defined"]
        per_obs = {}
        for j, col in enumerate(clinical.COLUMNS):
            entry = {}
            for stat in clinical.STATS:
                key = f"obs:{col}:{stat}"
                entry[stat] = _metric_entry(point[key], boot[key] if boot else None) if defined[j] else None
            entry["tp"], entry["fp"], entry["fn"], entry["tn"] = (int(x) for x in sums[j])
            entry["ref_positive"] = int(sums[j, 0] + sums[j, 2])
            entry["hyp_positive"] = int(sums[j, 0] + sums[j, 1])
            entry["n_judged"] = int(sums[j].sum())
            per_obs[col] = entry
        summary["clinical"] = {
            "labeler": labeler_version,
            "uncertain": uncertain,
            "sets": {k: list(v) for k, v in clinical.OBSERVATION_SETS.items()},
            "metrics": {
                k: _metric_entry(point[k], boot[k] if boot else None)
                for k in clinical.metric_keys()
            },
            "per_observation": per_obs,
        }
    return summary


def _per_sample_frame(p: Prepared, s: Scores, id_col: str, hyp_col: str) -> pd.DataFrame:
    data = {"id": p.ids, "empty_hyp": [is_empty_text(v) for v in p.frame[hyp_col]]}
    for key, values in s.per_sample.items():
        data[key] = values
    if s.hyp_labels is not None:
        data["hyp_labels"] = _labels_string(s.hyp_labels)
        data["ref_labels"] = _labels_string(s.ref_labels)
    return pd.DataFrame(data, index=p.frame.index)


def evaluate_frame(
    df: pd.DataFrame,
    *,
    name: str,
    id_col: str = DEFAULT_ID_COL,
    hyp_col: str = DEFAULT_HYP_COL,
    ref_col: str = DEFAULT_REF_COL,
    status_col: str | None = DEFAULT_STATUS_COL,
    n_boot: int = 1000,
    seed: int = 0,
    compat: str | None = None,
    clinical: bool = True,
    uncertain: str = "positive",
    use_meteor: bool = True,
    model_metrics: Sequence[str] = (),
    label_reports: Callable[[list[str]], list[dict]] | None = None,
) -> Evaluation:
    """Evaluate one system's rows (see the module docstring); ``.per_sample`` is indexed like the
    scored rows of ``df``, ``.summary`` is ``summary.json["systems"][name]``."""
    report = evaluate_systems(
        {name: df},
        id_col=id_col,
        hyp_col=hyp_col,
        ref_col=ref_col,
        status_col=status_col,
        n_boot=n_boot,
        seed=seed,
        compat=compat,
        clinical_metrics=clinical,
        uncertain=uncertain,
        use_meteor=use_meteor,
        model_metrics=model_metrics,
        label_reports=label_reports,
    )
    return report.systems[name]


# ----------------------------------------------------------------------------------------------
# Writing


def metrics_json(evaluation: Evaluation) -> dict:
    """A run's ``metrics.json`` content: signature, n, n_empty, metrics and clinical."""
    s = evaluation.summary
    return {
        "signature": evaluation.signature,
        "n": s["n"],
        "n_empty": s["n_empty"],
        "metrics": s["metrics"],
        "clinical": s.get("clinical", {}),
    }


def write_metrics_json(evaluation: Evaluation, path: str | os.PathLike) -> Path:
    """Write :func:`metrics_json` to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics_json(evaluation), indent=2) + "\n")
    return path


def _fmt(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _fmt_entry(entry: dict | None) -> str:
    if entry is None:
        return "—"
    ci = entry.get("ci")
    return _fmt(entry["value"]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The comparison table as a header and rows of strings: metric, then per system its value
    and interval, and for each non-baseline system its difference and p-value."""
    names = list(report.systems)
    header = ["metric"]
    for n in names:
        header.append(n + (" (baseline)" if n == report.baseline and len(names) > 1 else ""))
        if n != report.baseline:
            header.append(f"Δ {n} (p)")
    comp = {(c["system"], c["metric"]): c for c in report.comparisons}
    keys: list[str] = []
    for ev in report.systems.values():
        for k in list(ev.summary["metrics"]) + list(ev.summary.get("clinical", {}).get("metrics", {})):
            if k not in keys:
                keys.append(k)
    rows = []
    for k in keys:
        row = [k]
        for n in names:
            s = report.systems[n].summary
            entry = s["metrics"].get(k) or s.get("clinical", {}).get("metrics", {}).get(k)
            row.append(_fmt_entry(entry))
            if n != report.baseline:
                c = comp.get((n, k))
                row.append("—" if c is None else f"{c['diff']:+.4f} ({_fmt_p(c['p_value'])})")
        rows.append(row)
    return header, rows


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return lines


def _observation_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    header = ["observation", "precision", "recall", "F1", "ref +", "gen +", "judged"]
    rows = []
    for col, e in summary["clinical"]["per_observation"].items():
        rows.append(
            [col, _fmt_entry(e["precision"]), _fmt_entry(e["recall"]), _fmt_entry(e["f1"]),
             str(e["ref_positive"]), str(e["hyp_positive"]), str(e["n_judged"])]
        )
    return header, rows


def format_table(report: Report) -> str:
    """Aligned plain-text tables for the terminal: counts, the metric table (text metrics, then
    clinical metrics), the per-observation table of each system, and notes on methods."""
    header, rows = table_rows(report)
    clinical_keys = set(clinical.metric_keys())
    text_rows = [r for r in rows if r[0] not in clinical_keys]
    clin_rows = [r for r in rows if r[0] in clinical_keys]
    lines = [f"signature: {report.signature}"]
    lines += _count_lines(report)
    lines.append("")
    lines += _aligned(header, text_rows + ([["clinical (CheXpert labels)"] + [""] * (len(header) - 1)] + clin_rows if clin_rows else []))
    for name, ev in report.systems.items():
        if ev.summary.get("clinical"):
            lines += ["", f"per-observation labels, {name}:"]
            lines += _aligned(*_observation_rows(ev.summary))
    lines.append("")
    lines += _note_lines(report)
    return "\n".join(lines)


def _count_lines(report: Report) -> list[str]:
    out = []
    for n, ev in report.systems.items():
        s = ev.summary
        parts = [f"{s['n']} scored", f"{s['n_empty']} empty generated reports (scored 0)"]
        parts.append(f"{s['n_error']} status-error rows excluded")
        parts.append(f"{s['n_empty_reference']} empty references excluded")
        if "n_not_shared" in s:
            parts.append(f"{s['n_not_shared']} not shared with every system")
        out.append(f"{n}: {s['n_rows']} rows; " + ", ".join(parts))
    if report.alignment:
        for n, d in report.alignment["dropped"].items():
            if d["n"]:
                why = ", ".join(f"{k}: {v}" for k, v in d["reasons"].items())
                out.append(f"  dropped from {n}: {d['n']} ({why})")
    return out


def _note_lines(report: Report) -> list[str]:
    out = [f"intervals: {bootstrap.METHOD}, {report.settings['n_boot']} resamples, seed {report.settings['seed']}"]
    if len(report.systems) > 1:
        out.append(f"p-values: {bootstrap.TEST_METHOD}")
    unavailable: dict[str, str] = {}
    for ev in report.systems.values():
        unavailable.update(ev.summary.get("unavailable", {}))
    for k, why in unavailable.items():
        out.append(f"{k}: not computed — {why}")
    if report.settings.get("clinical"):
        out.append(
            f"clinical: labeler {next(iter(report.systems.values())).summary['clinical']['labeler']}, "
            f"uncertain counted as {report.settings['uncertain']}; sets: "
            + "; ".join(f"{k} = {', '.join(v)}" for k, v in clinical.OBSERVATION_SETS.items() if k != "chexpert14")
            + "; chexpert14 = all 14"
        )
    return out


def _markdown(report: Report) -> str:
    header, rows = table_rows(report)
    md = ["# Evaluation summary", "", f"Signature: `{report.signature}`", ""]
    md += [f"- {line.strip()}" for line in _count_lines(report)]
    md += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [""] + [f"- {line}" for line in _note_lines(report)]
    for n, ev in report.systems.items():
        cl = ev.summary.get("clinical")
        if not cl:
            continue
        oh, orows = _observation_rows(ev.summary)
        md += ["", f"## Per-observation labels: {n}", ""]
        md += ["| " + " | ".join(oh) + " |", "|" + "|".join("---" for _ in oh) + "|"]
        md += ["| " + " | ".join(r) + " |" for r in orows]
    return "\n".join(md) + "\n"


def _csv_rows(report: Report) -> list[dict]:
    comp = {(c["system"], c["metric"]): c for c in report.comparisons}
    out = []
    for n, ev in report.systems.items():
        s = ev.summary
        entries = dict(s["metrics"])
        entries.update(s.get("clinical", {}).get("metrics", {}))
        for k, e in entries.items():
            c = comp.get((n, k), {})
            ci = e.get("ci") or [None, None]
            dci = c.get("ci") or [None, None]
            out.append(
                {
                    "system": n,
                    "metric": k,
                    "n": s["n"],
                    "value": e["value"],
                    "ci_low": ci[0],
                    "ci_high": ci[1],
                    "baseline": report.baseline if n != report.baseline else "",
                    "diff": c.get("diff"),
                    "diff_ci_low": dci[0],
                    "diff_ci_high": dci[1],
                    "p_value": c.get("p_value"),
                    "signature": report.signature,
                }
            )
    return out


def write_outputs(report: Report, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write per_sample.csv, summary.json, summary.md and summary.csv into ``output_dir``."""
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
    pd.concat(frames, ignore_index=True).to_csv(paths["per_sample"], index=False)
    paths["summary_json"].write_text(json.dumps(report.summary_dict(), indent=2) + "\n")
    paths["summary_md"].write_text(_markdown(report))
    pd.DataFrame(_csv_rows(report)).to_csv(paths["summary_csv"], index=False)
    return paths


def default_output_dir(first_input: Path) -> Path:
    """Beside the first CSV; for shard parts, their run folder."""
    if first_input.parent.name == "parts" and _SHARD.fullmatch(first_input.stem):
        return first_input.parent.parent
    return first_input.parent


# ----------------------------------------------------------------------------------------------
# Labelling a CSV


def label_csv(
    input_path: str | os.PathLike,
    text_col: str,
    output_path: str | os.PathLike,
    id_col: str = DEFAULT_ID_COL,
    label_reports: Callable[[list[str]], list[dict]] | None = None,
) -> pd.DataFrame:
    """Label the reports in ``text_col`` of a CSV and write ``id_col`` plus one column per
    observation (lower_snake): 1 positive, 0 negative, -1 uncertain, empty when not mentioned.
    An empty report gets every observation empty."""
    df = read_results_csv(input_path)
    visible = [c for c in df.columns if c not in (_SOURCE_FILE, _SOURCE_LINE)]
    for col, flag in ((id_col, "--id-col"), (text_col, "--text-col")):
        if col not in df.columns:
            raise EvaluationInputError(
                f"{input_path}: no column {col!r} ({flag}); the columns are: {', '.join(visible)}"
            )
    texts = [text_or_empty(v) for v in df[text_col]]
    labels = clinical.label_texts(texts, label_reports)
    codes = clinical.label_codes(labels, f"{input_path}: labels")
    out = pd.DataFrame({id_col: df[id_col].astype(str).tolist()})
    for j, col in enumerate(clinical.COLUMNS):
        values = codes[:, j]
        out[col] = pd.array([None if v == clinical.NOT_MENTIONED else int(v) for v in values], dtype="Int64")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(output_path, index=False)
    return out
