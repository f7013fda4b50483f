"""The retrieval backend on tiny random encoders saved by transformers itself: exact cosine nearest neighbours
(against NumPy's brute force, and through the pipeline), the k > 1 rule, pooling per model family, the leakage
rules, the index build's cache key and crash safety, resume/shards/merge, bad input."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import generate_cxr
from cxrgen import runner
from cxrgen.config import Config
from cxrgen.models import ModelError, identity
from cxrgen.models.retrieval import BuildInterrupted, RetrievalBackend
from cxrgen.models.retrieval.encoder import load_encoder, pooling_rule
from cxrgen.models.retrieval.index import index_key, open_index
from cxrgen.models.retrieval.search import consensus, nearest, text_similarity, _words
from cxrgen.models.retrieval.tiny import build_tiny_clip, build_tiny_dinov2
from cxrgen.report.html import page_data
from helpers import ROOT, crash_points, reports

REPORTS = ["No acute cardiopulmonary abnormality.", "Small left pleural effusion.", "Cardiomegaly without edema.",
           "Right upper lobe pneumonia.", "Clear lungs. No pneumothorax.", "Mild pulmonary edema.",
           "Large right pleural effusion.", "Normal heart size. Clear lungs."]


# -- data ----------------------------------------------------------------------------------------------------------

def noise_image(path: Path, seed: int, size: int = 64) -> Path:
    """A grey PNG of seeded blobs (distinct images give distinct embeddings)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(small, mode="L").resize((size, size), Image.BILINEAR).save(path)
    return path


def nudged_copy(source: Path, path: Path) -> Path:
    """The same image with one pixel changed: another content digest, almost the same embedding."""
    pixels = np.array(Image.open(source))
    pixels[0, 0] = (int(pixels[0, 0]) + 1) % 256
    Image.fromarray(pixels, mode="L").save(path)
    return path


def write_data(folder: Path, n_train: int = 12, n_test: int = 5, extra: list[dict] | None = None) -> Path:
    """A manifest with a split column: train studies T000.. and test studies Q000.. on distinct noise images."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"T{i:03d}", "image_path": str(noise_image(images / f"t{i}.png", i)), "split": "train",
             "reference": REPORTS[i % len(REPORTS)] + f" Train study {i}."} for i in range(n_train)]
    rows += [{"id": f"Q{i:03d}", "image_path": str(noise_image(images / f"q{i}.png", 1000 + i)), "split": "test",
              "reference": REPORTS[(i + 3) % len(REPORTS)]} for i in range(n_test)]
    rows += extra or []
    frame = pd.DataFrame(rows)
    if "subject_id" not in frame.columns:
        frame["subject_id"] = ""
    manifest = folder / "manifest.csv"
    frame.to_csv(manifest, index=False)
    return manifest


def settings(tmp: Path, encoder: Path, manifest: Path, run_name: str = "run", **sections) -> Config:
    raw = {
        "model": {"backend": "retrieval", "name_or_path": str(encoder), "device": "cpu", "dtype": "float32"},
        "generation": {"batch_size": 3},
        "data": {"format": "manifest", "manifest": str(manifest), "split": "test"},
        "loader": {"num_workers": 0},
        "output": {"dir": str(tmp / "runs"), "run_name": run_name, "html": False},
        "evaluation": {"bootstrap": 20, "clinical": False},
        "retrieval": {"index_dir": str(tmp / "indexes")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return Config.from_dict(raw)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {"dinov2": build_tiny_dinov2(root / "dinov2"), "dinov2-seed1": build_tiny_dinov2(root / "dinov2-b", seed=1),
            "clip": build_tiny_clip(root / "clip")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


def run(cfg: Config, **kwargs) -> pd.DataFrame:
    code = runner.generate(cfg, progress=False, **kwargs)
    assert code == runner.EXIT_OK
    return reports(cfg.run_dir)


def brute_force(cfg: Config, manifest: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Every train and test image embedded one at a time, and their cosine similarities [test, train] in float64."""
    from cxrgen.imaging import read_image

    encoder = load_encoder(cfg)
    frame = pd.read_csv(manifest, keep_default_na=False)
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]

    def embed(paths):
        prepare = encoder.image_preparer()
        return np.stack([encoder.embed(prepare(read_image(p))["pixel_values"]).numpy()[0] for p in paths])

    a, b = embed(test["image_path"]).astype(np.float64), embed(train["image_path"]).astype(np.float64)
    return a, b, test.reset_index(drop=True), train.reset_index(drop=True)


