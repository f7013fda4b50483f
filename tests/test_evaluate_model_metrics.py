"""Model-based metrics wired through the registry and evaluate.py, with a stand-in for cxrgen.metrics.model_based's
scorers (the real ones need RadEval and downloaded weights): order, per-sample alignment, intervals,
comparisons, signature, label F1, refusal when a scorer cannot run, and --fetch-metric-models."""

import json

import numpy as np
import pandas as pd
import pytest

import evaluate
from cxrgen.evaluation import evaluate_systems
from cxrgen.metrics import bootstrap, clinical, model_based

REFS = {
    "s1": "Small left pleural effusion.",
    "s2": "Heart size is enlarged.",
    "s3": "No acute disease.",
    "s4": "Right pneumothorax.",
    "s5": "Mild pulmonary edema.",
}
GEN_A = {"s1": "Left pleural effusion.", "s2": "Normal heart.", "s3": "No acute disease.", "s4": "", "s5": "Edema."}
GEN_B = {"s1": "Small left pleural effusion.", "s2": "Enlarged heart.", "s3": "Clear lungs.", "s4": "Pneumothorax.",
         "s5": "Mild pulmonary edema."}
CALLS = []


def _overlap(h: str, r: str) -> float:
    hw, rw = set(h.lower().strip(".").split()), set(r.lower().strip(".").split())
    return len(hw & rw) / max(1, len(rw))


def _labels(text: str) -> np.ndarray:
    row = np.zeros(len(clinical.COLUMNS), dtype=np.int8)
    for word, col in (("effusion", "pleural_effusion"), ("enlarged", "cardiomegaly"), ("pneumothorax", "pneumothorax"),
                      ("edema", "edema")):
        if word in text.lower():
            row[clinical.COLUMNS.index(col)] = 1
    return row


def fake_score(name, hyps, refs, **kw):
    CALLS.append((name, list(hyps), list(refs)))
    if name == "radgraph":
        values = np.array([_overlap(h, r) if h.strip() else 0.0 for h, r in zip(hyps, refs)])
        return model_based.ModelScores(name=name, per_sample={"radgraph_partial": values, "radgraph_simple": values / 2},
                                       signature="radeval-2.2+radgraph-xl")
    if name == "chexbert":
        return model_based.ModelScores(name=name, hyp_labels=np.array([_labels(h) for h in hyps]),
                                       ref_labels=np.array([_labels(r) for r in refs]), signature="radeval-2.2+chexbert")
    raise AssertionError(f"unexpected scorer {name}")


@pytest.fixture
def scorers(monkeypatch):
    CALLS.clear()
    monkeypatch.setattr(model_based, "score", fake_score)
    monkeypatch.setattr(model_based, "check_available", lambda names: {})
    return CALLS


