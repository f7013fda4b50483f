"""Clinical-efficacy metrics on hand-made CheXpert label dicts, and their place in the evaluation."""

import numpy as np
import pandas as pd
import pytest

from cxrgen.evaluation import evaluate_frame, evaluate_systems
from cxrgen.metrics import clinical

HYP = [{"cardiomegaly": 1, "pleural_effusion": -1}, {"edema": 1}, {}]
REF = [{"cardiomegaly": 1, "pleural_effusion": 1}, {"edema": 0, "atelectasis": 1}, {"pneumothorax": -1}]


def _sums(policy):
    out = clinical.outcome_counts(clinical.label_codes(HYP), clinical.label_codes(REF), policy)
    return out.sum(axis=0)


def _col(name):
    return clinical.COLUMNS.index(name)


def test_outcomes_under_each_uncertain_policy():
    pos = _sums("positive")
    assert pos[_col("cardiomegaly")].tolist() == [1, 0, 0, 2]
    assert pos[_col("pleural_effusion")].tolist() == [1, 0, 0, 2]  # -1 vs 1: both positive
    assert pos[_col("edema")].tolist() == [0, 1, 0, 2]
    assert pos[_col("atelectasis")].tolist() == [0, 0, 1, 2]
    assert pos[_col("pneumothorax")].tolist() == [0, 0, 1, 2]  # reference -1 is positive
    neg = _sums("negative")
    assert neg[_col("pleural_effusion")].tolist() == [0, 0, 1, 2]
    assert neg[_col("pneumothorax")].tolist() == [0, 0, 0, 3]
    exc = _sums("exclude")
    assert exc[_col("pleural_effusion")].tolist() == [0, 0, 0, 2]  # sample 1 left out
    assert exc[_col("pneumothorax")].tolist() == [0, 0, 0, 2]  # sample 3 left out
    assert exc[_col("cardiomegaly")].tolist() == [1, 0, 0, 2]


def test_micro_and_macro_by_hand():
    m = clinical.set_metrics(_sums("positive"))
    # 14 observations: TP 2 (card, eff), FP 1 (edema), FN 2 (atel, ptx)
    assert m["chexpert14_micro_precision"] == pytest.approx(2 / 3)
    assert m["chexpert14_micro_recall"] == pytest.approx(2 / 4)
    assert m["chexpert14_micro_f1"] == pytest.approx(4 / 7)
    # macro over the observations where each value is defined: F1 over the 5 positive somewhere (1, 1, 0, 0, 0),
    # precision over the 3 a generated report has (card 1, eff 1, edema 0), recall over the 4 a reference has
    assert m["chexpert14_macro_f1"] == pytest.approx(2 / 5)
    assert m["chexpert14_macro_precision"] == pytest.approx(2 / 3)
    assert m["chexpert14_macro_recall"] == pytest.approx(2 / 4)
    # CheXbert 5 (no pneumothorax): TP 2, FP 1, FN 1
    assert m["chexbert5_micro_f1"] == pytest.approx(2 / 3)
    assert m["chexbert5_macro_f1"] == pytest.approx(2 / 4)
    # CXR-LLaVA 6 adds pneumothorax back
    assert m["cxrllava6_micro_f1"] == pytest.approx(4 / 7)
    assert m["cxrllava6_macro_f1"] == pytest.approx(2 / 5)

    neg = clinical.set_metrics(_sums("negative"))
    assert neg["chexpert14_micro_precision"] == pytest.approx(1 / 2)
    assert neg["chexpert14_micro_recall"] == pytest.approx(1 / 3)
    assert neg["chexpert14_micro_f1"] == pytest.approx(2 / 5)
    assert neg["chexpert14_macro_f1"] == pytest.approx(1 / 4)

    exc = clinical.set_metrics(_sums("exclude"))
    assert exc["chexpert14_micro_f1"] == pytest.approx(1 / 2)
    assert exc["chexpert14_macro_f1"] == pytest.approx(1 / 3)


def test_metrics_are_vectorised_over_bootstrap_rows():
    one = _sums("positive")
    stacked = np.stack([one, 2 * one, one])
    m = clinical.set_metrics(stacked)
    # doubling every count leaves ratios unchanged
    assert m["chexpert14_micro_f1"].tolist() == pytest.approx([4 / 7] * 3)
    assert m["chexbert5_macro_f1"].shape == (3,)


def test_a_value_whose_denominator_is_zero_is_undefined_not_zero():
    """No F1 for an observation neither side has, no recall without a reference positive (edema: a false
    positive only), no precision without a generated positive (atelectasis: missed only)."""
    per = clinical.per_observation(_sums("positive"))
    assert np.isnan(per["f1"][_col("fracture")]) and np.isnan(per["recall"][_col("fracture")])
    assert per["f1"][_col("edema")] == 0 and per["precision"][_col("edema")] == 0
    assert np.isnan(per["recall"][_col("edema")])
    assert np.isnan(per["precision"][_col("atelectasis")]) and per["recall"][_col("atelectasis")] == 0
    empty = clinical.set_metrics(np.zeros((14, 4)))  # nothing positive anywhere: nothing to average
    assert all(np.isnan(v) for v in empty.values())


