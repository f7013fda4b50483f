"""Reading results: CSV files, shard parts, system names, the columns to score, image paths.

* :func:`read_results_csv` reads one CSV strictly (every value a string; quoting errors, rows of
  the wrong length, bytes that are not UTF-8 are errors naming the line); a byte-order mark and
  CRLF line ends are fine.
* A runner shard part ``<run>/parts/shard-<i>-of-<n>.csv`` is read through
  :func:`cxrgen.runstore.read_part`: its committed bytes, read consistently while a run may be
  appending to it; a part with nothing committed has no rows.
* :func:`load_systems` groups the inputs into systems: the parts of one run are one system named
  after the run folder; ``NAME=PATH`` names a system.
* :func:`resolve_columns` finds the id, generated-report, reference, status and image columns,
  by the names given or else by the common names of :data:`COLUMN_NAMES` (the runner's ``id``,
  ``generated_report``, ``reference``; the benchmark's ``uid``, ``ground_truth_report``;
  ``study_id``, ``prediction``, ``hypothesis``, ``target``, ``findings``, ...), and logs which
  column was taken for what; :func:`standardise` renames them to the runner's names.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from cxrgen import runstore
from cxrgen.evaluation.common import (
    SOURCE_FILE,
    SOURCE_LINE,
    EvaluationInputError,
    MissingColumnError,
    is_empty_text,
    log,
    visible_columns,
    where,
)

ID, HYP, REF, STATUS, IMAGE = (runstore.COL.id, runstore.COL.generated_report, runstore.COL.reference,
                               runstore.COL.status, runstore.COL.image_path)
ROLES = {"id": "study id", "hyp": "generated report", "ref": "reference report"}
# Accepted names per role, in order of preference (compared lower-case, spaces and '-' as '_').
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "id": ("id", "study_id", "uid", "study", "dicom_id", "image_id", "sample_id", "case_id", "report_id", "idx"),
    "hyp": ("generated_report", "generated", "prediction", "predictions", "pred", "predicted_report", "hypothesis",
            "hyp", "generated_text", "generation", "candidate", "model_output", "output"),
    "ref": ("reference", "ground_truth_report", "ground_truth", "groundtruth", "gt_report", "gt", "target",
            "reference_report", "references", "ref", "report", "findings", "impression", "text"),
    "status": ("status",),
    "image": ("image_path", "image", "img_path", "path", "image_file", "filename", "file", "dicom_path"),
}
CANONICAL = {"id": ID, "hyp": HYP, "ref": REF, "status": STATUS, "image": IMAGE}
GENERIC_STEMS = {"results", "generated", "generated_reports", "predictions", "outputs", "reports"}


# ----------------------------------------------------------------------------------------------
# Files


def input_bytes(path: Path) -> bytes:
    """The bytes of a results file; of a runner shard part, only its committed rows (b"" when nothing is committed
    yet), read through :func:`cxrgen.runstore.read_part`. A part left from an earlier run in its run folder is an
    error."""
    path = Path(path)
    try:
        if runstore.is_part(path) and path.is_file():
            raw = runstore.read_part(path)
            size = path.stat().st_size
            if size > len(raw):
                log.info("%s: reading its %d committed bytes, ignoring %d bytes written after them (rows not yet "
                         "committed)", path, len(raw), size - len(raw))
            return raw
        return path.read_bytes()
    except runstore.RunError as exc:
        raise EvaluationInputError(str(exc)) from None
    except FileNotFoundError:
        raise EvaluationInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise EvaluationInputError(f"{path}: is a folder, not a CSV file") from None
    except OSError as exc:
        raise EvaluationInputError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_results_csv(path: str | os.PathLike, raw: bytes | None = None) -> pd.DataFrame:
    """Read a CSV strictly: every value a string, quoting errors and rows whose field count
    differs from the header's are errors with the line number where the record starts. The frame
    gets two extra columns naming the source file and line of each row. A file with a header and
    no rows gives an empty frame. ``raw``: the file's bytes when already read (:func:`input_bytes`).

    A runner shard part is read up to its committed length (:func:`input_bytes`); a part with
    nothing committed is an error saying so."""
    path = Path(path)
    csv.field_size_limit(1 << 27)
    raw = input_bytes(path) if raw is None else raw
    if not raw and runstore.is_part(path):
        raise EvaluationInputError(f"{path}: nothing committed yet (a shard part whose first rows are being written)")
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise EvaluationInputError(f"{path}, line {line}: a NUL byte; this is not a CSV text file")
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
        header = [h.strip() for h in header]
        if not any(header):
            raise EvaluationInputError(f"{path}, line 1: the header line is blank")
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
    df[SOURCE_FILE] = str(path)
    df[SOURCE_LINE] = lines
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


def is_shard_part(path: Path) -> bool:
    """A runner shard part inside its run folder (``<run>/parts/shard-<i>-of-<n>.csv``)."""
    return path.parent.name == "parts" and runstore.is_part(path)


def system_of(path: Path) -> tuple[str, str]:
    """``(default name, grouping key)`` of a results file. Shard parts
    ``<run>/parts/shard-<i>-of-<n>.csv`` belong to the run folder ``<run>``; a file whose stem is
    generic (``results``, ``generated_reports``, ``predictions``, ...) is named after its folder;
    any other file after its stem."""
    if is_shard_part(path):
        run = path.parent.parent
        return (run.resolve().name or str(run)), str(run.resolve())
    if path.stem.lower() in GENERIC_STEMS and path.resolve().parent.name:
        return path.resolve().parent.name, str(path.resolve())
    return path.stem, str(path.resolve())


def load_systems(args: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Read all inputs; shard parts of one run are concatenated into one system. A system not named on the command
    line is named after its model when its run folder has a run.json (:mod:`cxrgen.evaluation.origins`; two such
    systems of the same model keep their file or folder names), else after its file or folder. A part with
    nothing committed, or only a header, is skipped with a log line; a system with no row at
    all is an error saying there is nothing to score."""
    from cxrgen.evaluation.origins import model_name, origin_of

    groups: dict[str, tuple[str, list[Path]]] = {}
    unnamed: set[str] = set()
    for explicit, path in expand_inputs(args):
        default_name, key = system_of(path)
        name = explicit or default_name
        if explicit:
            key = f"named:{explicit}"
        else:
            unnamed.add(key)
        if key in groups:
            groups[key][1].append(path)
        else:
            groups[key] = (name, [path])
    by_model = {key: model_name(origin_of(groups[key][1][0])) for key in unnamed}
    taken = [n for key, (n, _) in groups.items() if key not in unnamed]
    for key, name in by_model.items():
        if name and list(by_model.values()).count(name) == 1 and name not in taken:
            groups[key] = (name, groups[key][1])
    names = [n for n, _ in groups.values()]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        detail = "; ".join(
            f"{n}: " + ", ".join(str(p) for nm, ps in groups.values() if nm == n for p in ps) for n in clash
        )
        raise EvaluationInputError(f"several inputs have the same system name ({detail}); name them as NAME=PATH")
    systems = {}
    for name, paths in groups.values():
        raw = {p: input_bytes(p) for p in paths}
        started = [p for p in paths if raw[p] or not runstore.is_part(p)]
        for p in paths:
            if p not in started:
                log.info("%s: skipped, nothing committed yet (shard not started)", p)
        if not started:
            raise EvaluationInputError(f"system {name}: none of its shard parts has committed rows; nothing to score")
        frames = []
        for p in started:
            df = read_results_csv(p, raw[p])
            if len(df) == 0 and len(started) > 1:
                log.info("%s: a header and no rows; skipped", p)
                continue
            frames.append(df)
        if not frames or all(len(f) == 0 for f in frames):
            shown = str(started[0]) if len(started) == 1 else f"system {name} ({len(started)} files)"
            raise EvaluationInputError(f"{shown}: a header and no rows; nothing to score")
        systems[name] = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return systems


