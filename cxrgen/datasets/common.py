"""Types and rules shared by every dataset adapter.

An adapter turns a dataset layout into a list of :class:`Record` (one per study, with all of its images and
its reference text already built). :func:`select` then applies the view rule and drops studies that cannot be
used, counting each one under the first reason that applies, in this order:

    skipped_no_image         the study lists no image at all
    skipped_no_frontal       views=frontal and none of its images has a frontal view
    skipped_empty_reference  its reference text (after cleaning) is empty

View rule. ``views: frontal`` keeps one image per study: the best-ranked frontal image, PA before AP before a
plain "frontal" label, ties broken by the natural order of the image id. ``views: all`` keeps every image, one
row each, with the id ``"<study id>/<image id>"``. A view is only ever read from the dataset's own metadata
(projection table, ViewPosition, manifest column); an image whose view is unknown is not frontal.

Order. Rows are sorted by :func:`natural_key` of their id: runs of digits compare as numbers, so ``CXR2``
comes before ``CXR10``, and ids that tie under that rule fall back to plain string order. An adapter whose records
already come in a defined order (iu_xray_kaggle with a split file: the split file's row order) keeps that order
instead (``keep_order``); with views=all a study's images then stay together, in natural order of image id.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SPLITS = ("train", "val", "test", "all")
VIEWS = ("frontal", "all")
REFERENCES = ("findings", "impression", "findings+impression")

# Frontal view labels, best first. Labels are compared upper-cased with surrounding spaces removed.
FRONTAL_RANK = {"PA": 0, "AP": 1, "FRONTAL": 2}


class DatasetError(ValueError):
    """The dataset or its configuration cannot be read; the message names the file, column or key."""


class MissingSplitError(DatasetError):
    """The split file ``path`` that data.split asks for is missing.

    ``reports`` is the reports table under ``root`` the split files can be made from
    (:func:`cxrgen.datasets.splits.make_split`), or None when the layout has none.
    """

    def __init__(self, message: str, path: Path, root: Path, reports: Path | None = None):
        super().__init__(message)
        self.path, self.root, self.reports = path, root, reports


@dataclass(frozen=True)
class Study:
    """One row of work for the pipeline: exactly one image and the text it is compared with.

    id           unique per row (study id with views=frontal; "<study id>/<image id>" with views=all)
    image_paths  absolute image paths; exactly one per row
    reference    cleaned reference text, never empty
    metadata     at least 'view' (label as the dataset gives it, or None) and 'study_id', plus dataset details
    """

    id: str
    image_paths: tuple[str, ...]
    reference: str
    metadata: dict


@dataclass
class Selection:
    """The selected rows, in dataset order, and how many studies each filter removed (see the module docstring)."""

    studies: list[Study]
    counts: dict[str, int]


@dataclass
class Image:
    """One image of a study: its absolute path, its id within the dataset and its view label (None: unknown)."""

    path: str
    image_id: str
    view: str | None


@dataclass
class Record:
    """One study as an adapter found it, before view selection and reference filtering."""

    study_id: str
    images: list[Image]
    reference: str
    metadata: dict = field(default_factory=dict)


def clean_text(value: object) -> str:
    """Strip and collapse runs of whitespace to one space; None/NaN become ''. Nothing else is changed."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    return " ".join(str(value).split())


