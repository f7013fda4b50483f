"""Validate the rule-based findings labeler against the MeSH terms of Open-i (IU X-ray) reports.

Each IU report XML carries ``<MeSH><major>`` terms assigned by the collection's annotators, e.g.
``Cardiomegaly/mild``, ``Pleural Effusion/right`` or ``normal``.  This script maps the terms that correspond to a
CheXpert observation (``MESH_MAP``), labels FINDINGS + IMPRESSION of every report with
``cxrgen.metrics.labeler.label_report``, and prints Markdown tables of per-observation precision, recall and F1
of the labeler's positives against the mapped MeSH terms, plus normal-vs-abnormal.

Reports are split by their numeric id: ids below ``--split-id`` were used while writing the phrase lists
(development), the others were not looked at (held-out); every table is printed for all reports, for the
development part and for the held-out part.

Usage:
    python bench/validate_labeler.py [--reports DIR] [--split-id 2000] [--show cardiomegaly --limit 20]
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrgen.metrics.labeler import (  # noqa: E402
    COLUMNS,
    LABELER_VERSION,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    explain_report,
    label_report,
)

DEFAULT_REPORTS = REPO.parent / "shared" / "data" / "iu_xray_sample" / "reports"

# MeSH heading (the part before the first "/") -> (column, required, vetoing).  ``required`` is None (any
# qualifiers) or a set of qualifiers of which at least one must be present; no qualifier in ``vetoing`` may be.
MESH_MAP: tuple[tuple[str, str, frozenset[str] | None, frozenset[str]], ...] = tuple(
    (heading, column, required, frozenset(vetoing))
    for heading, column, required, *vetoing in (
    ("Cardiomegaly", "cardiomegaly", None),
    ("Cardiac Shadow", "cardiomegaly", frozenset({"enlarged"})),
    ("Mediastinum", "enlarged_cardiomediastinum", frozenset({"enlarged", "prominent"}), "lymph nodes"),
    ("Opacity", "lung_opacity", frozenset({"lung", "retrocardiac", "pulmonary alveoli"})),
    ("Airspace Disease", "lung_opacity", None),
    ("Infiltrate", "lung_opacity", None),
    ("Density", "lung_opacity", frozenset({"lung"})),
    ("Nodule", "lung_lesion", None),
    ("Mass", "lung_lesion", None),
    ("Pulmonary Edema", "edema", None),
    ("Pulmonary Congestion", "edema", None),
    ("Consolidation", "consolidation", None),
    ("Pneumonia", "pneumonia", None),
    ("Pulmonary Atelectasis", "atelectasis", None),
    ("Pneumothorax", "pneumothorax", None),
    ("Hydropneumothorax", "pneumothorax", None),
    ("Pleural Effusion", "pleural_effusion", None),
    ("Hydropneumothorax", "pleural_effusion", None),
    ("Thickening", "pleural_other", frozenset({"pleura"})),
    ("Fractures, Bone", "fracture", None),
    ("Catheters, Indwelling", "support_devices", None),
    ("Implanted Medical Device", "support_devices", None),
    ("Tube, Inserted", "support_devices", None),
    ("Stents", "support_devices", None),
    ("Medical Device", "support_devices", None),
    )
)
# Headings that do not make a report abnormal for No Finding: devices and foreign objects (CheXpert's No Finding
# ignores Support Devices) and image quality.
NOT_ABNORMAL = frozenset(
    {
        "normal",
        "Catheters, Indwelling",
        "Implanted Medical Device",
        "Tube, Inserted",
        "Stents",
        "Medical Device",
        "Surgical Instruments",
        "Foreign Bodies",
        "Technical Quality of Image Unsatisfactory",
    }
)
# A report indexed only with this term has no usable normal/abnormal judgement.
NO_INDEXING = "No Indexing"


@dataclass
class Report:
    report_id: int
    path: Path
    text: str
    mesh: list[str]


def read_report(path: Path) -> Report:
    """Parse one ecgen-radiology XML: FINDINGS and IMPRESSION text (blank line between) and MeSH major terms."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise SystemExit(f"{path}: not valid XML: {err}") from None
    sections = {}
    for node in root.iter("AbstractText"):
        sections[node.get("Label", "")] = (node.text or "").strip()
    text = "\n\n".join(s for s in (sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")) if s)
    mesh = [(node.text or "").strip() for node in root.iter("major") if (node.text or "").strip()]
    try:
        report_id = int(path.stem)
    except ValueError:
        raise SystemExit(f"{path}: file name is not a numeric report id") from None
    return Report(report_id, path, text, mesh)


def mesh_columns(terms: list[str]) -> set[str]:
    """Columns that the MeSH terms make positive according to MESH_MAP."""
    found = set()
    for term in terms:
        heading, *qualifiers = [part.strip() for part in term.split("/")]
        for mesh_heading, column, required, vetoing in MESH_MAP:
            if (
                heading == mesh_heading
                and (required is None or required & set(qualifiers))
                and not vetoing & set(qualifiers)
            ):
                found.add(column)
    return found


def mesh_normal(terms: list[str]) -> bool | None:
    """True (normal), False (abnormal) or None (not indexed) for No Finding."""
    headings = {term.split("/")[0].strip() for term in terms}
    if not headings or headings <= {NO_INDEXING}:
        return None
    return headings <= NOT_ABNORMAL


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return precision, recall, f1


def fmt(value: float) -> str:
    return "–" if value != value else f"{value:.3f}"


def observation_table(rows: list[tuple[Report, dict]], lenient: bool) -> list[str]:
    accepted = (POSITIVE, UNCERTAIN) if lenient else (POSITIVE,)
    lines = [
        "| observation | MeSH positive | labeler positive | TP | FP | FN | labeler uncertain on MeSH positive "
        "| precision | recall | F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for column, name in zip(COLUMNS[1:], OBSERVATIONS[1:]):
        tp = fp = fn = unc = gold = pred = 0
        for report, labels in rows:
            truth = column in mesh_columns(report.mesh)
            guess = labels[column] in accepted
            gold += truth
            pred += guess
            tp += truth and guess
            fp += guess and not truth
            fn += truth and not guess
            unc += truth and labels[column] == UNCERTAIN
        p, r, f = prf(tp, fp, fn)
        lines.append(f"| {name} | {gold} | {pred} | {tp} | {fp} | {fn} | {unc} | {fmt(p)} | {fmt(r)} | {fmt(f)} |")
    return lines


def normal_table(rows: list[tuple[Report, dict]]) -> list[str]:
    """Normal-vs-abnormal; the labeler's No Finding None (nothing recognised) counts as normal."""
    counts = {(m, l): 0 for m in (True, False) for l in (True, False)}
    unlabeled = skipped = 0
    for report, labels in rows:
        truth = mesh_normal(report.mesh)
        if truth is None:
            skipped += 1
            continue
        nf = labels["no_finding"]
        unlabeled += nf is None
        counts[(truth, nf != 0)] += 1
    lines = [
        "| positive class | MeSH | labeler | TP | FP | FN | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cls, name in ((False, "abnormal"), (True, "normal")):
        tp = counts[(cls, cls)]
        fp = counts[(not cls, cls)]
        fn = counts[(cls, not cls)]
        p, r, f = prf(tp, fp, fn)
        lines.append(f"| {name} | {tp + fn} | {tp + fp} | {tp} | {fp} | {fn} | {fmt(p)} | {fmt(r)} | {fmt(f)} |")
    total = sum(counts.values())
    agree = counts[(True, True)] + counts[(False, False)]
    lines.append("")
    lines.append(
        f"Accuracy {agree}/{total} = {fmt(agree / total if total else float('nan'))}; "
        f"{skipped} report(s) indexed only 'No Indexing' left out; "
        f"{unlabeled} report(s) with No Finding None counted as normal."
    )
    return lines


def show(rows: list[tuple[Report, dict]], column: str, limit: int, lenient: bool) -> None:
    """Print reports where the labeler and MeSH disagree on one column (or 'no_finding')."""
    accepted = (POSITIVE, UNCERTAIN) if lenient else (POSITIVE,)
    shown = 0
    for report, labels in rows:
        if column == "no_finding":
            truth = mesh_normal(report.mesh)
            if truth is None or truth == (labels["no_finding"] != 0):
                continue
            kind = "MeSH normal, labeler abnormal" if truth else "MeSH abnormal, labeler normal"
        else:
            truth = column in mesh_columns(report.mesh)
            guess = labels[column] in accepted
            if truth == guess:
                continue
            kind = "FN" if truth else "FP"
        print(f"--- {report.path.name} [{kind}] MeSH: {'; '.join(report.mesh)}")
        print(report.text)
        for m in explain_report(report.text):
            if column == "no_finding" or m.observation == column:
                print(f"    {m.observation}={m.label} ({m.kind}) '{m.text}'  <- {m.sentence}")
        shown += 1
        if shown >= limit:
            break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="folder of IU report XMLs")
    parser.add_argument("--split-id", type=int, default=2000, help="ids below this are the development part")
    parser.add_argument("--show", metavar="COLUMN", help="print disagreements for one column or no_finding")
    parser.add_argument("--part", choices=("all", "dev", "heldout"), default="dev", help="part used by --show")
    parser.add_argument("--limit", type=int, default=20, help="how many disagreements --show prints")
    parser.add_argument("--lenient", action="store_true", help="--show counts uncertain as positive")
    args = parser.parse_args(argv)

    if not args.reports.is_dir():
        parser.error(f"--reports {args.reports}: not a folder")
    paths = sorted(args.reports.glob("*.xml"), key=lambda p: (len(p.stem), p.stem))
    if not paths:
        parser.error(f"--reports {args.reports}: no *.xml files")
    if args.show and args.show not in COLUMNS:
        parser.error(f"--show {args.show}: not one of {', '.join(COLUMNS)}")
    reports = [read_report(p) for p in paths]
    empty = [r for r in reports if not r.text.strip()]
    rows = [(r, label_report(r.text)) for r in reports if r.text.strip()]
    parts = {
        "all": rows,
        "dev": [row for row in rows if row[0].report_id < args.split_id],
        "heldout": [row for row in rows if row[0].report_id >= args.split_id],
    }
    if args.show:
        show(parts[args.part], args.show, args.limit, args.lenient)
        return 0

    print(
        f"Labeler {LABELER_VERSION}; {len(rows)} reports from {args.reports} "
        f"({len(empty)} more have neither FINDINGS nor IMPRESSION text and are left out)"
    )
    titles = {
        "all": "All reports",
        "dev": f"Development part (id < {args.split_id})",
        "heldout": f"Held-out part (id >= {args.split_id})",
    }
    for key in ("all", "dev", "heldout"):
        part = parts[key]
        print(f"\n### {titles[key]}: {len(part)} reports\n")
        print("Positive = labeler 1:\n")
        print("\n".join(observation_table(part, lenient=False)))
        print("\nPositive = labeler 1 or -1 (uncertain counted as positive):\n")
        print("\n".join(observation_table(part, lenient=True)))
        print("\nNormal vs abnormal (MeSH 'normal', devices or image quality only = normal; labeler No Finding):\n")
        print("\n".join(normal_table(part)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