def source_paths(df: pd.DataFrame) -> list[Path]:
    """The files a frame was read from (in order)."""
    if SOURCE_FILE not in df.columns:
        return []
    return [Path(p) for p in dict.fromkeys(df[SOURCE_FILE].astype(str))]


def run_folder(path: Path) -> Path | None:
    """The run folder a results file belongs to, if any: ``<run>`` for its shard parts, or the
    file's folder when the system is named after that folder (a generic file name) or the folder
    holds a ``run.json``."""
    if is_shard_part(path):
        return path.parent.parent
    if path.stem.lower() in GENERIC_STEMS or (path.parent / "run.json").exists():
        return path.parent
    return None


def default_output_dir(first_input: Path, systems: Sequence[str] = ()) -> Path:
    """Where the outputs go by default. One system: beside its CSV (for shard parts, their run
    folder). Several: a folder named after the systems (``a-vs-b``), beside the first CSV's run
    folder when it is in one (never inside a run folder), else beside the first CSV."""
    if len(systems) <= 1:
        return first_input.parent.parent if is_shard_part(first_input) else first_input.parent
    run = run_folder(first_input)
    base = run.resolve().parent if run is not None else first_input.resolve().parent
    name = "-vs-".join(re.sub(r"[^A-Za-z0-9_.+-]+", "_", s) for s in systems)
    if len(name) > 100:
        name = name[:100].rstrip("-_.") + f"-{len(systems)}-systems"
    return base / name


# ----------------------------------------------------------------------------------------------
# Columns


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


@dataclass(frozen=True)
class Columns:
    """The columns of one system's table taken for each role (None: absent)."""

    id: str
    hyp: str
    ref: str
    status: str | None
    image: str | None

    def describe(self) -> str:
        parts_ = [f"id <- {self.id!r}", f"generated report <- {self.hyp!r}", f"reference <- {self.ref!r}"]
        if self.status:
            parts_.append(f"status <- {self.status!r}")
        if self.image:
            parts_.append(f"image <- {self.image!r}")
        return ", ".join(parts_)