# -- exact search -----------------------------------------------------------------------------------------------------

def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk_size", [1000, 64, 7, 1])
def test_nearest_is_numpys_brute_force_on_random_embeddings(chunk_size):
    index, queries = unit(1000, 24, 0), unit(17, 24, 1)
    full = queries.astype(np.float64) @ index.astype(np.float64).T
    best = np.argsort(-full, axis=1)
    # some queries lose their own nearest rows (and random others), as the leakage rules make them
    excluded = [sorted(set(best[q, :q % 4]) | set(np.random.default_rng(q).choice(1000, size=q % 3 * 5,
                                                                                   replace=False)))
                for q in range(17)]
    sims, positions = nearest(torch.from_numpy(queries), torch.from_numpy(index), 5, chunk_size, excluded)
    for q, banned in enumerate(excluded):
        full[q, banned] = -np.inf
    expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
    assert np.array_equal(positions.numpy(), expected)
    assert np.allclose(sims.numpy(), np.take_along_axis(full, expected, axis=1), atol=1e-5)
    assert all(not set(p) & set(b) for p, b in zip(positions.tolist(), excluded))


def test_ties_go_to_the_earlier_index_row_whatever_the_chunking():
    base = unit(6, 8, 2)
    index = np.concatenate([base[:3], base[[1, 1, 0]], base[3:]])  # rows 1, 3, 4 equal; rows 0 and 5 equal
    for chunk_size in (9, 4, 2, 1):
        sims, positions = nearest(torch.from_numpy(base[[1, 0]]), torch.from_numpy(index), 3, chunk_size)
        assert positions.tolist()[0] == [1, 3, 4] and positions.tolist()[1][:2] == [0, 5], chunk_size
    sims, positions = nearest(torch.from_numpy(base[:1]), torch.from_numpy(index), 12, 4, [[0, 5]])
    assert positions.tolist()[0][-4:] == [-1, -1, -1, -1] and torch.isinf(sims[0, -4:]).all()  # 7 rows, 2 left out


def test_consensus_takes_the_report_most_like_the_others():
    candidates = ["Right upper lobe pneumonia.", "No acute disease. Clear lungs.", "Clear lungs, no acute disease.",
                  "No acute disease, lungs are clear."]
    assert consensus(candidates) == 1  # the outlier never wins; among the three alike, the first (nearest image)
    assert consensus(["a b", "c d"]) == 0 and consensus(["only one"]) == 0
    assert text_similarity(_words("Clear lungs."), _words("clear LUNGS")) == pytest.approx(1.0)  # punctuation, case
    assert text_similarity(_words("..."), _words("lungs")) == 0.0


# -- pooling --------------------------------------------------------------------------------------------------------

def test_pooling_follows_the_model_family(encoders, data, tmp_path):
    from transformers import AutoModel

    pixels = None
    for name, rule in (("dinov2", "pooler"), ("clip", "image_features")):
        encoder = load_encoder(settings(tmp_path, encoders[name], data))
        assert encoder.pooling == rule
        pixels = encoder._probe()
        model = AutoModel.from_pretrained(encoders[name]).eval()
        with torch.no_grad():
            if name == "dinov2":
                out = model(pixel_values=torch.from_numpy(pixels))
                raw = out.pooler_output
                assert torch.equal(raw, out.last_hidden_state[:, 0])  # DINOv2's pooler output is the CLS token
            else:
                raw = model.get_image_features(pixel_values=torch.from_numpy(pixels))
                raw = raw if torch.is_tensor(raw) else raw.pooler_output
        got = encoder.embed(pixels)
        assert torch.allclose(got, torch.nn.functional.normalize(raw, dim=1), atol=1e-6)
        assert torch.allclose(got.norm(dim=1), torch.ones(1))
    mean = load_encoder(settings(tmp_path, encoders["dinov2"], data, retrieval={"pooling": "mean"}))
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(encoders["dinov2"])(pixel_values=torch.from_numpy(pixels)).last_hidden_state
    assert torch.allclose(mean.embed(pixels), torch.nn.functional.normalize(hidden.mean(1), dim=1), atol=1e-6)
    with pytest.raises(ModelError, match=r"^retrieval.pooling image_features: Dinov2Model of .* cannot give it"):
        load_encoder(settings(tmp_path, encoders["dinov2"], data, retrieval={"pooling": "image_features"}))


