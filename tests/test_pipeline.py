"""generate_cxr.py end to end on the tiny checkpoint and the bundled images: outputs, resume, shards, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrgen import runner, runstore
from cxrgen.finishing import finish
from cxrgen.runstore import ResultRow, RunStore
from cxrgen.config import Config, ConfigError, load_config
from cxrgen.models import ModelError
from cxrgen.models.cxr_llava import REPORT_SYSTEM_PROMPT, REPORT_USER_PROMPT, CxrLlava
from cxrgen.models.cxr_llava.backend import CxrLlavaBackend
from cxrgen.models.cxr_llava.tiny import build_tiny_checkpoint
from helpers import (ScriptedBackend, committed_rows, make_config, reports, resume_and_compare, run_cli,
                     start_until_committed, write_manifest)

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "demo" / "images"


@pytest.fixture(scope="module")
def model(tiny_dir):
    return CxrLlavaBackend(CxrLlava.from_pretrained(tiny_dir, device="cpu"))


# -- configuration ---------------------------------------------------------------------------------------------------

def test_default_config_is_the_published_benchmark_setup():
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.model.name_or_path == "ECOFRI/CXR-LLAVA-v2" and cfg.generation.temperature == 0
    assert cfg.prompt.system == REPORT_SYSTEM_PROMPT and cfg.prompt.user == REPORT_USER_PROMPT
    assert (cfg.data.format, cfg.data.split) == ("iu_xray_kaggle", "test")
    documented = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert {s: set(v) for s, v in documented.items()} == {s: set(v) for s, v in cfg.to_dict().items()}
    # config.yaml lists the built-in defaults, apart from the dataset folder and the written-out prompt
    builtin = Config().to_dict()
    differ = {f"{s}.{k}" for s, keys in documented.items() for k, v in keys.items() if builtin[s][k] != v}
    assert differ == {"data.root", "prompt.system", "prompt.user"}


@pytest.mark.parametrize("override,message", [
    ("generation.batchsize=3", "unknown key 'generation.batchsize' (allowed in generation: batch_size"),
    ("generation.batch_size=0", "generation.batch_size must be a positive integer; got 0"),
    ("generation.batch_size=two", "generation.batch_size must be an integer, got 'two'"),
    ("model.dtype=fp8", "model.dtype must be one of auto, bfloat16, float16, float32; got 'fp8'"),
    ("model.device=gpu", "model.device must be auto, cpu, cuda or cuda:N"),
    ("modell.device=cpu", "unknown section 'modell'"),
    ("generation.top_p=1.5", "generation.top_p must be in (0, 1]"),
])
def test_bad_configuration_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "config.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_errors_of_set_values_name_set_not_the_file():
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "demo.yaml", ["generation.batch_size=four"])
    assert str(err.value) == "--set: generation.batch_size must be an integer, got 'four'"
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "demo.yaml", ["generation.batch_size=0"])
    assert str(err.value).startswith("--set generation.batch_size must be a positive integer")
    with pytest.raises(ConfigError) as err:  # a flag's bad value names the command line
        load_config(ROOT / "configs" / "demo.yaml", **{"generation.batch_size": "x"})
    assert str(err.value) == "command line: generation.batch_size must be an integer, got 'x'"


def test_set_keeps_text_settings_as_typed():
    cfg = load_config(ROOT / "config.yaml", ["prompt.user=#1 finding: effusion?", "output.run_name=0755",
                                             "model.revision=0123456", "prompt.system=yes", "data.manifest=null",
                                             "generation.batch_size=8", "loader.percentile_window=[1, 99]"])
    assert (cfg.prompt.user, cfg.output.run_name, cfg.model.revision, cfg.prompt.system) == \
        ("#1 finding: effusion?", "0755", "0123456", "yes")
    assert cfg.data.manifest is None and cfg.generation.batch_size == 8 and cfg.loader.percentile_window == [1, 99]


def test_cli_bad_key_exits_2_with_one_line():
    result = run_cli("--config", "configs/demo.yaml", "--set", "generation.batchsize=3")
    assert result.returncode == runner.EXIT_USAGE
    assert result.stderr.strip().splitlines() == [
        "error: --set generation.batchsize: unknown key 'generation.batchsize' (allowed in generation: batch_size, "
        "max_new_tokens, temperature, top_p, seed, cuda_graphs, batch_invariant)"]


def test_missing_dataset_root_is_an_error_at_start(tmp_path, tiny_dir):
    cfg = make_config(tmp_path, tiny_dir, tmp_path / "nope.csv")
    result = run_cli("--config", str(cfg))
    assert result.returncode == runner.EXIT_USAGE and "nope.csv" in result.stderr


def test_parse_shard_from_flag_and_slurm():
    assert runner.parse_shard("1/3", env={}) == (1, 3)
    assert runner.parse_shard(None, env={}) == (0, 1)
    assert runner.parse_shard(None, env={"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
                                         "SLURM_ARRAY_TASK_MIN": "2"}) == (3, 4)
    assert runner.parse_shard(None, env={"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}) == (2, 4)
    with pytest.raises(runner.RunError, match="out of range"):
        runner.parse_shard("3/3", env={})


# -- outputs ---------------------------------------------------------------------------------------------------------

def test_demo_runs_end_to_end(tmp_path):
    result = run_cli("--config", "configs/demo.yaml", "--set", f"output.dir={tmp_path}",
                     "--set", "output.html=false")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "demo"
    frame = reports(run_dir)
    assert list(frame["id"]) == ["CXR3", "CXR7", "CXR303", "CXR1900"]
    assert set(frame["status"]) == {"ok"} and (frame["n_new_tokens"] > 0).all()
    for col in ("bleu_1", "bleu_4", "rouge_l", "cider_d"):
        assert col in frame.columns
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n"] == 4 and set(metrics["metrics"]) >= {"bleu_1", "bleu_4", "rouge_l", "cider_d"}
    info = json.loads((run_dir / "run.json").read_text())
    assert info["counts"]["ok"] == 4 and info["versions"]["torch"] and info["config"]["data"]["format"] == "manifest"


def test_batch_equals_single_and_csv_round_trips(tmp_path, tiny_dir, model):
    manifest = write_manifest(tmp_path, 6)
    for name, size in (("b1", 1), ("b4", 4)):
        cfg = load_config(make_config(tmp_path, tiny_dir, manifest, name, generation__batch_size=size))
        assert runner.generate(cfg, model=model, progress=False) == 0
    a, b = reports(tmp_path / "runs" / "b1"), reports(tmp_path / "runs" / "b4")
    assert list(a["generated_report"]) == list(b["generated_report"])
    direct = model.model.generate_reports([model_image(p) for p in a["image_path"]], max_new_tokens=24)
    assert list(a["generated_report"]) == [r.text for r in direct]


def model_image(path):
    from PIL import Image
    return Image.open(path)


def test_tricky_text_survives_the_csv(tmp_path):
    row = ResultRow(id="a,1", image_path="x", reference='He said "no"\nnew line, comma', generated_report="é ✓ \r\n",
                    status="ok", error="", n_new_tokens=3, stopped_at_eos=True, seconds=0.5)
    part = runstore.PartFile(tmp_path / "p.csv")
    part.append([row])
    (back,) = [ResultRow.from_record(r) for r in part.read().to_dict("records")]
    assert back == row


def test_a_start_that_committed_nothing_can_be_rerun_with_other_settings(tmp_path, tiny_dir, model, caplog):
    manifest = write_manifest(tmp_path, 3)
    wrong = load_config(make_config(tmp_path, tiny_dir, manifest, "first", model__name_or_path=str(tmp_path / "nope"),
                                    model__backend="cxr_llava"))
    with pytest.raises(ModelError, match="nope"):
        runner.generate(wrong, progress=False)
    assert (tmp_path / "runs" / "first" / "parts" / "run-config.json").exists()
    fixed = load_config(make_config(tmp_path, tiny_dir, manifest, "first", generation__max_new_tokens=8))
    with caplog.at_level("INFO", logger="cxrgen"):
        assert runner.generate(fixed, model=model, progress=False) == 0
    assert "committed no row; its records are replaced" in caplog.text
    # with committed rows, another setting is refused as before
    other = load_config(make_config(tmp_path, tiny_dir, manifest, "first", generation__max_new_tokens=9))
    with pytest.raises(runner.RunError, match="generation.max_new_tokens"):
        runner.generate(other, model=model, progress=False)


def test_run_json_says_exactly_what_ran(tmp_path, tiny_dir, model):
    manifest = write_manifest(tmp_path, 3)
    cfg = load_config(make_config(tmp_path, tiny_dir, manifest, "described"))
    assert runner.generate(cfg, model=model, progress=False) == 0
    info = json.loads((tmp_path / "runs" / "described" / "run.json").read_text())
    assert info["versions"]["cuda"] is None or isinstance(info["versions"]["cuda"], str)
    assert info["versions"]["cuda"] != "None"
    project = info["project"]
    assert set(project) == {"commit", "local_changes", "version"}
    if project["commit"] is not None:
        assert len(project["commit"]) == 40 and isinstance(project["local_changes"], bool)
    assert info["prompt"] == model.render_prompt(cfg.prompt) and REPORT_USER_PROMPT.strip() in info["prompt"]
    assert info["model"]["backend"] == "cxr_llava" and info["model"]["source"] == str(tiny_dir)
    assert info["model"]["digest"] and info["model"]["revision"] is None
    (data_file,) = info["data_files"]
    assert data_file["path"] == str(manifest.resolve()) and data_file["lines"] == 4
    import hashlib
    assert data_file["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    (shard,) = info["shards"]
    (start,) = shard["history"]
    assert start["host"] and start["command"] and start["started"] <= start["finished"]


def test_uncommitted_bytes_are_cut_on_recovery(tmp_path):
    part = runstore.PartFile(tmp_path / "p.csv")
    row = ResultRow(id="1", image_path="x", reference="r", generated_report="g", status="ok", error="",
                    n_new_tokens=1, stopped_at_eos=False, seconds=0.1)
    part.append([row])
    with open(part.path, "ab") as f:  # a batch torn by a kill before its commit
        f.write(b'2,x,"r,half a ro')
    part.recover()
    assert list(part.read()["id"]) == ["1"]
    part.append([dataclasses.replace(row, id="2")])
    assert list(part.read()["id"]) == ["1", "2"]


def test_corrupt_and_missing_images_become_error_rows(tmp_path, tiny_dir, model):
    bad = tmp_path / "truncated.png"
    bad.write_bytes((IMAGES / "CXR7_IM-2263-1001.png").read_bytes()[:500])
    manifest = write_manifest(tmp_path, 5, broken={1: str(bad), 3: str(tmp_path / "missing.png")})
    cfg = load_config(make_config(tmp_path, tiny_dir, manifest))
    assert runner.generate(cfg, model=model, progress=False) == runner.EXIT_ROW_ERRORS
    frame = reports(tmp_path / "runs" / "run")
    assert list(frame["status"]) == ["ok", "error", "ok", "error", "ok"]
    assert frame.loc[1, "error"].startswith(str(bad)) and "missing.png" in frame.loc[3, "error"]
    assert (frame.loc[[0, 2, 4], "generated_report"] != "").all()
    metrics = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())
    assert metrics["n"] == 3


def test_dicom_images_run_through_a_manifest(tmp_path, tiny_dir, model):
    """An 8-bit DICOM of a bundled PNG gives the same report as the PNG itself."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    png = IMAGES / "00000013_019.png"
    pixels = np.asarray(Image.open(png).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "DX", "MONOCHROME2", 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    dcm = tmp_path / "study.dcm"
    ds.save_as(dcm, enforce_file_format=True)
    manifest = tmp_path / "dicom.csv"
    pd.DataFrame([{"id": "dcm", "image_path": "study.dcm", "reference": "No acute disease."},
                  {"id": "png", "image_path": str(png), "reference": "No acute disease."}]).to_csv(manifest, index=False)
    cfg = load_config(make_config(tmp_path, tiny_dir, manifest, "dicom"))
    assert runner.generate(cfg, model=model, progress=False) == 0
    frame = reports(tmp_path / "runs" / "dicom")
    assert list(frame["status"]) == ["ok", "ok"]
    assert frame.loc[0, "generated_report"] == frame.loc[1, "generated_report"] != ""


# -- resume and shards -----------------------------------------------------------------------------------------------

def test_shards_merged_equal_one_run(tmp_path, tiny_dir, model):
    manifest = write_manifest(tmp_path, 10)
    whole = load_config(make_config(tmp_path, tiny_dir, manifest, "whole"))
    assert runner.generate(whole, model=model, progress=False) == 0
    sharded = load_config(make_config(tmp_path, tiny_dir, manifest, "sharded"))
    for i in (2, 0, 1):
        assert runner.generate(sharded, shard=(i, 3), model=model, progress=False) == 0
        assert (tmp_path / "runs" / "sharded" / "reports.csv").exists() == (i == 1)
    a, b = reports(tmp_path / "runs" / "whole"), reports(tmp_path / "runs" / "sharded")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    # an explicit merge gives the same file again
    (tmp_path / "runs" / "sharded" / "reports.csv").unlink()
    assert finish(RunStore(tmp_path / "runs" / "sharded")) == 0
    pd.testing.assert_frame_equal(b, reports(tmp_path / "runs" / "sharded"))


def test_merge_refuses_missing_studies(tmp_path, tiny_dir, model):
    manifest = write_manifest(tmp_path, 6)
    cfg = load_config(make_config(tmp_path, tiny_dir, manifest, "partial"))
    runner.generate(cfg, shard=(0, 2), model=model, progress=False)
    with pytest.raises(runner.RunError, match="shard-1-of-2.csv: missing"):
        finish(RunStore(tmp_path / "runs" / "partial"))


def test_resume_refuses_other_settings(tmp_path, tiny_dir, model):
    manifest = write_manifest(tmp_path, 3)
    runner.generate(load_config(make_config(tmp_path, tiny_dir, manifest, "r")), model=model, progress=False)
    other = load_config(make_config(tmp_path, tiny_dir, manifest, "r", generation__max_new_tokens=10))
    with pytest.raises(runner.RunError, match="generation.max_new_tokens"):
        runner.generate(other, model=model, progress=False)
    assert runner.generate(other, model=model, progress=False, resume=False) == 0
    assert (reports(tmp_path / "runs" / "r")["n_new_tokens"] <= 10).all()


def test_a_resume_where_auto_resolves_to_another_dtype_is_refused(tmp_path, monkeypatch):
    """model.dtype auto is bfloat16 on a GPU and float32 on the CPU: a run begun on a GPU node is not resumed on a
    CPU node, whatever the settings file says."""
    manifest = write_manifest(tmp_path, 3)
    cfg = load_config(make_config(tmp_path, tmp_path / "unused", manifest, "moved", model__device="auto"))
    with monkeypatch.context() as gpu_node:
        gpu_node.setattr("torch.cuda.is_available", lambda: True)
        assert runner.generate(cfg, model=ScriptedBackend(), progress=False) == 0
    saved = json.loads((tmp_path / "runs" / "moved" / "parts" / "run-config.json").read_text())
    assert saved["model_identity"]["model.dtype"] == "bfloat16" and saved["model_identity"]["model.device_kind"] == "cuda"
    with pytest.raises(runner.SettingsChangedError,
                       match=r"started with other settings \(model\.dtype, model\.device_kind\)"):
        runner.generate(cfg, model=ScriptedBackend(), progress=False)


def test_no_resume_never_merges_parts_of_the_earlier_run(tmp_path, tiny_dir, model):
    manifest = write_manifest(tmp_path, 6)
    first = load_config(make_config(tmp_path, tiny_dir, manifest, "redo", generation__max_new_tokens=12))
    for i in (0, 1):
        runner.generate(first, shard=(i, 2), model=model, progress=False)
    second = load_config(make_config(tmp_path, tiny_dir, manifest, "redo", generation__max_new_tokens=6))
    assert runner.generate(second, shard=(0, 2), resume=False, model=model, progress=False) == 0
    run_dir = tmp_path / "runs" / "redo"
    assert not (run_dir / "reports.csv").exists()  # shard 1 still holds the first run's rows: no merge
    with pytest.raises(runner.RunError, match="shard-1-of-2.csv: missing or from an earlier run"):
        finish(RunStore(run_dir))
    assert runner.generate(second, shard=(1, 2), model=model, progress=False) == 0  # redoes shard 1, then merges
    fresh = load_config(make_config(tmp_path, tiny_dir, manifest, "fresh", generation__max_new_tokens=6))
    assert runner.generate(fresh, model=model, progress=False) == 0
    a, b = reports(run_dir), reports(tmp_path / "runs" / "fresh")
    assert (a["n_new_tokens"] <= 6).all()
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_evaluation_refuses_a_shard_part_left_from_an_earlier_run(tmp_path, tiny_dir, model):
    from cxrgen.evaluation import EvaluationInputError, read_results_csv

    manifest = write_manifest(tmp_path, 4)
    first = load_config(make_config(tmp_path, tiny_dir, manifest, "ev"))
    for i in range(2):
        runner.generate(first, shard=(i, 2), model=model, progress=False)
    second = load_config(make_config(tmp_path, tiny_dir, manifest, "ev", generation__max_new_tokens=5))
    assert runner.generate(second, shard=(0, 2), resume=False, model=model, progress=False) == 0
    parts = tmp_path / "runs" / "ev" / "parts"
    assert len(read_results_csv(parts / "shard-0-of-2.csv")) == 2
    with pytest.raises(EvaluationInputError, match="earlier run"):
        read_results_csv(parts / "shard-1-of-2.csv")


def test_merge_works_from_another_folder(tmp_path, tiny_dir, model, monkeypatch):
    manifest = write_manifest(tmp_path, 4)
    cfg = load_config(make_config(tmp_path, tiny_dir, manifest, "m"))
    runner.generate(cfg, model=model, progress=False)
    run_dir = tmp_path / "runs" / "m"
    before = reports(run_dir)
    manifest.unlink()  # the merge needs only the run directory
    (run_dir / "reports.csv").unlink()
    monkeypatch.chdir(tmp_path / "runs")
    assert finish(RunStore(Path("m"))) == 0
    pd.testing.assert_frame_equal(before, reports(run_dir))


SLOW = dict(generation__batch_size=2, generation__max_new_tokens=160)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_dir, model):
    """16 studies run without interruption: what a killed and resumed run must end up with."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    manifest = write_manifest(tmp, 16)
    assert runner.generate(load_config(make_config(tmp, tiny_dir, manifest, "reference", **SLOW)), model=model,
                           progress=False) == 0
    return manifest, reports(tmp / "runs" / "reference")


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "sigterm-to-group-with-workers"])
def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, tiny_dir, uninterrupted, how):
    """SIGKILL at any moment, SIGTERM to the process, or SIGTERM to the whole process group (as Slurm does, image
    workers included): the resumed run ends with exactly the uninterrupted run's rows."""
    manifest, expected = uninterrupted
    workers = 2 if how.endswith("workers") else 0
    cfg_path = make_config(tmp_path, tiny_dir, manifest, "killed", loader__num_workers=workers, **SLOW)
    run_dir = tmp_path / "runs" / "killed"
    proc = start_until_committed(cfg_path, run_dir, 4)
    if how == "sigkill":
        proc.send_signal(signal.SIGKILL)
    elif how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if how != "sigkill":
        assert proc.returncode == runner.EXIT_INTERRUPTED, err
        assert "resume" in err
    done_before = committed_rows(run_dir)
    assert 4 <= done_before < 16 and not (run_dir / "reports.csv").exists()
    lock = run_dir / "parts" / "shard-0-of-1.lock"
    if how == "sigkill":  # the killed process's lock stays behind, naming it
        assert json.loads(lock.read_text())["pid"] == proc.pid
    result = resume_and_compare(cfg_path, run_dir, expected, done_before)
    if how == "sigkill":  # ... and is taken over, with one line saying why
        assert f"took over the lock shard-0-of-1.lock (process {proc.pid} is no longer running)" in result.stderr
    else:
        assert "took over" not in result.stderr
    assert not lock.exists()  # given back at the end


