"""Finding and reading a CXR-LLaVA-v2 checkpoint in its published layout, without running any of its Python files.

A checkpoint is a folder (a local path or a Hugging Face Hub snapshot) holding::

    config.json                                  architecture (see configuration.py)
    tokenizer.model, tokenizer_config.json       Llama-2 sentencepiece tokenizer
    model.safetensors.index.json + model-0000N-of-0000M.safetensors   (or one model.safetensors)
    pytorch_model.bin.index.json + pytorch_model-*.bin                 (fallback, read with weights_only=True)

Tensor names in the file map onto this package's modules: ``vision_tower.*`` and ``mm_projector.*`` as they are,
``llama.*`` onto transformers' ``LlamaForCausalLM`` as ``model.*``, ``lm_head.weight`` as it is. Loading is strict:
every tensor must be used or be on the short ignore list below, and every parameter must be found, with its shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import torch

from .. import hub
from .configuration import CheckpointError

DEFAULT_MODEL_ID = "ECOFRI/CXR-LLAVA-v2"

#: Files a report run needs. The Hub repository also holds .bin copies of the weights (another 14 GB): not fetched.
NEEDED_FILES = ["config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                "generation_config.json"]
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
BIN_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]

#: Checkpoint tensors that exist but are not used to write reports.
IGNORED_TENSORS = [
    re.compile(r"vision_tower\.proj"),  # open_clip's pooled image projection (contrastive head)
    re.compile(r"llama\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),  # recomputed, not a weight
]


def resolve(name_or_path: str, revision: str | None = None, allow_download: bool = False) -> tuple[Path, str | None]:
    """A local folder for ``name_or_path`` and the Hub commit it came from (None for a plain local folder), through
    :func:`cxrgen.models.hub.find`: from the Hub only the files in NEEDED_FILES and the safetensors weights (the .bin
    weights only if no safetensors exist)."""
    return hub.find(hub.Lookup("model.name_or_path", name_or_path, revision, tuple(NEEDED_FILES),
                               (tuple(SAFETENSORS_FILES), tuple(BIN_FILES)), allow_download=allow_download))


def check_files(folder: Path) -> list[Path]:
    """Fail early, before any weight is read, when a needed file is missing; return the weight files."""
    for name in ("config.json", "tokenizer.model"):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name}: missing from the checkpoint")
    return _weight_files(folder, must_exist=True)


def _weight_files(folder: Path, must_exist: bool) -> list[Path]:
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid index file ({e!r})") from None
            files = [folder / f for f in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing and must_exist:
                raise CheckpointError(f"{index}: lists shard files that are missing: {', '.join(missing)}")
            return files if not missing else []
        if (folder / single).is_file():
            return [folder / single]
    if must_exist:
        raise CheckpointError(
            f"{folder}: no weights found (looked for model.safetensors.index.json, model.safetensors, "
            "pytorch_model.bin.index.json, pytorch_model.bin)"
        )
    return []


def iter_tensors(files: list[Path], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from the weight files one tensor at a time, materialised on ``device``."""
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                handle = safe_open(str(file), framework="pt", device=str(device))
            except Exception as e:  # safetensors raises its own error types for a bad header
                raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
            with handle as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise CheckpointError(f"{file}: not a readable PyTorch weights file ({e})") from None
            for name in list(state):
                yield name, state.pop(name).to(device)


def target_name(checkpoint_name: str) -> str | None:
    """The parameter name in CxrLlava for a checkpoint tensor name, or None when it is ignored."""
    if any(p.fullmatch(checkpoint_name) for p in IGNORED_TENSORS):
        return None
    if checkpoint_name.startswith("llama."):
        return "language_model.model." + checkpoint_name[len("llama."):]
    if checkpoint_name == "lm_head.weight":
        return "language_model.lm_head.weight"
    return checkpoint_name


def source_name(name: str) -> str:
    """The checkpoint's name for a parameter or module name of CxrLlava (the inverse of :func:`target_name`)."""
    if name.startswith("language_model.model."):
        return "llama." + name[len("language_model.model."):]
    if name.startswith("language_model.lm_head"):
        return name[len("language_model."):]
    return name


def load_weights(model: torch.nn.Module, files: list[Path], device: torch.device, dtype: torch.dtype) -> None:
    """Strictly load checkpoint tensors into ``model`` (built on the meta device), straight to device and dtype."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    unexpected: list[str] = []
    mismatched: list[str] = []
    for ckpt_name, tensor in iter_tensors(files, device):
        name = target_name(ckpt_name)
        if name is None:
            continue
        param = params.get(name)
        if param is None:
            unexpected.append(ckpt_name)
            continue
        if tuple(tensor.shape) != tuple(param.shape):
            mismatched.append(f"{ckpt_name} {tuple(tensor.shape)} != expected {tuple(param.shape)}")
            continue
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        # A copy on the CPU: tensors read from a memory-mapped file are several times slower in matmuls.
        value = tensor.to(dtype=dtype, copy=device.type == "cpu")
        setattr(module, attr, torch.nn.Parameter(value, requires_grad=False))
        loaded.add(name)
    missing = sorted(set(params) - loaded)
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(_checkpoint_names(missing))}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected))}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    if problems:
        raise CheckpointError(f"{files[0].parent}: the weights do not fit config.json: " + " | ".join(problems))


def _checkpoint_names(names: list[str]) -> list[str]:
    out = []
    for n in names:
        if n.startswith("language_model.model."):
            n = "llama." + n[len("language_model.model."):]
        elif n == "language_model.lm_head.weight":
            n = "lm_head.weight"
        out.append(n)
    return out
