"""The published protocols' lexical and arithmetic definitions against the published code itself, on real IU X-ray
report pairs: sacrebleu (LLaVA-Rad's BLEU and its interval), rouge-score (LLaVA-Rad's ROUGE-L and its bootstrap
median), scikit-learn's classification_report and scipy's bootstrap (LLaVA-Rad's label F1 and its median),
fast-bleu and NLTK (ReXrank's BLEU-2), and ReXrank's leaderboard rows (1/RadCliQ-v1)."""

import numpy as np
import pytest

from cxrgen.metrics import clinical, llava_rad, protocols, registry, rexrank
from cxrgen.metrics.suite import score_texts
from cxrgen.metrics.tokenize import tokenize_13a
from helpers import load_reports

# LLaVA-Rad's observation order (llava/eval/rrg_eval/factuality_utils.py, CheXbert's heads) and its five.
CHEXBERT_ORDER = ("enlarged_cardiomediastinum", "cardiomegaly", "lung_opacity", "lung_lesion", "edema",
                  "consolidation", "pneumonia", "atelectasis", "pneumothorax", "pleural_effusion", "pleural_other",
                  "fracture", "support_devices", "no_finding")
TRICKY = ["e.g. 1.5 cm, 2,300 ml. XXXX-year-old", "a-\nb &amp; &lt;x&gt; &quot;y&quot; <skipped>end",
          "(R) [l] {t} ~`^ 'q' \"w\"\t tab\n\nline 3-4 x--y", "  trailing  \n", "...", "Heart.Lungs,clear"]


@pytest.fixture(scope="module")
def pairs():
    refs = load_reports()[:120]
    n = len(refs)
    hyps = [refs[(i + 1) % n] for i in range(n)]
    hyps[3] = ""  # empty generated report
    hyps[10] = refs[10]  # perfect
    hyps[20] = "Normal."  # one word and a period
    hyps[30] = refs[30].upper()  # case: kept by LLaVA-Rad's BLEU, dropped by ROUGE and ReXrank's BLEU
    hyps[40] = refs[40].replace(". ", ".\n")  # a line break where a space was
    return hyps, refs


def _points(hyps, refs, protocol):
    metrics = [m for m in protocol.metrics() if not getattr(m, "scorers", ())]
    return score_texts(hyps, refs, metrics=metrics)


# ---------------------------------------------------------------- LLaVA-Rad


def test_13a_tokens_are_sacrebleus(pairs):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok = Tokenizer13a()
    texts = pairs[0] + pairs[1] + TRICKY
    assert [tokenize_13a(t) for t in texts] == [tok(t.rstrip()).split() for t in texts]


def test_llava_rad_bleu_is_sacrebleus_corpus_bleu(pairs):
    from sacrebleu.metrics import BLEU

    hyps, refs = pairs
    scores = _points(hyps, refs, protocols.LLAVA_RAD)
    point = scores.point()
    for k in (1, 4):
        published = BLEU(max_ngram_order=k).corpus_score(hyps, [refs])
        assert point[f"bleu_{k}"] * 100 == pytest.approx(published.score, abs=1e-9)
        # per study: the same formula on one pair, as sacrebleu's corpus_score of that pair alone
        for i in (3, 10, 20, 30, 40):
            alone = BLEU(max_ngram_order=k).corpus_score([hyps[i]], [[refs[i]]]).score
            assert scores.per_sample[f"bleu_{k}"][i] * 100 == pytest.approx(alone, abs=1e-9)
    assert 0.05 < point["bleu_4"] < point["bleu_1"] < 0.6  # a real comparison, 0-1 scale
    assert scores.per_sample["bleu_1"][30] < 0.5 and scores.per_sample["bleu_1"][10] == 1.0  # case kept


# Pairs where sacrebleu's smoothing and brevity penalty decide: unigrams but no bigrams in common, a shorter and a
# longer hypothesis, punctuation only in common, numbers.
SMALL_PAIRS = [("Heart normal size", "Normal heart size is"), ("No effusion.", "There is no pleural effusion."),
               ("Lungs are clear and there is no effusion or pneumothorax.", "Lungs clear."),
               ("..", "Clear."), ("1.5 cm nodule", "A 1.5 cm nodule, stable.")]


