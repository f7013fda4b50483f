"""Model-based metrics (cxrgen.metrics.model_based) with RadEval replaced by test doubles, plus one
run of RadEval's own BERTScore and CheXbert code on tiny local models when RadEval is installed."""

import importlib.machinery
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cxrgen.metrics import clinical
from cxrgen.metrics import model_based as mb
from helpers import fake_metric_packages, hf_cache_put, metric_caches, run_offline_script

ROOT = Path(__file__).resolve().parents[1]
# CheXbert's label order in RadEval (13 conditions, then No Finding)
CHEXBERT_NAMES = [
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "No Finding",
]
KEYWORDS = {"cardiomegaly": "Cardiomegaly", "effusion": "Pleural Effusion", "edema": "Edema", "normal": "No Finding"}


def _fake_labeler(calls):
    def call(name, hyps, refs, *, device, batch_size):
        assert name == "chexbert" and refs == []
        calls.append(list(hyps))
        rows = []
        for t in hyps:
            row = [0] * len(CHEXBERT_NAMES)
            for word, label in KEYWORDS.items():
                if word in t:
                    row[CHEXBERT_NAMES.index(label)] = 1
            rows.append(row)
        return {"labels": rows, "label_names": CHEXBERT_NAMES}

    return call


def _fake_pair_scorer(calls, batch=2):
    """Scores f(hyp, ref) after sorting the pairs by length and working batch by batch, as
    RadEval's scorers do, and returns the values in the order given."""

    def call(name, hyps, refs, *, device, batch_size):
        calls.append((list(hyps), list(refs)))
        order = sorted(range(len(hyps)), key=lambda i: len(hyps[i]))
        out = [None] * len(hyps)
        for start in range(0, len(order), batch):
            for i in order[start:start + batch]:
                out[i] = len(hyps[i]) + len(refs[i]) / 100
        values = {k: [v * (j + 1) for v in out] for j, k in enumerate(mb._KEYS[name])}
        return values

    return call


def test_parse_names():
    assert mb.parse_names("all") == list(mb.KNOWN)
    assert mb.parse_names(" radgraph, CHEXBERT,radgraph ,") == ["radgraph", "chexbert"]
    assert mb.parse_names("green,all") == ["green", "chexbert", "radgraph", "bertscore", "ratescore"]
    assert mb.parse_names("") == []
    with pytest.raises(ValueError, match="'bleurt'.*chexbert, radgraph, bertscore, ratescore, green"):
        mb.parse_names("chexbert,bleurt")


def test_pair_scores_come_back_on_their_rows(monkeypatch):
    calls = []
    monkeypatch.setattr(mb, "_call_radeval", _fake_pair_scorer(calls))
    hyps = ["a much longer generated report", "", "short", "   ", "mid length one"]
    refs = ["r1", "reference two", "ref 3", "r4", "the fifth reference"]
    res = mb.score("radgraph", hyps, refs, device="cpu")
    # only the non-empty hypotheses reach the scorer, in order
    assert calls == [([hyps[0], hyps[2], hyps[4]], [refs[0], refs[2], refs[4]])]
    expected = np.array([len(h) + len(r) / 100 if h.strip() else 0.0 for h, r in zip(hyps, refs)])
    assert list(res.per_sample) == ["radgraph_simple", "radgraph_partial", "radgraph_complete"]
    np.testing.assert_allclose(res.per_sample["radgraph_simple"], expected)
    np.testing.assert_allclose(res.per_sample["radgraph_complete"], 3 * expected)
    assert res.n_empty == 2 and res.hyp_labels is None
    assert res.signature.startswith("radeval-") and res.signature.endswith(":radgraph-xl:simple+partial+complete")


