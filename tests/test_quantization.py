"""model.quantization: refused in one line where bitsandbytes cannot run, before any weight is read; the
transformers config; which layers the CXR-LLaVA replacement touches and in what order (with a stand-in for
bitsandbytes, since real 4/8-bit kernels need a CUDA GPU and bitsandbytes is not part of the CPU environment)."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from cxrgen.config import ModelConfig
from cxrgen.models import ModelError, load
from cxrgen.models import quantization as q
from cxrgen.models.cxr_llava import CxrLlava

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted((ROOT / "demo" / "images").glob("*.png"))[:2]
LLAMA_LINEARS = sorted(f"model.layers.{i}.{part}" for i in range(2) for part in
                       ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))


def _cuda_machine(monkeypatch, *, build="12.4", visible=True, installed=True):
    """Pretend to be a machine with a CUDA build of torch, a visible GPU and (optionally) bitsandbytes."""
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
    real = importlib.util.find_spec
    def find_spec(name, *args):
        if name == "bitsandbytes":
            return object() if installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# -- check_quantization ----------------------------------------------------------------------------------------------

def _refusal(model_cfg) -> str:
    with pytest.raises(ModelError) as e:
        q.check_quantization(model_cfg)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_check_refuses_where_bitsandbytes_cannot_run(monkeypatch):
    cfg = ModelConfig(quantization="4bit")
    q.check_quantization(replace(cfg, quantization="none", device="cpu"))  # nothing to check
    assert "model.device is cpu" in _refusal(replace(cfg, device="cpu"))
    _cuda_machine(monkeypatch, build=None)
    monkeypatch.setattr(torch.version, "hip", None)
    assert "CPU-only build" in _refusal(cfg)
    _cuda_machine(monkeypatch, visible=False)
    assert "needs a CUDA GPU, but none is visible" in _refusal(replace(cfg, device="cuda:0"))
    _cuda_machine(monkeypatch, installed=False)
    assert "bitsandbytes package, which is not installed: pip install -r requirements-gpu.txt" in \
        _refusal(replace(cfg, quantization="8bit"))
    _cuda_machine(monkeypatch)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # installed but broken: the import fails
    assert "bitsandbytes could not be imported (ModuleNotFoundError" in _refusal(cfg)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    q.check_quantization(cfg)  # everything in place
    assert "must be one of none, 8bit, 4bit" in _refusal(replace(cfg, quantization="3bit"))


def test_a_cpu_run_is_refused_before_any_weight_is_read(tiny_dir, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(CxrLlava, "from_pretrained", no_reading)
    with pytest.raises(ModelError, match="model.quantization 8bit needs a CUDA GPU"):
        load(ModelConfig(name_or_path=str(tiny_dir), backend="cxr_llava", device="cpu", quantization="8bit"))
    if torch.version.cuda is None:  # this CPU environment: auto finds no CUDA build
        with pytest.raises(ModelError, match="CPU-only build"):
            load(ModelConfig(name_or_path=str(tiny_dir), backend="cxr_llava", quantization="4bit"))


# -- transformers: BitsAndBytesConfig -------------------------------------------------------------------------------

def test_bitsandbytes_config_fields():
    assert q.bitsandbytes_config(ModelConfig()) is None
    c4 = q.bitsandbytes_config(ModelConfig(quantization="4bit"))
    assert (c4.load_in_4bit, c4.load_in_8bit) == (True, False)
    assert (c4.bnb_4bit_quant_type, c4.bnb_4bit_compute_dtype, c4.bnb_4bit_use_double_quant) == \
        ("nf4", torch.bfloat16, True)
    c8 = q.bitsandbytes_config(ModelConfig(quantization="8bit"))
    assert (c8.load_in_8bit, c8.load_in_4bit, c8.llm_int8_threshold, c8.llm_int8_has_fp16_weight) == \
        (True, False, 6.0, False)
    assert "lm_head" in c4.llm_int8_skip_modules and c4.llm_int8_skip_modules == c8.llm_int8_skip_modules


def test_transformers_skips_the_vision_parts_and_output_layer_of_a_llava():
    """transformers' own matcher, on the module names of a LlavaForConditionalGeneration: only the language model's
    linear layers are converted."""
    quantizers_utils = pytest.importorskip("transformers.quantizers.quantizers_utils")
    should_convert = getattr(quantizers_utils, "should_convert_module", None)
    if should_convert is None:
        pytest.skip("this transformers version matches skip modules differently")
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                        num_attention_heads=2, image_size=16, patch_size=8),
                         text_config=LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, vocab_size=64))
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    skip = q.bitsandbytes_config(ModelConfig(quantization="4bit")).llm_int8_skip_modules
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    converted = {n for n in linears if should_convert(n, skip)}
    assert converted and all("language_model" in n for n in converted)
    assert {n for n in linears if "language_model" in n} == converted
    assert any("vision_tower" in n for n in linears) and any("multi_modal_projector" in n for n in linears)


# -- CXR-LLaVA: replacing the linear layers --------------------------------------------------------------------------

def fake_bitsandbytes(monkeypatch) -> list[tuple[str, dict]]:
    """A stand-in for bitsandbytes whose layers compute exactly like nn.Linear; returns the calls it saw."""
    calls: list[tuple[str, dict]] = []

    class Linear4bit(nn.Linear):
        def __init__(self, in_f, out_f, bias=True, compute_dtype=None, compress_statistics=True, quant_type="fp4",
                     quant_storage=torch.uint8, device=None):
            super().__init__(in_f, out_f, bias=bias, device=device)
            calls.append(("Linear4bit", dict(compute_dtype=compute_dtype, compress_statistics=compress_statistics,
                                             quant_type=quant_type)))

    class Linear8bitLt(nn.Linear):
        def __init__(self, in_f, out_f, bias=True, has_fp16_weights=True, threshold=0.0, index=None, device=None):
            super().__init__(in_f, out_f, bias=bias, device=device)
            calls.append(("Linear8bitLt", dict(has_fp16_weights=has_fp16_weights, threshold=threshold)))

    def Params4bit(data, requires_grad=False, compress_statistics=True, quant_type="fp4", module=None, **kw):
        calls.append(("Params4bit", dict(quant_type=quant_type, compress_statistics=compress_statistics,
                                         device=data.device.type, weight=data.clone())))
        return nn.Parameter(data, requires_grad=requires_grad)

    def Int8Params(data, requires_grad=False, has_fp16_weights=False, **kw):
        calls.append(("Int8Params", dict(has_fp16_weights=has_fp16_weights, device=data.device.type,
                                         weight=data.clone())))
        return nn.Parameter(data, requires_grad=requires_grad)

    bnb = types.ModuleType("bitsandbytes")
    bnb.nn = types.SimpleNamespace(Linear4bit=Linear4bit, Linear8bitLt=Linear8bitLt, Params4bit=Params4bit,
                                   Int8Params=Int8Params)
    bnb.__version__ = "stand-in"
    monkeypatch.setitem(sys.modules, "bitsandbytes", bnb)
    return calls


@pytest.mark.parametrize("mode,layer,param", [("4bit", "Linear4bit", "Params4bit"),
                                              ("8bit", "Linear8bitLt", "Int8Params")])
def test_replaces_the_llama_linear_layers_only(tiny_dir, monkeypatch, mode, layer, param):
    calls = fake_bitsandbytes(monkeypatch)
    model = CxrLlava.from_pretrained(tiny_dir, device="cpu")
    weights = {n: m.weight.detach().clone() for n, m in model.language_model.named_modules()
               if isinstance(m, nn.Linear)}
    names = q.quantize_linear_layers(model.language_model, mode, device="cpu")
    assert sorted(names) == LLAMA_LINEARS
    replaced = {n for n, m in model.language_model.named_modules() if type(m).__name__ == layer}
    assert replaced == set(LLAMA_LINEARS)
    assert type(model.language_model.lm_head) is nn.Linear and type(model.mm_projector) is nn.Linear
    assert all(type(m) is nn.Linear for n, m in model.vision_tower.named_modules() if isinstance(m, nn.Linear))
    layers = [kw for name, kw in calls if name == layer]
    params = [kw for name, kw in calls if name == param]
    assert len(layers) == len(params) == len(LLAMA_LINEARS)
    if mode == "4bit":
        nf4 = dict(compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
        assert all(kw == nf4 for kw in layers)
        assert all(kw["quant_type"] == "nf4" and kw["compress_statistics"] for kw in params)
    else:
        assert all(kw == dict(has_fp16_weights=False, threshold=6.0) for kw in layers)
        assert all(kw["has_fp16_weights"] is False for kw in params)
    assert all(kw["device"] == "cpu" for kw in params)  # handed over on the CPU: quantized on the move to the GPU
    assert all(torch.equal(kw["weight"], weights[n]) for n, kw in zip(names, params))
    assert q.quantize_linear_layers(model.language_model, mode, device="cpu") == []  # nothing left to replace


def test_skip_names_whole_components():
    assert q._skipped("language_model.lm_head", ["lm_head"])
    assert q._skipped("model.layers.1.mlp.up_proj", ["layers.1"])
    assert not q._skipped("model.layers.10.mlp.up_proj", ["layers.1"])
    assert not q._skipped("model.layers.0.mlp.up_proj_extra", ["up_proj"])
    net = nn.Sequential()
    net.add_module("body", nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)))
    net.add_module("lm_head", nn.Linear(2, 2))
    assert q.selected_linear_layers(net) == ["body.0", "body.2"]
    assert q.selected_linear_layers(net, skip=("body",)) == ["lm_head"]


def test_backend_merges_the_adapter_first_then_quantizes(tiny_dir, tmp_path, monkeypatch):
    """Through the backend's load(): the layers handed to bitsandbytes hold the adapter-merged weights, and with
    layers that compute like nn.Linear the reports are those of the unquantized merged model."""
    from helpers import write_lora

    write_lora(tmp_path / "lora")
    calls = fake_bitsandbytes(monkeypatch)
    monkeypatch.setattr(q, "check_quantization", lambda cfg: None)  # the CPU stands in for the GPU here
    cfg = ModelConfig(name_or_path=str(tiny_dir), device="cpu", adapter=str(tmp_path / "lora"), quantization="4bit")
    backend = load(cfg)
    reference = load(replace(cfg, quantization="none"))
    assert backend.describe()["quantization"] == "4bit" and backend.describe()["adapter"]["modules_merged"] == 4
    handed = [kw["weight"] for name, kw in calls if name == "Params4bit"]
    merged = [reference.model.language_model.get_submodule(n).weight for n in LLAMA_LINEARS]
    assert len(handed) == len(merged)
    assert sum(any(torch.equal(h, m) for h in handed) for m in merged) == len(merged)
    images = [Image.open(p) for p in IMAGES]
    assert [r.token_ids for r in backend.model.generate_reports(images, max_new_tokens=16)] == \
        [r.token_ids for r in reference.model.generate_reports(images, max_new_tokens=16)]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("mode,tolerance", [("8bit", 0.05), ("4bit", 0.2)])
def test_real_bitsandbytes_layers_stay_close_to_full_precision(mode, tolerance):
    """With bitsandbytes installed (GPU machines; recent versions also run on the CPU): a quantized layer's output
    is within the rounding of its format (relative error of the output, Gaussian weights and inputs)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 512, bias=False)).to(torch.bfloat16)
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    want = net(x).float()
    try:
        q.quantize_linear_layers(net, mode, skip=(), device=device)
        got = net(x.to(device)).float().cpu()
    except (NotImplementedError, RuntimeError) as e:
        pytest.skip(f"bitsandbytes cannot run {mode} on {device} here ({type(e).__name__})")
    assert type(net[0]).__module__.startswith("bitsandbytes")
    error = (got - want).norm() / want.norm()
    assert error < tolerance


def test_the_int8_cast_message_is_logged_once(caplog):
    """bitsandbytes logs 'MatMul8bitLt: inputs will be cast ...' on every call of every 8-bit layer (22,400 lines
    in one GPU benchmark); after an 8-bit setup only the first one is kept, other messages are untouched."""
    import logging

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    before = list(logger.filters)
    try:
        q.bitsandbytes_config(ModelConfig(quantization="8bit"))  # installs the filter
        q.quiet_repeated_int8_warning()  # again: still one filter
        assert sum(isinstance(f, q._FirstOnly) for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=logger.name):
            for _ in range(5):
                logger.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "bf16")
                logger.warning("something else")
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count("MatMul8bitLt: inputs will be cast from bf16 to float16 during quantization") == 1
        assert messages.count("something else") == 5
    finally:
        logger.filters[:] = before
