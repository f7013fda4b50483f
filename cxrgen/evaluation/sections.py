"""The reference a published protocol scores, taken from a results table (:mod:`cxrgen.metrics.protocols`).

* ``findings`` (LLaVA-Rad, ReXrank's Findings table): a ``findings`` (or ``section_findings``) column when the
  table has one and ``--ref-col`` is not given; otherwise the reference column. That column must not be an
  impression column, and when the table is a run's ``reports.csv`` whose ``run.json`` records another
  ``data.reference`` than ``findings``, that is an error naming both: scoring impressions under a findings
  protocol would give numbers that cannot stand beside the published ones.
* ``findings+impression`` (ReXrank's second table): ``"Findings: {f} Impression: {i}"`` written from the
  ``findings``/``section_findings`` and ``impression``/``section_impression`` columns
  (:meth:`~cxrgen.metrics.protocols.Reference.format`); a reference column whose texts are all already written
  that way (the ``report`` field of ReXrank's JSON files) is used as it is. Anything else is an error: our own
  runs keep only the joined text, which is not this format.
"""

from __future__ import annotations

import json
import re

import pandas as pd

from cxrgen.evaluation.common import EvaluationInputError, MissingColumnError, is_empty_text, log, text_or_empty, where
from cxrgen.evaluation.inputs import Columns, run_folder, source_paths
from cxrgen.metrics.protocols import Protocol

SECTION_COLUMNS = {"findings": ("findings", "section_findings"), "impression": ("impression", "section_impression")}
_FORMATTED = re.compile(r"^\s*Findings:.*\sImpression:", re.DOTALL)


def _column(frame: pd.DataFrame, section: str) -> str | None:
    by_name = {str(c).strip().lower(): str(c) for c in frame.columns}
    return next((by_name[n] for n in SECTION_COLUMNS[section] if n in by_name), None)


def recorded_section(frame: pd.DataFrame) -> tuple[str, str] | None:
    """``(run.json path, data.reference)`` of the run the table was written by, when it says (a manifest run's
    reference is its manifest's column, whatever data.reference says: it says nothing there)."""
    for path in source_paths(frame)[:1]:
        run = run_folder(path)
        record = run / "run.json" if run is not None else None
        if record is None or not record.is_file():
            return None
        try:
            data = json.loads(record.read_text())["config"]["data"]
            section = None if data.get("format") == "manifest" else data["reference"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return (str(record), str(section)) if section else None
    return None


def protocol_references(frame: pd.DataFrame, cols: Columns, protocol: Protocol, ref_given: bool) -> pd.Series:
    """The reference texts ``protocol`` scores for the rows of ``frame`` (as read, before renaming), with its
    index; see the module docstring. Errors name the file and the columns."""
    section = protocol.reference.section
    if section == "findings":
        return _findings(frame, cols, protocol, ref_given)
    found = {s: _column(frame, s) for s in SECTION_COLUMNS}
    if all(found.values()):
        log.info("%s: protocol %s: reference <- %s written from columns %r and %r", where(frame), protocol.name,
                 protocol.reference.description, found["findings"], found["impression"])
        return pd.Series([protocol.reference.format(text_or_empty(f), text_or_empty(i))
                          for f, i in zip(frame[found["findings"]], frame[found["impression"]])], index=frame.index)
    refs = frame[cols.ref]
    texts = [str(r) for r in refs if not is_empty_text(r)]
    if texts and all(_FORMATTED.match(t) for t in texts):
        log.info("%s: protocol %s: reference <- column %r as written ('Findings: ... Impression: ...')",
                 where(frame), protocol.name, cols.ref)
        return refs
    raise MissingColumnError(
        f"{where(frame)}: protocol {protocol.name} scores {protocol.reference.description}, written from the "
        f"findings and impression sections; the table has no {' and '.join(SECTION_COLUMNS)} columns "
        f"({', '.join(n for names in SECTION_COLUMNS.values() for n in names)}) and its reference column "
        f"{cols.ref!r} is not written 'Findings: ... Impression: ...'", "ref")


def _findings(frame: pd.DataFrame, cols: Columns, protocol: Protocol, ref_given: bool) -> pd.Series:
    column = None if ref_given else _column(frame, "findings")
    if column is not None:
        log.info("%s: protocol %s: reference <- column %r", where(frame), protocol.name, column)
        return frame[column]
    if cols.ref.strip().lower() in SECTION_COLUMNS["impression"]:
        raise MissingColumnError(f"{where(frame)}: protocol {protocol.name} scores the findings section, but the "
                                 f"reference column is {cols.ref!r}", "ref")
    recorded = recorded_section(frame)
    if recorded is not None and recorded[1] != "findings":
        raise EvaluationInputError(
            f"{where(frame)}: its run took the {recorded[1]} as the reference (data.reference in {recorded[0]}), "
            f"but protocol {protocol.name} scores the findings section; generate with data.reference: findings")
    return frame[cols.ref]