def test_llava_rad_bleu_per_pair_is_sacrebleus():
    from sacrebleu.metrics import BLEU

    hyps, refs = [h for h, _ in SMALL_PAIRS], [r for _, r in SMALL_PAIRS]
    scores = score_texts(hyps, refs, metrics=[llava_rad.SacreBleu()])
    for k in (1, 4):
        want = [BLEU(max_ngram_order=k).corpus_score([h], [[r]]).score for h, r in SMALL_PAIRS]
        np.testing.assert_allclose(scores.per_sample[f"bleu_{k}"] * 100, want, rtol=1e-12, atol=1e-12)
        assert scores.point()[f"bleu_{k}"] * 100 == pytest.approx(BLEU(max_ngram_order=k).corpus_score(
            hyps, [refs]).score, abs=1e-9)
    assert 0 < scores.per_sample["bleu_4"][2] < 0.2  # no trigram in common: smoothed, not 0


def test_llava_rad_rouge_l_is_rouge_score_without_stemmer(pairs):
    from rouge_score import rouge_scorer

    hyps, refs = pairs
    scores = _points(hyps, refs, protocols.LLAVA_RAD)
    plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    stemmed = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = np.array([plain.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)])
    np.testing.assert_allclose(scores.per_sample["rouge_l"], want, atol=1e-12, rtol=0)
    assert scores.point()["rouge_l"] == pytest.approx(want.mean(), abs=1e-12)
    stem = np.array([stemmed.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)])
    assert np.abs(stem - want).max() > 1e-3  # the stemmer would change the numbers: this checks it is off


def _indicators(codes: np.ndarray, plus: bool, columns) -> np.ndarray:
    """LLaVA-Rad's binarisation (factuality_utils.py): positive -> 1; uncertain -> 1 only in the "+" mode."""
    idx = [clinical.COLUMNS.index(c) for c in columns]
    sub = codes[:, idx]
    return ((sub == 1) | ((sub == -1) if plus else False)).astype(int)


@pytest.fixture(scope="module")
def labelled(pairs):
    hyps, refs = pairs
    scores = _points(hyps, refs, protocols.LLAVA_RAD)
    return scores, clinical.label_codes(clinical.label_texts(hyps)), clinical.label_codes(clinical.label_texts(refs))


def test_llava_rad_label_f1_is_scikit_learns_classification_report(labelled):
    from sklearn.metrics import classification_report

    scores, hc, rc = labelled
    point = scores.point()
    five = [c for c in CHEXBERT_ORDER if c in llava_rad.FIVE]
    checked = 0
    for plus in (False, True):
        for size, cols in (("14", CHEXBERT_ORDER), ("5", five)):
            report = classification_report(_indicators(rc, plus, cols), _indicators(hc, plus, cols),
                                           target_names=list(cols), output_dict=True, zero_division=0)
            for avg in ("micro", "macro"):
                key = f"rules_{avg}_f1_{size}{'_plus' if plus else ''}"
                assert point[key] == pytest.approx(report[f"{avg} avg"]["f1-score"], abs=1e-12), key
                checked += 1
    assert checked == len(scores.keys["labels_rules"]) == 8
    # the fixture exercises what differs: an observation neither side has (F1 0, kept in the macro mean, where our
    # default clinical macro leaves it out), and uncertain labels (the "+" columns differ)
    absent = [c for c in CHEXBERT_ORDER if not (_indicators(hc, False, [c]).any() or _indicators(rc, False, [c]).any())]
    assert absent
    ours = clinical.set_metrics(clinical.outcome_counts(hc, rc, "negative").sum(axis=0))["chexpert14_macro_f1"]
    assert point["rules_macro_f1_14"] < ours
    assert point["rules_micro_f1_14"] != point["rules_micro_f1_14_plus"]


