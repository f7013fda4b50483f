"""Retrieval on a CUDA GPU: the backend retrieves on CUDA what it retrieves on the CPU.

Every test here is marked ``cuda`` and skipped without a CUDA device; the retrieval section of
``bench/gpu_check.sh`` runs them (``python -m pytest -m cuda tests/test_cuda_retrieval.py``).
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = "cuda"


def test_retrieval_on_cuda_retrieves_what_the_cpu_retrieves(tmp_path):
    """The retrieval backend on CUDA in float32 (the encoder on the GPU, the exact search on the GPU with TF32 off):
    the same retrieved study for every test study as on the CPU, similarities equal to 1e-4."""
    from cxrgen import runner
    from cxrgen.models.retrieval.tiny import build_tiny_dinov2
    from helpers import reports
    from test_retrieval import settings, write_data

    encoder, manifest = build_tiny_dinov2(tmp_path / "enc"), write_data(tmp_path / "data", n_train=40, n_test=12)
    runs = {}
    for device in ("cpu", DEVICE):
        cfg = settings(tmp_path / device, encoder, manifest, device, model={"device": device},
                       retrieval={"k": 1, "chunk_size": 7})
        assert runner.generate(cfg, progress=False) == runner.EXIT_OK
        runs[device] = reports(cfg.run_dir)
        assert json.loads((cfg.run_dir / "run.json").read_text())["model"]["device"].startswith(device)
    cpu, gpu = runs["cpu"], runs[DEVICE]
    assert list(gpu["retrieved_id"]) == list(cpu["retrieved_id"])
    assert list(gpu["generated_report"]) == list(cpu["generated_report"])
    assert (gpu["similarity"] - cpu["similarity"]).abs().max() < 1e-4
