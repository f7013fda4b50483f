"""The fine-tuning run folder (cxrgen.runstore.training): a checkpoint counts once latest.json names it, whatever
point of a commit a process is killed at; adapter files are never torn; a run resumes only under its own
settings."""

from __future__ import annotations

import json
import logging

import pytest

from cxrgen import runstore
from cxrgen.runstore import TrainingStore
from cxrgen.runstore.store import SettingsChangedError
from helpers import Crash, CrashingOs

CONFIG = {"peft_type": "LORA", "r": 4}


def _checkpoint(store: TrainingStore, step: int) -> dict[str, bytes]:
    """A checkpoint folder as the Trainer leaves it (its files' contents returned)."""
    folder = store.checkpoints / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"adapter_model.safetensors": f"adapter {step}".encode(), "optimizer.pt": f"adam {step}".encode() * 100,
             "trainer_state.json": json.dumps({"global_step": step}).encode()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _scenario(root) -> TrainingStore:
    """Checkpoint 3 committed with best weights W3; then checkpoint 6 written and a better adapter W6 in best/."""
    store = TrainingStore(root)
    store.write_adapter("best", CONFIG, b"W3")
    _checkpoint(store, 3)
    store.commit(store.checkpoints / "checkpoint-3", {"step": 3})
    _checkpoint(store, 6)
    store.write_adapter("best", CONFIG, b"W6")
    return store


def test_a_kill_at_any_point_of_a_commit_leaves_one_whole_committed_checkpoint(tmp_path, monkeypatch):
    outcomes = set()
    at = 0
    while True:
        root = tmp_path / f"run{at}"
        store = _scenario(root)
        monkeypatch.setattr(runstore.files, "os", CrashingOs(at))
        try:
            store.commit(store.checkpoints / "checkpoint-6", {"step": 6})
            crashed = False
        except Crash:
            crashed = True
        monkeypatch.undo()
        restarted = TrainingStore(root)  # the next start
        folder, record = restarted.prepare_resume()
        step = record["step"]
        outcomes.add(step)
        assert folder.name == f"checkpoint-{step}"
        assert sorted(p.name for p in restarted.checkpoints.iterdir()) == sorted(["latest.json", folder.name])
        expected = _checkpoint(TrainingStore(tmp_path / "expected"), step)
        assert all((folder / name).read_bytes() == data for name, data in expected.items())
        # best/ is put back as the committed checkpoint knew it: W3 with checkpoint 3, W6 with checkpoint 6
        assert (root / "best" / "adapter_model.safetensors").read_bytes() == f"W{step}".encode()
        assert json.loads((root / "best" / "adapter_config.json").read_text()) == CONFIG
        if not crashed:
            break
        at += 1
    assert outcomes == {3, 6} and at > 5  # crashes before and after the commit point were both tried


def test_adapter_files_are_never_torn(tmp_path, monkeypatch):
    store = TrainingStore(tmp_path / "run")
    store.write_adapter("last", CONFIG, b"old weights")
    at = 0
    while True:
        monkeypatch.setattr(runstore.files, "os", CrashingOs(at))
        try:
            store.write_adapter("last", CONFIG, b"new weights, longer")
            done = True
        except Crash:
            done = False
        monkeypatch.undo()
        folder = store.adapter_dir("last")
        assert json.loads((folder / "adapter_config.json").read_text()) == CONFIG
        assert (folder / "adapter_model.safetensors").read_bytes() in (b"old weights", b"new weights, longer")
        if done:
            break
        store.write_adapter("last", CONFIG, b"old weights")
        at += 1
    assert at >= 4


def test_a_run_resumes_only_under_its_own_settings(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cxrgen")
    store = TrainingStore(tmp_path / "run")
    first = store.begin({"training.lora_r": 8, "model.name_or_path": "a"}, {}, resume=True)
    # no checkpoint yet: other settings simply start the run again
    second = store.begin({"training.lora_r": 4, "model.name_or_path": "a"}, {}, resume=True)
    assert second != first and "committed no checkpoint" in caplog.text
    _checkpoint(store, 2)
    store.commit(store.checkpoints / "checkpoint-2", {"step": 2})
    with pytest.raises(SettingsChangedError) as err:
        store.begin({"training.lora_r": 16, "model.name_or_path": "a"}, {}, resume=True)
    assert "training.lora_r (16 now, 4 in the run)" in str(err.value) and "name_or_path" not in str(err.value)
    assert store.begin({"training.lora_r": 4, "model.name_or_path": "a"}, {}, resume=True) == second
    assert store.latest() is not None
    store.begin({"training.lora_r": 16, "model.name_or_path": "a"}, {}, resume=False)  # --no-resume
    assert store.latest() is None and not store.checkpoints.exists()
    assert json.loads((store.dir / "train-config.json").read_text())["settings"]["training.lora_r"] == 16