def _frame(gen: dict, order: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": order, "generated_report": [gen[i] for i in order], "reference": [REFS[i] for i in order]})


def test_model_metrics_are_aligned_resampled_compared_and_signed(scorers):
    a = _frame(GEN_A, ["s1", "s2", "s3", "s4", "s5"])
    b = _frame(GEN_B, ["s5", "s3", "s1", "s4", "s2"])  # another row order
    rep = evaluate_systems({"a": a, "b": b}, model_metrics="radgraph,chexbert", n_boot=200, seed=4, use_meteor=False)
    sa, sb = rep.systems["a"].summary, rep.systems["b"].summary
    keys = list(sa["metrics"])
    # registry metrics first, then the model metrics in the order asked for
    assert keys[:6] == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"]
    assert keys[6:] == ["radgraph_partial", "radgraph_simple", "chexbert_chexpert14_micro_f1",
                        "chexbert_chexpert14_macro_f1", "chexbert_chexbert5_micro_f1", "chexbert_chexbert5_macro_f1"]
    # per-sample values belong to their own study in both systems, whatever the input order
    for name, gen in (("a", GEN_A), ("b", GEN_B)):
        per = rep.systems[name].per_sample.set_index("id")
        for sid in REFS:
            assert per.loc[sid, "radgraph_partial"] == pytest.approx(_overlap(gen[sid], REFS[sid]) if gen[sid] else 0.0)
    assert sa["metrics"]["radgraph_partial"]["value"] == pytest.approx(np.mean([_overlap(GEN_A[i], REFS[i]) for i in REFS]))
    # interval: percentile interval of resampled means, same draws as every other metric
    per_a = rep.systems["a"].per_sample["radgraph_partial"].to_numpy()
    counts = np.vstack(list(bootstrap.resample_counts(5, 200, seed=4)))
    assert sa["metrics"]["radgraph_partial"]["ci"] == pytest.approx(np.percentile(counts @ per_a / 5, [2.5, 97.5]))
    # CheXbert F1 from the labels: a finds effusion and edema and misses cardiomegaly and pneumothorax
    assert sa["metrics"]["chexbert_chexpert14_micro_f1"]["value"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))
    assert sb["metrics"]["chexbert_chexpert14_micro_f1"]["value"] == pytest.approx(1.0)
    comp = {c["metric"]: c for c in rep.comparisons}
    assert comp["chexbert_chexpert14_micro_f1"]["diff"] == pytest.approx(1 - 4 / 6)
    assert "radgraph:radeval-2.2+radgraph-xl" in rep.signature and "chexbert:radeval-2.2+chexbert" in rep.signature
    # each scorer saw the aligned pairs of each system once
    assert [c[0] for c in scorers] == ["radgraph", "chexbert", "radgraph", "chexbert"]
    assert scorers[2][2] == [REFS[i] for i in ["s1", "s2", "s3", "s4", "s5"]]


def test_a_metric_that_cannot_run_stops_unless_skipped(tmp_path, capsys, monkeypatch, scorers):
    why = "weights not in the local cache; fetch them with: python evaluate.py --fetch-metric-models radgraph"
    monkeypatch.setattr(model_based, "check_available", lambda names: {n: why for n in names if n == "radgraph"})
    csv = tmp_path / "a.csv"
    _frame(GEN_A, list(REFS)).to_csv(csv, index=False)
    rc = evaluate.main([str(csv), "--model-metrics", "radgraph", "--no-clinical", "--n-boot", "10"])
    err = capsys.readouterr().err
    assert rc == 2 and scorers == []
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "radgraph" in errors[0] and "--fetch-metric-models radgraph" in errors[0]
    rc = evaluate.main([str(csv), "--model-metrics", "radgraph,chexbert", "--skip-unavailable", "--no-clinical",
                        "--n-boot", "10"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "summary.json").read_text())["systems"]["a"]
    assert s["unavailable"]["radgraph"] == why and "radgraph_partial" not in s["metrics"]
    assert "chexbert_chexpert14_micro_f1" in s["metrics"] and [c[0] for c in scorers] == ["chexbert"]


def test_a_scorer_returning_the_wrong_length_is_one_line(tmp_path, capsys, monkeypatch, scorers):
    def short(name, hyps, refs, **kw):
        return model_based.ModelScores(name=name, per_sample={"radgraph_partial": np.zeros(len(hyps) - 1)})

    monkeypatch.setattr(model_based, "score", short)
    csv = tmp_path / "a.csv"
    _frame(GEN_A, list(REFS)).to_csv(csv, index=False)
    rc = evaluate.main([str(csv), "--model-metrics", "radgraph", "--no-clinical", "--n-boot", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "4 values of 'radgraph_partial' for 5 reports" in err and "Traceback" not in err


def test_fetch_metric_models(capsys, monkeypatch):
    got = []
    monkeypatch.setattr(model_based, "fetch", lambda names: got.append(list(names)) or ["/cache/a", "/cache/b"])
    assert evaluate.main(["--fetch-metric-models", "all"]) == 0
    assert got == [list(model_based.KNOWN)] and capsys.readouterr().out.split() == ["/cache/a", "/cache/b"]
    assert evaluate.main(["--fetch-metric-models", "bleurt"]) == 2
    assert "unknown model-based metric 'bleurt'" in capsys.readouterr().err
