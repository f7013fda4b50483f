"""PEFT LoRA adapters (``model.adapter``), merged into the weights at load time so that generation runs at full speed.

An adapter is a folder as PEFT's ``save_pretrained`` writes it::

    adapter_config.json          peft_type LORA, r, lora_alpha, target_modules, fan_in_fan_out, rank_pattern, ...
    adapter_model.safetensors    base_model.model.<module>.lora_A.weight [r, in], ...lora_B.weight [out, r]
                                 (adapter_model.bin, read with weights_only=True, as a fallback)

or a Hub id of such a folder, read from the local Hugging Face cache only unless ``model.allow_download``.

Each adapted linear layer becomes ``W + scaling * B @ A`` (``scaling`` = lora_alpha / r, or lora_alpha / sqrt(r)
with ``use_rslora``; per-module r and alpha from ``rank_pattern`` / ``alpha_pattern``), computed in float32 and cast
back to the weight's dtype. ``fan_in_fan_out`` describes base layers that store their weight as [in, out]
(GPT-2's Conv1D); every adapted layer here is an ``nn.Linear`` ([out, in]), so the flag is ignored with a warning,
as PEFT itself does for ``nn.Linear`` layers.

Two entry points, one per backend, both returning what was merged for run.json:

* :func:`merge_cxr_llava_adapter` for the CXR-LLaVA backend, without PEFT: the checkpoint is not a transformers
  model. Tensor names may follow the published checkpoint (``base_model.model.llama.layers.N.self_attn.q_proj``),
  a plain ``LlamaForCausalLM`` (``base_model.model.model.layers.N...``) or this package's modules
  (``base_model.model.language_model.model.layers.N...``). Everything is checked before any weight changes.
* :func:`merge_transformers_adapter` for the transformers backend, through PEFT
  (``PeftModel.from_pretrained`` then ``merge_and_unload``), with the same refusals.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import hub
from .base import ModelError, read_json_object

log = logging.getLogger("cxrgen")

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")

_LINEAR_KEY = re.compile(r"(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.[\w-]+)?\.weight")
_EMBEDDING_KEY = re.compile(r"(?P<module>.+)\.(?P<kind>lora_embedding_A|lora_embedding_B)(?:\.[\w-]+)?")
_PEFT_PREFIX = "base_model.model."


@dataclass
class Adapter:
    """An adapter folder, found and read (no tensor loaded yet)."""

    spec: str  # model.adapter as configured
    folder: Path
    commit: str | None  # Hub commit, when it came from the Hub cache
    config: dict[str, Any]  # adapter_config.json
    weights: Path

    def where(self) -> str:
        return f"model.adapter {self.spec}"


# -- finding and reading ------------------------------------------------------------------------------------------

def resolve_adapter(model_cfg) -> Adapter:
    """The adapter folder of ``model.adapter`` with its config read and checked (peft_type LoRA, files present)."""
    spec = str(model_cfg.adapter)
    folder, commit = _adapter_folder(spec, model_cfg.allow_download)
    config_file = folder / CONFIG_FILE
    config = read_json_object(config_file, f"model.adapter {spec}: no {CONFIG_FILE} in {folder} (not a PEFT adapter "
                                           "folder)")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ModelError(f"{config_file}: peft_type is {config.get('peft_type')!r}; only LoRA adapters (LORA) can be "
                         "merged")
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise ModelError(f"model.adapter {spec}: no {' or '.join(WEIGHT_FILES)} in {folder}")
    return Adapter(spec, folder, commit, config, weights)


def adapter_digest(model_cfg) -> str:
    """sha256 over the adapter's config and weight file: what identifies its content, wherever it lies."""
    adapter = resolve_adapter(model_cfg)
    return hashlib.sha256(f"{_sha256(adapter.folder / CONFIG_FILE)}:{_sha256(adapter.weights)}".encode()).hexdigest()


def _adapter_folder(spec: str, allow_download: bool) -> tuple[Path, str | None]:
    return hub.find(hub.Lookup("model.adapter", spec, None, (CONFIG_FILE,), (tuple(WEIGHT_FILES),), "adapter",
                               allow_download))


