"""Validation of one system's rows and alignment of several systems on the studies they share.

Row rules, all of them counted in the summary:

* ``status`` other than ``ok`` (the runner writes ``error`` when generation failed): the row has no
  report; it is excluded and counted as ``n_error`` (ids under ``excluded.error``).
* empty reference: excluded and counted as ``n_empty_reference``.
* empty generated report (blank, NaN/None, or ``nan``/``none``/``null`` in any case): scored 0 on
  every text metric, all observations "not mentioned", counted as ``n_empty``.
* a duplicated id, an empty id, or a report column holding only numbers is an error naming them.

Several systems are aligned on the ids every one of them can score, in the baseline's order; the
ids dropped from a system are counted per reason. The references of a shared id must be the same
text in every system.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrgen.evaluation.common import EvaluationInputError, duplicated_ids, is_empty_text, row_ref, where
from cxrgen.evaluation.inputs import HYP, ID, REF, STATUS

_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"


@dataclass
class Prepared:
    """The usable rows of one system (runner column names) and what was excluded."""

    name: str
    frame: pd.DataFrame  # usable rows only, original index
    ids: list[str]
    n_rows: int
    excluded: dict[str, list[str]] = field(default_factory=dict)


def _numbers_only(values: pd.Series) -> bool:
    text = values[~values.map(is_empty_text)].astype(str).str.strip()
    return len(text) > 0 and bool(text.str.fullmatch(_NUMBER).all())


def prepare(df: pd.DataFrame, name: str) -> Prepared:
    """Validate one system's rows (already :func:`~cxrgen.evaluation.inputs.standardise`d) and
    split off the rows that cannot be scored."""
    w = where(df)
    if len(df) == 0:
        raise EvaluationInputError(f"{w}: no rows; nothing to score")
    for col, what in ((HYP, "generated report"), (REF, "reference")):
        if _numbers_only(df[col]):
            raise EvaluationInputError(
                f"{w}: the {what} column holds only numbers, not report text; is it the right column?"
            )
    ids = df[ID]
    empty_id = [i for i in df.index if is_empty_text(ids[i])]
    if empty_id:
        raise EvaluationInputError(f"{w}: empty id at " + "; ".join(row_ref(df, i) for i in empty_id[:5]))
    ids = ids.astype(str).str.strip()
    dup = duplicated_ids(ids)
    if dup:
        raise EvaluationInputError(f"{w}: duplicate ids: {dup}")
    excluded: dict[str, list[str]] = {"error": [], "empty_reference": []}
    keep = np.ones(len(df), dtype=bool)
    if STATUS in df.columns:
        status = df[STATUS].map(lambda v: "" if is_empty_text(v) else str(v).strip().lower())
        bad = (status != "ok") & (status != "")
        excluded["error"] = ids[bad].tolist()
        keep &= ~bad.to_numpy()
    empty_ref = df[REF].map(is_empty_text).to_numpy(dtype=bool) & keep
    excluded["empty_reference"] = ids[empty_ref].tolist()
    keep &= ~empty_ref
    frame = df.loc[keep].copy()
    frame[ID] = ids[keep]
    return Prepared(name=name, frame=frame, ids=frame[ID].tolist(), n_rows=len(df), excluded=excluded)


def align(prepared: list[Prepared]) -> tuple[list[str], dict[str, dict]]:
    """Ids usable in every system (in the first system's order) and, per system, the ids dropped
    because another system cannot score them, counted by reason."""
    usable = [set(p.ids) for p in prepared]
    shared_set = set.intersection(*usable)
    shared = [i for i in prepared[0].ids if i in shared_set]
    errors = [set(p.excluded.get("error", [])) for p in prepared]
    empty_refs = [set(p.excluded.get("empty_reference", [])) for p in prepared]
    dropped: dict[str, dict] = {}
    for k, p in enumerate(prepared):
        reasons: dict[str, int] = {}
        ids = []
        for i in p.ids:
            if i in shared_set:
                continue
            ids.append(i)
            for j, q in enumerate(prepared):
                if j == k or i in usable[j]:
                    continue
                if i in errors[j]:
                    why = f"status error in {q.name}"
                elif i in empty_refs[j]:
                    why = f"empty reference in {q.name}"
                else:
                    why = f"absent from {q.name}"
                reasons[why] = reasons.get(why, 0) + 1
        dropped[p.name] = {"n": len(ids), "reasons": reasons, "ids": ids}
    base = prepared[0].frame.set_index(ID)[REF]
    for p in prepared[1:]:
        other = p.frame.set_index(ID)[REF]
        differ = [i for i in shared if str(base[i]).strip() != str(other[i]).strip()]
        if differ:
            raise EvaluationInputError(
                f"systems {prepared[0].name} and {p.name} have different references for {len(differ)} "
                f"shared ids (e.g. {', '.join(differ[:5])}); they were not evaluated on the same data"
            )
    return shared, dropped


def restrict(p: Prepared, shared: list[str], dropped_ids: list[str]) -> None:
    """Keep only the ``shared`` ids of a system, in that order, recording the others."""
    pos = {i: k for k, i in enumerate(p.ids)}
    p.frame = p.frame.iloc[[pos[i] for i in shared]]
    p.excluded["not_shared"] = list(dropped_ids)
    p.ids = list(shared)
