"""The paired approximate-randomization test: the vectorised test on sufficient statistics against a
plain loop that swaps texts and re-scores, its edge cases, and its place in evaluate.py's outputs."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import evaluate
from cxrgen.evaluation import evaluate_systems
from cxrgen.metrics import significance
from cxrgen.metrics.suite import score_texts
from helpers import load_reports


def _reports(n):
    return load_reports()[:n]


def keyword_labels(texts):
    out = []
    for t in texts:
        t = t.lower()
        lab = {}
        if "effusion" in t:
            lab["pleural_effusion"] = 0 if "no " in t else 1
        if "cardiomegaly" in t or "enlarged" in t:
            lab["cardiomegaly"] = 1
        if "normal" in t:
            lab["no_finding"] = 1
        out.append(lab)
    return out


def ar_by_loop(hyps_a, hyps_b, refs, keys, trials, seed, **kw):
    """Reference: swap each study's two texts with probability 1/2 (one uniform per study and
    trial, row by row), re-score both pseudo systems from their texts, count |diff| >= observed (or
    undefined)."""
    rng = np.random.default_rng(seed)

    def corpus(hyps):
        return score_texts(hyps, refs, **kw).point()

    pa, pb = corpus(hyps_a), corpus(hyps_b)
    observed = {k: abs(pa[k] - pb[k]) for k in keys}
    count = dict.fromkeys(keys, 0)
    for _ in range(trials):
        xa, xb = [], []
        for a, b in zip(hyps_a, hyps_b):
            if rng.random() < 0.5:
                a, b = b, a
            xa.append(a)
            xb.append(b)
        va, vb = corpus(xa), corpus(xb)
        for k in keys:
            d = abs(va[k] - vb[k])
            if d >= observed[k] * (1 - 1e-10) - 1e-10 or d != d:  # an undefined trial counts as extreme
                count[k] += 1
    return {k: (c + 1) / (trials + 1) for k, c in count.items()}


def test_vectorised_ar_equals_the_loop_that_rescores_texts():
    refs = _reports(40)
    hyps_a = [refs[(i + 1) % 40] for i in range(40)]
    hyps_b = [refs[i] if i % 3 == 0 else refs[(i + 5) % 40] for i in range(40)]
    hyps_b[7] = ""
    kw = dict(clinical_metrics=True, use_meteor=False, label_reports=keyword_labels)
    sa, sb = score_texts(hyps_a, refs, **kw), score_texts(hyps_b, refs, **kw)
    keys = sa.metric_keys()
    pa, pb = sa.point(), sb.point()
    fast = significance.approximate_randomization(sa.stats, sb.stats, sb.from_sums, {k: pa[k] - pb[k] for k in keys},
                                                  trials=60, seed=9)
    slow = ar_by_loop(hyps_a, hyps_b, refs, keys, trials=60, seed=9, **kw)
    assert fast == pytest.approx(slow, abs=1e-15)
    assert len({round(v, 6) for v in fast.values()}) > 3  # the p-values are not all the same number
    assert 0 < min(fast.values()) and max(fast.values()) <= 1


def test_identical_systems_give_p_one_and_a_perfect_system_the_smallest_p():
    refs = _reports(60)
    worse = [refs[(i + 1) % 60] for i in range(60)]
    s_ref = score_texts(refs, refs, clinical_metrics=False, use_meteor=False)
    s_bad = score_texts(worse, refs, clinical_metrics=False, use_meteor=False)
    same = significance.approximate_randomization(s_bad.stats, s_bad.stats, s_bad.from_sums,
                                                  {k: 0.0 for k in s_bad.metric_keys()}, trials=200, seed=0)
    assert set(same.values()) == {1.0}
    pr, pw = s_ref.point(), s_bad.point()
    p = significance.approximate_randomization(s_ref.stats, s_bad.stats, s_bad.from_sums,
                                               {"bleu_4": pr["bleu_4"] - pw["bleu_4"]}, trials=999, seed=0)
    assert p["bleu_4"] == pytest.approx(1 / 1000)


def test_swap_masks_are_seeded_half_and_half():
    a = np.vstack(list(significance.swap_masks(300, 1200, seed=5)))
    b = np.vstack(list(significance.swap_masks(300, 1200, seed=5)))
    assert a.shape == (1200, 300) and (a == b).all()
    assert not (a == np.vstack(list(significance.swap_masks(300, 1200, seed=6)))).all()
    assert a.mean() == pytest.approx(0.5, abs=0.01)


def _write(path, ids, gens, refs):
    pd.DataFrame({"id": ids, "generated_report": gens, "reference": refs}).to_csv(path, index=False)
    return path


def test_ar_through_the_cli_and_the_small_sample_warning(tmp_path, capsys):
    refs = _reports(12)
    ids = [f"s{i}" for i in range(12)]
    a = _write(tmp_path / "a.csv", ids, [refs[(i + 1) % 12] for i in range(12)], refs)
    b = _write(tmp_path / "b.csv", ids, refs, refs)
    out_dir = tmp_path / "cmp"
    rc = evaluate.main([str(a), str(b), "--significance", "ar", "--ar-trials", "300", "--n-boot", "50", "--no-clinical",
                        "--output-dir", str(out_dir), "--html"])
    out = capsys.readouterr().out
    assert rc == 0
    s = json.loads((out_dir / "summary.json").read_text())
    assert {c["test"] for c in s["comparisons"]} == {"ar"} and "ar:300" in s["signature"]
    frame = lambda h: pd.DataFrame({"id": ids, "generated_report": h, "reference": refs})  # noqa: E731
    rep = evaluate_systems({"a": frame([refs[(i + 1) % 12] for i in range(12)]), "b": frame(refs)}, n_boot=0,
                           clinical_metrics=False, significance_test="ar", ar_trials=300)
    assert [c["p_value"] for c in s["comparisons"]] == pytest.approx([c["p_value"] for c in rep.comparisons])
    assert s["comparisons"][0]["ci"] is not None  # the interval of the difference still comes from the bootstrap
    # fewer than 30 shared studies: said in the terminal, summary.md and on the page
    assert "WARNING: the systems share only 12 studies" in out
    assert "share only 12 studies" in (out_dir / "summary.md").read_text()
    assert "share only 12 studies" in (out_dir / "report.html").read_text()
    assert "approximate randomization" in (out_dir / "summary.md").read_text()


def test_no_warning_with_enough_studies():
    refs = _reports(30)
    frame = lambda h: pd.DataFrame({"id": range(30), "generated_report": h, "reference": refs})  # noqa: E731
    rep = evaluate_systems({"a": frame(refs[1:] + refs[:1]), "b": frame(refs)}, n_boot=0, clinical_metrics=False)
    assert rep.warnings == [] and rep.summary_dict()["warnings"] == []


def test_an_undefined_difference_has_no_p_value_rather_than_a_tiny_one():
    from cxrgen.metrics import bootstrap

    stats = np.ones((20, 2))
    ratio = lambda sums: {"r": sums[..., 0] / (sums[..., 1] - sums[..., 1])}  # noqa: E731  always undefined
    p = significance.approximate_randomization(stats, stats, ratio, {"r": float("nan")}, trials=99, seed=0)
    assert p == {"r": None}
    finite = significance.approximate_randomization(stats, stats, lambda s: {"r": s[..., 0]}, {"r": 0.0}, trials=99)
    assert finite == {"r": 1.0}  # identical systems: every trial is as extreme as the observed 0
    test = bootstrap.paired_test(np.full(50, np.nan), np.full(50, np.nan), float("nan"))
    assert test["p_value"] is None
    assert bootstrap.paired_test(np.linspace(0, 1, 50), np.linspace(0, 1, 50), 0.0)["p_value"] == 1.0


# -- rare findings: one discordant study, a null simulation, ties, the resampling itself ---------------------------

ROOT = Path(__file__).resolve().parents[1]


def _one_study_apart(n=20):
    """20 studies; the first reference names a pleural effusion, no other does. The two systems write the same
    reports except that only the second names that effusion."""
    refs = ["Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax."] * n
    refs = [f"Study {i}. " + r for i, r in enumerate(refs)]
    refs[0] = "Study 0. Small left pleural effusion. Heart size is normal."
    second = list(refs)
    first = list(refs)
    first[0] = "Study 0. Heart size is normal."
    frame = lambda h: pd.DataFrame({"id": [f"s{i}" for i in range(n)], "generated_report": h,  # noqa: E731
                                    "reference": refs})
    return {"first": frame(first), "second": frame(second)}


@pytest.mark.parametrize("test", ["ar", "bootstrap"])
def test_a_difference_resting_on_one_study_is_never_significant(test):
    """The case that gave p = 0.001 for 15 clinical metrics under the shifted-null bootstrap: now no p-value
    below 0.05 under either test, each such comparison marked unreliable (1 discordant study), and the second
    system's effusion F1 from its one positive study has no interval (not [1, 1])."""
    report = evaluate_systems(_one_study_apart(), n_boot=1000, significance_test=test, ar_trials=2000,
                              use_meteor=False)
    clinical_rows = [c for c in report.comparisons if c["p_value"] is not None and c["diff"]]
    assert clinical_rows, "the effusion study changes some clinical metrics"
    assert all(c["p_value"] >= 0.05 for c in report.comparisons if c["p_value"] is not None), \
        [(c["metric"], c["p_value"]) for c in report.comparisons if c["p_value"] is not None and c["p_value"] < 0.05]
    for c in clinical_rows:
        assert c["discordant"] == 1 and c["reliable"] is False, c
    effusion = report.systems["second"].summary["clinical"]["per_observation"]["pleural_effusion"]
    assert effusion["ref_positive"] == 1 and effusion["f1"]["value"] == 1.0 and effusion["f1"]["ci"] is None
    # no reference names a pneumothorax: no recall for it, in either system
    assert report.systems["second"].summary["clinical"]["per_observation"]["pneumothorax"]["recall"] is None