def test_all_empty_hypotheses_run_nothing(monkeypatch):
    monkeypatch.setattr(mb, "_call_radeval", lambda *a, **k: pytest.fail("scorer called"))
    res = mb.score("bertscore", ["", " "], ["r1", "r2"], device="cpu")
    assert {k: v.tolist() for k, v in res.per_sample.items()} == {
        "bertscore_precision": [0.0, 0.0], "bertscore_recall": [0.0, 0.0], "bertscore_f1": [0.0, 0.0]}
    assert res.n_empty == 2


def test_bad_input_is_an_error(monkeypatch):
    monkeypatch.setattr(mb, "_call_radeval", lambda name, h, r, **k: {"ratescore": [0.5] * (len(h) + 1)})
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        mb.score("ratescore", ["a", "b"], ["r"], device="cpu")
    with pytest.raises(ValueError, match="reference 1 is empty"):
        mb.score("ratescore", ["a", "b"], ["r", " "], device="cpu")
    with pytest.raises(ValueError, match="3 values of 'ratescore' for 2 reports"):
        mb.score("ratescore", ["a", "b"], ["r", "s"], device="cpu")
    with pytest.raises(ValueError, match="unknown model-based metric 'bleu'"):
        mb.score("bleu", ["a"], ["r"], device="cpu")


