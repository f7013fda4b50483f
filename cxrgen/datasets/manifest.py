"""A list of images and their reference texts in one CSV or JSONL file (data.manifest).

The suffix decides the reader: .csv or .csv.gz (pandas), .jsonl or .jsonl.gz (one JSON object per line).
Columns, named by data.id_column / image_column / reference_column (default id, image_path, reference):

    id            unique per row (duplicates are an error naming them); it is the row id as given
    image_path    absolute, or relative to the manifest's folder
    reference     the reference text as it should be scored; data.reference does not apply to manifests
    view          optional: data.view_column, or a column named "view" when data.view_column is unset.
                  With a view column and views=frontal only rows whose view is PA, AP or frontal are kept.
                  Without one every row is used as-is (each row is taken to be the image to report on).
    split         optional: when present and data.split is not all, only rows of that split are kept
                  (val and validate are the same split); when absent data.split is not applied

Every row is one image; rows are not grouped into studies. All other columns are copied into the metadata.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from .common import DatasetError, Found, Image, Layout, Record, clean_text, load_csv

LAYOUT = Layout("manifest", "a CSV or JSONL file of id, image_path, reference[, view]", "Datasets")


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"manifest {path}: line {number} is not valid JSON ({exc.msg})") from None
                if not isinstance(value, dict):
                    raise DatasetError(f"manifest {path}: line {number} is not a JSON object")
                rows.append((number, value))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"manifest {path} cannot be read: {exc}") from None
    return rows


def _read_rows(path: Path) -> tuple[list[tuple[int, dict]], list[str], str]:
    """(number, row) pairs, the column names, and what the number counts ('data row' for CSV, 'line' for JSONL)."""
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        frame = load_csv(path, "manifest")
        return list(enumerate(frame.to_dict("records"), start=1)), list(frame.columns), "data row"
    if name.endswith((".jsonl", ".jsonl.gz")):
        rows = _read_jsonl(path)
        columns: list[str] = []
        for _, row in rows:
            columns.extend(k for k in row if k not in columns)
        return rows, columns, "line"
    raise DatasetError(f"manifest {path}: unknown suffix; use .csv, .csv.gz, .jsonl or .jsonl.gz")


def _split_name(value: str) -> str:
    value = value.strip().lower()
    return "val" if value == "validate" else value


def _cell(value) -> str:
    return "" if value is None else str(value).strip()


def load_records(cfg, split: str, counts: dict[str, int]) -> tuple[list[Record], bool]:
    """Read data.manifest into one Record per row of ``split``; update ``counts``.

    Returns the records and whether the manifest has a view column.
    """
    if not cfg.manifest:
        raise DatasetError("data.manifest is required for data.format manifest")
    path = Path(os.path.abspath(os.path.expanduser(str(cfg.manifest))))
    if not path.is_file():
        raise DatasetError(f"data.manifest {path} not found")
    rows, columns, unit = _read_rows(path)
    if not rows:
        raise DatasetError(f"manifest {path} has no rows")

    required = [cfg.id_column, cfg.image_column, cfg.reference_column]
    if cfg.view_column:
        required.append(cfg.view_column)
    missing = [c for c in required if c not in columns]
    if missing:
        raise DatasetError(f"manifest {path} lacks column(s) {', '.join(missing)} (has: {', '.join(columns)})")
    view_column = cfg.view_column or ("view" if "view" in columns else None)
    split_column = "split" if "split" in columns else None
    own = {cfg.id_column, cfg.image_column, cfg.reference_column, view_column}

    seen: dict[str, int] = {}
    dupes: list[str] = []
    records = []
    base = path.parent
    for number, row in rows:
        row_id = _cell(row.get(cfg.id_column))
        if not row_id:
            raise DatasetError(f"manifest {path}: {unit} {number} has an empty {cfg.id_column!r}")
        if row_id in seen:
            if row_id not in dupes:
                dupes.append(row_id)
            continue
        seen[row_id] = number
        image = _cell(row.get(cfg.image_column))
        if not image:
            raise DatasetError(f"manifest {path}: {unit} {number} (id {row_id}) has an empty {cfg.image_column!r}")
        image = os.path.expanduser(image)
        image_path = image if os.path.isabs(image) else os.path.abspath(base / image)
        counts["total"] += 1
        if split_column is not None and split != "all":
            row_split = _cell(row.get(split_column))
            if _split_name(row_split) != split:
                counts["not_in_split"] += 1
                continue
        view = (clean_text(row.get(view_column)) or None) if view_column else None
        metadata = {k: v for k, v in row.items() if k not in own}
        records.append(
            Record(
                study_id=row_id,
                images=[Image(path=image_path, image_id=row_id, view=view)],
                reference=clean_text(row.get(cfg.reference_column)),
                metadata=metadata,
            )
        )
    if dupes:
        shown = ", ".join(dupes[:5]) + (f" and {len(dupes) - 5} more" if len(dupes) > 5 else "")
        raise DatasetError(f"manifest {path}: duplicate id(s) {shown}")
    return records, view_column is not None


def read(cfg, split: str, counts: dict[str, int]) -> Found:
    """The rows of data.manifest (this adapter's entry point, see :mod:`cxrgen.datasets`): each row is its own study,
    and without a view column every image counts as frontal."""
    records, has_view = load_records(cfg, split, counts)
    return Found(records, f"manifest {cfg.manifest}", unknown_is_frontal=not has_view, keep_ids=True,
                 reference=f"reference column {cfg.reference_column!r}")
