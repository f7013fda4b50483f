"""Continuous batching through the whole pipeline (generate_cxr.py / runner.generate).

The checkpoint is the published code's tiny reference (tests/data/upstream_reference/tiny): its reports end at
</s> after very different numbers of tokens, so slots free up at different steps and are refilled mid-run, and
reports come back in completion order rather than input order.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pandas as pd
import pytest

from cxrgen import runner, runstore
from cxrgen.config import load_config
from cxrgen.models.cxr_llava import CxrLlava
from cxrgen.models.cxr_llava.backend import CxrLlavaBackend
from helpers import make_config, reports, resume_and_compare, start_until_committed, write_manifest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "tests" / "data" / "upstream_reference" / "tiny"
MAX_NEW = dict(generation__max_new_tokens=64)


@pytest.fixture(scope="module")
def model():
    return CxrLlavaBackend(CxrLlava.from_pretrained(CHECKPOINT, device="cpu"))


def _part(run_dir: Path) -> pd.DataFrame:
    return runstore.PartFile(run_dir / "parts" / "shard-0-of-1.csv").read()


def _run(tmp: Path, manifest: Path, name: str, model, batch_size: int, batching: str = "continuous"):
    cfg = load_config(make_config(tmp, CHECKPOINT, manifest, name, generation__batch_size=batch_size, **MAX_NEW))
    backend = CxrLlavaBackend(model.model)
    backend.batching = batching
    assert runner.generate(cfg, model=backend, progress=False) == 0
    return reports(tmp / "runs" / name), _part(tmp / "runs" / name)


def test_more_studies_than_slots_equals_one_at_a_time(tmp_path, model):
    manifest = write_manifest(tmp_path, 11)
    single, _ = _run(tmp_path, manifest, "single", model, 1)
    continuous, part = _run(tmp_path, manifest, "continuous", model, 4)
    static, _ = _run(tmp_path, manifest, "static", model, 4, batching="static")
    columns = ["id", "generated_report", "n_new_tokens", "stopped_at_eos", "status"]
    pd.testing.assert_frame_equal(continuous[columns], single[columns])
    pd.testing.assert_frame_equal(static[columns], single[columns])
    assert single["stopped_at_eos"].sum() >= 2 and not single["stopped_at_eos"].all()  # slots free up mid-run
    # rows were committed as they finished, not in input order; reports.csv is in selection order again
    assert list(part["id"]) != list(single["id"]) and sorted(part["id"]) == list(single["id"])


def test_sigkill_during_continuous_batching_loses_only_rows_in_flight(tmp_path, model):
    """SIGKILL while slots are being refilled: every row committed before the kill is still there unchanged, the
    resumed run generates only the rest, and the merged result equals an uninterrupted run with no duplicate."""
    manifest = write_manifest(tmp_path, 18)
    slow = dict(generation__batch_size=3, generation__max_new_tokens=160)
    expected_cfg = load_config(make_config(tmp_path, CHECKPOINT, manifest, "reference", **slow))
    assert runner.generate(expected_cfg, model=model, progress=False) == 0
    expected = reports(tmp_path / "runs" / "reference")

    cfg_path = make_config(tmp_path, CHECKPOINT, manifest, "killed", **slow)
    run_dir = tmp_path / "runs" / "killed"
    proc = start_until_committed(cfg_path, run_dir, 4)
    seen = _part(run_dir)  # committed rows observed while the run goes on
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    after = _part(run_dir)
    assert 4 <= len(seen) <= len(after) < 18 and not (run_dir / "reports.csv").exists()
    pd.testing.assert_frame_equal(after.iloc[:len(seen)], seen)  # nothing committed was lost or changed
    resume_and_compare(cfg_path, run_dir, expected, len(after))


def test_cuda_graphs_on_without_cuda_fails_before_any_study_is_taken(model):
    from cxrgen.config import Config
    from cxrgen.models import ModelError
    from cxrgen.models.base import Item

    taken = []

    def items():
        for i in range(3):
            taken.append(i)
            yield Item(i, None, 0)

    cfg = Config()
    cfg.generation.cuda_graphs = "on"
    with pytest.raises(ModelError, match=r"generation\.cuda_graphs: on needs a CUDA device"):
        next(model.stream(items(), cfg.prompt, cfg.generation))
    assert taken == []