def test_scorer_failure_is_one_line_naming_the_fetch_command(monkeypatch):
    def boom(*a, **k):
        raise OSError("couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(mb, "_call_radeval", boom)
    with pytest.raises(mb.ModelMetricError) as err:
        mb.score("ratescore", ["a"], ["r"], device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("model metric ratescore failed: OSError: couldn't connect")
    assert "python evaluate.py --fetch-metric-models ratescore" in msg


def test_green_unparsed_answers_score_zero(monkeypatch):
    monkeypatch.setattr(mb, "_call_radeval", lambda name, h, r, **k: {"green": [0.5, None], "green_parsed": [True, False]})
    res = mb.score("green", ["a", "", "b"], ["r", "s", "t"], device="cuda")
    assert res.per_sample["green"].tolist() == [0.5, 0.0, 0.0]
    assert res.per_sample["green_parsed"].tolist() == [1.0, 0.0, 0.0]


def test_chexbert_labels_map_into_the_14_observations(monkeypatch):
    calls = []
    monkeypatch.setattr(mb, "_call_radeval", _fake_labeler(calls))
    hyps = ["cardiomegaly and edema", "", "normal", "cardiomegaly and edema", "effusion"]
    refs = ["cardiomegaly", "effusion", "normal", "edema", "cardiomegaly and effusion"]
    res = mb.score("chexbert", hyps, refs, device="cpu")
    # each distinct non-empty text labelled once, references of empty hypotheses included
    assert len(calls) == 1 and sorted(calls[0]) == sorted(set(h for h in hyps if h) | set(refs))
    col = clinical.COLUMNS.index
    assert res.hyp_labels.shape == res.ref_labels.shape == (5, 14)
    assert res.hyp_labels[0].nonzero()[0].tolist() == sorted([col("cardiomegaly"), col("edema")])
    assert res.hyp_labels[1].sum() == 0  # empty hypothesis: every observation 0
    assert res.hyp_labels[2].nonzero()[0].tolist() == [col("no_finding")]
    assert res.ref_labels[1].nonzero()[0].tolist() == [col("pleural_effusion")]
    assert res.ref_labels[4].nonzero()[0].tolist() == sorted([col("cardiomegaly"), col("pleural_effusion")])
    assert res.per_sample == {}
    counts = res.outcome_counts().sum(axis=0)
    assert counts[col("cardiomegaly")].tolist() == [1, 1, 1, 2]  # tp row 0, fp row 3, fn row 4
    assert counts[col("pleural_effusion")].tolist() == [1, 0, 1, 3]  # fn row 1 (empty), tp row 4
    assert counts[col("edema")].tolist() == [1, 1, 0, 3]


def test_chexbert_micro_f1_agrees_with_scikit_learn(monkeypatch):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    words = list(KEYWORDS)
    hyps = [" ".join(rng.choice(words, size=rng.integers(1, 3))) for _ in range(40)]
    refs = [" ".join(rng.choice(words, size=rng.integers(1, 3))) for _ in range(40)]
    monkeypatch.setattr(mb, "_call_radeval", _fake_labeler([]))
    res = mb.score("chexbert", hyps, refs, device="cpu")
    values = clinical.set_metrics(res.outcome_counts().sum(axis=0))
    for set_name in ("chexpert14", "chexbert5"):
        idx = [clinical.COLUMNS.index(c) for c in clinical.OBSERVATION_SETS[set_name]]
        want = metrics.f1_score(res.ref_labels[:, idx], res.hyp_labels[:, idx], average="micro", zero_division=0)
        assert values[f"{set_name}_micro_f1"] == pytest.approx(want)


def test_chexbert_label_names_must_cover_the_observations(monkeypatch):
    def call(name, hyps, refs, **k):
        return {"labels": [[0] * 14 for _ in hyps], "label_names": CHEXBERT_NAMES[:-1] + ["Hernia"]}

    monkeypatch.setattr(mb, "_call_radeval", call)
    with pytest.raises(ValueError, match="'Hernia' is not one of the 14 observations"):
        mb.score("chexbert", ["a"], ["b"], device="cpu")


def test_scoring_runs_with_the_hub_off_unless_allowed(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    seen = []

    def call(name, hyps, refs, **k):
        seen.append((os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE, mb.hub_offline()))
        return {"ratescore": [0.25] * len(hyps)}

    monkeypatch.setattr(mb, "_call_radeval", call)
    mb.score("ratescore", ["a"], ["r"], device="cpu")
    mb.score("ratescore", ["a"], ["r"], device="cpu", allow_download=True)
    assert seen == [("1", True, True), (None, False, False)]
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False


# ---------------------------------------------------------------- availability


CONFIG = {"config.json": b"{}", "tokenizer_config.json": b"{}", "vocab.txt": b"[PAD]\n"}


def test_missing_package_names_the_pip_command(monkeypatch):
    fake_metric_packages(monkeypatch, missing=("radeval",))
    why = mb.check_available(mb.KNOWN)
    assert sorted(why) == sorted(mb.KNOWN)
    assert all("pip install -r requirements-metrics.txt" in w and "radeval" in w for w in why.values())
    fake_metric_packages(monkeypatch, missing=("medspacy",))
    monkeypatch.setattr(mb, "_missing_weights", lambda name: [])
    monkeypatch.setattr(mb, "_gpu_problem", lambda: None)
    assert list(mb.check_available(mb.KNOWN)) == ["ratescore"]


def test_ratescore_reports_the_numpy_conflict_of_its_spacy(monkeypatch):
    fake_metric_packages(monkeypatch)
    monkeypatch.setattr(mb, "_version", lambda dist: {"thinc": "8.2.4", "numpy": "2.4.6"}.get(dist))
    why = mb.check_available(["ratescore"])["ratescore"]
    assert "thinc 8.2.4" in why and "numpy 2.4.6" in why


def test_missing_weights_name_the_fetch_command(monkeypatch, tmp_path):
    fake_metric_packages(monkeypatch)
    metric_caches(monkeypatch, tmp_path)
    why = mb.check_available(mb.KNOWN)
    assert sorted(why) == sorted(mb.KNOWN)
    for name, reason in why.items():
        assert f"python evaluate.py --fetch-metric-models {name}" in reason and "\n" not in reason
    assert str(tmp_path / "xdg" / "chexbert") in why["chexbert"]
    assert "7B" in why["green"] and "GPU" in why["green"]


def test_cached_weights_make_a_scorer_available(monkeypatch, tmp_path):
    fake_metric_packages(monkeypatch)
    hub = metric_caches(monkeypatch, tmp_path)
    hf_cache_put(hub, "distilbert-base-uncased", {**CONFIG, "model.safetensors": b"x"})
    assert mb.check_available(["bertscore"]) == {}
    # chexbert: its checkpoint in RadEval's own cache, the backbone's config in the HF cache
    hf_cache_put(tmp_path / "xdg" / "chexbert", mb.RRG_SCORERS, {"chexbert.pth": b"x"})
    assert "bert-base-uncased" in mb.check_available(["chexbert"])["chexbert"]
    hf_cache_put(hub, "bert-base-uncased", CONFIG)
    assert mb.check_available(["chexbert"]) == {}
    # ratescore: a sharded checkpoint with one shard missing
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    hf_cache_put(hub, mb.RATE_NER_MODEL, {**CONFIG, "model.safetensors.index.json": json.dumps(index).encode(),
                                  "model-00001-of-00002.safetensors": b"x"})
    hf_cache_put(hub, mb.RATE_EVAL_MODEL, {**CONFIG, "pytorch_model.bin": b"x"})
    assert "1 of 2 weight shards" in mb.check_available(["ratescore"])["ratescore"]
    hf_cache_put(hub, mb.RATE_NER_MODEL, {"model-00002-of-00002.safetensors": b"x"})
    assert mb.check_available(["ratescore"]) == {}


def test_radgraph_needs_the_extracted_model_and_its_encoder(monkeypatch, tmp_path):
    fake_metric_packages(monkeypatch)
    hub = metric_caches(monkeypatch, tmp_path)
    model_dir = tmp_path / "xdg" / "radgraph" / "0.1.18" / "radgraph-xl"
    assert "radgraph-xl.tar.gz" in mb.check_available(["radgraph"])["radgraph"]
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps(_radgraph_config("org/encoder")))
    (model_dir / "weights.th").write_bytes(b"x")
    assert "org/encoder (config.json)" in mb.check_available(["radgraph"])["radgraph"]
    hf_cache_put(hub, "org/encoder", CONFIG)
    assert mb.check_available(["radgraph"]) == {}


def test_protocol_scorers_need_their_own_weights(monkeypatch, tmp_path):
    fake_metric_packages(monkeypatch)
    hub = metric_caches(monkeypatch, tmp_path)
    why = mb.check_available(mb.PROTOCOL_SCORERS)
    assert "radgraph.tar.gz extracted in" in why["radgraph_partial"] and "radgraph-xl" not in why["radgraph_partial"]
    assert "radgraph.tar.gz" in why["radgraph_combined"]
    assert "distilroberta-base" in why["bertscore_distilroberta"]
    assert "chexbert.pth" in why["sembscore"]
    for name, reason in why.items():
        assert f"python evaluate.py --fetch-metric-models {name}" in reason
    model_dir = tmp_path / "xdg" / "radgraph" / "0.1.18" / "radgraph"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps(_radgraph_config("org/encoder")))
    (model_dir / "weights.th").write_bytes(b"x")
    hf_cache_put(hub, "org/encoder", CONFIG)
    hf_cache_put(hub, "distilroberta-base", {**CONFIG, "model.safetensors": b"x"})
    assert set(mb.check_available(mb.PROTOCOL_SCORERS)) == {"sembscore"}


def test_green_with_weights_needs_a_gpu(monkeypatch, tmp_path):
    fake_metric_packages(monkeypatch)
    hub = metric_caches(monkeypatch, tmp_path)
    hf_cache_put(hub, mb.GREEN_MODEL, {**CONFIG, "model.safetensors": b"x"})
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs a CUDA GPU" in mb.check_available(["green"])["green"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert mb.check_available(["green"]) == {}


# ---------------------------------------------------------------- fetching


def _radgraph_config(encoder):
    return {"dataset_reader": {"token_indexers": {"bert": {"model_name": encoder}}},
            "model": {"embedder": {"token_embedders": {"bert": {"model_name": encoder}}}}}


def test_fetch_refuses_when_the_hub_is_off(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("download attempted"))
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda *a, **k: pytest.fail("listing attempted"))
    with pytest.raises(mb.FetchError) as err:
        mb.fetch(["bertscore"])
    assert "\n" not in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    with pytest.raises(ValueError, match="unknown model-based metric 'bleu'"):
        mb.fetch(["bleu"])


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """huggingface_hub's listing and download replaced: no network; records what was asked."""
    import huggingface_hub
    from huggingface_hub import constants

    metric_caches(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data in {"config.json": json.dumps(_radgraph_config("org/encoder")).encode(), "weights.th": b"w"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tgz = tmp_path / "radgraph.tar.gz"  # the archive asked for, whichever RadGraph model
    tgz.write_bytes(archive.getvalue())
    repos = {
        "distilbert-base-uncased": ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                    "model.safetensors", "pytorch_model.bin", "tf_model.h5", "onnx/model.onnx",
                                    "README.md", ".gitattributes"],
        "org/encoder": ["config.json", "vocab.txt", "tokenizer_config.json", "pytorch_model.bin"],
        mb.GREEN_MODEL: ["config.json", "tokenizer.model", "tokenizer_config.json", "modeling_x.py",
                         "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                         "pytorch_model.bin.index.json", "README.md"],
    }
    asked = []

    def list_repo_files(repo, **k):
        if repo not in repos:
            raise ConnectionError(f"Failed to resolve 'huggingface.co' for {repo}\nretrying")
        return repos[repo]

    def hf_hub_download(repo, filename, cache_dir=None, **k):
        asked.append((repo, filename, cache_dir))
        return str(tgz) if filename.endswith(".tar.gz") else f"{cache_dir}/{repo}/{filename}"

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return asked


def test_fetch_downloads_only_what_the_scorer_loads(fake_hub, tmp_path):
    hub = str(tmp_path / "hf" / "hub")
    mb.fetch(["bertscore"])
    assert sorted(f for r, f, c in fake_hub) == ["config.json", "model.safetensors", "tokenizer.json",
                                               "tokenizer_config.json", "vocab.txt"]
    assert {c for r, f, c in fake_hub} == {hub}
    fake_hub.clear()
    mb.fetch(["green"])
    assert sorted(f for r, f, c in fake_hub) == [
        "config.json", "modeling_x.py", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json", "tokenizer.model", "tokenizer_config.json"]


def test_fetch_radgraph_extracts_and_fetches_its_encoder(fake_hub, tmp_path):
    paths = mb.fetch(["radgraph"])
    model_dir = tmp_path / "xdg" / "radgraph" / "0.1.18" / "radgraph-xl"
    assert (model_dir / "weights.th").read_bytes() == b"w"
    assert str(model_dir) in paths
    assert fake_hub[0] == (mb.RRG_SCORERS, "radgraph-xl.tar.gz", str(model_dir.parent))
    assert sorted(f for r, f, c in fake_hub[1:] if r == "org/encoder") == ["config.json", "tokenizer_config.json",
                                                                          "vocab.txt"]


def test_fetch_gets_the_original_radgraph_archive_for_the_protocol_scorers(fake_hub, tmp_path):
    mb.fetch(["radgraph_combined"])
    model_dir = tmp_path / "xdg" / "radgraph" / "0.1.18" / "radgraph"
    assert fake_hub[0] == (mb.RRG_SCORERS, "radgraph.tar.gz", str(model_dir.parent))
    assert (model_dir / "weights.th").read_bytes() == b"w"


def test_fetch_unreachable_hub_is_one_line(fake_hub):
    with pytest.raises(mb.FetchError) as err:
        mb.fetch(["ratescore"])
    msg = str(err.value)
    assert "\n" not in msg and mb.RATE_NER_MODEL in msg and "ConnectionError" in msg


# ---------------------------------------------------------------- imports and the real RadEval


def test_radeval_is_not_imported_by_default():
    code = (
        "import sys\n"
        "import cxrgen.metrics, cxrgen.evaluation\n"
        "from cxrgen.metrics import model_based\n"
        "model_based.check_available(model_based.KNOWN[:4])\n"
        "model_based.parse_names('all')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('radeval', 'RadEval', 'medspacy', 'spacy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


RADEVAL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    from pathlib import Path
    from transformers import BertConfig, BertModel, BertTokenizer, DistilBertConfig, DistilBertModel
    hub = Path(os.environ["HF_HOME"]) / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"

    def snapshot(root, repo):
        base = root / ("models--" + repo.replace("/", "--"))
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / "main").write_text(commit)
        d = base / "snapshots" / commit
        d.mkdir(parents=True, exist_ok=True)
        return d

    torch.manual_seed(0)
    words = "heart size normal enlarged lungs clear effusion pleural edema no there is mild".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + words
    for repo in ("bert-base-uncased", "distilbert-base-uncased"):
        d = snapshot(hub, repo)
        (d / "vocab.txt").write_text("\\n".join(vocab) + "\\n")
        BertTokenizer(str(d / "vocab.txt"), model_max_length=64).save_pretrained(d)
    bert = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    bert.save_pretrained(snapshot(hub, "bert-base-uncased"))
    DistilBertModel(DistilBertConfig(vocab_size=len(vocab), dim=16, n_layers=5, n_heads=2, hidden_dim=32,
                                     max_position_embeddings=64)).save_pretrained(snapshot(hub, "distilbert-base-uncased"))
    heads = [torch.nn.Linear(16, 4) for _ in range(13)] + [torch.nn.Linear(16, 2)]
    state = {"module.bert." + k: v for k, v in BertModel(bert).state_dict().items()}
    for i, h in enumerate(heads):
        state[f"module.linear_heads.{i}.weight"] = h.weight.data
        state[f"module.linear_heads.{i}.bias"] = h.bias.data
    ckpt = snapshot(Path(os.environ["XDG_CACHE_HOME"]) / "chexbert", "StanfordAIMI/RRG_scorers")
    torch.save({"model_state_dict": state}, ckpt / "chexbert.pth")

    from cxrgen.metrics import model_based as mb
    print(json.dumps({"available": mb.check_available(["chexbert", "bertscore"])}))
    hyps = ["heart size is normal .", "", "mild pleural effusion .", "lungs clear ."]
    refs = ["heart size is normal .", "there is edema .", "no effusion .", "heart size enlarged ."]
    b = mb.score("bertscore", hyps, refs, device="cpu", batch_size=2)
    c = mb.score("chexbert", hyps, refs, device="cpu", batch_size=2)
    print(json.dumps({"bertscore": {k: v.tolist() for k, v in b.per_sample.items()}, "signature": b.signature,
                      "hyp_labels": c.hyp_labels.tolist(), "ref_labels": c.ref_labels.tolist(),
                      "radeval": sorted(m for m in sys.modules if m.startswith("radeval"))[:1]}))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("radeval") is None, reason="RadEval is not installed")
def test_radeval_bertscore_and_chexbert_run_offline_on_tiny_local_models(tmp_path):
    lines = run_offline_script(RADEVAL_SCRIPT, tmp_path)
    assert lines[0] == {"available": {}}
    res = lines[1]
    f1 = res["bertscore"]["bertscore_f1"]
    assert len(f1) == 4 and f1[1] == 0.0  # the empty hypothesis is not scored
    assert f1[0] == pytest.approx(1.0, abs=1e-5)  # identical texts: F1 1 before and after rescaling
    assert f1[2] < 1.0 - 1e-3 and f1[3] < 1.0 - 1e-3
    assert res["signature"].startswith("radeval-2.2") and "distilbert-base-uncased-l5" in res["signature"]
    hl, rl = np.array(res["hyp_labels"]), np.array(res["ref_labels"])
    assert hl.shape == rl.shape == (4, 14) and set(np.unique(np.r_[hl, rl])) <= {0, 1}
    assert hl[1].sum() == 0 and (hl[0] == rl[0]).all()  # same text, same labels
    assert res["radeval"] == ["radeval"]