def test_a_model_type_without_a_rule_is_refused_naming_the_key(encoders, data, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(encoders["dinov2"], folder)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "model_type": "bit"}))
    with pytest.raises(ModelError, match="retrieval.pooling auto knows no rule for model_type 'bit'.*set "
                                         "retrieval.pooling to cls, pooler, mean or image_features$"):
        load_encoder(settings(tmp_path, folder, data))
    assert pooling_rule("dinov2_with_registers", "auto", folder) == "pooler"
    assert pooling_rule("bit", "cls", folder) == "cls"  # named, any model type


# -- through the pipeline -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3])
def test_a_run_retrieves_the_exact_cosine_nearest_training_report(encoders, data, tmp_path, k):
    cfg = settings(tmp_path, encoders["dinov2"], data, retrieval={"k": k, "chunk_size": 5})
    rows = run(cfg)
    test, train_vectors, test_frame, train = brute_force(cfg, data)
    sims = test @ train_vectors.T
    for q, row in rows.iterrows():
        order = np.argsort(-sims[q], kind="stable")[:k]
        pick = order[consensus([train["reference"][i] for i in order])]
        assert row["retrieved_id"] == train["id"][pick] and row["generated_report"] == train["reference"][pick]
        assert row["retrieved_image"] == train["image_path"][pick]
        assert row["similarity"] == pytest.approx(sims[q, pick], abs=1e-5)
        assert (row["leakage"], row["n_new_tokens"], bool(row["stopped_at_eos"])) == ("", 0, True)
    assert list(rows["id"]) == list(test_frame["id"])
    if k == 3:  # the rule changed some choice: k is not silently ignored
        assert (rows["retrieved_id"] != run(settings(tmp_path, encoders["dinov2"], data, "k1"))["retrieved_id"]).any()
    info = json.loads((cfg.run_dir / "run.json").read_text())
    assert info["model"]["backend"] == "retrieval" and info["model"]["index"]["count"] == 12
    assert info["model"]["pooling"] == "pooler" and info["prompt"] == ""
    assert info["counts"]["leakage_studies"] == 0 and info["model_identity"]["retrieval.k"] == k


