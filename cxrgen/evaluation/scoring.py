"""Scoring: one or more systems through the metrics, intervals, and comparisons with the baseline.

Every system is scored on the studies all of them share (:mod:`cxrgen.evaluation.alignment`)
by the metrics of the mode (:mod:`cxrgen.metrics.registry`, plus the model-based metrics asked
for), and all of them are resampled with the same bootstrap draws, which makes the paired
comparison against the baseline possible. p-values come from the paired approximate randomization
test (:mod:`cxrgen.metrics.significance`, the default) or the paired bootstrap
(:func:`cxrgen.metrics.bootstrap.paired_test`); both run on the per-sample sufficient statistics,
never re-scoring text. Each comparison also counts its **discordant studies**, those whose
statistics for the metric differ between the two systems: a difference resting on fewer than
:data:`MIN_DISCORDANT` of them is marked unreliable (``"reliable": false``), whatever its p-value.

Under a published protocol (:mod:`cxrgen.metrics.protocols`) the protocol gives the metrics, the reference
(:mod:`cxrgen.evaluation.sections`), the default number of resamples and the signature's first fields, and each
system's summary also holds its ``published`` values (the published code's own way of reporting them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from cxrgen.evaluation import sections, summaries
from cxrgen.evaluation.alignment import Prepared, align, prepare, restrict
from cxrgen.evaluation.common import (EvaluationInputError, MetricError, MetricUnavailableError, NothingToScoreError, log,
                                     text_or_empty, where)
from cxrgen.evaluation.inputs import HYP, REF, STATUS, resolve_columns, source_paths, standardise
from cxrgen.evaluation.origins import origin_of, task_differences
from cxrgen.metrics import bootstrap, clinical, protocols, significance
from cxrgen.metrics.base import Metric
from cxrgen.metrics.model_metric import ModelMetricFailure
from cxrgen.metrics.signature import make_signature
from cxrgen.metrics.suite import Scores, metrics_for, score_texts
from cxrgen.metrics.tokenize import COMPAT_MODES

SIGNIFICANCE_TESTS = ("ar", "bootstrap")
#: Fewer discordant studies than this: the comparison is marked unreliable. With d discordant studies the
#: randomization test's smallest possible p-value is 2^(1-d) and every p-value hinges on a handful of studies.
MIN_DISCORDANT = 10


@dataclass
class Evaluation:
    """One system's result: ``per_sample`` (indexed like the input's scored rows), ``summary`` (the
    dict stored under ``summary.json["systems"][name]``) and the ``signature``."""

    name: str
    per_sample: pd.DataFrame
    summary: dict
    signature: str
    scores: Scores | None = None


@dataclass
class Report:
    """The evaluation of one or more systems, aligned, with comparisons against the baseline.
    ``frames``: each system's rows with the runner's column names; ``metrics``: the metrics
    computed, in order; ``warnings``: notes every output repeats (e.g. too few shared studies)."""

    signature: str
    systems: dict[str, Evaluation]
    baseline: str
    comparisons: list[dict]
    alignment: dict | None
    settings: dict
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary_dict(self) -> dict:
        """The ``summary.json`` content."""
        return summaries.summary_dict(self)


def _model_names(model_metrics: Sequence[str] | str) -> list[str]:
    if not model_metrics:
        return []
    from cxrgen.metrics import model_based

    text = model_metrics if isinstance(model_metrics, str) else ",".join(model_metrics)
    try:
        return list(model_based.parse_names(text))
    except ValueError as exc:
        raise EvaluationInputError(str(exc)) from None


def _check_models(metrics: Sequence[Metric], skip_unavailable: bool) -> dict[str, str]:
    """Metric name -> why, for each model-based metric whose scorers cannot run here. One that is not
    ``optional`` stops the evaluation (:class:`MetricUnavailableError`, each scorer's reason once) unless
    ``skip_unavailable``; an optional one (a protocol's "where installed") is reported unavailable."""
    needs = {m.name: tuple(getattr(m, "scorers", ())) for m in metrics}
    scorers = list(dict.fromkeys(s for names in needs.values() for s in names))
    if not scorers:
        return {}
    from cxrgen.metrics import model_based

    reasons = dict(model_based.check_available(scorers))
    skipped = {}
    for name, names in needs.items():
        missing = [s for s in names if s in reasons]
        if missing:
            skipped[name] = reasons[missing[0]] if len(names) == 1 else "; ".join(f"{s}: {reasons[s]}" for s in missing)
    optional = {m.name for m in metrics if getattr(m, "optional", False)}
    required: dict[str, list[str]] = {}  # missing scorer -> the metrics it stops
    for m in metrics:
        if m.name in skipped and m.name not in optional:
            for s in needs[m.name]:
                if s in reasons:
                    required.setdefault(s, []).append(m.name)
    if required and not skip_unavailable:
        raise MetricUnavailableError("; ".join(f"{s}: {reasons[s]}" for s in required))
    for s, names in required.items():
        log.warning("%s: skipped, %s", ", ".join(names), reasons[s] if names == [s] else f"{s}: {reasons[s]}")
    return skipped


def evaluate_systems(
    frames: dict[str, pd.DataFrame],
    *,
    baseline: str | None = None,
    id_col: str | None = None,
    hyp_col: str | None = None,
    ref_col: str | None = None,
    status_col: str | None = STATUS,
    n_boot: int | None = None,
    seed: int = 0,
    compat: str | None = None,
    clinical_metrics: bool = True,
    uncertain: str = "positive",
    use_meteor: bool = True,
    model_metrics: Sequence[str] | str = (),
    skip_unavailable: bool = False,
    significance_test: str = "ar",
    ar_trials: int = significance.DEFAULT_TRIALS,
    label_reports: Callable[[list[str]], list[dict]] | None = None,
    protocol: protocols.Protocol | str | None = None,
) -> Report:
    """Score every system in ``frames`` (name -> rows) on the studies they share and compare each
    with ``baseline`` (default: the first).

    Columns: ``id_col``, ``hyp_col``, ``ref_col`` name them; None finds them by their common names
    (:func:`cxrgen.evaluation.inputs.resolve_columns`), per system. ``significance_test``:
    ``"ar"`` (``ar_trials`` trials) or ``"bootstrap"``. A model-based metric that cannot run is an
    error (:class:`MetricUnavailableError`) unless ``skip_unavailable``. ``protocol`` (a
    :class:`~cxrgen.metrics.protocols.Protocol` or its name) replaces the metrics of the mode and the
    reference, and gives the default ``n_boot`` (otherwise 1,000); it takes no ``compat`` or
    ``model_metrics``, and counts uncertain labels as it defines."""
    if not frames:
        raise EvaluationInputError("no results to evaluate")
    if isinstance(protocol, str):
        try:
            protocol = protocols.get(protocol)
        except ValueError as exc:
            raise EvaluationInputError(str(exc)) from None
    if protocol is not None and (compat is not None or model_metrics):
        raise EvaluationInputError(f"protocol {protocol.name} fixes the metrics and their definitions; it takes no "
                                   "compatibility mode or extra model-based metrics")
    if n_boot is None:
        n_boot = protocol.n_boot if protocol is not None else 1000
    if n_boot < 0:
        raise EvaluationInputError(f"the number of bootstrap resamples must be 0 or more, not {n_boot}")
    if uncertain not in clinical.POLICIES:
        raise EvaluationInputError(f"the uncertain policy must be one of {', '.join(clinical.POLICIES)}, not {uncertain!r}")
    if compat is not None and compat not in COMPAT_MODES:
        raise EvaluationInputError(f"unknown compatibility mode {compat!r}; known: {', '.join(COMPAT_MODES)}")
    if significance_test not in SIGNIFICANCE_TESTS:
        raise EvaluationInputError(f"unknown significance test {significance_test!r}; known: {', '.join(SIGNIFICANCE_TESTS)}")
    if significance_test == "ar" and ar_trials <= 0:
        raise EvaluationInputError(f"the number of randomization trials must be positive, not {ar_trials}")
    names = list(frames)
    baseline = baseline or names[0]
    if baseline not in frames:
        raise EvaluationInputError(f"baseline {baseline!r} is not one of the systems: {', '.join(names)}")
    order = [baseline] + [n for n in names if n != baseline]
    model_names = _model_names(model_metrics)
    metric_list = protocol.metrics() if protocol is not None else metrics_for(compat, model_names)
    skipped = _check_models(metric_list, skip_unavailable)

    standard: dict[str, pd.DataFrame] = {}
    for n in order:
        cols = resolve_columns(frames[n], id_col, hyp_col, ref_col, status_col)
        standard[n] = standardise(frames[n], cols)
        if protocol is not None:
            refs = sections.protocol_references(frames[n], cols, protocol, ref_given=ref_col is not None)
            standard[n] = standard[n].assign(**{REF: refs})
    prepared: dict[str, Prepared] = {n: prepare(standard[n], n) for n in order}
    for p in prepared.values():
        if not p.ids:
            raise NothingToScoreError(
                f"{where(standard[p.name])}: no row can be scored ({p.n_rows} rows, "
                f"{len(p.excluded['error'])} with status error, {len(p.excluded['empty_reference'])} with an empty reference)"
            )
    alignment = None
    if len(order) > 1:
        shared, dropped = align([prepared[n] for n in order])
        if not shared:
            raise EvaluationInputError(f"the systems {', '.join(order)} share no scorable study id")
        alignment = {"n_shared": len(shared), "dropped": dropped}
        for n in order:
            restrict(prepared[n], shared, dropped[n]["ids"])

    ref_cache: dict = {}
    scores: dict[str, Scores] = {}
    for n in order:
        p = prepared[n]
        try:
            scores[n] = _score(p, compat, clinical_metrics, uncertain, use_meteor, label_reports, metric_list,
                               ref_cache, skipped)
        except ModelMetricFailure as exc:
            raise MetricError(f"system {n}: {exc}") from None
        for name, why in skipped.items():
            scores[n].unavailable[name] = why
    base_scores = scores[baseline]
    signature = make_signature(
        base_scores.components, compat=compat, n_boot=n_boot, seed=seed,
        ar_trials=ar_trials if significance_test == "ar" and len(order) > 1 else None, protocol=protocol,
    )

    if n_boot > 0:
        sums = bootstrap.resampled_sums([scores[n].stats for n in order], n_boot, seed)
        boot_values = {n: scores[n].from_sums(s, resampled=True) for n, s in zip(order, sums)}
    else:
        boot_values = {n: None for n in order}
    points = {n: scores[n].point() for n in order}

    evaluations = {}
    for n in order:
        p, s = prepared[n], scores[n]
        summary = summaries.system_summary(p, s, points[n], boot_values[n])
        paths = source_paths(frames[n])
        summary["origin"] = origin_of(paths[0]) if paths else None
        if protocol is not None and protocol.published:
            summary["published"] = protocols.published_values(protocol, s)
        evaluations[n] = Evaluation(name=n, per_sample=summaries.per_sample_frame(p, s), summary=summary,
                                    signature=signature, scores=s)

    comparisons = []
    warnings = task_differences({n: evaluations[n].summary["origin"] for n in order})
    warnings += [f"{n}: made with a tiny random checkpoint, so its reports are noise (a demonstration of the "
                 "mechanics, not a model)" for n in order
                 if (evaluations[n].summary["origin"] or {}).get("model", {}).get("random_weights")]
    for n in order[1:]:
        comparisons += _compare(n, baseline, scores, points, boot_values, significance_test, ar_trials, seed)
    if len(order) > 1 and base_scores.n < significance.MIN_STUDIES:
        warnings.append(  # shown by every output (terminal table, summary.*, the page), so not logged as well
            f"the systems share only {base_scores.n} studies (fewer than {significance.MIN_STUDIES}): "
            "p-values and intervals from so few studies are unreliable"
        )
    settings = {
        "id_col": id_col, "hyp_col": hyp_col, "ref_col": ref_col, "status_col": status_col,
        "n_boot": n_boot, "seed": seed, "compat": compat,
        "clinical": "clinical" in base_scores.cols, "uncertain": uncertain if "clinical" in base_scores.cols else None,
        "model_metrics": model_names, "significance": significance_test,
        "ar_trials": ar_trials if significance_test == "ar" else None,
        "protocol": protocol.name if protocol is not None else None,
    }
    if protocol is not None:
        settings["reference"] = protocol.reference.description
    frames_out = {n: standard[n] for n in order}
    return Report(signature=signature, systems=evaluations, baseline=baseline, comparisons=comparisons,
                  alignment=alignment, settings=settings, frames=frames_out, metrics=list(base_scores.metrics),
                  warnings=warnings)


def _score(p, compat, clinical_metrics, uncertain, use_meteor, label_reports, metric_list, ref_cache, skipped):
    return score_texts(
        [text_or_empty(v) for v in p.frame[HYP]],
        [text_or_empty(v) for v in p.frame[REF]],
        compat=compat, clinical_metrics=clinical_metrics, uncertain=uncertain, use_meteor=use_meteor,
        label_reports=label_reports, metrics=metric_list, ref_cache=ref_cache, skip=list(skipped),
    )


def _compare(name, baseline, scores, points, boot_values, test, ar_trials, seed) -> list[dict]:
    s, b = scores[name], scores[baseline]
    theirs = set(s.metric_keys())
    keys = [k for k in b.metric_keys() if k in theirs]
    diffs = {k: points[name][k] - points[baseline][k] for k in keys}
    p_ar = {}
    if test == "ar" and keys:
        if s.cols != b.cols:
            raise EvaluationInputError(f"systems {name} and {baseline} were scored with different metrics")
        p_ar = significance.approximate_randomization(s.stats, b.stats, b.from_sums, diffs, trials=ar_trials, seed=seed)
    out = []
    for k in keys:
        if boot_values[name] is not None:
            entry = bootstrap.paired_test(boot_values[name][k], boot_values[baseline][k], diffs[k])
        else:
            entry = {"diff": float(diffs[k]) if np.isfinite(diffs[k]) else None, "ci": None, "p_value": None}
        if test == "ar":
            entry["p_value"] = None if p_ar[k] is None else float(p_ar[k])
        cols = b.key_columns(k)
        discordant = int(np.count_nonzero((s.stats[:, cols] != b.stats[:, cols]).any(axis=1)))
        out.append({"system": name, "baseline": baseline, "metric": k, "n": s.n, **entry, "test": test,
                    "discordant": discordant, "reliable": discordant >= MIN_DISCORDANT})
    return out


def evaluate_frame(
    df: pd.DataFrame,
    *,
    name: str,
    id_col: str | None = None,
    hyp_col: str | None = None,
    ref_col: str | None = None,
    status_col: str | None = STATUS,
    n_boot: int = 1000,
    seed: int = 0,
    compat: str | None = None,
    clinical: bool = True,
    uncertain: str = "positive",
    use_meteor: bool = True,
    model_metrics: Sequence[str] | str = (),
    skip_unavailable: bool = False,
    label_reports: Callable[[list[str]], list[dict]] | None = None,
) -> Evaluation:
    """Evaluate one system's rows; ``.per_sample`` is indexed like the scored rows of ``df``,
    ``.summary`` is ``summary.json["systems"][name]``."""
    report = evaluate_systems(
        {name: df}, id_col=id_col, hyp_col=hyp_col, ref_col=ref_col, status_col=status_col, n_boot=n_boot,
        seed=seed, compat=compat, clinical_metrics=clinical, uncertain=uncertain, use_meteor=use_meteor,
        model_metrics=model_metrics, skip_unavailable=skip_unavailable, label_reports=label_reports,
    )
    return report.systems[name]

