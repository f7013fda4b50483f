"""Fine-tuning on a CUDA GPU: finetune_cxr.py memorising 8 studies in float32 and in bfloat16 mixed precision, and
generate_cxr.py writing their references with the adapter it wrote; QLoRA (LoRA over a bitsandbytes 4-bit base) and
4-bit generation with its adapter.

Every test here is marked ``cuda`` and skipped without a CUDA device; the finetune section of ``bench/gpu_check.sh``
runs them (``python -m pytest -m cuda tests/test_cuda_finetune.py``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

NEEDS_BNB = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")

DEVICE = "cuda"


def _finetune(tmp_path: Path, checkpoint: Path, name: str, capsys, **model) -> tuple[Path, Path]:
    """finetune_cxr.py on DEVICE memorising the 8 training studies with the CPU test's settings (tests/
    test_finetune.py); (config, adapter folder)."""
    from helpers import finetune_config, write_training_manifest
    from test_finetune import MEMORISE, train

    manifest = write_training_manifest(tmp_path / "data")
    training = {**MEMORISE["cxr_llava"], "batch_size": 8, "val_split": None}
    cfg_path = finetune_config(tmp_path, checkpoint, manifest, run_name=name, model__device=DEVICE,
                               **{f"model__{k}": v for k, v in model.items()},
                               **{f"training__{k}": v for k, v in training.items()})
    return cfg_path, train(cfg_path, capsys)


def _losses(adapter: Path) -> list[float]:
    return [s["loss"] for s in json.loads((adapter.parent / "train.json").read_text())["steps"]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fine_tuning_on_cuda_memorises_and_generation_writes_the_references(tmp_path, tiny_dir, dtype, capsys):
    """finetune_cxr.py on CUDA (the Trainer's mixed precision in bfloat16) lowers the loss as on the CPU, and
    generate_cxr.py on CUDA with the adapter it wrote writes at least 7 of the 8 training references exactly."""
    import generate_cxr

    from cxrgen.config import load_config
    from helpers import reports
    from test_finetune import MEMORISE

    cfg_path, adapter = _finetune(tmp_path, tiny_dir, f"ft-{dtype}", capsys, dtype=dtype)
    losses = _losses(adapter)
    assert len(losses) == MEMORISE["cxr_llava"]["max_steps"] and losses[0] / losses[-1] >= 5, losses
    start = json.loads((adapter.parent / "train.json").read_text())["starts"][-1]
    assert start["device"].startswith(DEVICE) and start["dtype"] == dtype, start
    assert generate_cxr.main(["--quiet", "--config", str(cfg_path), "--set", f"model.adapter={adapter}",
                              "--set", f"model.dtype={dtype}"]) == 0
    rows = reports(load_config(cfg_path).run_dir)
    assert len(rows) == 8 and (rows["generated_report"] == rows["reference"]).sum() >= 7, \
        rows[["reference", "generated_report"]]


@NEEDS_BNB
def test_qlora_on_cuda_trains_an_adapter_that_4bit_generation_loads(tmp_path, tiny_dir, capsys):
    """model.quantization 4bit in fine-tuning (QLoRA: LoRA over bitsandbytes 4-bit Llama layers, bfloat16): the loss
    falls, and generation with the same 4-bit base and the adapter writes a report for every study."""
    import generate_cxr

    from cxrgen.config import load_config
    from helpers import reports
    from test_finetune import MEMORISE

    cfg_path, adapter = _finetune(tmp_path, tiny_dir, "qlora", capsys, dtype="bfloat16", quantization="4bit")
    losses = _losses(adapter)
    assert len(losses) == MEMORISE["cxr_llava"]["max_steps"] and losses[0] / losses[-1] >= 2, losses
    assert (adapter / "adapter_model.safetensors").is_file()
    assert generate_cxr.main(["--quiet", "--config", str(cfg_path), "--set", f"model.adapter={adapter}",
                              "--set", "model.dtype=bfloat16", "--set", "model.quantization=4bit"]) == 0
    rows = reports(load_config(cfg_path).run_dir)
    assert len(rows) == 8 and (rows["error"].fillna("") == "").all()