def test_an_identical_image_retrieves_its_study_only_where_leakage_rules_allow(encoders, tmp_path, caplog):
    """Leakage off: an image with a training image's pixels (another file and format) gets that study with
    similarity 1, and studies sharing an id or a patient with their nearest training study get it. Leakage
    exclude: each is left out of its own candidates, the row says by which rule, the log and run.json count them."""
    folder = tmp_path / "data"
    index_manifest = write_data(folder, n_train=8, n_test=0)
    frame = pd.read_csv(index_manifest, keep_default_na=False)
    frame.loc[frame["id"] == "T006", "subject_id"] = "p42"
    frame.to_csv(index_manifest, index=False)
    images = folder / "images"
    Image.open(images / "t5.png").save(images / "same-pixels.bmp")
    test_manifest = folder / "test.csv"  # a manifest's ids are unique: the colliding id comes from another file
    pd.DataFrame([
        {"id": "QSAME", "image_path": str(images / "same-pixels.bmp"), "reference": "r", "subject_id": ""},
        {"id": "T002", "image_path": str(nudged_copy(images / "t2.png", images / "t2b.png")), "reference": "r",
         "subject_id": ""},
        {"id": "QPAT", "image_path": str(nudged_copy(images / "t6.png", images / "t6b.png")), "reference": "r",
         "subject_id": "p42"},
        {"id": "QNONE", "image_path": str(noise_image(images / "other.png", 77)), "reference": "r", "subject_id": ""},
    ]).to_csv(test_manifest, index=False)
    index_cfg = settings(tmp_path, encoders["dinov2"], index_manifest)
    encoder = load_encoder(index_cfg)
    index = open_index(index_cfg, encoder)

    def run_with(leakage: str) -> Config:
        cfg = settings(tmp_path, encoders["dinov2"], test_manifest, leakage, data={"split": "all"},
                       retrieval={"leakage": leakage})
        backend = RetrievalBackend(encoder, index, cfg.retrieval)
        assert runner.generate(cfg, model=backend, progress=False) == runner.EXIT_OK
        return cfg

    allowed = reports(run_with("off").run_dir).set_index("id")
    assert allowed.loc["QSAME", "retrieved_id"] == "T005"
    assert allowed.loc["QSAME", "similarity"] == pytest.approx(1.0, abs=1e-5)
    assert allowed.loc["T002", "retrieved_id"] == "T002" and allowed.loc["QPAT", "retrieved_id"] == "T006"
    assert (allowed["leakage"] == "").all()

    with caplog.at_level(logging.INFO, logger="cxrgen"):
        cfg = run_with("exclude")
    rows = reports(cfg.run_dir).set_index("id")
    assert rows.loc["QSAME", "retrieved_id"] != "T005" and rows.loc["QSAME", "leakage"] == "image"
    assert rows.loc["T002", "retrieved_id"] != "T002" and rows.loc["T002", "leakage"] == "id"
    assert rows.loc["QPAT", "retrieved_id"] != "T006" and rows.loc["QPAT", "leakage"] == "patient"
    assert rows.loc["QNONE", "leakage"] == "" and rows.loc["QNONE", "retrieved_id"] == \
        allowed.loc["QNONE", "retrieved_id"]
    counts = json.loads((cfg.run_dir / "run.json").read_text())["counts"]
    assert {k: counts[f"leakage_{k}"] for k in ("studies", "id", "image", "patient")} == \
        {"studies": 3, "id": 1, "image": 1, "patient": 1}
    assert "3 studies had index rows left out by the leakage rules (same study id: 1, same image content: 1, " \
           "same patient: 1)" in caplog.text
    assert "3 of 4 studies had index rows left out" in caplog.text  # the finishing step's line


def test_the_demo_way_a_split_less_manifest_indexes_every_study_and_each_is_left_out_of_its_own(encoders, tmp_path):
    rows = run(settings(tmp_path, encoders["dinov2"], ROOT / "demo" / "manifest.csv", data={"split": "all"}))
    assert (rows["leakage"] == "id,image").all() and (rows["retrieved_id"] != rows["id"]).all()
    assert set(rows["retrieved_id"]) <= set(rows["id"])


def test_a_study_whose_whole_index_is_left_out_stops_the_shard_naming_it(encoders, tmp_path):
    image = noise_image(tmp_path / "a.png", 1)
    manifest = tmp_path / "m.csv"
    pd.DataFrame([{"id": "A", "image_path": str(image), "reference": "r"}]).to_csv(manifest, index=False)
    cfg = settings(tmp_path, encoders["dinov2"], manifest, data={"split": "all"}, retrieval={"split": "all"})
    with pytest.raises(runner.IncompleteShardError, match="study A: every one of the index's 1 studies is left out"):
        runner.generate(cfg, progress=False)


def test_the_results_page_shows_the_retrieved_study(encoders, data, tmp_path):
    cfg = settings(tmp_path, encoders["dinov2"], data)
    rows = run(cfg)
    page = page_data({"retrieval": rows}, {}, findings=False, thumbnail_px=32)
    shown = [study["s"][0]["r"] for study in page["studies"]]
    assert [r["id"] for r in shown] == list(rows["retrieved_id"])
    assert [r["sim"] for r in shown] == pytest.approx(list(rows["similarity"]), abs=1e-4)  # shown to 4 places
    assert all(r["img"].startswith("data:image/jpeg;base64,") for r in shown)
    assert "similarity" in [s[0] for s in page["scores"]]
    js = (ROOT / "cxrgen" / "report" / "results.js").read_text()
    assert "retrievedFrom(it.r)" in js


# -- the index: key, cache, crash safety ------------------------------------------------------------------------------

