"""Clinical-efficacy metrics: agreement of CheXpert observation labels of generated and reference reports.

Both reports of a sample are labelled with the same labeler (by default the rule-based
:mod:`cxrgen.metrics.labeler`), which gives each of the 14 CheXpert observations one of
1 positive, 0 negative, -1 uncertain, or ``None`` (not mentioned).

Binarisation, per observation, under the ``uncertain`` policy (recorded as ``unc:...`` in the
signature):

* ``positive`` (default): 1 and -1 count as positive; 0 and not mentioned as negative. An
  "uncertain" finding is something the report raises, which is what a reader acts on.
* ``negative``: only 1 counts as positive.
* ``exclude``: 1 is positive, 0 and not mentioned negative, and a (sample, observation) pair where
  either report says -1 is left out of that observation's counts.

Each remaining (sample, observation) pair is a true positive, false positive (hypothesis positive,
reference not), false negative or true negative. With ``TP, FP, FN`` summed over the samples:

* per observation: ``P = TP / (TP + FP)``, ``R = TP / (TP + FN)``, ``F1 = 2 TP / (2 TP + FP + FN)``,
  each **undefined** (NaN; "—" in tables) where its denominator is 0: no recall for an observation
  no reference has, no precision for one no generated report has, no F1 for one neither has.
* micro over a set of observations: the same formulas on ``TP, FP, FN`` summed over the set,
  undefined where the summed denominator is 0.
* macro over a set: the mean of the per-observation values that are defined (recall over the
  observations with a reference positive, precision over those with a generated positive, F1 over
  those with either); undefined if none is. An observation absent from both sides is left out
  instead of being counted as 0 (scikit-learn's ``zero_division=0`` would count it as 0; the
  ``llava-rad`` protocol does).

Per sample, ``ce_agreement`` is the share of the observations either report mentions on which the
two labels (positive, negative, uncertain, not mentioned) are the same; undefined when neither
mentions any. A report that mentions nothing scores 0 against any reference that mentions something.

Sets (:data:`OBSERVATION_SETS`): ``chexpert14`` all 14 observations (including No Finding and
Support Devices); ``chexbert5`` the five of the CheXbert papers (atelectasis, cardiomegaly,
consolidation, edema, pleural effusion); ``cxrllava6`` the six of the CXR-LLaVA paper (those five
plus pneumothorax; its "pulmonary edema" is CheXpert's edema).

Every number is a function of the summed per-sample indicator counts (shape ``(n, 14, 4)``:
tp, fp, fn, tn), so the bootstrap resamples those counts.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cxrgen.metrics.base import Column, Computed, Context, Metric

COLUMNS = (
    "no_finding",
    "enlarged_cardiomediastinum",
    "cardiomegaly",
    "lung_opacity",
    "lung_lesion",
    "edema",
    "consolidation",
    "pneumonia",
    "atelectasis",
    "pneumothorax",
    "pleural_effusion",
    "pleural_other",
    "fracture",
    "support_devices",
)
OBSERVATION_SETS: dict[str, tuple[str, ...]] = {
    "chexpert14": COLUMNS,
    "chexbert5": ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion"),
    "cxrllava6": ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion", "pneumothorax"),
}
POLICIES = ("positive", "negative", "exclude")
NOT_MENTIONED = -9
OUTCOMES = ("tp", "fp", "fn", "tn")
STATS = ("precision", "recall", "f1")
AVERAGES = ("micro", "macro")


def metric_keys() -> list[str]:
    """Names of the clinical summary metrics, ``<set>_<micro|macro>_<precision|recall|f1>``."""
    return [f"{s}_{a}_{m}" for s in OBSERVATION_SETS for a in AVERAGES for m in STATS]


def label_codes(labels: Sequence[dict], what: str = "labels") -> np.ndarray:
    """``(n, 14)`` int array of label dicts in :data:`COLUMNS` order; ``None``/missing becomes
    :data:`NOT_MENTIONED`. A value other than 1, 0, -1, None is an error naming row and column."""
    out = np.full((len(labels), len(COLUMNS)), NOT_MENTIONED, dtype=np.int8)
    for i, lab in enumerate(labels):
        for j, col in enumerate(COLUMNS):
            v = lab.get(col)
            if v is None:
                continue
            if isinstance(v, float) and np.isnan(v):
                continue
            if v not in (1, 0, -1):
                raise ValueError(f"{what}: row {i}, observation {col!r}: label {v!r} is not 1, 0, -1 or None")
            out[i, j] = int(v)
    return out


def outcome_counts(hyp_codes: np.ndarray, ref_codes: np.ndarray, policy: str = "positive") -> np.ndarray:
    """``(n, 14, 4)`` float indicators of tp, fp, fn, tn per sample and observation."""
    if policy not in POLICIES:
        raise ValueError(f"uncertain policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    hyp_codes = np.asarray(hyp_codes)
    ref_codes = np.asarray(ref_codes)
    if policy == "positive":
        hp, rp = np.isin(hyp_codes, (1, -1)), np.isin(ref_codes, (1, -1))
    else:
        hp, rp = hyp_codes == 1, ref_codes == 1
    keep = np.ones(hyp_codes.shape, dtype=bool)
    if policy == "exclude":
        keep = (hyp_codes != -1) & (ref_codes != -1)
    out = np.stack([hp & rp & keep, hp & ~rp & keep, ~hp & rp & keep, ~hp & ~rp & keep], axis=-1)
    return out.astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, NaN where ``den`` is 0 (undefined, not 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def precision_recall_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """P, R, F1 from summed counts, each NaN where its denominator is 0."""
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def per_observation(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Per-observation precision, recall, F1 (NaN where undefined) from sums ``(..., 14, 4)``."""
    return precision_recall_f1(sums[..., 0], sums[..., 1], sums[..., 2])


