"""bench/gpu_check.sh --cpu-smoke: every section of the GPU check runs at toy size on the CPU and writes its
figures, so the script is ready whenever a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("env", "pytest", "throughput", "invariance", "quant", "transformers", "finetune", "retrieval")


def test_cpu_smoke_runs_every_section_and_writes_the_tables(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out"), "--cpu-smoke",
                             "--sections", "all"],
                            capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    for name in SECTIONS:
        assert "error" not in data[name], (name, data[name])
    assert data["pytest"]["exit_code"] == 0 and data["pytest"]["counts"]["failed"] == 0
    assert data["pytest"]["counts"]["skipped"] == len(data["pytest"]["tests"]) > 0  # no CUDA here
    runs = data["throughput"]["runs"]
    assert {(r["batching"], r["shapes"]) for r in runs} >= {("static", "default"), ("continuous", "default"),
                                                            ("continuous", "fixed")}
    assert all(r["lengths_forced"] and r["reports_per_s"] > 0 for r in runs)
    assert all(s["full"]["ms"] > 0 and s["live"]["ms"] > 0 for s in data["throughput"]["step"])
    fixed = data["invariance"]["dtypes"]["bfloat16"]["variants"]["fixed"]
    assert all(v["differ"] == 0 for k, v in fixed.items() if k.startswith(("batch_", "resumed_")))
    assert "skipped" in data["quant"] and data["transformers"]["modes"]["bf16"]["reports_per_s"] > 0
    for name, n in (("finetune", 3), ("retrieval", 1)):  # their own tests marked cuda: skipped here
        assert data[name]["tests"]["counts"]["skipped"] == len(data[name]["tests"]["tests"]) == n
    trained = [r for r in data["finetune"]["runs"] if "skipped" not in r]
    assert len(trained) == 2 and all(r["tokens_per_second"] > 0 and r["steps"] == 2 for r in trained)
    assert [r["dtype"] for r in data["retrieval"]["builds"]] == ["bfloat16", "float32"]
    assert all(r["images_per_s"] > 0 for r in data["retrieval"]["builds"])
    assert all(r["queries_per_s"] > 0 for r in data["retrieval"]["search"])
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    for heading in ("Tests marked cuda", "CXR-LLaVA-v2 at real size", "Batch invariance", "transformers backend",
                    "Fine-tuning CXR-LLaVA-v2 at real size", "Retrieval"):
        assert heading in table


def test_the_random_checkpoint_written_for_fine_tuning_loads_to_the_weights_it_was_built_with(tmp_path):
    """bench/realsize.py's checkpoint writer (the finetune section's model on disk), at toy size: the published
    layout in several shards, and the loader reads back exactly the weights the builder made."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from realsize import build_cxr_llava, write_cxr_llava_checkpoint

    from cxrgen.models.cxr_llava import CxrLlava

    folder = write_cxr_llava_checkpoint(tmp_path / "ckpt", torch.device("cpu"), torch.bfloat16, tiny=True,
                                        shard_bytes=100_000)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    loaded = dict(CxrLlava.from_pretrained(folder, device="cpu", dtype="bfloat16").named_parameters())
    (tmp_path / "again").mkdir()
    built = dict(build_cxr_llava(tmp_path / "again", torch.device("cpu"), torch.bfloat16, tiny=True)
                 .named_parameters())
    assert loaded.keys() == built.keys() and all(torch.equal(loaded[k], built[k]) for k in built)