def index_files(cfg: Config) -> tuple[Path, np.ndarray, list]:
    folders = [p for p in Path(cfg.retrieval.index_dir).iterdir() if (p / "index.json").exists()]
    assert len(folders) == 1
    return folders[0], np.load(folders[0] / "embeddings.npy"), json.loads((folders[0] / "entries.json").read_text())


def test_the_index_is_cached_under_its_key_and_rebuilt_when_the_key_changes(encoders, tmp_path):
    manifest = write_data(tmp_path / "data", n_train=6, n_test=1)
    cfg = settings(tmp_path, encoders["dinov2"], manifest)
    encoder = load_encoder(cfg)
    first = open_index(cfg, encoder)
    assert first.info["count"] == 6 and first.folder.parent == tmp_path / "indexes"
    mtime = (first.folder / "index.json").stat().st_mtime_ns
    again = open_index(cfg, encoder)  # read, not built again
    assert (again.folder, (again.folder / "index.json").stat().st_mtime_ns) == (first.folder, mtime)
    assert np.array_equal(again.embeddings, first.embeddings)

    def key(c: Config) -> str:
        return index_key(c, load_encoder(c).fields)[0]

    base = key(cfg)
    moved = tmp_path / "encoder"
    shutil.copytree(encoders["dinov2"], moved)
    before = key(settings(tmp_path, moved, manifest))
    shutil.copy(encoders["dinov2-seed1"] / "model.safetensors", moved / "model.safetensors")
    assert key(settings(tmp_path, moved, manifest)) != before  # the same folder, other weights of the same shapes
    assert key(settings(tmp_path, encoders["dinov2"], manifest, data={"reference_column": "id"})) != base
    assert key(settings(tmp_path, encoders["dinov2"], manifest, retrieval={"pooling": "mean"})) != base
    assert key(settings(tmp_path, encoders["dinov2"], manifest, retrieval={"split": "all"})) != base
    assert key(settings(tmp_path, encoders["dinov2"], manifest, retrieval={"k": 5, "chunk_size": 2})) == base
    frame = pd.read_csv(manifest, keep_default_na=False)
    frame.loc[0, "split"] = "test"  # a changed split: the manifest's digest changes
    frame.to_csv(manifest, index=False)
    rebuilt = open_index(cfg, encoder)
    assert rebuilt.folder != first.folder and rebuilt.info["count"] == 5
    assert (first.folder / "index.json").exists()  # the old index is left alone
    seed1 = settings(tmp_path, encoders["dinov2-seed1"], manifest)
    other = open_index(seed1, load_encoder(seed1))
    assert other.folder not in (first.folder, rebuilt.folder) and not np.allclose(other.embeddings,
                                                                                   rebuilt.embeddings)
    assert identity(seed1)["model.index"] == other.info["key"][:16]  # a resumed run sees a changed index


def test_the_index_counts_what_it_leaves_out(encoders, tmp_path):
    extra = [{"id": "T900", "image_path": str(tmp_path / "missing.png"), "split": "train", "reference": "r"},
             {"id": "T901", "image_path": str(noise_image(tmp_path / "x.png", 5)), "split": "train", "reference": ""}]
    manifest = write_data(tmp_path / "data", n_train=4, n_test=1, extra=extra)
    cfg = settings(tmp_path, encoders["dinov2"], manifest)
    index = open_index(cfg, load_encoder(cfg))
    assert [e["id"] for e in index.entries] == ["T000", "T001", "T002", "T003"]
    assert index.info["counts"]["unreadable"] == 1 and index.info["counts"]["skipped_empty_reference"] == 1
    assert index.info["counts"]["not_in_split"] == 1  # the test study


