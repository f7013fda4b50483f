"""Label-only mode: the CheXpert labels of the reports of one CSV column, written as a CSV."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd

from cxrgen.evaluation.common import MissingColumnError, text_or_empty, visible_columns
from cxrgen.evaluation.inputs import find_column, read_results_csv
from cxrgen.metrics import clinical


def label_csv(
    input_path: str | os.PathLike,
    text_col: str,
    output_path: str | os.PathLike,
    id_col: str | None = None,
    label_reports: Callable[[list[str]], list[dict]] | None = None,
) -> pd.DataFrame:
    """Label the reports in ``text_col`` of a CSV and write the id column plus one column per
    observation (lower_snake): 1 positive, 0 negative, -1 uncertain, empty when not mentioned.
    An empty report gets every observation empty. ``id_col`` None finds the id column by its
    common names."""
    df = read_results_csv(input_path)
    if text_col not in df.columns:
        raise MissingColumnError(
            f"{input_path}: no column {text_col!r} for the report text; the columns are: {', '.join(visible_columns(df))}",
            "text",
        )
    id_col = find_column(df, "id", id_col, taken={text_col})
    texts = [text_or_empty(v) for v in df[text_col]]
    labels = clinical.label_texts(texts, label_reports)
    codes = clinical.label_codes(labels, f"{input_path}: labels")
    out = pd.DataFrame({id_col: df[id_col].astype(str).tolist()})
    for j, col in enumerate(clinical.COLUMNS):
        values = codes[:, j]
        out[col] = pd.array([None if v == clinical.NOT_MENTIONED else int(v) for v in values], dtype="Int64")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(output_path, index=False)
    return out
