"""Dataset adapters: turn a dataset on disk into the rows the generation pipeline works on.

``load_studies(cfg)`` reads the dataset that ``cfg`` (a :class:`cxrgen.config.DataConfig`) names and returns a
:class:`Selection`: one :class:`Study` per row, each with exactly one absolute image path and a non-empty
reference text, plus counts of what was left out and why. Rows are sorted by id (digit runs compare as numbers),
except for iu_xray_kaggle with a split file (data.split train, val or test), whose rows come in the split file's
row order, so that the first N selected studies are the first N of the split.

Formats (details in each module's docstring):

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

from . import iu_xray_kaggle, manifest, mimic_cxr, openi
from .common import (
    FORMATS,
    DatasetError,
    MissingSplitError,
    Selection,
    Study,
    check_options,
    check_unique,
    describe_counts,
    natural_key,
    new_counts,
    normalise_split,
    require_root,
    select,
)

__all__ = [
    "FORMATS", "DatasetError", "MissingSplitError", "Selection", "Study", "describe_counts", "load_studies",
    "natural_key",
]


def load_studies(cfg) -> Selection:
    """Read the dataset ``cfg`` describes and select its rows (see the module docstring).

    Raises DatasetError with a one-line message naming the file, column or config key at fault.
    """
    check_options(cfg)
    split = normalise_split(cfg.split)
    counts = new_counts()
    unknown_is_frontal = keep_ids = keep_order = False
    if cfg.format == "manifest":
        records, has_view = manifest.load_records(cfg, split, counts)
        unknown_is_frontal, keep_ids = not has_view, True
        source = f"manifest {cfg.manifest}"
    else:
        root = require_root(cfg)
        loader = {"iu_xray_kaggle": iu_xray_kaggle, "openi": openi, "mimic_cxr": mimic_cxr}[cfg.format]
        records = loader.load_records(cfg, root, split, counts)
        keep_order = cfg.format == "iu_xray_kaggle" and split != "all"
        source = f"{cfg.format} dataset {root}"
    rows = select(
        records, cfg.views, counts, unknown_is_frontal=unknown_is_frontal, keep_ids=keep_ids, keep_order=keep_order
    )
    for row in rows:
        row.metadata.setdefault("dataset", cfg.format)
    if not rows:
        reference = (
            f"reference column {cfg.reference_column!r}" if cfg.format == "manifest" else f"reference={cfg.reference}"
        )
        raise DatasetError(
            f"{source}: no studies selected (split={split}, views={cfg.views}, {reference}; "
            f"{describe_counts(counts)})"
        )
    check_unique(rows, source)
    return Selection(studies=rows, counts=counts)