def test_a_second_process_on_the_same_shard_refuses_at_once_naming_the_first(tmp_path, tiny_dir, uninterrupted):
    """The same command started twice: the second stops before touching anything, one line naming the first (exit
    2), while the first goes on undisturbed to every study exactly once."""
    manifest, expected = uninterrupted
    cfg_path = make_config(tmp_path, tiny_dir, manifest, "twice", **SLOW)
    run_dir = tmp_path / "runs" / "twice"
    first = start_until_committed(cfg_path, run_dir, 2)
    second = run_cli("--config", str(cfg_path))
    assert first.poll() is None, "the first run ended before the second one was refused"
    assert second.returncode == runner.EXIT_USAGE
    (line,) = second.stderr.strip().splitlines()
    assert f"shard 0/1 is in progress in another process (host {socket.gethostname()}, pid {first.pid}, since " in line
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    pd.testing.assert_frame_equal(expected.drop(columns="seconds"), reports(run_dir).drop(columns="seconds"))
    (shard,) = json.loads((run_dir / "run.json").read_text())["shards"]
    assert [entry["pid"] for entry in shard["history"]] == [first.pid]  # the second left no trace


def test_slurm_script_forwards_the_timeout_signal_and_requeues(tmp_path, tiny_dir, uninterrupted):
    """slurm/generate.sbatch: USR1 to the batch shell reaches the run, which saves its batch; the task is requeued."""
    manifest, _ = uninterrupted
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (stub / "scontrol").chmod(0o755)
    cfg_path = make_config(tmp_path, tiny_dir, manifest, "slurm", **SLOW)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_JOB_ID": "42", "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_CPUS_PER_TASK": "1", "CXRGEN_VENV": sys.prefix}
    proc = subprocess.Popen(["bash", str(ROOT / "slurm" / "generate.sbatch"), "--config", str(cfg_path), "--quiet",
                             "--set", "loader.num_workers=0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "runs" / "slurm"
    deadline = time.time() + 90
    while committed_rows(run_dir) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == runner.EXIT_INTERRUPTED, out
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "41_0"]
    assert 2 <= committed_rows(run_dir) < 16


# -- the runner against misbehaving models ---------------------------------------------------------------------------

class _FailingBackend:
    """Wraps a backend: fails after ``after`` finished groups, or hands one study back twice."""

    def __init__(self, inner, after: int, error: Exception | None = None, repeat: bool = False):
        self.inner, self.after, self.error, self.repeat = inner, after, error, repeat
        self.name = inner.name

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stream(self, items, prompt, generation):
        for k, finished in enumerate(self.inner.stream(items, prompt, generation)):
            if k == self.after:
                if self.repeat:
                    yield finished + finished[:1]
                    continue
                raise self.error
            yield finished


def test_a_model_failing_mid_run_keeps_committed_and_error_rows_and_exits_incomplete(tmp_path, tiny_dir, model):
    bad = tmp_path / "missing.png"
    manifest = write_manifest(tmp_path, 10, broken={5: str(bad), 6: str(bad)})
    cfg = load_config(make_config(tmp_path, tiny_dir, manifest, "fails", generation__batch_size=2))
    # S005 and S006 wait for the third group (S004, S007), which never comes: only the final commit saves them
    failing = _FailingBackend(model, after=2, error=ModelError("the decode step cannot be captured"))
    with pytest.raises(runner.IncompleteShardError, match="cannot be captured"):
        runner.generate(cfg, model=failing, progress=False)
    run_dir = tmp_path / "runs" / "fails"
    rows = runstore.PartFile(run_dir / "parts" / "shard-0-of-1.csv").read()
    assert {"S005", "S006"} <= set(rows["id"])  # the unreadable images' error rows were committed anyway
    assert set(rows.loc[rows["status"] == "error", "id"]) == {"S005", "S006"}
    record = json.loads((run_dir / "parts" / "shard-0-of-1.json").read_text())
    assert record["complete"] is False and "ModelError" in record["failure"] and record["committed"] == len(rows)
    assert runner.generate(cfg, model=model, progress=False) == runner.EXIT_ROW_ERRORS  # resumes the rest
    assert len(reports(run_dir)) == 10


def test_a_study_handed_back_twice_stops_the_run_before_it_is_committed(tmp_path, tiny_dir, model):
    manifest = write_manifest(tmp_path, 6)
    cfg = load_config(make_config(tmp_path, tiny_dir, manifest, "twice", generation__batch_size=2))
    with pytest.raises(RuntimeError, match="handed back study 'S002'"):
        runner.generate(cfg, model=_FailingBackend(model, after=1, repeat=True), progress=False)
    rows = runstore.PartFile(tmp_path / "runs" / "twice" / "parts" / "shard-0-of-1.csv").read()
    assert list(rows["id"]) == ["S000", "S001"]


def test_no_resume_with_the_same_settings_starts_over(tmp_path, tiny_dir, model, caplog):
    manifest = write_manifest(tmp_path, 3)
    cfg = load_config(make_config(tmp_path, tiny_dir, manifest, "again"))
    assert runner.generate(cfg, model=model, progress=False) == 0
    first = reports(tmp_path / "runs" / "again")
    with caplog.at_level("INFO", logger="cxrgen"):
        assert runner.generate(cfg, model=model, progress=False, resume=False) == 0
    assert "3 in this shard, 0 already done, 3 to go" in caplog.text  # every study generated again
    record = json.loads((tmp_path / "runs" / "again" / "parts" / "shard-0-of-1.json").read_text())
    assert [entry["committed_before"] for entry in record["history"]] == [0]  # the earlier start is forgotten
    assert "already finished" not in caplog.text
    again = reports(tmp_path / "runs" / "again")  # generated anew, to the same reports
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), first.drop(columns="seconds"))


def test_resume_refuses_a_checkpoint_whose_files_changed(tmp_path, tiny_dir):
    import shutil

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, checkpoint)
    manifest = write_manifest(tmp_path, 2)
    cfg = load_config(make_config(tmp_path, checkpoint, manifest, "moved", generation__max_new_tokens=4))
    assert runner.generate(cfg, progress=False) == 0
    shutil.rmtree(checkpoint)
    build_tiny_checkpoint(checkpoint, seed=1, shards=3)  # other weights under the same path
    with pytest.raises(runner.SettingsChangedError, match="model.checkpoint"):
        runner.generate(cfg, progress=False)
