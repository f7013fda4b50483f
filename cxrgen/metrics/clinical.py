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

* per observation: ``P = TP / (TP + FP)``, ``R = TP / (TP + FN)`` (0 when the denominator is 0),
  ``F1 = 2 TP / (2 TP + FP + FN)``; an observation with ``TP + FP + FN = 0`` (never positive in
  either report) has no P, R, F1 (null in the per-observation table).
* micro over a set of observations: the same formulas on ``TP, FP, FN`` summed over the set
  (0 when a denominator is 0).
* macro over a set: the mean of the per-observation P, R, F1 over the observations of the set that
  have ``TP + FP + FN > 0`` (0 if none has). Observations absent from both sides are left out
  instead of being counted as 0 (scikit-learn's ``zero_division=0`` would count them as 0).

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
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def per_observation(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Per-observation precision, recall, F1 and a ``defined`` mask from sums ``(..., 14, 4)``."""
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "defined": (tp + fp + fn) > 0,
    }


def set_metrics(sums: np.ndarray) -> dict[str, np.ndarray]:
    """All :func:`metric_keys` values from outcome sums of shape ``(..., 14, 4)``."""
    sums = np.asarray(sums, dtype=np.float64)
    per_obs = per_observation(sums)
    out = {}
    for set_name, cols in OBSERVATION_SETS.items():
        idx = [COLUMNS.index(c) for c in cols]
        sub = sums[..., idx, :]
        tp, fp, fn = sub[..., 0].sum(-1), sub[..., 1].sum(-1), sub[..., 2].sum(-1)
        out[f"{set_name}_micro_precision"] = _ratio(tp, tp + fp)
        out[f"{set_name}_micro_recall"] = _ratio(tp, tp + fn)
        out[f"{set_name}_micro_f1"] = _ratio(2 * tp, 2 * tp + fp + fn)
        defined = per_obs["defined"][..., idx]
        count = defined.sum(-1)
        for stat in STATS:
            vals = np.where(defined, per_obs[stat][..., idx], 0.0).sum(-1)
            out[f"{set_name}_macro_{stat}"] = _ratio(vals, count.astype(np.float64))
    return out


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


def values_from_outcome_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Every clinical value (:func:`metric_keys` and :func:`observation_keys`; a per-observation
    value is NaN where the observation is never positive) from outcome sums ``(..., 56)``."""
    sums = np.asarray(sums, dtype=np.float64)
    grid = sums.reshape(*sums.shape[:-1], len(COLUMNS), 4)
    out = set_metrics(grid)
    per = per_observation(grid)
    for j, col in enumerate(COLUMNS):
        for stat in STATS:
            out[f"obs:{col}:{stat}"] = np.where(per["defined"][..., j], per[stat][..., j], np.nan)
    return out


def labels_string(codes: np.ndarray) -> list[str]:
    """Label codes ``(n, 14)`` as ``per_sample.csv`` writes them: ``col:1;col:-1`` (not mentioned
    left out)."""
    return [";".join(f"{c}:{int(v)}" for c, v in zip(COLUMNS, row) if v != NOT_MENTIONED) for row in codes]


def observation_table(sums: np.ndarray, point: dict, boot: dict | None, entry) -> dict:
    """The per-observation block of a summary: precision, recall, F1 (with intervals; None where
    undefined) and the counts of each observation, from outcome sums ``(56,)``."""
    grid = np.asarray(sums).reshape(len(COLUMNS), 4)
    defined = per_observation(grid)["defined"]
    table = {}
    for j, col in enumerate(COLUMNS):
        row = {}
        for stat in STATS:
            key = f"obs:{col}:{stat}"
            row[stat] = entry(point[key], boot[key] if boot else None) if defined[j] else None
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
        judged = totals.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_sample["ce_agreement"] = np.where(judged > 0, (totals[:, 0] + totals[:, 3]) / judged, np.nan)
        return Computed(stats=outcomes.reshape(ctx.n, len(COLUMNS) * 4), per_sample=per_sample,
                        hyp_labels=hc, ref_labels=rc)

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return values_from_outcome_sums(sums)

    def signature(self, ctx: Context, available: bool) -> str:
        if not available:
            return "clin:none"
        return f"clin:{self._version(ctx)}+unc:{_POLICY_SHORT.get(ctx.uncertain, ctx.uncertain)}"

    def summary_block(self, keys, point, boot, stats, entry, ctx) -> dict:
        return {
            "labeler": self._version(ctx),
            "uncertain": ctx.uncertain,
            "sets": {k: list(v) for k, v in OBSERVATION_SETS.items()},
            "metrics": {k: entry(point[k], boot[k] if boot else None) for k in keys},
            "per_observation": observation_table(stats.sum(axis=0), point, boot, entry),
        }