def test_the_null_simulation_stays_at_level_for_common_and_rare_findings():
    """A fast run of bench/bench_rare_findings.py's null settings (100 studies with an effusion in 3 of them, 20
    with it in 1, and a common finding; both systems drawn from one distribution): each test rejects at 0.05 in at
    most 0.05 + 3 Monte-Carlo errors of the repetitions, for every metric (the shifted-null bootstrap: over 30%)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_rare_findings as sim

    reps = 150
    limit = 0.05 + 3 * (0.05 * 0.95 / reps) ** 0.5
    for n, k in ((100, 3), (20, 1)):
        rates = sim.one_setting(n, k, (0.7, 0.7), reps=reps, n_boot=300, trials=300, seed=3)
        for test in ("boot", "ar"):
            assert all(v is None or v <= limit for v in rates[test].values()), (n, k, test, rates[test])
    assert max(v for v in rates["boot-shift"].values() if v is not None) > 0.3  # the old test, for contrast


def test_bootstrap_draws_every_study_equally_often():
    """Each resample draws n studies, every study as often as any other on average (the last one too)."""
    from cxrgen.metrics import bootstrap

    counts = np.vstack(list(bootstrap.resample_counts(7, 4000, seed=0)))
    assert counts.shape == (4000, 7) and (counts.sum(axis=1) == 7).all()
    assert counts.mean(axis=0) == pytest.approx(np.ones(7), abs=5 * (6 / 7 / 4000) ** 0.5)


def test_a_tie_decided_by_summation_order_is_still_a_tie():
    """Two systems that differ in one study: every trial's difference equals the observed one up to the order of
    the sums, so every trial is as extreme and p = 1 (exact float comparison gave 0.52 for some of these)."""
    from cxrgen.metrics.base import mean_of_sums, mean_stats

    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.random(30)
        z = a.copy()
        z[7] = rng.random()
        sa, sz = mean_stats(a), mean_stats(z)
        observed = {"m": float(mean_of_sums(sa.sum(0)) - mean_of_sums(sz.sum(0)))}
        p = significance.approximate_randomization(sa, sz, lambda s: {"m": mean_of_sums(s)}, observed, trials=200)
        assert p["m"] == 1.0
