"""Text metrics, tokenizers and bootstrap on small hand-computed examples."""

import math
import random

import numpy as np
import pytest

from cxrgen.metrics import bleu, bootstrap, cider, rouge
from cxrgen.metrics.signature import parse_signature
from cxrgen.metrics.suite import score_texts
from cxrgen.metrics.tokenize import clean_pycoco, tokenize_cxr, tokenize_pycoco


# --- tokenizers --------------------------------------------------------------------------------


def test_default_tokenizer_splits_punctuation_keeps_numbers_and_deid():
    text = "Heart size is normal. XXXX-year-old, 1.5 cm nodule; T12 fracture."
    assert tokenize_cxr(text) == [
        "heart", "size", "is", "normal", ".", "xxxx", "-", "year", "-", "old", ",",
        "1.5", "cm", "nodule", ";", "t12", "fracture", ".",
    ]


def test_default_tokenizer_deid_forms_and_separators():
    assert tokenize_cxr("No ___ seen.  Lungs: clear/expanded") == [
        "no", "xxxx", "seen", ".", "lungs", ":", "clear", "/", "expanded",
    ]
    # any whole word of 3+ x is the placeholder; "xx" and words containing x are not
    assert tokenize_cxr("XXXXXXXX xXx xx box") == ["xxxx", "xxxx", "xx", "box"]
    assert tokenize_cxr("2,300 a,b 1. (left)") == ["2,300", "a", ",", "b", "1", ".", "(", "left", ")"]
    assert tokenize_cxr("") == [] and tokenize_cxr("   ") == []
    # NFKC: full-width letters and the fi ligature become plain ASCII
    assert tokenize_cxr("ＨＥＡＲＴ ﬁndings") == ["heart", "findings"]


def test_pycoco_cleaner_deletes_exactly_ascii_punctuation():
    assert clean_pycoco("Heart size is normal. XXXX-year-old, 1.5 cm nodule;  T12\tfracture.") == (
        "heart size is normal xxxxyearold 15 cm nodule t12 fracture"
    )
    assert clean_pycoco("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") == ""
    assert clean_pycoco("  a  —  b  ") == "a — b"  # non-ASCII dash is not ASCII punctuation
    assert tokenize_pycoco("A. B") == ["a", "b"]


def test_pycoco_cleaner_changes_nothing_on_clean_text():
    for text in ["the heart is normal", "no acute cardiopulmonary disease xxxx 2 cm", "a", ""]:
        assert clean_pycoco(text) == text


# --- BLEU ----------------------------------------------------------------------------------------

S1_HYP, S1_REF = "the heart is normal", "the heart size is normal"
S2_HYP, S2_REF = "no effusion", "no effusion"


def _stats(pairs):
    return bleu.bleu_stats([h.split() for h, _ in pairs], [r.split() for _, r in pairs])


def test_bleu_statistics_by_hand():
    st = _stats([(S1_HYP, S1_REF), (S2_HYP, S2_REF)])
    assert st[0].tolist() == [4, 2, 0, 0, 4, 3, 2, 1, 4, 5]
    assert st[1].tolist() == [2, 1, 0, 0, 2, 1, 0, 0, 2, 2]
    # clipping: "the the the" against "the cat" matches "the" once
    assert _stats([("the the the", "the cat")])[0, 0] == 1


def test_corpus_bleu_by_hand():
    st = _stats([(S1_HYP, S1_REF), (S2_HYP, S2_REF)])
    sums = st.sum(axis=0)  # m = 6,3,0,0  g = 6,4,2,1  c = 6  r = 7
    bp = math.exp(1 - 7 / 6)
    assert bleu.corpus_bleu(sums, 1) == pytest.approx(bp, abs=1e-15)
    assert bleu.corpus_bleu(sums, 2) == pytest.approx(bp * math.sqrt(3 / 4), abs=1e-15)
    assert bleu.corpus_bleu(sums, 3) == 0.0
    assert bleu.corpus_bleu(sums, 4) == 0.0
    # no brevity penalty when the hypothesis corpus is longer
    assert bleu.corpus_bleu(_stats([("a b c", "a b")]).sum(0), 1) == pytest.approx(2 / 3)
    # an empty corpus of hypotheses scores 0, not NaN
    assert bleu.corpus_bleu(_stats([("", "a b")]).sum(0), 1) == 0.0


def test_corpus_bleu_pycoco_arithmetic_by_hand():
    sums = _stats([(S1_HYP, S1_REF), (S2_HYP, S2_REF)]).sum(axis=0)
    tiny, small = 1e-15, 1e-9
    ratio = (6 + tiny) / (7 + small)
    bp = math.exp(1 - 1 / ratio)
    p = [(6 + tiny) / (6 + small), (3 + tiny) / (4 + small), tiny / (2 + small)]
    assert bleu.corpus_bleu(sums, 2, "pycoco") == pytest.approx(bp * (p[0] * p[1]) ** 0.5, rel=1e-12)
    assert bleu.corpus_bleu(sums, 3, "pycoco") == pytest.approx(bp * (p[0] * p[1] * p[2]) ** (1 / 3), rel=1e-12)


