"""Indiana University chest X-rays in the original Open-i release.

Files under data.root:

    ecgen-radiology/*.xml     one report per file: <uId id="CXR7"/>, <IUXRId id="7"/>,
                              <AbstractText Label="FINDINGS|IMPRESSION|INDICATION|COMPARISON">, <MeSH><major>,
                              and one <parentImage id="CXR7_IM-2263-1001"> per image
    NLMCXR_png/<parentImage id>.png
    indiana_{train,val,test}.csv   optional split files with a uid column (the IUXRId number), as in the
                              Kaggle layout; needed unless data.split is all

Views. The XMLs hold no per-image view: every <parentImage> of a report carries the same <caption> (the exam
description, e.g. "Xray Chest PA and Lateral"), the same <panel type="single"> and <imgModality>, and a
<figureId> that only numbers the figures. The view therefore comes from a projections table: data.projections,
or indiana_projections.csv in data.root when that file exists, with columns uid, filename, projection (the
Kaggle release's file). A projection row belongs to the image of the same uid whose image part matches: the
name with its extensions (.png, .jpg, .jpeg, .dcm) removed, taken after its last underscore, so
"7_IM-2263-1001.dcm.png" and "CXR7_IM-2263-1001.png" both name image IM-2263-1001 of report 7. Without a
projections table only views=all is possible (every image, view None).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from .common import DatasetError, Found, Image, Layout, Record, build_reference, clean_text, read_csv, require_root
from .iu_xray_kaggle import PROJECTIONS_FILE, read_split_uids

XML_DIR = "ecgen-radiology"
PNG_DIR = "NLMCXR_png"
LAYOUT = Layout("root", "ecgen-radiology/*.xml and NLMCXR_png/")

_EXTENSIONS = re.compile(r"(\.(png|jpe?g|dcm))+$", re.IGNORECASE)


def image_key(name: str) -> str:
    """The image part of an IU image name: extensions removed, then the text after the last underscore."""
    stem = _EXTENSIONS.sub("", os.path.basename(name.strip()))
    return stem.rsplit("_", 1)[-1]


def parse_report(path: Path) -> dict:
    """Read one Open-i report XML into uid, study_id, sections (label -> text), mesh and image ids."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(f"openi: report {path} cannot be parsed as XML: {exc}") from None
    uid_el, study_el = root.find("IUXRId"), root.find("uId")
    uid = (uid_el.get("id") or "").strip() if uid_el is not None else ""
    study_id = (study_el.get("id") or "").strip() if study_el is not None else ""
    if not uid or not study_id:
        missing = "<IUXRId id=...>" if not uid else "<uId id=...>"
        raise DatasetError(f"openi: report {path} has no {missing}")
    sections: dict[str, str] = {}
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").strip().upper()
        if label:
            sections[label] = clean_text("".join(element.itertext()))
    mesh = [clean_text(el.text) for el in root.iter("major") if clean_text(el.text)]
    image_ids = [(el.get("id") or "").strip() for el in root.iter("parentImage")]
    return {
        "uid": uid,
        "study_id": study_id,
        "sections": sections,
        "mesh": mesh,
        "image_ids": [i for i in image_ids if i],
    }


def _projections_path(cfg, root: Path) -> Path | None:
    configured = getattr(cfg, "projections", None)
    if configured:
        path = Path(os.path.abspath(os.path.expanduser(str(configured))))
        if not path.is_file():
            raise DatasetError(f"openi: data.projections file {path} not found")
        return path
    default = root / PROJECTIONS_FILE
    return default if default.is_file() else None


def read_projections(path: Path) -> dict[tuple[str, str], str]:
    """Map (uid, image key) to the projection label; a key given two different labels is an error."""
    frame = read_csv(path, ("uid", "filename", "projection"), "projections file")
    views: dict[tuple[str, str], str] = {}
    for number, (uid, filename, projection) in enumerate(
        zip(frame["uid"], frame["filename"], frame["projection"]), start=1
    ):
        if not uid or not filename:
            continue
        key = (uid, image_key(filename))
        label = clean_text(projection)
        if key in views and views[key] != label:
            raise DatasetError(
                f"projections file {path}: data row {number} gives {filename} the projection {label!r}, "
                f"an earlier row gave the same image {views[key]!r}"
            )
        views[key] = label
    return views


def load_records(cfg, root: Path, split: str, counts: dict[str, int]) -> list[Record]:
    """Read the Open-i layout under ``root`` into one Record per report XML in ``split``; update ``counts``."""
    xml_dir = root / XML_DIR
    if not xml_dir.is_dir():
        raise DatasetError(f"openi: report folder {xml_dir} not found (data.root {root})")
    png_dir = root / PNG_DIR
    if not png_dir.is_dir():
        raise DatasetError(f"openi: image folder {png_dir} not found (data.root {root})")
    xml_paths = sorted(p for p in xml_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not xml_paths:
        raise DatasetError(f"openi: no .xml report files in {xml_dir}")

    projections_path = _projections_path(cfg, root)
    if projections_path is None and cfg.views == "frontal":
        raise DatasetError(
            f"openi: the report XMLs carry no per-image view, so data.views: frontal needs a projections CSV "
            f"(uid,filename,projection, e.g. the Kaggle indiana_projections.csv): set data.projections or put "
            f"{PROJECTIONS_FILE} in {root}; or set data.views: all"
        )
    views = read_projections(projections_path) if projections_path is not None else None
    split_uids = read_split_uids(root, split)

    reports = [parse_report(path) for path in xml_paths]
    seen: dict[str, Path] = {}
    for report, path in zip(reports, xml_paths):
        if report["study_id"] in seen:
            raise DatasetError(f"openi: {path} and {seen[report['study_id']]} both hold report {report['study_id']}")
        seen[report["study_id"]] = path

    counts["total"] = len(reports)
    if split_uids is not None:
        counts["skipped_missing_split"] = len(split_uids - {r["uid"] for r in reports})
    if views is not None:
        counts["images_without_view"] = 0

    records = []
    for report in reports:
        uid = report["uid"]
        if split_uids is not None and uid not in split_uids:
            counts["not_in_split"] += 1
            continue
        images = []
        for image_id in report["image_ids"]:
            view = None
            if views is not None:
                view = views.get((uid, image_key(image_id))) or None
                if view is None:
                    counts["images_without_view"] += 1
            images.append(Image(path=str(png_dir / f"{image_id}.png"), image_id=image_id, view=view))
        sections = report["sections"]
        findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
        metadata = {
            "uid": uid,
            "split": None if split == "all" else split,
            "findings": findings,
            "impression": impression,
            "indication": sections.get("INDICATION", ""),
            "comparison": sections.get("COMPARISON", ""),
            "mesh": report["mesh"],
        }
        records.append(
            Record(
                study_id=report["study_id"],
                images=images,
                reference=build_reference(findings, impression, cfg.reference),
                metadata=metadata,
            )
        )
    return records


def read(cfg, split: str, counts: dict[str, int]) -> Found:
    """The studies under data.root (this adapter's entry point, see :mod:`cxrgen.datasets`)."""
    root = require_root(cfg, LAYOUT)
    return Found(load_records(cfg, root, split, counts), f"openi dataset {root}")
