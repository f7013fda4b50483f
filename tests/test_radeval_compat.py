"""--compat radeval: RadEval's BLEU and ROUGE numbers, reproduced exactly, with bootstrap intervals."""

import numpy as np
import pandas as pd
import pytest

import evaluate
from cxrgen.evaluation import evaluate_frame
from cxrgen.metrics import bootstrap
from cxrgen.metrics.suite import score_texts
from helpers import load_reports

# The six pairs and the expected values of RadEval 2.2's own test, tests/test_basics.py of
# https://github.com/jbdel/RadEval (MIT licence), copied as test data.
RADEVAL_REFS = [
    "No acute cardiopulmonary process.",
    "No radiographic findings to suggest pneumonia.",
    "1.Status post median sternotomy for CABG with stable cardiac enlargement and calcification of the aorta "
    "consistent with atherosclerosis.Relatively lower lung volumes with no focal airspace consolidation "
    "appreciated.Crowding of the pulmonary vasculature with possible minimal perihilar edema, but no overt "
    "pulmonary edema.No pleural effusions or pneumothoraces.",
    "1. Left PICC tip appears to terminate in the distal left brachiocephalic vein.2. Mild pulmonary vascular "
    "congestion.3. Interval improvement in aeration of the lung bases with residual streaky opacity likely "
    "reflective of atelectasis.Interval resolution of the left pleural effusion.",
    "No definite acute cardiopulmonary process.Enlarged cardiac silhouette could be accentuated by patient's "
    "positioning.",
    "Increased mild pulmonary edema and left basal atelectasis.",
]
RADEVAL_HYPS = [
    "No acute cardiopulmonary process.",
    "No radiographic findings to suggest pneumonia.",
    "Status post median sternotomy for CABG with stable cardiac enlargement and calcification of the aorta "
    "consistent with atherosclerosis.",
    "Relatively lower lung volumes with no focal airspace consolidation appreciated.",
    "Crowding of the pulmonary vasculature with possible minimal perihilar edema, but no overt pulmonary edema.",
    "No pleural effusions or pneumothoraces.",
]
RADEVAL_EXPECTED = {"bleu_4": 0.16681006823938177, "rouge_1": 0.44681719607092746,
                    "rouge_2": 0.4205128205128205, "rouge_l": 0.44681719607092746}


def test_radeval_published_values():
    point = score_texts(RADEVAL_HYPS, RADEVAL_REFS, compat="radeval", clinical_metrics=False).point()
    for key, expected in RADEVAL_EXPECTED.items():
        assert point[key] == pytest.approx(expected, abs=1e-9), key


def test_radeval_mode_through_the_cli_has_intervals(tmp_path, capsys):
    csv = tmp_path / "radeval.csv"
    pd.DataFrame({"uid": range(6), "generated_report": RADEVAL_HYPS, "ground_truth_report": RADEVAL_REFS}).to_csv(csv, index=False)
    assert evaluate.main([str(csv), "--compat", "radeval", "--no-clinical", "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "tok:ws-split" in out and "rouge_2" in out and "cider_d" not in out
    ev = evaluate_frame(pd.read_csv(csv), name="x", compat="radeval", clinical=False, n_boot=200, seed=0)
    m = ev.summary["metrics"]
    assert m["bleu_4"]["value"] == pytest.approx(RADEVAL_EXPECTED["bleu_4"], abs=1e-9)
    # the ROUGE interval is the percentile interval of resampled means of the per-sample F values
    counts = np.vstack(list(bootstrap.resample_counts(6, 200, seed=0)))
    f = ev.per_sample["rouge_2"].to_numpy()
    assert m["rouge_2"]["ci"] == pytest.approx(np.percentile(counts @ f / 6, [2.5, 97.5]), abs=1e-12)
    assert not {"cider_d", "meteor"} & set(m)  # RadEval defines neither


def _iu_pairs():
    texts = load_reports()
    n = len(texts)
    hyps = [texts[(i + 3) % n] for i in range(n)]
    hyps[0], hyps[5] = texts[0], ""
    return hyps, texts


def test_radeval_rouge_equals_rouge_score_and_bleu_equals_pycocoevalcap_on_real_reports():
    from pycocoevalcap.bleu.bleu import Bleu
    from rouge_score import rouge_scorer

    hyps, refs = _iu_pairs()
    assert len(refs) >= 280
    s = score_texts(hyps, refs, compat="radeval", clinical_metrics=False)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = [scorer.score(r, h) for h, r in zip(hyps, refs)]
    for ours, theirs in (("rouge_1", "rouge1"), ("rouge_2", "rouge2"), ("rouge_l", "rougeL")):
        want = np.array([e[theirs].fmeasure for e in expected])
        assert np.allclose(s.per_sample[ours], want, atol=1e-12, rtol=0), ours
        assert s.point()[ours] == pytest.approx(want.mean(), abs=1e-12)
    # RadEval's BLEU: pycocoevalcap's scorer on the raw text (case and punctuation kept)
    b, b_list = Bleu(4).compute_score({i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}, verbose=0)
    for k in range(4):
        assert s.point()[f"bleu_{k + 1}"] == pytest.approx(b[k], abs=1e-9)
        assert np.allclose(s.per_sample[f"bleu_{k + 1}"], b_list[k], atol=1e-9, rtol=0)
    # and it is not the pycocoevalcap mode's number (there the text is lower-cased and stripped)
    assert abs(score_texts(hyps, refs, compat="pycocoevalcap", clinical_metrics=False).point()["bleu_4"] - b[3]) > 1e-3
