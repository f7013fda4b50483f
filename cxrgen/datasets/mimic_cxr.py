"""MIMIC-CXR-JPG.

Files under data.root:

    mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ViewPosition (PA, AP, LATERAL, LL, ...)
    mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, split (train / validate / test); needed unless data.split is all
    files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg

Reports, by data.reports:

    empty              the report text files files/pXX/pXXXXXXXX/sXXXXXXXX.txt under data.root
    a folder           the same text files under that folder (under its files/ subfolder when it has one)
    a CSV file         a sectioned reports CSV with a study column (s50414267 or 50414267) and the findings
                       and/or impression columns that data.reference needs (the layout of MIMIC-CXR's
                       mimic_cxr_sectioned.csv)

A report text file is split into sections at lines that start with an upper-case header followed by a colon
(``FINDINGS:``, ``IMPRESSION:``, ``COMPARISON:``...); text before the first header is dropped. Findings are the
FINDINGS section, the impression the IMPRESSION section; a header that occurs twice has its parts joined.

A study (id ``s<study_id>``) is in the split when one of its images is (MIMIC-CXR splits by patient, so all
images of a study share it). A study of the selected split whose report is missing (no text file, or no row
in the sectioned CSV) is counted under skipped_no_report before the view rule.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .common import (DatasetError, Found, Image, Layout, Record, build_reference, clean_text, find_file, read_csv,
                     require_root)

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
LAYOUT = Layout("root", f"{METADATA_FILE}, {SPLIT_FILE} and files/")

_SPLIT_LABELS = {"train": "train", "val": "validate", "test": "test"}
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z0-9 ,&/()'-]*?)[ \t]*:", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Split a MIMIC-CXR report into {HEADER: cleaned text} at lines beginning with "HEADER:"."""
    matches = list(_HEADER.finditer(text))
    sections: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        header = " ".join(match.group(1).split())
        body = clean_text(text[match.end() : end])
        sections[header] = f"{sections[header]} {body}".strip() if header in sections else body
    return sections


def study_key(value: str) -> str:
    """'50414267', 's50414267' and ' S50414267 ' all become 's50414267'."""
    value = value.strip().lower()
    return value if value.startswith("s") else f"s{value}"


def _reports_source(cfg, root: Path) -> tuple[str, Path]:
    """('text', folder holding pXX/...) or ('csv', file), from data.reports."""
    if not cfg.reports:
        return "text", root / "files"
    path = Path(os.path.abspath(os.path.expanduser(str(cfg.reports))))
    if path.is_dir():
        return "text", (path / "files" if (path / "files").is_dir() else path)
    if path.is_file():
        return "csv", path
    if not path.exists():
        raise DatasetError(f"mimic_cxr: data.reports {path} not found")
    raise DatasetError(f"mimic_cxr: data.reports {path} is neither a reports CSV nor a folder")


def _read_sectioned_csv(path: Path, mode: str) -> dict[str, tuple[str, str]]:
    needed = ("study",) + (("findings", "impression") if mode == "findings+impression" else (mode,))
    frame = read_csv(path, needed, "sectioned reports file")
    findings = frame["findings"] if "findings" in frame.columns else [""] * len(frame)
    impression = frame["impression"] if "impression" in frame.columns else [""] * len(frame)
    return {study_key(s): (f, i) for s, f, i in zip(frame["study"], findings, impression) if s}


def _read_text_report(folder: Path, subject_id: str, study: str) -> tuple[str, str] | None:
    path = folder / f"p{subject_id[:2]}" / f"p{subject_id}" / f"{study}.txt"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatasetError(f"mimic_cxr: report {path} cannot be read: {exc}") from None
    sections = report_sections(text)
    return sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")


