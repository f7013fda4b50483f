"""``model.quantization``: 8-bit (LLM.int8) or 4-bit (NF4, bfloat16 compute, double quantization) weights of the
language model through bitsandbytes, on CUDA GPUs.

* :func:`check_quantization` is called before any weight is read: where bitsandbytes cannot run (model.device
  cpu, a CPU-only PyTorch, no visible GPU, bitsandbytes missing) it is one line saying so.
* :func:`bitsandbytes_config` is the ``quantization_config`` for transformers' ``from_pretrained`` (transformers
  backend; load with ``device_map={"": device}``).
* :func:`quantize_linear_layers` replaces the ``nn.Linear`` layers of an already loaded module by bitsandbytes
  layers, one at a time, quantizing each on its way to the GPU (CXR-LLaVA backend, whose weights are read tensor by
  tensor: it loads on the CPU, merges any adapter in full precision, then quantizes the Llama layers; the vision
  tower and projector stay in bfloat16).

The vision tower, the projector, the embeddings and the output layer are never quantized in either backend.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Iterable

import torch
from torch import nn

from .base import ModelError

log = logging.getLogger("cxrgen")

MODES = ("none", "8bit", "4bit")
#: Modules of transformers vision-language models left in full precision (names of transformers 4.x and 5.x).
TRANSFORMERS_SKIP = ["lm_head", "vision_tower", "multi_modal_projector", "model.vision_tower",
                     "model.multi_modal_projector"]
INT8_THRESHOLD = 6.0  # LLM.int8's outlier threshold: activation columns above it are computed in 16 bits


class _FirstOnly(logging.Filter):
    """Lets the first record whose message starts with ``prefix`` through and drops its repeats."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        first, self.seen = not self.seen, True
        return first


#: bitsandbytes logs this on every call of every 8-bit layer (224 per decode step of a 7B model): once is enough.
INT8_CAST_MESSAGE = "MatMul8bitLt: inputs will be cast"


def quiet_repeated_int8_warning() -> None:
    """Keep bitsandbytes' 'inputs will be cast from bfloat16 to float16' to its first occurrence (LLM.int8 computes
    in float16 whatever the model's dtype; the message says nothing new after the first layer)."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _FirstOnly) for f in logger.filters):
        logger.addFilter(_FirstOnly(INT8_CAST_MESSAGE))


def check_quantization(model_cfg) -> None:
    """Refuse, in one line, a quantization that cannot run here; nothing is read or loaded."""
    mode = model_cfg.quantization or "none"
    if mode == "none":
        return
    if mode not in MODES:
        raise ModelError(f"model.quantization must be one of {', '.join(MODES)}; got {mode!r}")
    where = f"model.quantization {mode}"
    device = str(model_cfg.device)
    if device != "auto" and not device.startswith("cuda"):
        raise ModelError(f"{where} needs a CUDA GPU (bitsandbytes), but model.device is {device}; use "
                         "model.quantization: none on the CPU")
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise ModelError(f"{where} needs a CUDA build of PyTorch, but torch {torch.__version__} is a CPU-only build "
                         "(see ENVIRONMENT.md for the CUDA install)")
    if not torch.cuda.is_available():
        raise ModelError(f"{where} needs a CUDA GPU, but none is visible (torch.cuda.is_available() is false; "
                         "check CUDA_VISIBLE_DEVICES and the driver)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"{where} needs the bitsandbytes package, which is not installed: "
                         "pip install -r requirements-gpu.txt")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # a broken install raises all sorts (missing CUDA libraries, ...)
        text = str(e).strip().splitlines()
        raise ModelError(f"{where}: bitsandbytes could not be imported ({type(e).__name__}: "
                         f"{text[0] if text else ''})") from None


def bitsandbytes_config(model_cfg):
    """transformers' ``BitsAndBytesConfig`` for ``model.quantization`` (None for ``none``)."""
    mode = model_cfg.quantization or "none"
    if mode == "none":
        return None
    if mode not in MODES:
        raise ModelError(f"model.quantization must be one of {', '.join(MODES)}; got {mode!r}")
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        quiet_repeated_int8_warning()
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=INT8_THRESHOLD,
                                  llm_int8_skip_modules=list(TRANSFORMERS_SKIP))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_use_double_quant=True, llm_int8_skip_modules=list(TRANSFORMERS_SKIP))