def test_sentence_bleu_exp_smoothing_by_hand():
    st = _stats([(S1_HYP, S1_REF), (S2_HYP, S2_REF), ("", "a b")])
    bp = math.exp(1 - 5 / 4)
    # S1: p = 1, 2/3, then zero matches -> 1/(2*2), 1/(4*1)
    assert bleu.sentence_bleu_exp(st, 4)[0] == pytest.approx(bp * (1 * 2 / 3 * 1 / 4 * 1 / 4) ** 0.25, rel=1e-12)
    assert bleu.sentence_bleu_exp(st, 3)[0] == pytest.approx(bp * (1 * 2 / 3 * 1 / 4) ** (1 / 3), rel=1e-12)
    assert bleu.sentence_bleu_exp(st, 1)[0] == pytest.approx(bp, rel=1e-12)
    # S2: only 2 tokens -> effective order 2, perfect match
    assert bleu.sentence_bleu_exp(st, 4)[1] == pytest.approx(1.0)
    # empty hypothesis
    assert bleu.sentence_bleu_exp(st, 4)[2] == 0.0


# --- ROUGE-L -------------------------------------------------------------------------------------


def _lcs_table(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            t[i][j] = t[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(t[i - 1][j], t[i][j - 1])
    return t[-1][-1]


def test_bit_parallel_lcs_matches_dynamic_programming():
    rng = random.Random(7)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        assert rouge.lcs_length(a, b) == _lcs_table(a, b)
    assert rouge.lcs_length(list("abcd"), list("acdef")) == 3


def test_rouge_l_by_hand():
    h, r = "a b c d".split(), "a c d e f".split()
    f1 = rouge.rouge_l_scores([h], [r], "lcs-f1")[0]
    assert f1 == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    b12 = rouge.rouge_l_scores([h], [r], "lcs-b1.2")[0]
    assert b12 == pytest.approx((1 + 1.44) * 0.75 * 0.6 / (0.6 + 1.44 * 0.75))
    assert rouge.rouge_l_scores([[]], [r], "lcs-f1")[0] == 0.0
    assert rouge.rouge_l_scores([[]], [r], "lcs-b1.2")[0] == 0.0


# --- CIDEr-D -------------------------------------------------------------------------------------


def _cider(pairs):
    h = [t.split() for t, _ in pairs]
    r = [t.split() for _, t in pairs]
    return cider.cider_d_scores(
        [bleu.ngram_counts(x) for x in h], [bleu.ngram_counts(x) for x in r], [len(x) for x in h], [len(x) for x in r]
    )


def test_cider_d_by_hand():
    # N = 2; every n-gram has df <= 1, so every weight is tf * log 2.
    # Sample 1: identical 2-token texts -> cosine 1 for n = 1, 2 and 0 for n = 3, 4 -> 10 * 2 / 4.
    # Sample 2: no overlap -> 0.
    assert _cider([("a b", "a b"), ("c", "d")]).tolist() == pytest.approx([5.0, 0.0])
    # Sample 1: "a b" vs "a b c": n=1 cosine 2/sqrt(6), n=2 cosine 1/sqrt(2), length penalty exp(-1/72)
    expected = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert _cider([("a b", "a b c"), ("x", "y")])[0] == pytest.approx(expected, rel=1e-12)


def test_cider_d_ignores_ngrams_in_every_reference_and_clips():
    # "the" is in both references -> idf 0; the rest scores as above
    s = _cider([("the a", "the a"), ("the b", "the c")])
    # sample 1: unigrams the (w=0), a (w=log2): cosine 1; bigram "the a": cosine 1 -> 10 * 2 / 4
    assert s[0] == pytest.approx(5.0)
    # clipping: repeating a matching word does not raise the dot product above the reference's weight
    s_rep = _cider([("a a a a", "a b"), ("z", "y")])
    w = math.log(2)
    uni = (min(4 * w, w) * w) / (4 * w * math.sqrt(2) * w)
    assert s_rep[0] == pytest.approx(10 * uni / 4 * math.exp(-4 / 72), rel=1e-12)


# --- suite and empty hypotheses ----------------------------------------------------------------


def test_empty_hypothesis_scores_zero_on_every_text_metric():
    s = score_texts(["", "The heart is normal."], ["no effusion.", "the heart is normal ."], clinical_metrics=False)
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"):
        assert s.per_sample[key][0] == 0.0
    assert s.per_sample["rouge_l"][1] == pytest.approx(1.0)
    assert s.per_sample["bleu_4"][1] == pytest.approx(1.0)


# --- bootstrap -----------------------------------------------------------------------------------


def test_resample_counts_are_seeded_and_sum_to_n():
    a = np.vstack(list(bootstrap.resample_counts(50, 450, seed=3)))
    b = np.vstack(list(bootstrap.resample_counts(50, 450, seed=3)))
    c = np.vstack(list(bootstrap.resample_counts(50, 450, seed=4)))
    assert a.shape == (450, 50)
    assert (a == b).all() and not (a == c).all()
    assert (a.sum(axis=1) == 50).all()
    # each study is drawn once per resample on average
    assert a.mean() == pytest.approx(1.0)


def test_percentile_interval_and_paired_test_by_hand():
    values = np.arange(101, dtype=float)  # percentiles are the values themselves
    assert bootstrap.percentile_interval(values) == pytest.approx([2.5, 97.5], abs=1e-12)
    # an undefined resample (NaN) counts beyond both ends: 1 of 401 values below and 1 above all others moves the
    # 2.5th percentile of the 401 to the 2.5th-minus-one-400th of the defined ones
    defined = np.linspace(0, 100, 399)
    got = bootstrap.percentile_interval(np.r_[np.nan, defined, np.nan])
    assert got == pytest.approx(list(np.quantile(defined, [(0.025 * 401 - 1) / 399, (0.975 * 401 - 1) / 399])),
                                abs=1e-9)
    assert got[0] < 2.5 and got[1] > 97.5  # wider than without the undefined resamples
    # more than 5% undefined (the share in which the interval's ends would be undefined): no interval
    assert bootstrap.percentile_interval(np.r_[np.full(6, np.nan), np.arange(94.0)]) is None
    assert bootstrap.percentile_interval(np.r_[np.full(5, np.nan), np.arange(95.0)]) is not None
    assert bootstrap.percentile_interval(np.full(5, np.nan)) is None
    same = np.linspace(0, 1, 99)
    t = bootstrap.paired_test(same, same, 0.0)
    assert t["p_value"] == 1.0 and t["ci"] == [0.0, 0.0]
    # differences 0.4..0.6, none on the other side of 0: p = 2 (1 + 0) / (B + 1)
    d = 0.5 + np.linspace(-0.1, 0.1, 99)
    t = bootstrap.paired_test(d, np.zeros(99), 0.5)
    assert t["p_value"] == pytest.approx(2 / 100)
    # 10 of 99 at or below 0: p = 2 (1 + 10) / 100
    d = np.r_[np.zeros(5), -np.ones(5), np.ones(89)]
    assert bootstrap.paired_test(d, np.zeros(99), 0.8)["p_value"] == pytest.approx(22 / 100)
    # an undefined difference counts on both sides
    d = np.r_[np.full(10, np.nan), np.ones(89)]
    assert bootstrap.paired_test(d, np.zeros(99), 1.0)["p_value"] == pytest.approx(22 / 100)


def test_signature_changes_whenever_the_numbers_do():
    import importlib.metadata

    import pandas as pd

    from cxrgen.evaluation import evaluate_frame

    df = pd.DataFrame({
        "id": ["a", "b", "c", "d"],
        "generated_report": ["Possible small effusion. Heart normal.", "Lungs clear.", "Mild edema!", "No pneumothorax"],
        "reference": ["Small pleural effusion.", "The lungs are clear.", "Mild pulmonary edema.", "No pneumothorax."],
    })

    def run(**kw):
        ev = evaluate_frame(df, name="x", n_boot=20, **kw)
        values = {**ev.summary["metrics"], **ev.summary.get("clinical", {}).get("metrics", {})}
        return parse_signature(ev.signature), {k: v["value"] for k, v in values.items()}

    base_sig, base_vals = run()
    assert run() == (base_sig, base_vals)
    for kw in ({"compat": "pycocoevalcap"}, {"compat": "radeval"}, {"uncertain": "negative"}, {"clinical": False}):
        sig, vals = run(**kw)
        changed = [k for k in base_vals if k in vals and abs(vals[k] - base_vals[k]) > 1e-12] + sorted(set(base_vals) ^ set(vals))
        assert changed, kw  # the setting changes numbers ...
        assert sig != base_sig, kw  # ... so it must change the signature
    # the fields that only affect intervals follow the settings; the rest stays
    sig, vals = run(seed=7)
    assert sig["seed"] == "7" and {k: v for k, v in sig.items() if k != "seed"} == {k: v for k, v in base_sig.items() if k != "seed"}
    assert base_sig["boot"] == "20"
    # every metric that ran has a component, in registry order, text metrics before the interval fields
    names = list(base_sig)
    assert names.index("bleu") < names.index("rouge") < names.index("cider") < names.index("ci") < names.index("clin")
    # RadEval mode names the rouge-score release that computed its ROUGE
    radeval_sig, _ = run(compat="radeval")
    assert importlib.metadata.version("rouge-score") in radeval_sig["rouge"] and "cider" not in radeval_sig