def test_llava_rad_published_median_is_scipys_bootstrap_median(labelled):
    from scipy.stats import bootstrap
    from sklearn.metrics import precision_recall_fscore_support

    scores, hc, rc = labelled
    published = protocols.published_values(protocols.LLAVA_RAD, scores)
    for key, avg, plus, cols in (("rules_micro_f1_14", "micro", False, CHEXBERT_ORDER),
                                 ("rules_macro_f1_5_plus", "macro", True, llava_rad.FIVE)):
        y_true, y_pred = _indicators(rc, plus, cols), _indicators(hc, plus, cols)

        def statistic(idx):  # chexbert.py's compute_statistic
            idx = np.asarray(idx)
            return precision_recall_fscore_support(y_true[idx], y_pred[idx], average=avg, zero_division=0)[2]

        bs = bootstrap((list(range(scores.n)),), statistic, method="percentile", paired=False, vectorized=False,
                       confidence_level=0.95, random_state=3, n_resamples=500)
        assert published[key]["value"] == pytest.approx(np.median(bs.bootstrap_distribution), abs=1e-12)
        assert published[key]["ci"] == pytest.approx([bs.confidence_interval.low, bs.confidence_interval.high],
                                                      abs=1e-12)
        assert published[key]["value"] != pytest.approx(scores.point()[key], abs=1e-6)  # a median, not the point


def test_llava_rad_published_bleu_interval_is_sacrebleus(pairs):
    from sacrebleu.metrics import BLEU

    hyps, refs = pairs
    published = protocols.published_values(protocols.LLAVA_RAD, _points(hyps, refs, protocols.LLAVA_RAD))
    for k in (1, 4):
        res = BLEU(max_ngram_order=k).corpus_score(hyps, [refs], n_bootstrap=500)
        assert published[f"bleu_{k}"]["value"] == pytest.approx(res.score, abs=1e-9)
        # sacrebleu sums float32 statistics: equal to its precision, on its 0-100 scale
        assert published[f"bleu_{k}"]["ci"] == pytest.approx([res._mean - res._ci, res._mean + res._ci], abs=2e-4)


def test_llava_rad_published_rouge_is_rouge_scores_bootstrap_mid(pairs):
    from rouge_score import rouge_scorer, scoring

    hyps, refs = pairs
    published = protocols.published_values(protocols.LLAVA_RAD, _points(hyps, refs, protocols.LLAVA_RAD))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    aggregator = scoring.BootstrapAggregator(confidence_interval=0.95, n_samples=500)
    for h, r in zip(hyps, refs):
        aggregator.add_scores(scorer.score(r, h))
    state = np.random.get_state()
    try:
        np.random.seed(3)  # run.py seeds numpy's global generator at import
        result = aggregator.aggregate()["rougeL"]
    finally:
        np.random.set_state(state)
    assert published["rouge_l"]["value"] == pytest.approx(result.mid.fmeasure, abs=1e-12)
    assert published["rouge_l"]["ci"] == pytest.approx([result.low.fmeasure, result.high.fmeasure], abs=1e-12)


# ---------------------------------------------------------------- ReXrank


def _rexrank_bleu2(pairs):
    hyps, refs = pairs
    return score_texts(hyps, refs, metrics=[rexrank.SentenceBleu2()])


def test_rexrank_bleu2_is_fast_bleus(pairs):
    """CXR-Report-Metric computes its BLEU column with fast-bleu 0.0.90; tokens as its prep_reports writes them."""
    fast_bleu = pytest.importorskip("fast_bleu")

    hyps, refs = pairs
    scores = _rexrank_bleu2(pairs)
    for i, (h, r) in enumerate(zip(hyps, refs)):
        ht, rt = rexrank.rexrank_tokens(h), rexrank.rexrank_tokens(r)
        want = fast_bleu.BLEU([rt], {"bigram": (0.5, 0.5)}).get_score([ht])["bigram"][0] if ht else 0.0
        assert scores.per_sample["bleu_2"][i] == pytest.approx(want, abs=1e-12), i
    assert rexrank.rexrank_tokens("Clear.\nNo  effusion.") == ["clear", ".\nno", "effusion", "."]


