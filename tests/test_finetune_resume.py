"""Crash safety of fine-tuning: a run killed (SIGKILL) and one stopped by SIGTERM (exit 75) each resume with the same
command and end with exactly the adapters, losses and validation record of an uninterrupted run (float32 on the
CPU, with LoRA dropout, gradient accumulation and checkpoints in the middle of epochs); and two processes over gloo
(torchrun) train the adapter of one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import finetune_cxr
from helpers import ROOT, adapter_tensors, committed_step, finetune_config, finetune_process, write_training_manifest

#: Two optimizer steps per epoch (8 studies, 2 per batch, 2 batches per step); checkpoints every 3 steps land in
#: the middle of epochs; LoRA dropout draws from the RNG that a resume must restore.
SETTINGS = dict(training__max_steps=24, training__batch_size=2, training__gradient_accumulation=2,
                training__lora_dropout=0.1, training__checkpoint_every=3, training__eval_every=4)
#: Two processes against one: adapters agree to this (float32 sums in another order; AdamW's normalisation carries
#: the rounding from step to step). Measured: 6e-6 after 6 steps.
DDP_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_training_manifest(tmp_path_factory.mktemp("resume-data"))


def _run_in_process(cfg_path: Path, capsys) -> Path:
    assert finetune_cxr.main(["--quiet", "--config", str(cfg_path)]) == 0, capsys.readouterr().err
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _same_adapters(run: Path, reference: Path) -> None:
    for name in ("best", "last"):
        ours, theirs = adapter_tensors(run / name), adapter_tensors(reference / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    ours, theirs = (json.loads((r / "train.json").read_text()) for r in (run, reference))
    assert ours["steps"] == theirs["steps"] and ours["validation"] == theirs["validation"]
    assert ours["best"] == theirs["best"]


def _wait(proc: subprocess.Popen, condition, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"finetune_cxr.py ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_killed_and_stopped_runs_resume_to_the_adapter_of_an_uninterrupted_run(tiny_dir, manifest, tmp_path, capsys):
    reference = _run_in_process(finetune_config(tmp_path / "a", tiny_dir, manifest, "ref", **SETTINGS), capsys).parent
    cfg_path = finetune_config(tmp_path / "b", tiny_dir, manifest, "run", **SETTINGS)
    run = tmp_path / "b" / "runs" / "run"

    # SIGKILL once a checkpoint is committed: whatever was being written is lost, the commit is not
    proc = finetune_process(cfg_path)
    _wait(proc, lambda: committed_step(run) >= 3, "the first checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = committed_step(run)
    assert 3 <= killed_at < 24 and not (run / "train.json").exists()

    # the same command resumes; SIGTERM as soon as it trains: a checkpoint at the next step, exit 75
    proc = finetune_process(cfg_path)
    for line in proc.stderr:
        if "resuming at step" in line:
            break
    assert f"resuming at step {killed_at} " in line, line
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert "received SIGTERM" in err and "run the same command to resume" in err and out == ""
    stopped_at = committed_step(run)
    assert killed_at < stopped_at < 24

    # and again, to the end: the adapters, losses and validations of the run never interrupted
    assert _run_in_process(cfg_path, capsys) == run / "best"
    _same_adapters(run, reference)
    starts = json.loads((run / "train.json").read_text())["starts"]
    assert [s.get("outcome") for s in starts] == [None, "interrupted", "ended"]  # the killed start never ended
    assert [s["step_before"] for s in starts] == [0, killed_at, stopped_at]
    assert [s.get("steps_run") for s in starts] == [None, stopped_at - killed_at, 24 - stopped_at]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-24", "latest.json"]


def test_two_processes_over_gloo_train_the_adapter_of_one_process_with_the_same_global_batch(tiny_dir, manifest,
                                                                                             tmp_path, capsys):
    common = dict(training__max_steps=6, training__eval_every=3, training__checkpoint_every=3,
                  training__gradient_accumulation=1)
    one = _run_in_process(finetune_config(tmp_path / "one", tiny_dir, manifest, "one", training__batch_size=4,
                                          **common), capsys).parent
    cfg_path = finetune_config(tmp_path / "two", tiny_dir, manifest, "two", training__batch_size=2, **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(ROOT / "finetune_cxr.py"), "--quiet", "--config", str(cfg_path)],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    two = tmp_path / "two" / "runs" / "two"
    assert result.stdout.strip().splitlines()[-1] == str(two / "best")
    record = json.loads((two / "train.json").read_text())
    assert record["schedule"]["global_batch"] == 4 and record["starts"][0]["processes"] == 2
    assert sorted(p.name for p in (two / "checkpoints" / "checkpoint-6").glob("rng_state_*.pth")) == [
        "rng_state_0.pth", "rng_state_1.pth"]
    ours, theirs = adapter_tensors(two / "last"), adapter_tensors(one / "last")
    assert ours.keys() == theirs.keys()
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert worst <= DDP_TOLERANCE, worst
    assert any(float(theirs[k].abs().max()) > 10 * DDP_TOLERANCE for k in theirs if "lora_B" in k)  # it trained
    reference = json.loads((one / "train.json").read_text())
    assert [round(s["loss"], 4) for s in record["steps"]] == [round(s["loss"], 4) for s in reference["steps"]]
    assert [round(v["loss"], 4) for v in record["validation"]] == [round(v["loss"], 4)
                                                                    for v in reference["validation"]]
