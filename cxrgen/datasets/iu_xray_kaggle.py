"""Indiana University chest X-rays in the Kaggle layout (the layout of the benchmark this project replaces).

Files under data.root:

    indiana_reports.csv       uid, findings, impression (also read when present: MeSH, Problems, image,
                              indication, comparison)
    indiana_projections.csv   uid, filename, projection ("Frontal" / "Lateral")
    images/                   the image files named in projections.filename, e.g. 1_IM-0001-4001.dcm.png
                              (images/images_normalized/ is used instead when that folder exists, as in the
                              Kaggle download)
    indiana_{train,val,test}.csv   split files with a uid column; needed unless data.split is all. The Kaggle
                              download lacks them; cxrgen.datasets.splits.make_split writes the benchmark's
                              split files from indiana_reports.csv

A study is a report row (id: its uid); its images are the projection rows with the same uid, and their views
are the projection column. The split files of the benchmark are row subsets of indiana_reports.csv; only their
uid column is used, the report text always comes from indiana_reports.csv.

Order. With a split file the studies come in the split file's row order (so the first N of a run are the
benchmark's first N); with data.split all they are sorted by uid (natural order, see cxrgen.datasets.common).
"""

from __future__ import annotations

from pathlib import Path

from .common import (
    DatasetError,
    Found,
    Image,
    Layout,
    MissingSplitError,
    Record,
    build_reference,
    clean_text,
    find_file,
    read_csv,
    require_root,
)

REPORTS_FILE = "indiana_reports.csv"
PROJECTIONS_FILE = "indiana_projections.csv"
SPLIT_FILES = {split: f"indiana_{split}.csv" for split in ("train", "val", "test")}

# indiana_reports.csv columns copied into each study's metadata (lower-cased keys).
_REPORT_FIELDS = ("MeSH", "Problems", "image", "indication", "comparison", "findings", "impression")

LAYOUT = Layout("root", "indiana_reports.csv, indiana_projections.csv and images/", "IU X-ray (Kaggle download)")


def read_split_order(root: Path, split: str, reports: Path | None = None) -> list[str] | None:
    """The uids of ``split`` from ``root/indiana_<split>.csv`` in file order (a repeated uid counts once, where
    it first occurs); None when split is 'all'.

    Raises MissingSplitError when the file is missing (naming every split file looked for; ``reports`` is
    passed on as the table the split can be made from) and DatasetError when it has no uid column.
    """
    if split == "all":
        return None
    path = find_file(root, SPLIT_FILES[split])
    if path is None:
        looked = ", ".join(str(root / name) for name in SPLIT_FILES.values())
        raise MissingSplitError(
            f"data.split={split} needs the split file {root / SPLIT_FILES[split]}, which is missing "
            f"(split files looked for: {looked}); set data.split: all to use every study",
            path=root / SPLIT_FILES[split], root=root, reports=reports,
        )
    frame = read_csv(path, ("uid",), "split file")
    return list(dict.fromkeys(uid for uid in frame["uid"] if uid))


def read_split_uids(root: Path, split: str) -> set[str] | None:
    """The uids of ``split`` as a set (see :func:`read_split_order`); None when split is 'all'."""
    order = read_split_order(root, split)
    return None if order is None else set(order)


def load_records(cfg, root: Path, split: str, counts: dict[str, int]) -> list[Record]:
    """Read the Kaggle IU layout under ``root`` into one Record per report in ``split``; update ``counts``.

    With a split file the records come in its row order, otherwise in the order of indiana_reports.csv.
    """
    reports_path = find_file(root, REPORTS_FILE)
    if reports_path is None:
        raise DatasetError(f"iu_xray_kaggle: {root / REPORTS_FILE} not found (data.root {root})")
    projections_path = find_file(root, PROJECTIONS_FILE)
    if projections_path is None:
        raise DatasetError(f"iu_xray_kaggle: {root / PROJECTIONS_FILE} not found (data.root {root})")
    image_dir = root / "images"
    if (image_dir / "images_normalized").is_dir():
        image_dir = image_dir / "images_normalized"
    if not image_dir.is_dir():
        raise DatasetError(f"iu_xray_kaggle: image folder {image_dir} not found (data.root {root})")

    reports = read_csv(reports_path, ("uid", "findings", "impression"), "reports file")
    projections = read_csv(projections_path, ("uid", "filename", "projection"), "projections file")
    split_order = read_split_order(root, split, reports_path)
    split_uids = None if split_order is None else set(split_order)

    blank = reports.index[reports["uid"] == ""].tolist()
    if blank:
        raise DatasetError(f"reports file {reports_path}: empty uid in data row {blank[0] + 1}")
    duplicated = reports.loc[reports["uid"].duplicated(), "uid"].tolist()
    if duplicated:
        raise DatasetError(f"reports file {reports_path}: uid(s) {', '.join(duplicated[:5])} occur more than once")

    images_by_uid: dict[str, list[Image]] = {}
    for uid, filename, projection in zip(projections["uid"], projections["filename"], projections["projection"]):
        if not uid or not filename:
            continue
        images_by_uid.setdefault(uid, []).append(
            Image(path=str(image_dir / filename), image_id=filename, view=clean_text(projection) or None)
        )

    known = set(reports["uid"])
    counts["total"] = len(reports)
    if split_uids is not None:
        counts["skipped_missing_split"] = len(split_uids - known)

    present = [f for f in _REPORT_FIELDS if f in reports.columns]
    rows = reports.to_dict("records")
    if split_order is not None:
        position = {uid: i for i, uid in enumerate(split_order)}
        rows.sort(key=lambda r: position.get(r["uid"], len(position)))
    records = []
    for row in rows:
        uid = row["uid"]
        if split_uids is not None and uid not in split_uids:
            counts["not_in_split"] += 1
            continue
        metadata = {f.lower(): clean_text(row[f]) for f in present}
        metadata.update(uid=uid, split=None if split == "all" else split)
        records.append(
            Record(
                study_id=uid,
                images=images_by_uid.get(uid, []),
                reference=build_reference(row["findings"], row["impression"], cfg.reference),
                metadata=metadata,
            )
        )
    return records


def read(cfg, split: str, counts: dict[str, int]) -> Found:
    """The studies under data.root (this adapter's entry point, see :mod:`cxrgen.datasets`)."""
    root = require_root(cfg, LAYOUT)
    return Found(load_records(cfg, root, split, counts), f"iu_xray_kaggle dataset {root}", keep_order=split != "all")