def test_label_codes_reject_unknown_values():
    with pytest.raises(ValueError, match=r"row 1, observation 'edema'"):
        clinical.label_codes([{}, {"edema": 2}])
    with pytest.raises(ValueError, match="uncertain policy"):
        clinical.outcome_counts(np.zeros((1, 14)), np.zeros((1, 14)), "maybe")


# --- through evaluate_frame with a keyword labeler ---------------------------------------------


def keyword_labels(texts):
    out = []
    for t in texts:
        t = t.lower()
        lab = {}
        if "enlarged" in t or "cardiomegaly" in t:
            lab["cardiomegaly"] = 1
        if "no effusion" in t:
            lab["pleural_effusion"] = 0
        elif "effusion" in t:
            lab["pleural_effusion"] = 1
        if "possible edema" in t:
            lab["edema"] = -1
        elif "edema" in t:
            lab["edema"] = 1
        out.append(lab)
    return out


keyword_labels.LABELER_VERSION = "keywords-test"


def _frame():
    return pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e"],
            "reference": [
                "Heart is enlarged. Small effusion.",
                "No effusion. Edema.",
                "Clear lungs.",
                "Cardiomegaly.",
                "Possible edema.",
            ],
            "generated_report": ["Heart is enlarged.", "Edema, no effusion.", "Effusion.", "", "Edema."],
        }
    )


def test_evaluate_frame_clinical_block():
    ev = evaluate_frame(_frame(), name="m", n_boot=200, label_reports=keyword_labels)
    cl = ev.summary["clinical"]
    assert cl["labeler"] == "keywords-test" and cl["uncertain"] == "positive"
    assert "clin:keywords-test+unc:pos" in ev.signature
    # card: a tp, d fn; eff: a fn, c fp; edema: b tp, e tp (uncertain ref -> positive)
    per = cl["per_observation"]
    assert (per["cardiomegaly"]["tp"], per["cardiomegaly"]["fn"]) == (1, 1)
    assert (per["pleural_effusion"]["fp"], per["pleural_effusion"]["fn"]) == (1, 1)
    assert per["edema"]["tp"] == 2
    assert per["fracture"]["f1"] is None
    micro = cl["metrics"]["chexpert14_micro_f1"]
    assert micro["value"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert micro["ci"][0] <= micro["value"] <= micro["ci"][1]
    # the empty report is labelled "not mentioned" everywhere
    row_d = ev.per_sample.set_index("id").loc["d"]
    assert row_d["hyp_labels"] == "" and row_d["ce_fn"] == 1 and row_d["empty_hyp"]
    assert ev.per_sample.set_index("id").loc["a", "ref_labels"] == "cardiomegaly:1;pleural_effusion:1"

    excl = evaluate_frame(_frame(), name="m", n_boot=0, uncertain="exclude", label_reports=keyword_labels)
    assert excl.summary["clinical"]["per_observation"]["edema"]["tp"] == 1
    assert excl.summary["clinical"]["metrics"]["chexpert14_micro_f1"]["ci"] is None


def test_clinical_metrics_are_compared_between_systems():
    base = _frame()
    better = base.copy()
    better["generated_report"] = better["reference"]
    rep = evaluate_systems({"base": base, "better": better}, n_boot=200, label_reports=keyword_labels)
    comp = {c["metric"]: c for c in rep.comparisons}
    assert comp["chexpert14_micro_f1"]["diff"] == pytest.approx(1.0 - 6 / 9)
    assert rep.systems["better"].summary["clinical"]["metrics"]["chexbert5_micro_f1"]["value"] == pytest.approx(1.0)
    assert "obs:edema:f1" not in comp


def test_label_agreement_does_not_reward_a_report_that_mentions_nothing():
    """Noise mentions no finding: it agreed with 12 of 14 "not mentioned/negative" labels before (0.857); now it
    scores 0 against a reference that mentions findings, a report with the same labels scores 1, and a pair where
    neither mentions anything has no agreement (NaN), not 1."""
    ref = clinical.label_codes([{"pleural_effusion": 1, "pneumothorax": 0}] * 3 + [{}])
    hyp = clinical.label_codes([{}, {"pleural_effusion": 1, "pneumothorax": 0}, {"pleural_effusion": 1}, {}])
    agreement = clinical.label_agreement(hyp, ref)
    assert agreement[0] == 0 and agreement[1] == 1 and agreement[2] == 0.5 and np.isnan(agreement[3])
