"""Dataset adapters: turn a dataset on disk into the rows the generation pipeline works on.

``load_studies(cfg)`` reads the dataset that ``cfg`` (a :class:`cxrgen.config.DataConfig`) names and returns a
:class:`Selection`: one :class:`Study` per row, each with exactly one absolute image path and a non-empty
reference text, plus counts of what was left out and why. Rows are sorted by id (digit runs compare as numbers),
except for iu_xray_kaggle with a split file (data.split train, val or test), whose rows come in the split file's
row order, so that the first N selected studies are the first N of the split.

Formats (details in each module's docstring; :data:`ADAPTERS` is the registry):

    iu_xray_kaggle   indiana_reports.csv + indiana_projections.csv + images/  (cxrgen.datasets.iu_xray_kaggle)
    openi            ecgen-radiology/*.xml + NLMCXR_png/                       (cxrgen.datasets.openi)
    mimic_cxr        MIMIC-CXR-JPG metadata/split CSVs + files/ + reports      (cxrgen.datasets.mimic_cxr)
    manifest         one CSV or JSONL file of id, image_path, reference[, view] (cxrgen.datasets.manifest)

Counts (every format): total (studies, or manifest rows, in the dataset), not_in_split, skipped_missing_split
(entries of the split file the dataset lacks), skipped_no_image, skipped_no_frontal, skipped_empty_reference,
selected_studies and selected (rows; more than selected_studies only with views=all). mimic_cxr adds
skipped_no_report; openi with a projections table adds images_without_view. A study is counted under the first
reason that applies; total = not_in_split + skipped_no_report + skipped_no_image + skipped_no_frontal +
skipped_empty_reference + selected_studies.

Image files are not opened or checked here. Problems with the dataset itself (missing root, file, folder or
column, unknown option, duplicate ids) and an empty selection raise :class:`DatasetError` before any work; a
missing split file raises its subclass :class:`MissingSplitError`. The IU X-ray split files are made by
:func:`cxrgen.datasets.splits.make_split`.
"""

from __future__ import annotations

import importlib

from .common import (
    DatasetError,
    Found,
    Layout,
    MissingSplitError,
    Selection,
    Study,
    check_options,
    check_unique,
    describe_counts,
    natural_key,
    new_counts,
    normalise_split,
    select,
)

__all__ = [
    "ADAPTERS", "DatasetError", "Found", "Layout", "MissingSplitError", "Selection", "Study", "adapter",
    "describe_counts", "load_studies", "natural_key",
]

#: data.format -> the module that reads it. A module provides ``LAYOUT`` (a :class:`Layout`: which setting names
#: its source and what is expected there) and ``read(cfg, split, counts) -> Found`` (one Record per study, see
#: :mod:`cxrgen.datasets.common`). Adding a dataset layout is one such module and one line here.
ADAPTERS = {
    "iu_xray_kaggle": "cxrgen.datasets.iu_xray_kaggle",
    "openi": "cxrgen.datasets.openi",
    "mimic_cxr": "cxrgen.datasets.mimic_cxr",
    "manifest": "cxrgen.datasets.manifest",
}


def adapter(fmt: str):
    """The adapter module of data.format ``fmt``; an unknown format is a DatasetError naming the key."""
    if fmt not in ADAPTERS:
        raise DatasetError(f"data.format must be one of {', '.join(ADAPTERS)}, got {fmt!r}")
    return importlib.import_module(ADAPTERS[fmt])


def load_studies(cfg) -> Selection:
    """Read the dataset ``cfg`` describes and select its rows (see the module docstring).

    Raises DatasetError with a one-line message naming the file, column or config key at fault.
    """
    reader = adapter(cfg.format)
    check_options(cfg)
    split = normalise_split(cfg.split)
    counts = new_counts()
    found = reader.read(cfg, split, counts)
    rows = select(found.records, cfg.views, counts, unknown_is_frontal=found.unknown_is_frontal,
                  keep_ids=found.keep_ids, keep_order=found.keep_order)
    for row in rows:
        row.metadata.setdefault("dataset", cfg.format)
    if not rows:
        reference = found.reference or f"reference={cfg.reference}"
        raise DatasetError(
            f"{found.source}: no studies selected (split={split}, views={cfg.views}, {reference}; "
            f"{describe_counts(counts)})"
        )
    check_unique(rows, found.source)
    return Selection(studies=rows, counts=counts)