def read_tensors(adapter: Adapter) -> dict[str, torch.Tensor]:
    """All tensors of the adapter's weight file, on the CPU."""
    try:
        if adapter.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(adapter.weights), device="cpu")
        state = torch.load(adapter.weights, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise their own error types for unreadable files
        raise ModelError(f"{adapter.weights}: not a readable weights file ({e})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{adapter.weights}: expected a dictionary of tensors")
    return state


def _tensor_names(adapter: Adapter) -> set[str]:
    if adapter.weights.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(adapter.weights), framework="pt") as f:
                return set(f.keys())
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise ModelError(f"{adapter.weights}: not a readable weights file ({e})") from None
    return set(read_tensors(adapter))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(adapter: Adapter, n_modules: int) -> dict[str, Any]:
    """What run.json records about a merged adapter."""
    cfg = adapter.config
    out = {"path": adapter.spec, "folder": str(adapter.folder), "commit": adapter.commit, "peft_type": "LORA",
           "r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha"), "use_rslora": bool(cfg.get("use_rslora")),
           "target_modules": _target_list(cfg.get("target_modules")), "modules_merged": n_modules,
           "base_model_name_or_path": cfg.get("base_model_name_or_path"), "weights_file": adapter.weights.name,
           "sha256": _sha256(adapter.weights), "config_sha256": _sha256(adapter.folder / CONFIG_FILE)}
    for key in ("rank_pattern", "alpha_pattern", "use_dora"):
        if cfg.get(key):
            out[key] = cfg[key]
    return out


def _target_list(targets):
    return sorted(targets) if isinstance(targets, (list, tuple, set)) else targets


# -- checks shared by both backends -------------------------------------------------------------------------------

def check_base(adapter: Adapter, model_cfg, model_folder: str | Path | None) -> None:
    """Refuse an adapter whose ``base_model_name_or_path`` is a Hub id other than the model's; warn on a mere
    difference of local paths (the same weights live under many paths)."""
    base = adapter.config.get("base_model_name_or_path")
    if not base:
        return
    model_id = _hub_id(str(model_cfg.name_or_path)) or _cache_repo_id(model_folder)
    same = {_norm(str(model_cfg.name_or_path))}
    if model_folder:
        same.add(_norm(str(model_folder)))
    if model_id:
        same.add(_norm(model_id))
    if _norm(base) in same:
        return
    base_id = _hub_id(base)
    if base_id and model_id and _norm(base_id) != _norm(model_id):
        raise ModelError(f"{adapter.folder / CONFIG_FILE}: base_model_name_or_path is {base}, but the model is "
                         f"{model_id}: this adapter was trained on another model")
    if Path(str(base).rstrip("/")).name.lower() == Path(str(model_cfg.name_or_path).rstrip("/")).name.lower():
        return
    log.warning("%s: base_model_name_or_path %s differs from model.name_or_path %s (merging anyway: local paths "
                "differ between machines; the tensor shapes are checked)", adapter.where(), base,
                model_cfg.name_or_path)


def _norm(text: str) -> str:
    return text.strip().rstrip("/").lower()


