"""One self-contained HTML results page: summary, plots and a study browser.

:func:`write_results_page` turns the result rows of one or more systems (one ``DataFrame`` per
system, rows keyed by study id) and the evaluation summary (the ``summary.json`` dict) into a
single HTML file that needs no server and no network:

* **Summary**: the signature, any warning of the evaluation (e.g. too few shared studies), per
  system the row counts (scored, ok, empty, error, empty reference, not shared) and every metric
  with its 95% interval, formatted by the same functions as ``summary.md``
  (:mod:`cxrgen.evaluation.tables`: ``0.1235 [0.1000, 0.1500]``), the difference to the baseline
  with its p-value, and one-click links to each system's worst studies. The metrics, their order,
  names and directions come from the metric registry (:mod:`cxrgen.metrics.registry`).
* **Plots** (SVG written by :mod:`cxrgen.report.plots`): per-sample score distributions per system and metric,
  per-observation clinical F1 with intervals, and the paired differences against the baseline.
* **Study browser**: per study the X-ray thumbnail, the reference, every system's generated report
  with the words it shares with the reference marked, the per-sample scores, and the labeler's
  findings for every text with the disagreements with the reference marked. Sorting, filtering
  and paging happen in the page (vanilla JavaScript, :file:`results.js`); the view is kept in the
  URL fragment, e.g. ``#sort=bleu_4&sys=base&dir=asc``, so a link opens the same view.

Data safety: report text is data, never markup. The page data is one JSON document inside
``<script type="application/json">`` in which ``<``, ``>`` and ``&`` are written as ``\\u003c``,
``\\u003e`` and ``\\u0026``, so no report text can close the element; the script puts every text
into the page with ``textContent``. Text rendered on the Python side (system names, signature,
metric notes) goes through :func:`html.escape`.

Per-row status, shown and filterable: ``ok``; ``empty`` (status ok or absent, generated report
blank or one of ``nan``/``none``/``null``, the rows the evaluation scores 0); ``error`` (status
other than ok; the ``error`` column is shown); ``missing`` (the study is absent from that system).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Sequence
from urllib.parse import urlencode

import pandas as pd

from cxrgen import runstore
from cxrgen.evaluation import tables
from cxrgen.evaluation.common import duplicated_ids, is_empty_text as _is_empty, text_or_empty as _text
from cxrgen.imaging import ImageReadError, read_image
from cxrgen.metrics import labeler, registry
from cxrgen.report import plots
from cxrgen.runstore import COL

DEFAULT_PAGE_SIZE = 50

# Columns of the run itself shown after the metrics' columns (generation length and timing), from the result row.
RUN_COLUMNS = runstore.LABELLED


def score_columns() -> tuple[list[str], list[str], dict[str, str], set[str]]:
    """From the registry: per-sample score columns (shown, sortable, plotted), extra columns
    (counts, lengths, timing: shown and sortable), display names, and the columns where a higher
    value is worse."""
    cols = registry.columns()
    scores = [c.key for c in cols if c.kind == "score"]
    extra = [c.key for c in cols if c.kind == "extra"] + [k for k, _ in RUN_COLUMNS]
    labels = {c.key: c.label for c in cols}
    labels.update(dict(RUN_COLUMNS))
    worse = {c.key for c in cols if not c.higher_is_better}
    return scores, extra, labels, worse


LABEL_CODE = {1: "P", 0: "N", -1: "U", None: "."}
_CODE_OF_VALUE = {"1": "P", "0": "N", "-1": "U"}


class ResultsPageError(ValueError):
    """Bad input for the results page: the message names the system, column or study."""


@dataclass
class _Study:
    id: str
    reference: str
    image_path: str | None
    rows: list[dict | None]  # one per system


def attach_scores(rows: pd.DataFrame, per_sample: pd.DataFrame, id_col: str = "id") -> pd.DataFrame:
    """``rows`` with the columns of ``per_sample`` (``per_sample.csv``'s frame, keyed by its ``id``
    column) joined on the study id in ``rows[id_col]``: a left join, so rows without scores (e.g.
    generation errors) get NaN. A column of ``per_sample`` replaces a column of ``rows`` with the
    same name (stale scores written by the generation run give way to the evaluation's); the
    ``id`` and ``system`` columns of ``per_sample`` are not copied."""
    if id_col not in rows.columns:
        raise ResultsPageError(f"result rows: no column {id_col!r}")
    if "id" not in per_sample.columns:
        raise ResultsPageError("per-sample scores: no column 'id'")
    scores = per_sample.drop(columns=[c for c in ("system",) if c in per_sample.columns])
    scores = scores.assign(id=scores["id"].astype(str).str.strip()).rename(columns={"id": "__key"})
    replaced = [c for c in scores.columns if c in rows.columns and c not in ("__key", id_col)]
    out = rows.drop(columns=replaced).assign(__key=rows[id_col].astype(str).str.strip())
    try:
        out = out.merge(scores, on="__key", how="left", validate="many_to_one")
    except pd.errors.MergeError:
        dup = scores["__key"][scores["__key"].duplicated()].unique().tolist()
        raise ResultsPageError(f"per-sample scores: duplicate ids: {', '.join(dup[:10])}") from None
    return out.drop(columns="__key").set_axis(rows.index)


# ------------------------------------------------------------------------------------------------
# Rows -> studies


def _check_frame(name: str, df: pd.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ResultsPageError(
            f"system {name!r}: no column {', '.join(repr(c) for c in missing)}; "
            f"the columns are: {', '.join(map(str, df.columns))}"
        )
    ids = df[cols[0]].map(lambda v: "" if _is_empty(v) else str(v).strip())
    if (ids == "").any():
        where = [str(i) for i in df.index[ids == ""][:5]]
        raise ResultsPageError(f"system {name!r}: empty id in column {cols[0]!r} at row(s) {', '.join(where)}")
    dup = duplicated_ids(ids)
    if dup:
        raise ResultsPageError(f"system {name!r}: duplicate ids in column {cols[0]!r}: {dup}")


def _status(row: Mapping, hyp_col: str, status_col: str | None) -> str:
    if status_col and status_col in row and not _is_empty(row[status_col]):
        if str(row[status_col]).strip().lower() != "ok":
            return "error"
    return "empty" if _is_empty(row.get(hyp_col)) else "ok"


def _parse_labels(value: str, where: str) -> str:
    """``"col:1;col:0"`` (the per-sample ``*_labels`` format; absent columns are not mentioned)
    to the page's 14-character code string."""
    codes = dict.fromkeys(labeler.COLUMNS, ".")
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        col, _, v = part.partition(":")
        if col not in codes or v.strip() not in _CODE_OF_VALUE:
            raise ResultsPageError(f"{where}: cannot read label {part!r} (expected <observation>:<1|0|-1>)")
        codes[col] = _CODE_OF_VALUE[v.strip()]
    return "".join(codes.values())


def _label_string(labels: Mapping) -> str:
    out = []
    for col in labeler.COLUMNS:
        v = labels.get(col)
        if isinstance(v, float) and math.isnan(v):
            v = None
        out.append(LABEL_CODE[None if v is None else int(v)])
    return "".join(out)


def _number(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return round(x, 4)


def _score_keys(frames: Mapping[str, pd.DataFrame], summary: Mapping) -> list[str]:
    scores, extra, _, _ = score_columns()
    # Metrics of the summary that have no per-sample column in the registry (model-based metrics).
    model_keys = [k for k, _ in tables.metric_keys(summary) if k not in scores and k not in extra]
    keys = []
    for k in scores + model_keys + extra:
        for df in frames.values():
            if k in df.columns and pd.to_numeric(df[k], errors="coerce").notna().any():
                keys.append(k)
                break
    return keys


def _collect(
    frames: Mapping[str, pd.DataFrame],
    order: list[str],
    id_col: str,
    hyp_col: str,
    ref_col: str,
    status_col: str | None,
    image_col: str,
) -> list[_Study]:
    studies: dict[str, _Study] = {}
    for j, name in enumerate(order):
        df = frames[name]
        _check_frame(name, df, [id_col, hyp_col, ref_col])
        for rec in df.to_dict("records"):
            sid = str(rec[id_col]).strip()
            st = studies.get(sid)
            if st is None:
                st = studies[sid] = _Study(sid, _text(rec[ref_col]), None, [None] * len(order))
            elif not st.reference:
                st.reference = _text(rec[ref_col])
            if st.image_path is None and image_col in rec and not _is_empty(rec[image_col]):
                st.image_path = str(rec[image_col]).strip()
            rec["_status"] = _status(rec, hyp_col, status_col)
            rec["_hyp"] = rec[hyp_col]
            st.rows[j] = rec
    return list(studies.values())


# ------------------------------------------------------------------------------------------------
# Images


def thumbnail_data_uri(path: str | os.PathLike, size: int) -> str:
    """The image at ``path`` read with :func:`cxrgen.imaging.read_image`, shrunk to fit a
    ``size`` x ``size`` box (aspect kept, never enlarged), as a ``data:image/jpeg;base64`` URI.
    Raises :class:`~cxrgen.imaging.ImageReadError` for a missing or unreadable file."""
    img = read_image(path)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnails(paths: list[str | None], size: int, image_root: Path | None) -> list[tuple[str | None, str | None]]:
    def one(p: str | None) -> tuple[str | None, str | None]:
        if p is None:
            return None, "no image path"
        path = Path(p)
        if image_root is not None and not path.is_absolute():
            path = image_root / path
        try:
            return thumbnail_data_uri(path, size), None
        except (ImageReadError, OSError) as exc:
            return None, str(exc) or f"{path}: unreadable"

    if size <= 0:
        return [(None, "thumbnails disabled") for _ in paths]
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


# ------------------------------------------------------------------------------------------------
# Page data


def _given_labels(text: str, where: str) -> str:
    return _parse_labels(text, where) if text.strip() else "." * len(labeler.COLUMNS)


def _labels_for(
    studies: list[_Study],
    order: list[str],
    label_reports: Callable[[list[str]], list[dict]],
) -> tuple[list[str], list[list[str | None]]]:
    """Reference label codes per study and generated-report label codes per study and system:
    taken from the rows' ``ref_labels``/``hyp_labels`` columns when they hold text (an empty string:
    labelled, nothing mentioned), labelled with ``label_reports`` when the cell is missing or NaN."""
    ref_codes: list[str | None] = [None] * len(studies)
    hyp_codes: list[list[str | None]] = [[None] * len(order) for _ in studies]
    todo_texts: list[str] = []
    todo_slots: list[tuple[int, int]] = []  # (study, system) with -1 for the reference
    for i, st in enumerate(studies):
        for j, rec in enumerate(st.rows):
            if rec is None:
                continue
            where = f"system {order[j]!r}, study {st.id!r}"
            if ref_codes[i] is None and isinstance(rec.get("ref_labels"), str):
                ref_codes[i] = _given_labels(rec["ref_labels"], f"{where}, column 'ref_labels'")
            if rec["_status"] == "error":
                continue
            if rec["_status"] == "empty":
                hyp_codes[i][j] = "." * len(labeler.COLUMNS)
            elif isinstance(rec.get("hyp_labels"), str):
                hyp_codes[i][j] = _given_labels(rec["hyp_labels"], f"{where}, column 'hyp_labels'")
            else:
                todo_texts.append(_text(rec.get("_hyp")))
                todo_slots.append((i, j))
        if ref_codes[i] is None:
            todo_texts.append(st.reference)
            todo_slots.append((i, -1))
    if todo_texts:
        labels = label_reports(todo_texts)
        if len(labels) != len(todo_texts):
            raise ResultsPageError(f"the labeler returned {len(labels)} label sets for {len(todo_texts)} reports")
        for (i, j), lab in zip(todo_slots, labels):
            code = _label_string(lab)
            if j < 0:
                ref_codes[i] = code
            else:
                hyp_codes[i][j] = code
    return [c or "." * len(labeler.COLUMNS) for c in ref_codes], hyp_codes


def _uncertain_policy(summary: Mapping) -> str:
    pol = (summary.get("settings") or {}).get("uncertain")
    if not pol:
        for s in (summary.get("systems") or {}).values():
            pol = (s.get("clinical") or {}).get("uncertain") or pol
    return pol if pol in ("positive", "negative", "exclude") else "positive"


def page_data(
    systems: Mapping[str, pd.DataFrame],
    summary: Mapping,
    *,
    baseline: str | None = None,
    thumbnail_px: int = 160,
    max_studies: int | None = None,
    image_root: str | os.PathLike | None = None,
    findings: bool = True,
    label_reports: Callable[[list[str]], list[dict]] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    id_col: str = COL.id,
    hyp_col: str = COL.generated_report,
    ref_col: str = COL.reference,
    status_col: str | None = COL.status,
    image_col: str = COL.image_path,
) -> dict:
    """The JSON document the page's script renders (see :func:`write_results_page` for the
    arguments). Keys: ``systems`` (names, baseline first), ``baseline``, ``scores`` (``[key,
    label, worse, kind]`` with ``worse`` ``"low"`` or ``"high"`` and ``kind`` ``"score"`` or
    ``"extra"`` for counts, lengths and timing), ``observations`` (``[column, name]``),
    ``uncertain`` (policy), ``page_size``, ``n_total`` and ``studies``; a study is ``{"id", "ref",
    "rl", "img" | "imgerr", "s"}`` with ``rl`` the reference's label codes (one of ``P N U .`` per
    observation: positive, negative, uncertain, not mentioned) and ``s`` one entry per system:
    ``null`` when the study is missing there, else ``{"st": status, "t": text, "v": [scores],
    "l": label codes}`` plus ``"e"`` (the error message) for an error row and ``"r"`` (``{"id", "sim", "img"}``:
    the study a retrieved report came from, the similarity, its thumbnail) for a retrieval backend's row."""
    if not systems:
        raise ResultsPageError("no systems to show")
    names = list(systems)
    baseline = baseline or summary.get("baseline") or names[0]
    if baseline not in systems:
        raise ResultsPageError(f"baseline {baseline!r} is not one of the systems: {', '.join(names)}")
    if page_size < 1:
        raise ResultsPageError("page_size must be at least 1")
    order = [baseline] + [n for n in names if n != baseline]
    frames = {n: systems[n] for n in order}
    studies = _collect(frames, order, id_col, hyp_col, ref_col, status_col, image_col)
    n_total = len(studies)
    if max_studies is not None:
        studies = studies[: max(0, max_studies)]
    keys = _score_keys(frames, summary)
    if findings:
        ref_codes, hyp_codes = _labels_for(studies, order, label_reports or labeler.label_reports)
    else:
        ref_codes, hyp_codes = [None] * len(studies), [[None] * len(order) for _ in studies]
    root = Path(image_root) if image_root is not None else None
    thumbs = _thumbnails([st.image_path for st in studies], thumbnail_px, root)
    retrieved = _retrieved_thumbnails(studies, thumbnail_px, root)
    out_studies = []
    for i, st in enumerate(studies):
        entry: dict = {"id": st.id, "ref": st.reference}
        if ref_codes[i] is not None:
            entry["rl"] = ref_codes[i]
        uri, err = thumbs[i]
        if uri:
            entry["img"] = uri
        else:
            entry["imgerr"] = err
        per_sys = []
        for j, rec in enumerate(st.rows):
            if rec is None:
                per_sys.append(None)
                continue
            item: dict = {"st": rec["_status"], "t": _text(rec.get("_hyp"))}
            item["v"] = [_number(rec.get(k)) for k in keys]
            if rec["_status"] == "error":
                item["e"] = _text(rec.get(COL.error)) or f"status {_text(rec.get(status_col))}"
            if hyp_codes[i][j] is not None:
                item["l"] = hyp_codes[i][j]
            if _text(rec.get(COL.retrieved_id)):
                item["r"] = _retrieved(rec, retrieved)
            per_sys.append(item)
        entry["s"] = per_sys
        out_studies.append(entry)
    _, extra, labels, worse = score_columns()
    return {
        "systems": order,
        "baseline": baseline,
        "scores": [
            [k, labels.get(k) or registry.label(k), "high" if k in worse else "low", "extra" if k in extra else "score"]
            for k in keys
        ],
        "observations": [[c, o] for c, o in zip(labeler.COLUMNS, labeler.OBSERVATIONS)] if findings else [],
        "uncertain": _uncertain_policy(summary),
        "page_size": int(page_size),
        "n_total": n_total,
        "studies": out_studies,
    }


def _retrieved_thumbnails(studies: list[_Study], size: int, root: Path | None) -> dict[str, str | None]:
    """Thumbnails of the studies that reports were retrieved from (a retrieval backend's rows), by image path."""
    paths = sorted({_text(rec.get(COL.retrieved_image)) for st in studies for rec in st.rows
                    if rec is not None and _text(rec.get(COL.retrieved_image))})
    return {p: uri for p, (uri, _) in zip(paths, _thumbnails(paths, size // 2, root))}


def _retrieved(rec: Mapping, thumbs: Mapping[str, str | None]) -> dict:
    """The study a retrieved report came from, for the page: ``{"id", "sim", "img"}``."""
    out: dict = {"id": _text(rec.get(COL.retrieved_id)), "sim": _number(rec.get(COL.similarity))}
    uri = thumbs.get(_text(rec.get(COL.retrieved_image)))
    if uri:
        out["img"] = uri
    return out


def json_for_script(data) -> str:
    """``data`` as JSON that can sit inside ``<script type="application/json">``: ``<``, ``>``,
    ``&`` and the line separators U+2028/U+2029 are written as ``\\u`` escapes, so no string in it
    can end the element or open a comment. NaN and infinity are errors."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


# ------------------------------------------------------------------------------------------------
# Summary block

fmt_value, fmt_entry, fmt_p = tables.fmt_value, tables.fmt_entry, tables.fmt_p


def _provenance_html(run: Mapping) -> str:
    """One line under the title for a generation run: the model, its revision or digest, the project's commit."""
    model, project = run.get("model") or {}, run.get("project") or {}
    if not model and not project:
        return ""
    e = html.escape
    items = []
    if model:
        version = (f"revision {model['revision']}" if model.get("revision")
                   else f"digest {model['digest']}" if model.get("digest") else "unversioned local folder")
        extra = "".join(f", {k} {e(str(model[k]))}" for k in ("quantization",) if model.get(k) not in (None, "none"))
        adapter = model.get("adapter")
        if adapter:
            extra += f", adapter {e(str(adapter.get('path') if isinstance(adapter, Mapping) else adapter))}"
        items.append(f'model <code id="run-model">{e(str(model.get("source")))}</code> '
                     f'({e(str(model.get("backend")))}, {e(version)}{extra})')
    if project:
        commit = project.get("commit")
        text = (commit[:12] + (" with local changes" if project.get("local_changes") else "")) if commit \
            else f"version {project.get('version')}"
        items.append(f'cxrgen <code id="run-commit">{e(text)}</code>')
    return '<p class="provenance">' + "; ".join(items) + "</p>"


def _origins_html(sys_sum: Mapping, order: list[str]) -> str:
    """Per system: what its run was made with (model, decoding, data, commit; the rendered prompt one click away)
    and the lengths of its reports."""
    e = html.escape
    items = []
    for n in order:
        s = sys_sum.get(n) or {}
        origin, lengths = s.get("origin"), tables.length_line(s.get("lengths"))
        lines = [x for x in (tables.origin_line(origin), lengths) if x]
        if not lines:
            continue
        prompt = (origin or {}).get("prompt")
        shown = f'<details class="prompt"><summary>prompt</summary><pre>{e(prompt)}</pre></details>' if prompt else ""
        items.append(f'<li data-system="{e(n)}"><b>{e(n)}</b>: ' + "<br>".join(e(x) for x in lines) + shown + "</li>")
    return '<ul class="origins" id="origins">' + "".join(items) + "</ul>" if items else ""


def _summary_html(summary: Mapping, order: list[str], baseline: str, data: dict) -> tuple[str, str]:
    """(signature and counts, metric tables with notes and worst-case links) as HTML."""
    e = html.escape
    sys_sum = summary.get("systems") or {}
    parts = []
    if ((summary.get("run") or {}).get("model") or {}).get("random_weights"):
        parts.append('<p class="warning banner" id="random-weights">These reports come from a tiny checkpoint with '
                     "random weights: they are noise. The page shows the mechanics, not a model.</p>")
    for line in tables.warning_lines(summary):
        parts.append(f'<p class="warning">{e(line)}</p>')
    if summary.get("signature"):
        parts.append(f'<p class="sig">Signature: <code id="signature">{e(str(summary["signature"]))}</code></p>')

    # Counts: from the summary where it has the system, from the rows otherwise.
    statuses = {n: {"ok": 0, "empty": 0, "error": 0, "missing": 0} for n in order}
    for st in data["studies"]:
        for n, item in zip(order, st["s"]):
            statuses[n]["missing" if item is None else item["st"]] += 1
    parts.append('<table class="counts" id="counts"><thead><tr><th>system</th><th>rows</th><th>scored</th>'
                 "<th>ok</th><th>empty (scored 0)</th><th>error (excluded)</th><th>empty reference (excluded)</th>"
                 "<th>not shared (excluded)</th></tr></thead><tbody>")
    for n in order:
        s = sys_sum.get(n)
        if s:
            cells = [s.get("n_rows"), s.get("n"), (s.get("n") or 0) - (s.get("n_empty") or 0), s.get("n_empty"),
                     s.get("n_error"), s.get("n_empty_reference"), s.get("n_not_shared", 0)]
        else:
            c = statuses[n]
            cells = [c["ok"] + c["empty"] + c["error"], None, c["ok"], c["empty"], c["error"], None, None]
        label = n + (" (baseline)" if n == baseline and len(order) > 1 else "")
        parts.append(f'<tr data-system="{e(n)}"><th>{e(label)}</th>'
                     + "".join(f"<td>{'—' if v is None else int(v)}</td>" for v in cells) + "</tr>")
    parts.append("</tbody></table>")
    parts.append(_origins_html(sys_sum, order))

    top = "\n".join(parts)
    parts = []
    # Metrics, as summary.md's table.
    keyed = tables.metric_keys(summary, order)
    if keyed:
        comp = {(c.get("system"), c.get("metric")): c for c in summary.get("comparisons") or []}
        head = ["metric"]
        for n in order:
            head.append(n + (" (baseline)" if n == baseline and len(order) > 1 else ""))
            if n != baseline:
                head.append(f"Δ {n} (p)")
        # Metrics of the summary's own table and the F1s of blocks (clinical) in view; the blocks'
        # precision and recall one click away.
        main = [k for k, block in keyed if block is None or k.endswith("_f1")]
        rest = [k for k, _ in keyed if k not in main]

        def table(ids: str, rows: list[str]) -> str:
            out = [f'<table class="metrics" id="{ids}"><thead><tr>'
                   + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
            for k in rows:
                row = [f"<th>{e(k)}</th>"]
                for n in order:
                    entry = tables.entry(sys_sum.get(n) or {}, k)
                    row.append(f'<td data-system="{e(n)}">{e(fmt_entry(entry))}</td>')
                    if n != baseline:
                        row.append(f'<td class="diff">{e(tables.fmt_diff(comp.get((n, k))))}</td>')
                out.append(f'<tr data-metric="{e(k)}">' + "".join(row) + "</tr>")
            return "".join(out) + "</tbody></table>"

        parts.append(table("metrics", main))
        if rest:
            parts.append('<details class="more-metrics"><summary>Clinical precision and recall</summary>'
                         + table("metrics-more", rest) + "</details>")
    pub_header, pub_rows, pub_notes = tables.published_rows(summary)
    if pub_rows:  # a published protocol's values as its own code reports them
        parts.append('<details class="more-metrics" id="published"><summary>As the published code reports them'
                     '</summary><table class="metrics"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in pub_header)
                     + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                                                        for r in pub_rows)
                     + "</tbody></table>" + "".join(f"<p>{e(x)}</p>" for x in pub_notes) + "</details>")
    notes = tables.protocol_lines(summary) + tables.note_lines(summary)
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{e(str(x))}</li>" for x in notes) + "</ul>")

    # One click to the worst studies.
    links = []
    scores, _, labels, worse = score_columns()
    worst_keys = [k for k, _, _, _ in data["scores"] if k in scores or k in worse]
    for n in order:
        items = []
        for k in worst_keys:
            direction = "desc" if k in worse else "asc"
            href = "#" + _fragment({"sort": k, "sys": n, "dir": direction})
            items.append(f'<a class="worst" href="{e(href)}">{e(labels.get(k, k))}</a>')
        if items:
            links.append(f"<li>{e(n)}: " + " · ".join(items) + "</li>")
    if len(order) > 1:
        for n in order[1:]:
            items = []
            for k in worst_keys:
                if k in worse:
                    continue
                href = "#" + _fragment({"sort": k, "sys": n, "diff": "1", "dir": "asc"})
                items.append(f'<a class="worst" href="{e(href)}">{e(labels.get(k, k))}</a>')
            if items:
                links.append(f"<li>{e(n)} most below {e(baseline)}: " + " · ".join(items) + "</li>")
    if links:
        parts.append('<p class="worst-head">Worst studies first:</p><ul class="worst-links">' + "".join(links) + "</ul>")
    return top, "\n".join(parts)


def _fragment(params: Mapping[str, str]) -> str:
    return urlencode(params, safe=":")


# ------------------------------------------------------------------------------------------------
# The page


def _asset(name: str) -> str:
    try:
        return resources.files("cxrgen.report").joinpath(name).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return Path(__file__).with_name(name).read_text(encoding="utf-8")


def build_results_page(
    systems: Mapping[str, pd.DataFrame],
    summary: Mapping,
    *,
    title: str | None = None,
    plots_enabled: bool = True,
    **kwargs,
) -> str:
    """The page as a string; see :func:`write_results_page`."""
    data = page_data(systems, summary, **kwargs)
    order, baseline = data["systems"], data["baseline"]
    e = html.escape
    title = title or ("Results: " + ", ".join(order))
    head, tables = _summary_html(summary, order, baseline, data)
    figs = {}
    if plots_enabled:
        labels = {sc[0]: sc[1] for sc in data["scores"]}
        plotted = [sc[0] for sc in data["scores"] if sc[3] == "score"]
        for fig in plots.summary_plots(systems, summary, order, plotted, labels):
            figs[fig.name] = (
                f'<figure class="plot" id="plot-{e(fig.name)}"><img alt="{e(fig.caption)}" src="{fig.data_uri}">'
                f"<figcaption>{e(fig.caption)}</figcaption></figure>"
            )
    # Tables and the comparison figures side by side where the window is wide enough; the
    # distributions below them; then the studies.
    body = [
        f"<h1>{e(title)}</h1>",
        _provenance_html(summary.get("run") or {}),
        '<section id="summary"><h2>Summary</h2>',
        head,
        '<div class="overview"><div class="tables">',
        tables,
        "</div>",
        figs.pop("observation-f1", ""),
        figs.pop("differences", ""),
        "</div>",
        *figs.values(),
        "</section>",
    ]
    shown = len(data["studies"])
    note = "" if shown == data["n_total"] else f'<p class="note">Showing the first {shown} of {data["n_total"]} studies.</p>'
    body.append(
        '<section id="browser"><h2>Studies</h2>' + note
        + '<div id="controls"></div><div class="pager" id="pager-top"></div>'
        '<table id="studies"><thead></thead><tbody></tbody></table>'
        '<div class="pager" id="pager-bottom"></div>'
        "<noscript><p>The study browser needs JavaScript.</p></noscript></section>"
    )
    css, js = _asset("results.css"), _asset("results.js")
    # Only this style sheet and this script may run: nothing that ever got into the page as markup could.
    csp = (
        f"default-src 'none'; img-src data:; style-src '{_sha256(css)}'; script-src '{_sha256(js)}'; "
        "base-uri 'none'; form-action 'none'"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{css}</style></head>\n<body>\n"
        + "\n".join(body)
        + f'\n<script type="application/json" id="cxr-data">{json_for_script(data)}</script>\n'
        + f"<script>{js}</script>\n</body></html>\n"
    )


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def write_results_page(
    path: str | os.PathLike,
    systems: Mapping[str, pd.DataFrame],
    summary: Mapping,
    *,
    baseline: str | None = None,
    thumbnail_px: int = 160,
    max_studies: int | None = None,
    image_root: str | os.PathLike | None = None,
    title: str | None = None,
    findings: bool = True,
    plots_enabled: bool = True,
    label_reports: Callable[[list[str]], list[dict]] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    id_col: str = COL.id,
    hyp_col: str = COL.generated_report,
    ref_col: str = COL.reference,
    status_col: str | None = COL.status,
    image_col: str = COL.image_path,
) -> Path:
    """Write the results page to ``path`` (parent folders are created; atomically: a reader or a kill sees the old
    page or the new one) and return the path.

    ``systems``: system name -> its result rows, one row per study id (columns ``id_col``,
    ``hyp_col``, ``ref_col``; optional ``status_col``, ``error``, ``image_col`` and per-sample
    score columns such as ``bleu_4``, ``rouge_l``, ``cider_d``, ``ce_agreement``, and the label
    strings ``hyp_labels``/``ref_labels`` of ``per_sample.csv``; :func:`attach_scores` joins a
    ``per_sample`` frame onto the rows). Studies are shown in the baseline's row order, followed by
    studies only other systems have. ``summary``: the ``summary.json`` dict (``signature``,
    ``systems``, ``comparisons``, ``settings``, ...); may be ``{}``.

    ``baseline``: the system the others are compared with (default: ``summary["baseline"]``, else
    the first). ``thumbnail_px``: the longer side of the embedded thumbnails (0: no images); an
    image path relative to ``image_root`` (default: the working directory); an unreadable or
    missing image gets a placeholder with the reason. ``max_studies``: embed only the first N
    studies. ``findings``: label the texts (with ``label_reports``, default the rule-based
    labeler, unless the rows carry label strings). ``plots_enabled``: draw the plots.
    ``page_size``: studies per page in the browser.

    Raises :class:`ResultsPageError` naming the system and column for a missing column, an empty
    or duplicated id, or an unreadable label string.
    """
    text = build_results_page(
        systems,
        summary,
        title=title,
        plots_enabled=plots_enabled,
        baseline=baseline,
        thumbnail_px=thumbnail_px,
        max_studies=max_studies,
        image_root=image_root,
        findings=findings,
        label_reports=label_reports,
        page_size=page_size,
        id_col=id_col,
        hyp_col=hyp_col,
        ref_col=ref_col,
        status_col=status_col,
        image_col=image_col,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runstore.atomic_write(path, text.encode("utf-8"))
    return path