def load_records(cfg, root: Path, split: str, counts: dict[str, int]) -> list[Record]:
    """Read MIMIC-CXR-JPG under ``root`` into one Record per study in ``split``; update ``counts``."""
    files_dir = root / "files"
    if not files_dir.is_dir():
        raise DatasetError(f"mimic_cxr: image folder {files_dir} not found (data.root {root})")
    metadata_path = find_file(root, METADATA_FILE)
    if metadata_path is None:
        raise DatasetError(f"mimic_cxr: {root / METADATA_FILE} (or .gz) not found (data.root {root})")
    split_path = find_file(root, SPLIT_FILE)
    if split_path is None and split != "all":
        raise DatasetError(
            f"mimic_cxr: data.split={split} needs {root / SPLIT_FILE} (or .gz), which is missing; "
            f"set data.split: all to use every study"
        )
    source, reports_path = _reports_source(cfg, root)
    if source == "text" and not reports_path.is_dir():
        raise DatasetError(f"mimic_cxr: report folder {reports_path} not found; set data.reports")

    meta = read_csv(metadata_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"), "metadata file")
    split_of: dict[str, str] = {}
    if split_path is not None:
        split_frame = read_csv(split_path, ("dicom_id", "split"), "split file")
        split_of = {d: s.lower() for d, s in zip(split_frame["dicom_id"].tolist(), split_frame["split"].tolist()) if d}

    studies: dict[str, dict] = {}
    files_str = str(files_dir)
    for number, (dicom_id, subject_id, study_id, view) in enumerate(
        zip(*(meta[c].tolist() for c in ("dicom_id", "subject_id", "study_id", "ViewPosition"))), start=1
    ):
        if not dicom_id or not subject_id or not study_id:
            raise DatasetError(
                f"metadata file {metadata_path}: data row {number} lacks dicom_id, subject_id or study_id"
            )
        study = study_key(study_id)
        entry = studies.setdefault(study, {"subject_id": subject_id, "images": [], "splits": set()})
        if entry["subject_id"] != subject_id:
            raise DatasetError(
                f"metadata file {metadata_path}: study {study} has subjects {entry['subject_id']} and {subject_id}"
            )
        path = os.path.join(files_str, f"p{subject_id[:2]}", f"p{subject_id}", study, f"{dicom_id}.jpg")
        entry["images"].append(Image(path=path, image_id=dicom_id, view=clean_text(view) or None))
        if dicom_id in split_of:
            entry["splits"].add(split_of[dicom_id])

    counts["total"] = len(studies)
    counts["skipped_no_report"] = 0
    if split != "all":
        wanted = _SPLIT_LABELS[split]
        known = {image.image_id for entry in studies.values() for image in entry["images"]}
        missing = {d for d, s in split_of.items() if s == wanted and d not in known}
        if missing:
            split_frame = split_frame[split_frame["dicom_id"].isin(missing)]
            if "study_id" in split_frame.columns:
                counts["skipped_missing_split"] = split_frame["study_id"].map(study_key).nunique()
            else:
                counts["skipped_missing_split"] = len(missing)

    sectioned = _read_sectioned_csv(reports_path, cfg.reference) if source == "csv" else None
    records = []
    first_missing = None
    for study, entry in studies.items():
        if split != "all" and _SPLIT_LABELS[split] not in entry["splits"]:
            counts["not_in_split"] += 1
            continue
        if sectioned is not None:
            texts = sectioned.get(study)
        else:
            texts = _read_text_report(reports_path, entry["subject_id"], study)
        if texts is None:
            counts["skipped_no_report"] += 1
            if first_missing is None:
                first_missing = (
                    f"study {study} in {reports_path}"
                    if sectioned is not None
                    else str(reports_path / f"p{entry['subject_id'][:2]}" / f"p{entry['subject_id']}" / f"{study}.txt")
                )
            continue
        findings, impression = clean_text(texts[0]), clean_text(texts[1])
        metadata = {
            "subject_id": entry["subject_id"],
            "split": "/".join(sorted(entry["splits"])) or None,
            "findings": findings,
            "impression": impression,
        }
        records.append(
            Record(
                study_id=study,
                images=entry["images"],
                reference=build_reference(findings, impression, cfg.reference),
                metadata=metadata,
            )
        )
    if not records and first_missing is not None:
        raise DatasetError(
            f"mimic_cxr: none of the {counts['skipped_no_report']} studies of split {split} has a report "
            f"(first missing: {first_missing}); set data.reports to the report folder or sectioned CSV"
        )
    return records


def read(cfg, split: str, counts: dict[str, int]) -> Found:
    """The studies under data.root (this adapter's entry point, see :mod:`cxrgen.datasets`)."""
    root = require_root(cfg, LAYOUT)
    return Found(load_records(cfg, root, split, counts), f"mimic_cxr dataset {root}")