def _hub_id(text: str) -> str | None:
    """``owner/name`` when ``text`` looks like a Hub id and is not an existing local path."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text.strip()) and not Path(text).expanduser().exists():
        return text.strip()
    return None


def _cache_repo_id(folder) -> str | None:
    """The Hub id of a Hugging Face cache snapshot folder (``.../models--owner--name/snapshots/<commit>``)."""
    if not folder:
        return None
    for part in Path(folder).parts:
        m = re.fullmatch(r"models--([^-].*?)--(.+)", part)
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    return None


# -- CXR-LLaVA: merged by hand ------------------------------------------------------------------------------------

@dataclass
class _Update:
    key: str  # the A tensor's name in the adapter file
    module_name: str  # the module's name in the adapter (PEFT's, without base_model.model.)
    module: nn.Module
    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    embedding: bool


def merge_cxr_llava_adapter(model, model_cfg) -> dict[str, Any]:
    """Merge ``model.adapter`` into a loaded :class:`~cxrgen.models.cxr_llava.CxrLlava` in place; what was merged
    (path, folder, commit, r, alpha, target modules, sha256 of the weights) for run.json.

    Every tensor must be a LoRA A or B matrix of a targeted ``nn.Linear`` (or ``nn.Embedding``) of the model with
    fitting shapes; otherwise a one-line :class:`ModelError` names the tensor and nothing has been changed.
    """
    adapter = resolve_adapter(model_cfg)
    config = adapter.config
    check_base(adapter, model_cfg, getattr(model, "source", None))
    for key, why in (("use_dora", "DoRA adapters"), ("target_parameters", "LoRA on bare parameters"),
                     ("modules_to_save", "full copies of modules (modules_to_save)")):
        if config.get(key):
            raise ModelError(f"{adapter.folder / CONFIG_FILE}: {key} is set; {why} cannot be merged by the cxr_llava "
                             "backend")
    if config.get("fan_in_fan_out"):
        log.warning("%s: fan_in_fan_out is true, but the adapted layers are nn.Linear ([out, in] weights): ignored, "
                    "as PEFT does for nn.Linear", adapter.where())
    tensors = read_tensors(adapter)
    if not tensors:
        raise ModelError(f"{adapter.weights}: holds no tensors")
    updates = _plan_updates(model, adapter, tensors)
    for u in updates:
        _apply(u)
    log.info("%s: merged LoRA (r=%s, alpha=%s) into %d modules", adapter.where(), config.get("r"),
             config.get("lora_alpha"), len(updates))
    return _record(adapter, len(updates))


def _plan_updates(model, adapter: Adapter, tensors: dict[str, torch.Tensor]) -> list[_Update]:
    """Pair the A and B tensors per module and check everything against the model; nothing is changed here."""
    where = str(adapter.weights)
    pairs: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key in sorted(tensors):
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        m = _LINEAR_KEY.fullmatch(name) or _EMBEDDING_KEY.fullmatch(name)
        if m is None:
            raise ModelError(f"{where}: tensor {key} is not a LoRA A or B matrix (full weights, biases, DoRA "
                             "magnitudes and modules_to_save cannot be merged by the cxr_llava backend)")
        kind = "A" if m.group("kind").endswith("A") else "B"
        slot = pairs.setdefault(m.group("module"), {})
        if kind in slot:
            raise ModelError(f"{where}: tensor {key} repeats {slot[kind][0]} (two LoRA {kind} matrices for one module)")
        slot[kind] = (key, tensors[key])
    updates: list[_Update] = []
    targets: dict[str, str] = {}  # model module name -> adapter key, to catch two layouts naming one module
    for module_name, slot in pairs.items():
        for kind in ("A", "B"):
            if kind not in slot:
                other = next(iter(slot.values()))[0]
                raise ModelError(f"{where}: tensor {other} has no matching lora_{kind} tensor")
        (key_a, a), (key_b, b) = slot["A"], slot["B"]
        if not _targeted(module_name, adapter.config):
            raise ModelError(f"{where}: tensor {key_a} is for module {module_name}, which target_modules "
                             f"{adapter.config.get('target_modules')!r} of {CONFIG_FILE} does not select")
        own = _model_module_name(module_name)
        try:
            module = model.get_submodule(own)
        except AttributeError:
            raise ModelError(f"{where}: tensor {key_a} matches no module of the model (no {own}; expected names "
                             "like base_model.model.llama.layers.N.self_attn.q_proj.lora_A.weight)") from None
        if own in targets:
            raise ModelError(f"{where}: tensors {targets[own]} and {key_a} both adapt {own}")
        targets[own] = key_a
        embedding = ".lora_embedding_" in key_a
        if embedding and not isinstance(module, nn.Embedding) or not embedding and not isinstance(module, nn.Linear):
            raise ModelError(f"{where}: tensor {key_a} adapts {own}, a {type(module).__name__}, which is not "
                             f"{'an nn.Embedding' if embedding else 'an nn.Linear'}")
        if a.dim() != 2 or b.dim() != 2:
            raise ModelError(f"{where}: tensor {key_a if a.dim() != 2 else key_b} is not a matrix "
                             f"(shape {tuple(a.shape) if a.dim() != 2 else tuple(b.shape)})")
        rank = a.shape[0]
        n_in, n_out = ((module.num_embeddings, module.embedding_dim) if embedding
                       else (module.in_features, module.out_features))
        for key, tensor, want in ((key_a, a, (rank, n_in)), (key_b, b, (n_out, rank))):
            if tuple(tensor.shape) != want:
                raise ModelError(f"{where}: tensor {key} has shape {tuple(tensor.shape)}, but {own} needs {want}")
        r_cfg, alpha = _rank_alpha(module_name, adapter.config)
        if r_cfg != rank:
            raise ModelError(f"{where}: tensor {key_a} has rank {rank}, but {CONFIG_FILE} gives r={r_cfg} for "
                             f"{module_name}")
        scaling = alpha / math.sqrt(rank) if adapter.config.get("use_rslora") else alpha / rank
        updates.append(_Update(key_a, module_name, module, a, b, scaling, embedding))
    if not updates:
        raise ModelError(f"{where}: holds no LoRA tensors")
    return updates


def _model_module_name(name: str) -> str:
    """A module name in the adapter -> the module's name in CxrLlava (see checkpoint.target_name)."""
    for prefix in ("llama.", "model."):
        if name.startswith(prefix):
            return "language_model.model." + name[len(prefix):]
    if name == "lm_head":
        return "language_model.lm_head"
    return name