def test_rexrank_bleu2_is_nltks_sentence_bleu_with_method1(pairs):
    """The same definition in NLTK (what fast-bleu's C++ reimplements); the corpus value is the mean."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyps, refs = pairs
    scores = _rexrank_bleu2(pairs)
    smooth = SmoothingFunction().method1
    want = np.array([sentence_bleu([rexrank.rexrank_tokens(r)], rexrank.rexrank_tokens(h), weights=(0.5, 0.5),
                                   smoothing_function=smooth) if h else 0.0 for h, r in zip(hyps, refs)])
    np.testing.assert_allclose(scores.per_sample["bleu_2"], want, atol=1e-12, rtol=0)
    assert scores.point()["bleu_2"] == pytest.approx(want.mean(), abs=1e-12)
    assert scores.per_sample["bleu_2"][30] == pytest.approx(1.0)  # lower-cased: the upper-case copy is perfect
    assert 0.05 < want.mean() < 0.6


# ReXrank's leaderboard, Findings table, MIMIC-CXR (gh-pages results/findings_result_mimiccxr.csv): BLEU,
# BertScore, SembScore, RadGraph, 1/RadCliQ-v1, each rounded to 3 decimals.
LEADERBOARD = {
    "CheXagent": (0.113, 0.346, 0.347, 0.148, 0.741),
    "MedVersa": (0.209, 0.448, 0.466, 0.273, 1.103),
    "MAIRA-2": (0.088, 0.308, 0.339, 0.131, 0.694),
    "GPT4V": (0.068, 0.207, 0.214, 0.084, 0.558),
    "RGRG": (0.13, 0.348, 0.344, 0.168, 0.755),
}


@pytest.mark.parametrize("model", list(LEADERBOARD))
def test_inverse_radcliq_v1_reproduces_the_rexrank_leaderboard(model):
    bleu2, bert, semb, radgraph, listed = LEADERBOARD[model]
    value = rexrank.radcliq_v1({"bleu_2": bleu2, "bertscore": bert, "sembscore": semb, "radgraph": radgraph})
    # the columns are rounded to 3 decimals: RadCliQ-v1 moves by at most sum |coef / scale| * 0.0005, its
    # reciprocal by that over value**2, and the listed value by 0.0005 more
    slack = 0.0005 + sum(abs(c / s) for _, s, c in rexrank.RADCLIQ_V1.values()) * 0.0005 / value**2
    assert 1 / value == pytest.approx(listed, abs=slack)


def test_inverse_radcliq_is_the_reciprocal_of_the_mean_radcliq(monkeypatch):
    """Through the metric machinery: per-study inputs -> RadCliQ-v1 the mean of the per-study values, 1/RadCliQ-v1
    its reciprocal (not the mean of per-study reciprocals); an empty report scores its components 0."""
    from cxrgen.metrics import model_based

    rng = np.random.default_rng(0)
    inputs = {k: rng.uniform(0.1, 0.9, size=6) for k in ("radgraph", "bertscore", "sembscore")}

    def fake(name, hyps, refs, **kw):
        key = {"radgraph_combined": "radgraph", "bertscore_distilroberta": "bertscore", "sembscore": "sembscore"}[name]
        values = np.where([bool(h.strip()) for h in hyps], inputs[key], 0.0)
        return model_based.ModelScores(name=name, per_sample={key: values}, signature="test")

    monkeypatch.setattr(model_based, "score", fake)
    monkeypatch.setattr(model_based, "check_available", lambda names: {})
    hyps = ["heart size normal .", "", "small left effusion", "no pneumothorax", "lungs clear", "mild edema"]
    refs = ["heart size is normal .", "effusion", "left effusion", "no pneumothorax .", "clear lungs", "edema"]
    scores = score_texts(hyps, refs, metrics=[rexrank.SentenceBleu2(), rexrank.RadCliQ(), rexrank.InvRadCliQ()])
    point = scores.point()
    bleu = scores.per_sample["bleu_2"]
    zeroed = {k: np.where(np.arange(6) == 1, 0.0, v) for k, v in inputs.items()}  # study 1 has no report
    assert bleu[1] == 0.0
    per = rexrank.radcliq_v1({**zeroed, "bleu_2": bleu})
    assert per[1] == pytest.approx(rexrank.radcliq_v1({"radgraph": 0.0, "bertscore": 0.0, "sembscore": 0.0,
                                                       "bleu_2": 0.0}), abs=1e-12)
    np.testing.assert_allclose(scores.per_sample["radcliq_v1"], per, rtol=0, atol=1e-12)
    assert point["radcliq_v1"] == pytest.approx(per.mean(), abs=1e-12)
    assert point["inv_radcliq_v1"] == pytest.approx(1 / per.mean(), abs=1e-12)
    assert abs(point["inv_radcliq_v1"] - np.mean(1 / per)) > 1e-3
    # a linear formula: RadCliQ-v1 of the column means equals the mean RadCliQ-v1
    means = {k: v.mean() for k, v in zeroed.items()}
    assert rexrank.radcliq_v1({**means, "bleu_2": bleu.mean()}) == pytest.approx(per.mean(), abs=1e-12)


def test_radcliq_v1_constants_are_the_pickled_scalers():
    """scale_ is the square root of the pickled StandardScaler's var_ (CXRMetric/radcliq-v1.pkl)."""
    var = [0.09170349006738311, 0.05031470001651091, 0.06448750994259847, 0.08935745123293264]
    scales = [s for _, s, _ in rexrank.RADCLIQ_V1.values()]
    np.testing.assert_allclose(scales, np.sqrt(var), rtol=1e-15)
    assert list(rexrank.RADCLIQ_V1) == ["radgraph", "bertscore", "sembscore", "bleu_2"]