def find_column(df: pd.DataFrame, role: str, given: str | None = None, taken: set[str] = frozenset(),
                required: bool = True) -> str | None:
    """The column for one role (``id``, ``hyp``, ``ref``, ``status``, ``image``): ``given`` if
    present, else the first of :data:`COLUMN_NAMES` present and not ``taken``; None or an error
    (``required``) when there is none."""
    cols = visible_columns(df)
    if given:
        if given not in cols:
            if not required:
                return None
            raise MissingColumnError(
                f"{where(df)}: no column {given!r} for the {ROLES[role]}; the columns are: {', '.join(cols)}", role
            )
        return given
    by_norm: dict[str, str] = {}
    for c in cols:
        by_norm.setdefault(_norm(c), c)
    for cand in COLUMN_NAMES[role]:
        c = by_norm.get(cand)
        if c is not None and c not in taken:
            return c
    if required:
        raise MissingColumnError(
            f"{where(df)}: no column for the {ROLES[role]} (looked for {', '.join(COLUMN_NAMES[role][:6])}, ...); "
            f"the columns are: {', '.join(cols)}",
            role,
        )
    return None


def resolve_columns(
    df: pd.DataFrame,
    id_col: str | None = None,
    hyp_col: str | None = None,
    ref_col: str | None = None,
    status_col: str | None = STATUS,
    image_col: str | None = None,
) -> Columns:
    """The columns to score: the names given, else the first common name present
    (:data:`COLUMN_NAMES`); a given name that is absent, or a role with no candidate, is an error
    listing the columns. ``status_col`` and ``image_col`` are optional (``""`` or None for the
    status: none). Logs one line saying which column was taken for what."""
    taken: set[str] = set()
    idc = find_column(df, "id", id_col, taken, True)
    taken.add(idc)
    hyp = find_column(df, "hyp", hyp_col, taken, True)
    taken.add(hyp)
    ref = find_column(df, "ref", ref_col, taken, True)
    taken.add(ref)
    for role, col in (("hyp", hyp), ("ref", ref)):
        if col == idc:
            raise EvaluationInputError(f"{where(df)}: column {col!r} cannot be both the study id and the {ROLES[role]}")
    if hyp == ref:
        raise EvaluationInputError(f"{where(df)}: column {hyp!r} cannot be both the generated report and the reference")
    status = find_column(df, "status", status_col, taken, False) if status_col else None
    image = find_column(df, "image", image_col, taken | {status} if status else taken, False)
    cols = Columns(idc, hyp, ref, status, image)
    log.info("%s: columns: %s", where(df), cols.describe())
    return cols


def standardise(df: pd.DataFrame, cols: Columns) -> pd.DataFrame:
    """A copy of ``df`` whose role columns carry the runner's names (``id``,
    ``generated_report``, ``reference``, ``status``, ``image_path``); a column that already had
    one of those names without being taken for that role is kept as ``<name>_input``."""
    chosen = {"id": cols.id, "hyp": cols.hyp, "ref": cols.ref, "status": cols.status, "image": cols.image}
    rename: dict[str, str] = {}
    for role, src in chosen.items():
        target = CANONICAL[role]
        if src is not None and src != target:
            rename[src] = target
    targets = set(rename.values())
    for c in df.columns:
        if c in targets and c not in rename:
            rename[c] = f"{c}_input"
    return df.rename(columns=rename)


# ----------------------------------------------------------------------------------------------
# Images


@dataclass
class ImageCheck:
    """Image paths of one system: how many rows name one, how many were not found, examples."""

    n_paths: int
    n_missing: int
    missing: list[str]


def resolve_images(df: pd.DataFrame, image_col: str = IMAGE) -> tuple[pd.DataFrame, ImageCheck]:
    """Image paths made absolute where the file exists: as given (relative to the working
    directory), else relative to the folder of the CSV the row came from. Paths found nowhere
    are counted (and kept as they are)."""
    if image_col not in df.columns:
        return df, ImageCheck(0, 0, [])
    out = df.copy()
    n = missing = 0
    examples: list[str] = []
    values = out[image_col].tolist()
    sources = out[SOURCE_FILE].tolist() if SOURCE_FILE in out.columns else [None] * len(out)
    for k, (v, src) in enumerate(zip(values, sources)):
        if is_empty_text(v):
            continue
        n += 1
        p = Path(str(v).strip())
        found = p if p.is_file() else None
        if found is None and not p.is_absolute() and src:
            q = Path(src).parent / p
            found = q if q.is_file() else None
        if found is None:
            missing += 1
            if len(examples) < 3:
                examples.append(str(p))
        else:
            values[k] = str(found.resolve())
    out[image_col] = values
    return out, ImageCheck(n, missing, examples)