def _targeted(name: str, config: dict) -> bool:
    """Whether PEFT would have put a LoRA layer on module ``name`` under this adapter_config.json."""
    targets = config.get("target_modules")
    if targets is None:
        selected = True
    elif targets == "all-linear":  # PEFT's all-linear leaves the output layer out
        selected = not name.endswith("lm_head")
    elif isinstance(targets, str):
        selected = re.fullmatch(targets, name) is not None
    else:
        selected = any(name == t or name.endswith("." + t) for t in targets)
    excluded = config.get("exclude_modules")
    if excluded:
        if isinstance(excluded, str):
            selected = selected and re.fullmatch(excluded, name) is None
        else:
            selected = selected and not any(name == t or name.endswith("." + t) for t in excluded)
    layers = config.get("layers_to_transform")
    if selected and layers is not None and not isinstance(targets, str):
        layers = [layers] if isinstance(layers, int) else list(layers)
        pattern = config.get("layers_pattern") or "layers"
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        index = None
        for p in patterns:
            m = re.search(rf"(?:^|\.){re.escape(p)}\.(\d+)\.", name)
            if m:
                index = int(m.group(1))
                break
        selected = index is not None and index in layers
    return selected


def _rank_alpha(name: str, config: dict) -> tuple[int, float]:
    """r and lora_alpha of module ``name``: rank_pattern / alpha_pattern entries (regular expressions matched at
    the end of the name, as PEFT matches them) before the global values."""
    r = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", 8))
    for key, value in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            r = int(value)
            break
    for key, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            alpha = float(value)
            break
    return r, alpha


@torch.no_grad()
def _apply(u: _Update) -> None:
    weight = u.module.weight
    a = u.a.to(weight.device, torch.float32)
    b = u.b.to(weight.device, torch.float32)
    delta = (b @ a) * u.scaling  # [out, in]
    if u.embedding:
        delta = delta.T  # nn.Embedding stores [num_embeddings, dim]
    merged = weight.detach().float() + delta
    weight.data.copy_(merged.to(weight.dtype))


# -- transformers: through PEFT -----------------------------------------------------------------------------------

def merge_transformers_adapter(model, model_cfg) -> dict[str, Any]:
    """Merge ``model.adapter`` into a transformers model in place through PEFT; what was merged, for run.json.

    The adapter's tensors must be exactly the ones PEFT expects for this model and config (no tensor left over,
    none missing); a shape mismatch, a target module the model lacks or another base model is a one-line
    :class:`ModelError`. On a bitsandbytes-quantized model PEFT dequantizes, adds and quantizes again (lossy):
    a warning says so.
    """
    try:
        from peft import LoraConfig, PeftModel
        from peft.utils import get_peft_model_state_dict
    except ImportError as e:
        raise ModelError(f"model.adapter needs the peft package for the transformers backend ({e}); "
                         "pip install -r requirements.txt") from None
    adapter = resolve_adapter(model_cfg)
    check_base(adapter, model_cfg, getattr(model, "name_or_path", None) or model_cfg.name_or_path)
    if getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None):
        log.warning("%s: merging into a quantized model: PEFT dequantizes, adds and quantizes again, which rounds "
                    "the adapter's change", adapter.where())
    stored = _tensor_names(adapter)
    try:
        config = LoraConfig.from_pretrained(str(adapter.folder))
    except Exception as e:  # an unknown field or a bad value in adapter_config.json
        raise ModelError(f"{adapter.folder / CONFIG_FILE}: {_first_line(e)}") from None
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing and unexpected keys are checked below, by name
            wrapped = PeftModel.from_pretrained(model, str(adapter.folder), config=config, is_trainable=False)
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        _strip_lora_layers(model)  # leave the model as it was
        raise ModelError(f"{adapter.where()}: {_first_line(e)}") from None
    expected = set(get_peft_model_state_dict(wrapped))
    unexpected = sorted(stored - expected)
    missing = sorted(expected - stored)
    if unexpected or missing:
        _strip_lora_layers(model)
        if unexpected:
            raise ModelError(f"{adapter.weights}: tensor {unexpected[0]} matches no LoRA layer of the model "
                             f"({len(unexpected)} such tensors; expected names like {min(expected, default='-')})")
        raise ModelError(f"{adapter.weights}: no tensor {missing[0]} for a module that target_modules selects "
                         f"({len(missing)} missing)")
    n_modules = len({k.rsplit(".lora_", 1)[0] for k in expected if ".lora_" in k})
    wrapped.merge_and_unload()
    log.info("%s: merged LoRA (r=%s, alpha=%s) into %d modules", adapter.where(), adapter.config.get("r"),
             adapter.config.get("lora_alpha"), n_modules)
    return _record(adapter, n_modules)


def _strip_lora_layers(model) -> None:
    """Put back the original layers where PEFT has injected LoRA layers (after a failed load)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def _first_line(e: BaseException) -> str:
    """The exception as one line: its first line, and the next one when the first only introduces it."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return f"{type(e).__name__}: {text}"
