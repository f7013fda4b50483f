"""Run configuration: the schema of config.yaml, command-line overrides and validation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Where the studies come from and which text is the reference.

    format      iu_xray_kaggle | openi | mimic_cxr | manifest
    root        dataset folder (iu_xray_kaggle, openi, mimic_cxr)
    manifest    CSV or JSONL file (format: manifest)
    split       train | val | test | all (val is MIMIC-CXR's "validate")
    views       frontal (one frontal image per study, PA preferred over AP) | all (one row per image)
    reference   findings | impression | findings+impression
    id_column, image_column, reference_column, view_column   manifest column names (view_column optional)
    reports     mimic_cxr only: a sectioned reports CSV (study,impression,findings,...); empty = the
                files/pXX/pXXXXXXXX/sXXXXXXXX.txt report files under root
    projections openi only: a projections CSV (uid,filename,projection), e.g. the Kaggle release's
                indiana_projections.csv; the Open-i XMLs carry no per-image view, so views=frontal needs it
    """

    format: str = "iu_xray_kaggle"
    root: str | None = None
    manifest: str | None = None
    split: str = "test"
    views: str = "frontal"
    reference: str = "findings"
    id_column: str = "id"
    image_column: str = "image_path"
    reference_column: str = "reference"
    view_column: str | None = None
    reports: str | None = None
    projections: str | None = None
