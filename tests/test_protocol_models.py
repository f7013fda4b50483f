"""The protocols' model-based scorers (cxrgen.metrics.model_based): the settings each passes to RadEval, CheXbert's
uncertain labels (their weights and fetching: tests/test_model_metrics.py); and, where RadEval is installed, ReXrank's BERTScore (idf off)
against RadEval's RadCliQ BERTScore (idf on) and RadEval's RadCliQ-v1 arithmetic, on tiny random local models."""

import importlib.machinery
import importlib.util
import sys
import textwrap
import types

import numpy as np
import pytest

from cxrgen.metrics import clinical
from cxrgen.metrics import model_based as mb
from helpers import run_offline_script

CHEXBERT_NAMES = [
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "No Finding",
]


def test_chexbert_keeps_uncertain_apart(monkeypatch):
    """RadEval's "classification" labels (1 positive, -1 uncertain, 0 negative or blank) become the codes; the 0/1
    labels stay RadEval's "rrg" ones (uncertain counts as positive)."""
    def call(name, hyps, refs, **k):
        rows = []
        for t in hyps:
            row = [0] * 14
            if "effusion" in t:
                row[CHEXBERT_NAMES.index("Pleural Effusion")] = -1 if "possible" in t else 1
            rows.append(row)
        return {"labels": rows, "label_names": CHEXBERT_NAMES}

    monkeypatch.setattr(mb, "_call_radeval", call)
    res = mb.score("chexbert", ["possible effusion", "", "effusion"], ["effusion", "effusion", "clear"], device="cpu")
    j = clinical.COLUMNS.index("pleural_effusion")
    assert res.hyp_codes[:, j].tolist() == [-1, 0, 1] and res.ref_codes[:, j].tolist() == [1, 1, 0]
    assert res.hyp_labels[:, j].tolist() == [1, 0, 1]


class _Recorder:
    """Stands in for a RadEval class: records its arguments, returns fixed per-pair values."""

    calls: list = []

    def __init__(self, **kwargs):
        self.calls.append((type(self).__name__, kwargs))