def build_reference(findings: str, impression: str, mode: str) -> str:
    """The reference text for ``mode``: findings, impression, or both joined by one space.

    With findings+impression an empty part is left out, so the result is empty only when both are.
    """
    findings, impression = clean_text(findings), clean_text(impression)
    if mode == "findings":
        return findings
    if mode == "impression":
        return impression
    return " ".join(part for part in (findings, impression) if part)


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value ("CXR2" < "CXR10"); ties fall back to the plain string."""
    parts = tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text) if tok)
    return (parts, text)


def frontal_rank(view: str | None) -> int | None:
    """Rank of a frontal view label (0 is best), or None when the label is not a frontal view."""
    if view is None:
        return None
    return FRONTAL_RANK.get(view.strip().upper())


def normalise_split(split: str) -> str:
    """'validate' and 'val' name the same split; returns one of SPLITS or raises DatasetError."""
    value = str(split).strip().lower()
    if value == "validate":
        value = "val"
    if value not in SPLITS:
        raise DatasetError(f"data.split must be one of {', '.join(SPLITS)} (or 'validate'), got {split!r}")
    return value


def check_options(cfg) -> None:
    """Reject an unknown data.views or data.reference with a message naming the key."""
    if cfg.views not in VIEWS:
        raise DatasetError(f"data.views must be one of {', '.join(VIEWS)}, got {cfg.views!r}")
    if cfg.reference not in REFERENCES:
        raise DatasetError(f"data.reference must be one of {', '.join(REFERENCES)}, got {cfg.reference!r}")


@dataclass(frozen=True)
class Layout:
    """What a dataset adapter reads: ``source``, the DataConfig key naming it (``root``: a folder, ``manifest``: a
    file); ``files``, what is expected there; ``readme``, the README.md section that describes it."""

    source: str
    files: str
    readme: str = "Datasets"

    def hint(self) -> str:
        """'the folder holding ... (README.md, section ...)', for messages about a missing or wrong source."""
        where = "the folder holding " if self.source == "root" else ""
        return f'{where}{self.files} (README.md, section "{self.readme}")'


@dataclass
class Found:
    """What a dataset adapter read: one Record per study, where from (``source``, for messages), and how
    :func:`select` treats them (see its arguments). ``reference``: how the reference was chosen, for messages
    (default: the data.reference setting)."""

    records: list[Record]
    source: str
    keep_order: bool = False
    unknown_is_frontal: bool = False
    keep_ids: bool = False
    reference: str | None = None


def require_root(cfg, layout: Layout) -> Path:
    """data.root as an absolute path; raises DatasetError if it is unset or not a folder.

    The message names the files the format expects under data.root and the README section about them.
    """
    if not cfg.root:
        raise DatasetError(f"data.root is required for data.format {cfg.format}: {layout.hint()}")
    root = Path(os.path.abspath(os.path.expanduser(str(cfg.root))))
    if not root.is_dir():
        raise DatasetError(
            f"data.root {root} is not an existing folder (data.format {cfg.format} needs {layout.hint()})"
        )
    return root


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists first; None if neither does."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_csv(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV (gzip by suffix) as strings, missing cells as '', column names stripped."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{what} {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{what} {path} cannot be read as CSV: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def read_csv(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    """:func:`load_csv`, then check that the ``required`` columns exist."""
    frame = load_csv(path, what)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{what} {path} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, frame.columns))})"
        )
    for column in required:
        frame[column] = frame[column].str.strip()
    return frame


def new_counts() -> dict[str, int]:
    """The count keys every adapter reports, all zero."""
    return {
        "total": 0,
        "not_in_split": 0,
        "skipped_missing_split": 0,
        "skipped_no_image": 0,
        "skipped_no_frontal": 0,
        "skipped_empty_reference": 0,
        "selected_studies": 0,
        "selected": 0,
    }


def select(
    records: list[Record],
    views: str,
    counts: dict[str, int],
    unknown_is_frontal: bool = False,
    keep_ids: bool = False,
    keep_order: bool = False,
) -> list[Study]:
    """Apply the view rule and the empty-reference rule to ``records``; update ``counts``; return the rows.

    Rows are sorted by :func:`natural_key` of their id unless ``keep_order`` is set, which keeps the order of
    ``records``. ``unknown_is_frontal`` (manifests without a view column) keeps an image whose view is None under
    views=frontal instead of counting it as not frontal. ``keep_ids`` (manifests, whose rows are single images
    already) uses the study id as the row id under views=all too.
    """
    rows: list[Study] = []
    for record in records:
        if not record.images:
            counts["skipped_no_image"] += 1
            continue
        if views == "frontal":
            chosen = _best_frontal(record.images, unknown_is_frontal)
            if chosen is None:
                counts["skipped_no_frontal"] += 1
                continue
            images = [chosen]
        else:
            images = sorted(record.images, key=lambda im: natural_key(im.image_id))
        if not record.reference:
            counts["skipped_empty_reference"] += 1
            continue
        counts["selected_studies"] += 1
        for image in images:
            per_image = views == "all" and not keep_ids
            row_id = f"{record.study_id}/{image.image_id}" if per_image else record.study_id
            metadata = dict(record.metadata)
            metadata.update(view=image.view, study_id=record.study_id, image_id=image.image_id)
            rows.append(Study(id=row_id, image_paths=(image.path,), reference=record.reference, metadata=metadata))
    if not keep_order:
        rows.sort(key=lambda s: natural_key(s.id))
    counts["selected"] = len(rows)
    return rows


def _best_frontal(images: list[Image], unknown_is_frontal: bool) -> Image | None:
    best = None
    best_key = None
    for image in images:
        rank = frontal_rank(image.view)
        if rank is None:
            if not (unknown_is_frontal and image.view is None):
                continue
            rank = len(FRONTAL_RANK)
        key = (rank, natural_key(image.image_id))
        if best_key is None or key < best_key:
            best, best_key = image, key
    return best


def check_unique(rows: list[Study], source: str) -> None:
    """Raise DatasetError naming up to five ids that occur more than once."""
    seen: set[str] = set()
    dupes: list[str] = []
    for row in rows:
        if row.id in seen and row.id not in dupes:
            dupes.append(row.id)
        seen.add(row.id)
    if dupes:
        shown = ", ".join(dupes[:5]) + (f" and {len(dupes) - 5} more" if len(dupes) > 5 else "")
        raise DatasetError(f"{source}: duplicate id(s) {shown}")


def describe_counts(counts: dict[str, int]) -> str:
    """One line such as 'total=10, not_in_split=4, skipped_empty_reference=1, selected=5' (zeros left out)."""
    return ", ".join(f"{key}={value}" for key, value in counts.items() if value) or "total=0"
