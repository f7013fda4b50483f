"""Cross-checks on real IU X-ray reports: pycocoevalcap (compat mode), NLTK BLEU and rouge-score
(default mode), and the bootstrap against explicit re-scoring of resampled corpora."""


import numpy as np
import pandas as pd
import pytest

from cxrgen.evaluation import evaluate_frame
from cxrgen.metrics import bleu, bootstrap
from cxrgen.metrics.suite import score_texts
from cxrgen.metrics.tokenize import clean_pycoco, tokenize_cxr
from helpers import load_reports



@pytest.fixture(scope="module")
def pairs():
    refs = load_reports()
    assert len(refs) >= 280
    n = len(refs)
    hyps = [refs[(i + 1) % n] for i in range(n)] + [refs[(i + 7) % n] for i in range(n)]
    refs2 = refs + refs
    hyps[3] = ""  # empty hypothesis
    hyps[10] = refs2[10]  # perfect hypothesis
    hyps[20] = "..."  # empty after cleaning
    hyps[30] = "Normal."  # one token
    return hyps, refs2


def _pycoco(hyps, refs):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [clean_pycoco(r)] for i, r in enumerate(refs)}
    res = {i: [clean_pycoco(h)] for i, h in enumerate(hyps)}
    b, b_list = Bleu(4).compute_score(gts, res, verbose=0)
    r, r_list = Rouge().compute_score(gts, res)
    c, c_list = Cider().compute_score(gts, res)
    return b, b_list, r, r_list, c, c_list


def test_compat_mode_reproduces_pycocoevalcap(pairs):
    hyps, refs = pairs
    b, b_list, r, r_list, c, c_list = _pycoco(hyps, refs)
    s = score_texts(hyps, refs, compat="pycocoevalcap", clinical_metrics=False)
    point = s.point()
    for k in range(4):
        assert point[f"bleu_{k + 1}"] == pytest.approx(b[k], abs=1e-6)
        assert np.allclose(s.per_sample[f"bleu_{k + 1}"], b_list[k], atol=1e-6, rtol=0)
    assert point["rouge_l"] == pytest.approx(r, abs=1e-6)
    assert np.allclose(s.per_sample["rouge_l"], r_list, atol=1e-6, rtol=0)
    assert point["cider_d"] == pytest.approx(c, abs=1e-6)
    assert np.allclose(s.per_sample["cider_d"], c_list, atol=1e-6, rtol=0)
    # the numbers are not trivially small: this is a real comparison
    assert 0.05 < b[3] < 0.5 and r > 0.1 and c > 0.05


def test_compat_mode_through_evaluate_frame(pairs):
    hyps, refs = pairs
    df = pd.DataFrame({"id": [f"s{i}" for i in range(len(hyps))], "generated_report": hyps, "reference": refs})
    ev = evaluate_frame(df, name="x", compat="pycocoevalcap", clinical=False, n_boot=50)
    b, _, r, _, c, _ = _pycoco(hyps, refs)
    m = ev.summary["metrics"]
    assert [m[f"bleu_{k}"]["value"] for k in range(1, 5)] == pytest.approx(b, abs=1e-6)
    assert m["rouge_l"]["value"] == pytest.approx(r, abs=1e-6)
    assert m["cider_d"]["value"] == pytest.approx(c, abs=1e-6)
    assert "tok:pycoco-strip" in ev.signature
    assert "meteor" in ev.summary["unavailable"]


def test_default_corpus_bleu_matches_nltk(pairs):
    from nltk.translate.bleu_score import corpus_bleu

    hyps, refs = pairs
    # NLTK counts max(1, number of k-grams) per sentence, so a hypothesis shorter than 4 tokens adds
    # a phantom k-gram to its denominator; the textbook (and sacrebleu's) sums do not. Compare on
    # hypotheses of 4 tokens or more, where the two definitions coincide.
    kept = [(h, r) for h, r in zip(hyps, refs) if len(tokenize_cxr(h)) >= 4]
    assert len(kept) >= len(hyps) - 3
    ht = [tokenize_cxr(h) for h, _ in kept]
    rt = [tokenize_cxr(r) for _, r in kept]
    sums = bleu.bleu_stats(ht, rt).sum(axis=0)
    for k in range(1, 5):
        expected = corpus_bleu([[r] for r in rt], ht, weights=tuple([1.0 / k] * k))
        assert bleu.corpus_bleu(sums, k) == pytest.approx(expected, abs=1e-12)


def test_default_rouge_l_matches_rouge_score(pairs):
    from rouge_score import rouge_scorer

    class Tok:
        def tokenize(self, text):
            return tokenize_cxr(text)

    hyps, refs = pairs
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Tok())
    expected = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
    s = score_texts(hyps, refs, clinical_metrics=False)
    assert np.allclose(s.per_sample["rouge_l"], expected, atol=1e-12, rtol=0)
    assert s.point()["rouge_l"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_bootstrap_sums_equal_rescoring_the_resampled_corpus(pairs):
    hyps, refs = pairs
    hyps, refs = hyps[:120], refs[:120]
    s = score_texts(hyps, refs, clinical_metrics=False)
    counts = next(bootstrap.resample_counts(len(hyps), 3, seed=11))
    boot = s.from_sums(counts @ s.stats)
    for b in range(3):
        idx = np.repeat(np.arange(len(hyps)), counts[b].astype(int))
        again = score_texts([hyps[i] for i in idx], [refs[i] for i in idx], clinical_metrics=False).point()
        for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l"):
            assert boot[key][b] == pytest.approx(again[key], abs=1e-12)


def test_bootstrap_intervals_are_reproducible_and_are_percentiles_of_resampled_scores(pairs):
    hyps, refs = pairs
    df = pd.DataFrame({"id": [f"s{i}" for i in range(len(hyps))], "generated_report": hyps, "reference": refs})
    a = evaluate_frame(df, name="x", clinical=False, n_boot=300, seed=1).summary["metrics"]
    b = evaluate_frame(df, name="x", clinical=False, n_boot=300, seed=1).summary["metrics"]
    c = evaluate_frame(df, name="x", clinical=False, n_boot=300, seed=2).summary["metrics"]
    assert a == b
    assert a["bleu_4"]["ci"] != c["bleu_4"]["ci"]
    for key, entry in a.items():
        low, high = entry["ci"]
        assert low < high, key
    # the interval is the percentile interval of explicitly resampled corpus scores (no assumption that
    # it contains the point estimate: a percentile interval of corpus BLEU need not)
    s = score_texts(hyps, refs, clinical_metrics=False)
    counts = np.vstack(list(bootstrap.resample_counts(len(hyps), 300, seed=1)))
    bleu4 = bleu.corpus_bleu(counts @ s.stats[:, s.cols["bleu"]], 4)
    assert a["bleu_4"]["ci"] == pytest.approx(np.percentile(bleu4, [2.5, 97.5]), abs=1e-12)