@pytest.fixture
def fake_radeval(monkeypatch):
    """Modules named like RadEval's, holding recorders: what the protocol scorers ask RadEval for."""
    calls = []

    class F1RadGraph(_Recorder):
        def __call__(self, refs, hyps):
            calls.append(("F1RadGraph.call", {"refs": refs, "hyps": hyps}))
            return 0.5, [0.25] * len(hyps), [], []

    class RadGraphRadCliQ(_Recorder):
        def __call__(self, hyps, refs):
            calls.append(("RadGraphRadCliQ.call", {"refs": refs, "hyps": hyps}))
            return 0.5, [0.75] * len(hyps)

    class BERTScorer(_Recorder):
        def score(self, cands, refs, verbose, batch_size):
            import torch

            calls.append(("BERTScorer.score", {"cands": cands, "refs": refs}))
            f = torch.tensor([0.4] * len(cands))
            return f - 0.1, f + 0.1, f

    def semantic_embedding_scores(refs, hyps, device):
        calls.append(("semantic_embedding_scores", {"refs": refs, "hyps": hyps, "device": device}))
        return np.full(len(hyps), 0.9)

    for cls in (F1RadGraph, RadGraphRadCliQ, BERTScorer):
        cls.calls = calls
    modules = {
        "radeval": {}, "radeval.metrics": {}, "radeval.metrics.radgraph": {"F1RadGraph": F1RadGraph},
        "radeval.metrics.radgraph_radcliq": {}, "radeval.metrics.radgraph_radcliq.radgraph_radcliq":
            {"RadGraphRadCliQ": RadGraphRadCliQ},
        "radeval.metrics.bertscore": {}, "radeval.metrics.bertscore._vendor": {"BERTScorer": BERTScorer},
        "radeval.metrics.RadCliQv1": {}, "radeval.metrics.RadCliQv1.semb_score":
            {"semantic_embedding_scores": semantic_embedding_scores},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(mb, "_install_radeval_alias", lambda: None)
    return calls


def test_protocol_scorers_ask_radeval_for_the_protocols_settings(fake_radeval):
    hyps, refs = ["Heart  normal.", "", "Lungs clear."], ["Heart size  normal.", "Effusion.", "Clear lungs."]
    res = mb.score("radgraph_partial", hyps, refs, device="cpu")
    assert ("F1RadGraph", {"reward_level": "partial", "model_type": "radgraph", "cuda": -1}) in fake_radeval
    assert res.per_sample["f1_radgraph"].tolist() == [0.25, 0.0, 0.25]  # the empty report is not scored
    res = mb.score("radgraph_combined", hyps, refs, device="cpu")
    assert ("RadGraphRadCliQ", {"model_type": "radgraph"}) in fake_radeval
    assert res.per_sample["radgraph"].tolist() == [0.75, 0.0, 0.75]
    res = mb.score("bertscore_distilroberta", hyps, refs, device="cpu")
    settings = next(kw for name, kw in fake_radeval if name == "BERTScorer")
    assert settings["model_type"] == "distilroberta-base" and settings["num_layers"] == 5
    assert settings["idf"] is False and settings["rescale_with_baseline"] is True and settings["lang"] == "en"
    texts = next(kw for name, kw in fake_radeval if name == "BERTScorer.score")
    assert texts == {"cands": ["Heart normal.", "Lungs clear."], "refs": ["Heart size normal.", "Clear lungs."]}
    assert list(res.per_sample) == ["bertscore"] and res.per_sample["bertscore"][1] == 0.0
    assert res.signature.endswith("bertscore-distilroberta-base-l5+noidf+rescaled+spaces1")
    res = mb.score("sembscore", hyps, refs, device="cpu")
    assert res.per_sample["sembscore"].tolist() == pytest.approx([0.9, 0.0, 0.9])


# ---------------------------------------------------------------- the real RadEval, tiny random models

RADEVAL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import numpy as np, torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    hub = Path(os.environ["HF_HOME"]) / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = hub / "models--distilroberta-base"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    corpus = ["heart size is normal .", "there is a small left pleural effusion .", "no pneumothorax .",
              "the lungs are clear .", "mild pulmonary edema ."] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(snap))
    RobertaTokenizer(str(snap / "vocab.json"), str(snap / "merges.txt"), model_max_length=64).save_pretrained(snap)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=16, num_hidden_layers=6,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=80,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2)).save_pretrained(snap)

    from cxrgen.metrics import model_based as mb, rexrank
    hyps = ["heart size is normal .", "small left pleural effusion .", "the lungs are clear .", "no edema ."]
    refs = ["heart size is normal .", "there is a small left pleural effusion .", "no pneumothorax .",
            "mild pulmonary edema ."]
    print(json.dumps({"available": mb.check_available(["bertscore_distilroberta"])}))
    ours = mb.score("bertscore_distilroberta", hyps, refs, device="cpu").per_sample["bertscore"]

    from radeval.metrics.bertscore._vendor import BERTScorer
    plain = BERTScorer(model_type="distilroberta-base", num_layers=5, rescale_with_baseline=True, idf=False,
                       lang="en", device="cpu", use_fast_tokenizer=False)
    _, _, f_plain = plain.score(cands=hyps, refs=refs, verbose=False, batch_size=64)

    mb._install_radeval_alias()  # RadEval 2.2's vendored RadGraph imports itself as RadEval.*
    import radeval.metrics.RadCliQv1.radcliq as radcliq
    for name in ("RadGraph", "F1CheXbert", "Bleu"):  # RadCliQ-v1's other models are not needed here
        setattr(radcliq, name, lambda **kwargs: None)
    composite = radcliq.CompositeMetric()
    _, _, f_idf = composite._get_bert_scorer(refs).score(cands=hyps, refs=refs, verbose=False, batch_size=64)

    others = {"radgraph": np.array([0.9, 0.5, 0.1, 0.3]), "semb_score": np.array([0.95, 0.7, 0.4, 0.6]),
              "bleu_score": np.array([0.8, 0.4, 0.1, 0.2])}
    results = {}
    for label, bert in (("ours", np.asarray(ours)), ("idf", f_idf.numpy())):
        composite._compute_sub_metrics = lambda r, h, bert=bert: {**others, "bertscore": bert}
        inv, per = composite.predict(refs, hyps)
        mine = rexrank.radcliq_v1({"radgraph": others["radgraph"], "bertscore": bert,
                                   "sembscore": others["semb_score"], "bleu_2": others["bleu_score"]})
        results[label] = {"radeval": [float(inv)] + [float(v) for v in per],
                          "ours": [float(1 / mine.mean())] + [float(v) for v in mine]}
    print(json.dumps({"ours": [float(v) for v in ours], "plain": f_plain.tolist(), "idf": f_idf.tolist(),
                      "radcliq": results}))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("radeval") is None, reason="RadEval is not installed")
def test_rexrank_bertscore_is_idf_off_where_radevals_radcliq_turns_it_on(tmp_path):
    lines = run_offline_script(RADEVAL_SCRIPT, tmp_path)
    assert lines[0] == {"available": {}}
    res = lines[1]
    ours, plain, idf = (np.array(res[k]) for k in ("ours", "plain", "idf"))
    np.testing.assert_allclose(ours, plain, rtol=0, atol=1e-6)  # ours is BERTScorer with idf off
    assert ours[0] == pytest.approx(1.0, abs=1e-5) and idf[0] == pytest.approx(1.0, abs=1e-5)  # same text
    assert np.abs(ours[1:] - idf[1:]).max() > 1e-3  # RadEval's RadCliQ BERTScore (idf on) is another number
    for label in ("ours", "idf"):  # RadEval's RadCliQ-v1 arithmetic, on the same inputs: ours to its rounding
        np.testing.assert_allclose(res["radcliq"][label]["ours"], res["radcliq"][label]["radeval"], rtol=1e-6)
    assert abs(res["radcliq"]["ours"]["ours"][0] - res["radcliq"]["idf"]["ours"][0]) > 1e-4