def test_a_crash_at_any_write_of_the_build_resumes_to_the_same_index(encoders, tmp_path, monkeypatch):
    manifest = write_data(tmp_path / "data", n_train=5, n_test=1)
    reference_cfg = settings(tmp_path / "ref", encoders["dinov2"], manifest, generation={"batch_size": 2})
    encoder = load_encoder(reference_cfg)
    reference = open_index(reference_cfg, encoder)
    cfg = settings(tmp_path, encoders["dinov2"], manifest, generation={"batch_size": 2})
    indexes = Path(cfg.retrieval.index_dir)

    def build():
        shutil.rmtree(indexes, ignore_errors=True)
        open_index(cfg, encoder)

    points = 0
    for _ in crash_points(monkeypatch, build):
        points += 1
        resumed = open_index(cfg, encoder)  # the next start resumes from what was committed
        assert np.array_equal(resumed.embeddings, reference.embeddings) and resumed.entries == reference.entries
        assert not list(resumed.folder.glob("batch-*")) and not list(resumed.folder.glob(".*.tmp-*"))
    assert points >= 18  # 3 batches and 3 finished files, each written, fsync'ed and renamed


def test_a_stopped_build_keeps_its_batches_and_resumes(encoders, tmp_path, caplog):
    manifest = write_data(tmp_path / "data", n_train=7, n_test=1)
    cfg = settings(tmp_path, encoders["dinov2"], manifest, generation={"batch_size": 2})
    encoder = load_encoder(cfg)
    with pytest.raises(BuildInterrupted, match="stopped after committing 2 of 7 studies"):
        open_index(cfg, encoder, stop=lambda: True)
    folder = next(Path(cfg.retrieval.index_dir).iterdir())
    assert [p.name for p in folder.glob("batch-*")] == ["batch-000000000-000000001.npz"]
    assert not (folder / "index.json").exists()
    with caplog.at_level(logging.INFO, logger="cxrgen"):
        index = open_index(cfg, encoder)
    assert "7 studies, 2 already encoded, 5 to go" in caplog.text
    whole = settings(tmp_path / "whole", encoders["dinov2"], manifest, generation={"batch_size": 2})
    assert np.array_equal(index.embeddings, open_index(whole, encoder).embeddings)