# ---------------------------------------------------------------- the protocols as data


def test_protocol_metrics_are_labelled_and_directed_for_every_output():
    assert registry.label("rules_micro_f1_14_plus") == "Micro-F1-14+ (our rule labeler, LLaVA-Rad's definition)"
    assert "CheXbert" not in registry.label("rules_macro_f1_5")
    assert registry.label("chexbert_macro_f1_5").startswith("Macro-F1-5 (CheXbert through RadEval")
    assert registry.higher_is_better("radcliq_v1") is False and registry.higher_is_better("inv_radcliq_v1") is True
    assert any(c.key == "radcliq_v1" and not c.higher_is_better for c in registry.columns())
    for p in protocols.PROTOCOLS.values():
        names = [m.name for m in p.metrics()]
        assert len(names) == len(set(names)), p.name
    assert protocols.LLAVA_RAD.scorers() == ["chexbert", "radgraph_partial"]
    assert protocols.REXRANK.scorers() == ["bertscore_distilroberta", "sembscore", "radgraph_combined", "ratescore",
                                           "green"]
    with pytest.raises(ValueError, match="unknown protocol 'mimic'; known: llava-rad, rexrank, rexrank-fi"):
        protocols.get("mimic")


@pytest.mark.parametrize("findings, impression, want", [
    ("Lungs clear. ", "\nNo acute process.", "Findings: Lungs clear. Impression: No acute process."),
    ("", "No acute process.", "Findings: None. Impression: No acute process."),
    ("Lungs clear.", "", "Findings: Lungs clear. Impression: None."),
    ("", " ", ""),
])
def test_rexrank_findings_impression_reference(findings, impression, want):
    assert protocols.REXRANK_FI.reference.format(findings, impression) == want


def test_label_f1_from_labels_with_uncertain(monkeypatch):
    """Uncertain counts as negative in the default keys and as positive in the _plus keys, whoever labels."""
    def labels(texts):
        out = []
        for t in texts:
            lab = {}
            if "effusion" in t:
                lab["pleural_effusion"] = -1 if "possible" in t else 1
            out.append(lab)
        return out

    hyps = ["possible effusion", "effusion", "nothing"]
    refs = ["effusion", "effusion", "possible effusion"]
    point = score_texts(hyps, refs, metrics=[llava_rad.LabelF1("rules")], label_reports=labels).point()
    # uncertain negative: tp 1 (row 1), fn 1 (row 0); uncertain positive: tp 2, fn 1 (row 2)
    assert point["rules_micro_f1_14"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
    assert point["rules_micro_f1_14_plus"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    # macro over 14: 13 observations absent from both sides count 0
    assert point["rules_macro_f1_14"] == pytest.approx(point["rules_micro_f1_14"] / 14)
    assert point["rules_macro_f1_5_plus"] == pytest.approx(point["rules_micro_f1_14_plus"] / 5)