def _macro(values: np.ndarray, members: np.ndarray | None) -> np.ndarray:
    """Mean over the last axis. ``members`` None: of the values that are defined (NaN where none is). Otherwise
    of the values at ``members`` (a boolean mask of the last axis), NaN where one of them is undefined."""
    if members is None:
        defined = ~np.isnan(values)
        return _ratio(np.where(defined, values, 0.0).sum(-1), defined.sum(-1).astype(np.float64))
    if not members.any():
        return np.full(values.shape[:-1], np.nan)
    return values[..., members].mean(-1)


def set_metrics(sums: np.ndarray, support: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All :func:`metric_keys` values from outcome sums of shape ``(..., 14, 4)``. ``support``: the sums
    ``(14, 4)`` of the whole sample when ``sums`` are a resample's: each macro average then stays over the
    observations defined in the whole sample (a resample in which one of them is undefined gives NaN) instead of
    changing its set of observations from resample to resample."""
    sums = np.asarray(sums, dtype=np.float64)
    per_obs = per_observation(sums)
    fixed = None if support is None else per_observation(np.asarray(support, dtype=np.float64))
    out = {}
    for set_name, cols in OBSERVATION_SETS.items():
        idx = [COLUMNS.index(c) for c in cols]
        sub = sums[..., idx, :]
        micro = precision_recall_f1(sub[..., 0].sum(-1), sub[..., 1].sum(-1), sub[..., 2].sum(-1))
        for stat in STATS:
            members = None if fixed is None else ~np.isnan(fixed[stat][idx])
            out[f"{set_name}_micro_{stat}"] = micro[stat]
            out[f"{set_name}_macro_{stat}"] = _macro(per_obs[stat][..., idx], members)
    return out


def key_observations(key: str) -> tuple[str, ...]:
    """The observations a clinical key is computed from (``obs:<name>:<stat>`` or a set key)."""
    if key.startswith("obs:"):
        return (key.split(":")[1],)
    return OBSERVATION_SETS[key.split("_")[0]]


def label_texts(texts: Sequence[str], label_reports: Callable[[list[str]], list[dict]] | None = None) -> list[dict]:
    """Labels of each text; an empty text gets every observation "not mentioned" without being
    labelled. Identical texts are labelled once. ``label_reports`` defaults to
    :func:`cxrgen.metrics.labeler.label_reports`."""
    if label_reports is None:
        from cxrgen.metrics import labeler

        label_reports = labeler.label_reports
    unique = [t for t in dict.fromkeys(texts) if t]
    results = list(label_reports(list(unique))) if unique else []
    if len(results) != len(unique):
        raise ValueError(f"the labeler returned {len(results)} label sets for {len(unique)} reports")
    labelled = dict(zip(unique, results))
    return [labelled[t] if t else {} for t in texts]


def labeler_version() -> str:
    """Version string of the default labeler."""
    from cxrgen.metrics import labeler

    return str(labeler.LABELER_VERSION)


_POLICY_SHORT = {"positive": "pos", "negative": "neg", "exclude": "excl"}


def observation_keys() -> list[str]:
    """Names of the per-observation values, ``obs:<observation>:<precision|recall|f1>``."""
    return [f"obs:{col}:{stat}" for col in COLUMNS for stat in STATS]


def values_from_outcome_sums(sums: np.ndarray, support: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every clinical value (:func:`metric_keys` and :func:`observation_keys`, NaN where undefined) from
    outcome sums ``(..., 56)``; ``support``: the whole sample's sums ``(56,)`` (see :func:`set_metrics`)."""
    sums = np.asarray(sums, dtype=np.float64)
    grid = sums.reshape(*sums.shape[:-1], len(COLUMNS), 4)
    out = set_metrics(grid, None if support is None else np.asarray(support).reshape(len(COLUMNS), 4))
    per = per_observation(grid)
    for j, col in enumerate(COLUMNS):
        for stat in STATS:
            out[f"obs:{col}:{stat}"] = per[stat][..., j]
    return out


def label_agreement(hyp_codes: np.ndarray, ref_codes: np.ndarray) -> np.ndarray:
    """Per sample: the share of the observations either report mentions whose labels (1, 0, -1, not mentioned)
    are the same in both; NaN where neither report mentions any observation."""
    mentioned = (hyp_codes != NOT_MENTIONED) | (ref_codes != NOT_MENTIONED)
    same = mentioned & (hyp_codes == ref_codes)
    return _ratio(same.sum(axis=1).astype(np.float64), mentioned.sum(axis=1).astype(np.float64))


def labels_string(codes: np.ndarray) -> list[str]:
    """Label codes ``(n, 14)`` as ``per_sample.csv`` writes them: ``col:1;col:-1`` (not mentioned
    left out)."""
    return [";".join(f"{c}:{int(v)}" for c, v in zip(COLUMNS, row) if v != NOT_MENTIONED) for row in codes]


def observation_table(sums: np.ndarray, point: dict, boot: dict | None, entry) -> dict:
    """The per-observation block of a summary: precision, recall, F1 (with intervals; None where
    undefined) and the counts of each observation, from outcome sums ``(56,)``."""
    grid = np.asarray(sums).reshape(len(COLUMNS), 4)
    table = {}
    for j, col in enumerate(COLUMNS):
        row = {}
        for stat in STATS:
            key = f"obs:{col}:{stat}"
            row[stat] = entry(point[key], boot[key] if boot else None) if np.isfinite(point[key]) else None
        row["tp"], row["fp"], row["fn"], row["tn"] = (int(x) for x in grid[j])
        row["ref_positive"] = int(grid[j, 0] + grid[j, 2])
        row["hyp_positive"] = int(grid[j, 0] + grid[j, 1])
        row["n_judged"] = int(grid[j].sum())
        table[col] = row
    return table


class Clinical(Metric):
    """CheXpert-label precision, recall and F1 (module docstring) from the labeler's labels of
    both texts; the references are labelled once for all systems of a comparison."""

    name = "clinical"
    keys = tuple(metric_keys())
    group = "clinical"
    columns = (
        Column("ce_agreement", "label agreement"),
        Column("ce_fp", "false-positive findings", kind="extra", higher_is_better=False),
        Column("ce_fn", "missed findings", kind="extra", higher_is_better=False),
        Column("ce_tp", "true-positive findings", kind="data"),
        Column("ce_tn", "true-negative findings", kind="data"),
    )
    modes = (None, "pycocoevalcap", "radeval")
    uses_support = True

    def unavailable(self, ctx: Context) -> str | None:
        if not ctx.clinical:
            return "disabled"
        if ctx.uncertain not in POLICIES:
            return f"unknown uncertain policy {ctx.uncertain!r}"
        try:
            self._version(ctx)
        except ImportError as exc:
            return f"the CheXpert labeler could not be imported ({exc})"
        return None

    def _version(self, ctx: Context) -> str:
        if ctx.label_reports is None:
            return labeler_version()
        return str(getattr(ctx.label_reports, "LABELER_VERSION", None) or getattr(ctx.label_reports, "__name__", "custom"))

    def compute(self, ctx: Context) -> Computed:
        ref_labels = ctx.shared_refs("clinical_labels", lambda: label_texts(list(ctx.refs), ctx.label_reports))
        hyp_labels = label_texts(list(ctx.hyps), ctx.label_reports)
        hc = label_codes(hyp_labels, "generated-report labels")
        rc = label_codes(ref_labels, "reference labels")
        outcomes = outcome_counts(hc, rc, ctx.uncertain)  # (n, 14, 4)
        totals = outcomes.sum(axis=1)
        per_sample = {f"ce_{name}": totals[:, k] for k, name in enumerate(OUTCOMES)}
        per_sample["ce_agreement"] = label_agreement(hc, rc)
        return Computed(stats=outcomes.reshape(ctx.n, len(COLUMNS) * 4), per_sample=per_sample,
                        hyp_labels=hc, ref_labels=rc)

    def aggregate(self, sums: np.ndarray, support: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return values_from_outcome_sums(sums, support)

    def key_columns(self, key: str) -> list[int]:
        return [4 * COLUMNS.index(obs) + k for obs in key_observations(key) for k in range(4)]

    def signature(self, ctx: Context, available: bool) -> str:
        if not available:
            return "clin:none"
        return f"clin:{self._version(ctx)}+unc:{_POLICY_SHORT.get(ctx.uncertain, ctx.uncertain)}"

    def summary_block(self, keys, point, boot, stats, entry, ctx) -> dict:
        grid = stats.sum(axis=0).reshape(len(COLUMNS), 4)
        metrics = {}
        for k in keys:  # each value with its support: reference and generated positives of its observations
            idx = [COLUMNS.index(o) for o in key_observations(k)]
            metrics[k] = {**entry(point[k], boot[k] if boot else None),
                          "ref_positive": int(grid[idx, 0].sum() + grid[idx, 2].sum()),
                          "hyp_positive": int(grid[idx, 0].sum() + grid[idx, 1].sum())}
        return {
            "labeler": self._version(ctx),
            "uncertain": ctx.uncertain,
            "sets": {k: list(v) for k, v in OBSERVATION_SETS.items()},
            "metrics": metrics,
            "per_observation": observation_table(stats.sum(axis=0), point, boot, entry),
        }