def _skipped(name: str, skip: Iterable[str]) -> bool:
    """Whether module ``name`` is (inside) one named in ``skip``: whole dotted components, anywhere in the name."""
    padded = f".{name}."
    return any(f".{s.strip('.')}." in padded for s in skip)


def selected_linear_layers(module: nn.Module, skip: Iterable[str] = ("lm_head",)) -> list[str]:
    """Names of the ``nn.Linear`` layers of ``module`` that :func:`quantize_linear_layers` replaces."""
    skip = tuple(skip)
    return [name for name, child in module.named_modules()
            if type(child) is nn.Linear and name and not _skipped(name, skip)]


@torch.no_grad()
def quantize_linear_layers(module: nn.Module, mode: str, skip: Iterable[str] = ("lm_head",),
                           device: str | torch.device | None = None) -> list[str]:
    """Replace the ``nn.Linear`` layers of ``module`` (except those in ``skip``) by bitsandbytes layers on
    ``device`` (default: the current CUDA device); returns the names replaced.

    ``8bit``: ``bnb.nn.Linear8bitLt`` (LLM.int8, outlier threshold 6, int8 weights). ``4bit``: ``bnb.nn.Linear4bit``
    (NF4, double quantization, bfloat16 compute). Each layer is quantized as it moves to the GPU and its
    full-precision weight is released, so the GPU never holds more than one full-precision layer; weights still on
    the CPU are moved there first (LLM.int8 quantizes on the CPU-to-GPU move). Layers stay where they are in the
    module tree, so code that calls them (``attn.q_proj(h)``) is unchanged.
    """
    if mode not in ("8bit", "4bit"):
        raise ModelError(f"model.quantization must be 8bit or 4bit to quantize layers; got {mode!r}")
    import bitsandbytes as bnb

    if mode == "8bit":
        quiet_repeated_int8_warning()

    target = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    names = selected_linear_layers(module, skip)
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        old: nn.Linear = getattr(parent, child_name)
        weight = old.weight.detach().to("cpu")
        has_bias = old.bias is not None
        if mode == "8bit":
            new = bnb.nn.Linear8bitLt(old.in_features, old.out_features, bias=has_bias, has_fp16_weights=False,
                                      threshold=INT8_THRESHOLD, device="meta")
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=has_bias,
                                    compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                    device="meta")
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                           module=new)
        if has_bias:
            new.bias = nn.Parameter(old.bias.detach().to("cpu"), requires_grad=False)
        new = new.to(target)  # quantization happens here
        setattr(parent, child_name, new)
        del old, weight
    log.info("quantized %d linear layers to %s (bitsandbytes %s)", len(names), mode,
             getattr(bnb, "__version__", "?"))
    return names


@torch.no_grad()
def move_unquantized(module: nn.Module, device: str | torch.device) -> None:
    """Move every parameter and buffer of ``module`` that is not a bitsandbytes weight to ``device`` in place
    (``Module.to`` would also touch the quantized weights, which must not be cast or copied)."""
    device = torch.device(device)
    for child in module.modules():
        for key, param in list(child._parameters.items()):
            if param is None or _is_bnb_param(param) or param.device == device:
                continue
            child._parameters[key] = nn.Parameter(param.detach().to(device), requires_grad=param.requires_grad)
        for key, buffer in list(child._buffers.items()):
            if buffer is not None and buffer.device != device:
                child._buffers[key] = buffer.to(device)


def _is_bnb_param(param: torch.Tensor) -> bool:
    return type(param).__module__.startswith("bitsandbytes")