def test_a_stopped_then_killed_index_build_resumes_to_the_same_index(encoders, tmp_path):
    """generate_cxr.py --build-index: SIGTERM stops it after the batch in flight (exit 75, as a run); SIGKILL in
    the middle of the next start loses at most a batch; the same command then finishes the same index."""
    import yaml

    manifest = write_data(tmp_path / "data", n_train=60, n_test=1)
    cfg_path = tmp_path / "build.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"backend": "retrieval", "name_or_path": str(encoders["dinov2"]), "device": "cpu",
                  "dtype": "float32"},
        "generation": {"batch_size": 1}, "loader": {"num_workers": 0},
        "data": {"format": "manifest", "manifest": str(manifest), "split": "test"},
        "retrieval": {"index_dir": str(tmp_path / "killed")}}))
    command = [sys.executable, str(ROOT / "generate_cxr.py"), "--quiet", "--build-index", "--config", str(cfg_path)]

    def batches() -> int:
        return len(list((tmp_path / "killed").glob("*/batch-*.npz")))

    def start_until(count: int) -> subprocess.Popen:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        deadline = time.time() + 90
        while batches() < count and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.01)
        return proc

    proc = start_until(5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == runner.EXIT_INTERRUPTED, err[-2000:]
    stopped = batches()
    assert f"stopped after committing {stopped} of 60 studies; run the same command to resume" in err

    proc = start_until(stopped + 5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = next((tmp_path / "killed").iterdir())
    done = batches()
    assert not (folder / "index.json").exists() and stopped + 5 <= done < 60
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"60 studies, {done} already encoded, {60 - done} to go" in resumed.stderr
    assert f"{folder}: 60 studies indexed" in resumed.stdout
    _, killed, killed_entries = index_files(settings(tmp_path, encoders["dinov2"], manifest,
                                                     retrieval={"index_dir": str(tmp_path / "killed")}))
    whole = settings(tmp_path, encoders["dinov2"], manifest, generation={"batch_size": 1},
                     retrieval={"index_dir": str(tmp_path / "whole")})
    clean = open_index(whole, load_encoder(whole))  # uninterrupted, in this process
    assert clean.folder.name == folder.name  # the same key
    assert np.array_equal(killed, clean.embeddings) and killed_entries == clean.entries


# -- runs: resume, shards, merge -------------------------------------------------------------------------------------

def test_a_retrieval_run_resumes_shards_and_merges_like_any_other(encoders, data, tmp_path, monkeypatch):
    whole = run(settings(tmp_path, encoders["dinov2"], data, "whole"))
    cfg = settings(tmp_path, encoders["dinov2"], data, "sharded")
    assert runner.generate(cfg, shard=(1, 2), progress=False) == runner.EXIT_OK  # waits for shard 0
    assert not (cfg.run_dir / "reports.csv").exists()
    assert runner.generate(cfg, shard=(0, 2), progress=False) == runner.EXIT_OK  # the last one merges
    columns = [c for c in whole.columns if c != "seconds"]
    pd.testing.assert_frame_equal(reports(cfg.run_dir)[columns], whole[columns])

    crashing = settings(tmp_path, encoders["dinov2"], data, "crashed", generation={"batch_size": 2})
    retrieve = RetrievalBackend.retrieve
    calls = []

    def crash_on_second(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return retrieve(self, batch)

    monkeypatch.setattr(RetrievalBackend, "retrieve", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        runner.generate(crashing, progress=False)
    monkeypatch.setattr(RetrievalBackend, "retrieve", retrieve)
    assert generate_cxr.main(["--quiet", "--config", str(write_yaml(tmp_path, crashing))]) == runner.EXIT_OK
    pd.testing.assert_frame_equal(reports(crashing.run_dir)[columns], whole[columns])
    history = json.loads((crashing.run_dir / "run.json").read_text())["shards"][0]["history"]
    assert [h["committed_before"] for h in history] == [0, 2]


def write_yaml(tmp: Path, cfg: Config) -> Path:
    import yaml

    path = tmp / f"{cfg.output.run_name}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


# -- bad input ------------------------------------------------------------------------------------------------------

def one_error_line(capsys, argv) -> str:
    assert generate_cxr.main(["--quiet", *argv]) == runner.EXIT_USAGE
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(encoders, data, tmp_path, capsys):
    cfg = write_yaml(tmp_path, settings(tmp_path, encoders["dinov2"], data))
    assert "retrieval.k must be a positive integer; got 0" in one_error_line(
        capsys, ["--config", str(cfg), "--set", "retrieval.k=0"])
    assert "retrieval.pooling must be one of auto, cls, pooler, mean, image_features; got 'max'" in one_error_line(
        capsys, ["--config", str(cfg), "--set", "retrieval.pooling=max"])
    assert "--build-index needs model.backend: retrieval; model.backend is transformers" in one_error_line(
        capsys, ["--config", str(cfg), "--build-index", "--set", "model.backend=transformers"])
    broken = tmp_path / "no-processor"
    shutil.copytree(encoders["dinov2"], broken)
    (broken / "preprocessor_config.json").unlink()
    line = one_error_line(capsys, ["--config", str(cfg), "--set", f"model.name_or_path={broken}"])
    assert str(broken) in line and "no usable image processor" in line
    line = one_error_line(capsys, ["--config", str(cfg), "--set", f"model.name_or_path={tmp_path / 'nowhere'}"])
    assert "model.name_or_path" in line and "nowhere" in line
    assert "model.quantization: not supported by model.backend retrieval" in one_error_line(
        capsys, ["--config", str(cfg), "--set", "model.quantization=8bit"])

    iu = tmp_path / "iu"  # the Kaggle layout without indiana_train.csv: the index's split is missing
    (iu / "images").mkdir(parents=True)
    pd.DataFrame([{"uid": "1", "findings": "f", "impression": "i"}]).to_csv(iu / "indiana_reports.csv", index=False)
    pd.DataFrame([{"uid": "1", "filename": "1.png", "projection": "Frontal"}]).to_csv(
        iu / "indiana_projections.csv", index=False)
    pd.DataFrame({"uid": ["1"]}).to_csv(iu / "indiana_test.csv", index=False)
    noise_image(iu / "images" / "1.png", 3)
    line = one_error_line(capsys, ["--config", str(cfg), "--build-index", "--set", "data.format=iu_xray_kaggle",
                                   "--set", f"data.root={iu}"])
    assert line.startswith("error: retrieval.split=train (the index): data.split=train needs the split file")
    assert "indiana_train.csv" in line and "--make-split" in line


def test_one_unreadable_test_image_is_one_error_row(encoders, tmp_path):
    extra = [{"id": "QBAD", "image_path": str(tmp_path / "absent.png"), "split": "test", "reference": "r"}]
    manifest = write_data(tmp_path / "data", n_train=4, n_test=2, extra=extra)
    cfg = settings(tmp_path, encoders["dinov2"], manifest)
    assert runner.generate(cfg, progress=False) == runner.EXIT_ROW_ERRORS
    rows = reports(cfg.run_dir).set_index("id")
    assert rows.loc["QBAD", "status"] == "error" and "absent.png" in rows.loc["QBAD", "error"]
    assert (rows.drop(index="QBAD")["status"] == "ok").all() and rows.loc["QBAD", "retrieved_id"] == ""


def test_mimic_cxr_patients_are_respected(encoders, tmp_path):
    """MIMIC-CXR's layout carries the patient (subject_id): a test study never gets a training study of its own
    patient, though with the rule off that study is its nearest."""
    root = tmp_path / "mimic"
    images = {"d1": ("10000001", "50000001", "train", 11), "d2": ("10000002", "50000002", "train", 12),
              "d3": ("10000003", "50000003", "train", 13), "d9": ("10000001", "50000009", "test", 11)}
    for dicom, (subject, study, _, seed) in images.items():
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        image = folder / f"s{study}" / f"{dicom}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        noise_image(tmp_path / f"{dicom}.png", seed)
        Image.open(tmp_path / f"{dicom}.png").save(image, quality=95 if dicom != "d9" else 90)  # d9: d1, re-encoded
        (folder / f"s{study}.txt").write_text(f"FINDINGS: Findings of {study}.\nIMPRESSION: Impression of {study}.\n")
    pd.DataFrame([{"dicom_id": d, "subject_id": s, "study_id": st, "ViewPosition": "PA"}
                  for d, (s, st, _, _) in images.items()]).to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    pd.DataFrame([{"dicom_id": d, "study_id": st, "subject_id": s, "split": sp}
                  for d, (s, st, sp, _) in images.items()]).to_csv(root / "mimic-cxr-2.0.0-split.csv", index=False)

    def retrieved(leakage: str) -> pd.Series:
        cfg = settings(tmp_path, encoders["dinov2"], root, leakage, retrieval={"leakage": leakage},
                       data={"format": "mimic_cxr", "root": str(root), "manifest": None, "split": "test"})
        return run(cfg).iloc[0]

    off = retrieved("off")
    assert (off["id"], off["retrieved_id"], off["leakage"]) == ("s50000009", "s50000001", "")
    on = retrieved("exclude")
    assert on["retrieved_id"] in ("s50000002", "s50000003") and on["leakage"] == "patient"
    assert on["generated_report"] == f"Impression of {on['retrieved_id'][1:]}."


def test_a_second_start_waits_for_the_build_in_progress_and_uses_its_index(encoders, tmp_path, monkeypatch, caplog):
    """Shards that start together with no index: one builds it, the others wait for its lock and then read it."""
    import threading

    from cxrgen.models.retrieval import index as index_module

    manifest = write_data(tmp_path / "data", n_train=6, n_test=1)
    cfg = settings(tmp_path, encoders["dinov2"], manifest, generation={"batch_size": 2})
    encoder = load_encoder(cfg)
    monkeypatch.setattr(index_module, "WAIT_SECONDS", 0.05)
    builds, started = [], threading.Event()
    real_build = index_module._build

    def slow_build(*args):
        builds.append(threading.current_thread().name)
        started.set()
        time.sleep(0.5)
        return real_build(*args)

    monkeypatch.setattr(index_module, "_build", slow_build)
    results = {}
    first = threading.Thread(target=lambda: results.update(first=open_index(cfg, encoder)), name="first")
    with caplog.at_level(logging.INFO, logger="cxrgen"):
        first.start()
        assert started.wait(10)
        second = open_index(cfg, encoder)  # finds the lock held, waits, then reads the finished index
        first.join()
    assert builds == ["first"] and second.folder == results["first"].folder
    assert np.array_equal(second.embeddings, results["first"].embeddings)
    assert "is in progress in another process" in caplog.text and "waiting for that build to finish" in caplog.text
