"""What only a CUDA GPU can check: the published tokens in float32 on CUDA with and without CUDA graphs, key
buckets and fixed shapes; fixed shapes making bfloat16 reports independent of their batch; the transformers backend
against transformers' own generate on CUDA; bitsandbytes 4/8-bit loading on a tiny checkpoint; a bfloat16 run killed
and resumed through generate_cxr.py with generation.batch_invariant equal to an uninterrupted one.

Every test here is marked ``cuda`` and skipped without a CUDA device; ``bench/gpu_check.sh`` runs them
(``python -m pytest -m cuda tests/test_cuda.py``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cxrgen.config import GenerationConfig, ModelConfig, PromptConfig
from cxrgen.imaging import read_image
from cxrgen.models import Item, load
from cxrgen.models.cxr_llava import CxrLlava
from cxrgen.models.cxr_llava.decoding import DecodeStats, Request, Shapes
from helpers import IMAGES, ROOT, stream_tokens, transformers_generate

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REFERENCE = ROOT / "tests" / "data" / "upstream_reference"
NEEDS_BNB = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")


def _expected(variant: str) -> list[dict]:
    return json.loads((REFERENCE / variant / "expected.json").read_text())["results"]


def _ids(row: dict) -> list[int]:
    return row["generated_ids"][:-1] if row["stopped_at_eos"] else row["generated_ids"]


def _stream(model, requests, **kwargs) -> dict:
    out = {}
    for done in model.stream_reports(requests, **kwargs):
        out.update(done)
    return out


@pytest.mark.parametrize("variant", ["tiny", "tiny_legacy"])
def test_published_tokens_in_float32_on_cuda(variant):
    """The published code's tokens in float32 on CUDA: static batches of 1, 4 and 8 with CUDA graphs on and off,
    continuous batching (10 studies in 3 slots, graphs on) and fixed shapes."""
    model = CxrLlava.from_pretrained(REFERENCE / variant, device="cuda", dtype="float32")
    rows = _expected(variant)
    limit = rows[0]["max_new_tokens"]
    images = [read_image(IMAGES / r["image"]) for r in rows]
    for graphs in ("on", "off"):
        for batch in (1, 4, 8):
            for start in range(0, len(images), batch):
                got = model.generate_reports(images[start:start + batch], max_new_tokens=limit, cuda_graphs=graphs)
                assert [r.token_ids for r in got] == [_ids(r) for r in rows[start:start + batch]], (graphs, batch)
    pixels = [model.preprocess(read_image(IMAGES / rows[i % len(rows)]["image"])) for i in range(10)]
    requests = [Request(i, pixels[i], model.prompt_ids()) for i in range(10)]
    for shapes in (None, Shapes(fixed=True)):
        stats = DecodeStats()
        got = _stream(model, requests, slots=3, max_new_tokens=limit, cuda_graphs="on", shapes=shapes, stats=stats)
        assert [got[i].token_ids for i in range(10)] == [_ids(rows[i % len(rows)]) for i in range(10)], shapes
        assert stats.graphs >= 1


def test_fixed_shapes_make_bfloat16_reports_independent_of_their_batch(tiny_dir):
    """bfloat16 on CUDA with Shapes(fixed=True): at 4 slots, continuous batching, static batches, CUDA graphs off
    and a run stopped after 9 reports and resumed with the rest give the same tokens."""
    model = CxrLlava.from_pretrained(tiny_dir, device="cuda", dtype="bfloat16")
    size = model.config.vision.image_size
    pixels = torch.randn(24, 1, size, size, generator=torch.Generator().manual_seed(0))
    requests = [Request(i, pixels[i], model.prompt_ids()) for i in range(24)]
    fixed = Shapes(fixed=True)

    def tokens(todo=requests, stop_after=None, **kwargs):
        return stream_tokens(model, todo, stop_after, slots=4, max_new_tokens=40, shapes=fixed, **kwargs)

    continuous = tokens(cuda_graphs="on")
    assert tokens(cuda_graphs="off") == continuous
    static = {}
    for start in range(0, 24, 4):
        static.update(tokens(requests[start:start + 4], refill=False, cuda_graphs="on"))
    assert static == continuous
    first = tokens(stop_after=9, cuda_graphs="on")
    assert {**first, **tokens([r for r in requests if r.key not in first], cuda_graphs="on")} == continuous


@pytest.mark.parametrize("name", ["llava", "gemma3"])
def test_transformers_backend_equals_transformers_generate_on_cuda(tmp_path, name):
    """The transformers backend on CUDA in float32, batch 3: the reports of transformers' own generate run one image
    at a time on CUDA."""
    from cxrgen.models.transformers.tiny import build_tiny_gemma3, build_tiny_llava

    folder = (build_tiny_llava if name == "llava" else build_tiny_gemma3)(tmp_path / name)
    system, user, max_new = "You are an expert radiologist.", "Describe this chest X-ray.", 24
    images = [IMAGES / p.name for p in sorted(IMAGES.glob("*.png"))][:7]
    expected = transformers_generate(folder, images, system, user, max_new, device="cuda")
    backend = load(ModelConfig(backend="transformers", name_or_path=str(folder), device="cuda", dtype="float32"))
    prepare = backend.image_preparer()
    items = [Item(i, prepare(read_image(path)), 0) for i, path in enumerate(images)]
    got = {}
    for done in backend.stream(items, PromptConfig(system=system, user=user),
                               GenerationConfig(batch_size=3, max_new_tokens=max_new)):
        got.update((item.key, (r.text, r.n_new_tokens, r.stopped_at_eos)) for item, r in done)
    assert [got[i] for i in range(len(images))] == expected


@NEEDS_BNB
@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantized_tiny_checkpoint_loads_and_writes_reports(tiny_dir, mode):
    """model.quantization on CUDA: the Llama linear layers become bitsandbytes layers, and reports come out (through
    the backend's stream, CUDA graphs left off as auto does for quantized models)."""
    cfg = ModelConfig(backend="cxr_llava", name_or_path=str(tiny_dir), device="cuda", dtype="bfloat16",
                      quantization=mode)
    backend = load(cfg)
    layer = backend.model.language_model.model.layers[0].self_attn.q_proj
    assert type(layer).__module__.startswith("bitsandbytes"), type(layer)
    prepare = backend.image_preparer()
    items = [Item(i, prepare(read_image(p)), 0) for i, p in enumerate(sorted(IMAGES.glob("*.png")))]
    generation = GenerationConfig(batch_size=4, max_new_tokens=12)
    got = [r for done in backend.stream(items, PromptConfig(), generation) for _, r in done]
    assert len(got) == len(items)
    assert all(r.n_new_tokens == len(r.token_ids) <= 12 for r in got)
    assert all(0 <= t < backend.model.config.vocab_size for r in got for t in r.token_ids)


def test_a_killed_bfloat16_run_resumes_to_the_uninterrupted_reports_with_batch_invariance(tmp_path, tiny_dir):
    """generate_cxr.py on CUDA in bfloat16 with generation.batch_invariant: a run SIGKILLed after 20 committed rows
    and rerun ends with exactly the reports.csv of an uninterrupted run (the studies after the kill are decoded
    beside other studies than before)."""
    import os
    import signal

    from helpers import (committed_rows, make_config, reports, resume_and_compare, run_cli, start_until_committed,
                         write_manifest)

    manifest = write_manifest(tmp_path, 160)
    settings = dict(model__device="cuda", model__dtype="bfloat16", generation__batch_size=4,
                    generation__max_new_tokens=48, generation__batch_invariant=True)
    whole = make_config(tmp_path, tiny_dir, manifest, "whole", **settings)
    result = run_cli("--config", str(whole))
    assert result.returncode == 0, result.stderr
    expected = reports(tmp_path / "runs" / "whole")
    cfg = make_config(tmp_path, tiny_dir, manifest, "killed", **settings)
    run_dir = tmp_path / "runs" / "killed"
    proc = start_until_committed(cfg, run_dir, 20)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = committed_rows(run_dir)
    assert 20 <= done_before < 160
    resume_and_compare(cfg, run_dir, expected, done_before)
