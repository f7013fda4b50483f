"""bench/gpu_check.sh --cpu-smoke: every section of the GPU check runs at toy size on the CPU and writes its
figures, so the script is ready whenever a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("env", "pytest", "throughput", "invariance", "quant", "transformers")


def test_cpu_smoke_runs_every_section_and_writes_the_tables(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out"), "--cpu-smoke"],
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
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    for heading in ("Tests marked cuda", "CXR-LLaVA-v2 at real size", "Batch invariance", "transformers backend"):
        assert heading in table
