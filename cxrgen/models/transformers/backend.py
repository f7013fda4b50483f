"""Any image-text-to-text checkpoint that transformers loads, as a report generator (:mod:`cxrgen.models.base`).

Loading: ``AutoProcessor`` + ``AutoModelForImageTextToText`` (``AutoModelForVision2Seq`` on older transformers that
still have it, for the checkpoints only it maps) from a local folder or a Hub snapshot in the local cache; nothing is
downloaded unless ``model.allow_download`` (and ``HF_HUB_OFFLINE`` is not set). The checkpoint's own Python files
never run unless ``model.trust_remote_code``. Every check (folder, processor, model class, remote code) happens in
:func:`load`, before any image is read.

Inputs: each study's 8-bit grey image is converted to RGB (``Image.convert("RGB")``) and goes through the processor's
own resizing and normalisation. Where the processor allows it, that image part runs in the DataLoader workers
(:class:`PrepareImage` holds the image processor) and the text side in the main process: this is so when the
processor's text output (the prompt with its image tokens expanded) does not depend on the image, which
:func:`load` checks on probe images of two sizes and aspect ratios, together with the image processor alone giving
what the whole processor gives. Processors that expand image tokens by image size (tiled, "any resolution" ones)
fail that check; for them the workers only convert to RGB and the whole processor runs in the main process per
batch (``describe()["processor_split"]`` says which).

Prompt: ``[{"role": "system", "content": [{"type": "text", "text": prompt.system}]}]`` when ``prompt.system`` is
set and non-empty (the content as a plain string instead for templates that only take strings), then
``{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.user}]}``, rendered by
``processor.apply_chat_template(..., add_generation_prompt=True, tokenize=False)``. A processor without a chat
template (e.g. a BLIP captioner) takes ``prompt.user`` as the text as it is, and no text at all when it is empty.
``prompt.user`` must be set: there is no model-independent report prompt. The rendered text is tokenised as the
processor's own ``apply_chat_template(tokenize=True)`` does it (no second BOS when the template writes one); batches
are left-padded.

Decoding: greedy unless ``generation.temperature`` > 0, with the checkpoint's other generation settings
(``generation_config.json``: repetition penalty and the like) as ``model.generate`` applies them. Sampling uses
temperature and top-p only, and each study draws from its own ``torch.Generator`` seeded with its seed, inside a
logits processor that picks the token (so a sampled report does not depend on the batch it ran in). A report is the
new tokens up to the first end-of-sequence id (``generation_config.eos_token_id``; BLIP's ``[SEP]``), decoded with
``skip_special_tokens=True`` and stripped.
"""

from __future__ import annotations

import copy
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .. import hub
from ..base import (Finished, GeneratedReport, Item, ModelError, checkpoint_digest, random_weights, read_json_object,
                    static_batches, top_p_filter)

log = logging.getLogger("cxrgen")

#: Files fetched from the Hub: configs, tokenizer and processor files, chat templates and the weights (safetensors;
#: the .bin weights only for repositories without safetensors). Python files only with trust_remote_code.
HUB_FILES = ["*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken"]
SAFETENSORS_FILES = ["*.safetensors"]
BIN_FILES = ["*.bin"]

#: Model types whose generate() stops at a token of its own rather than generation_config.eos_token_id.
_SEP_STOPPING = {"blip"}


# -- finding the checkpoint --------------------------------------------------------------------------------------

def resolve(model_cfg, allow_download: bool | None = None) -> tuple[Path, str | None]:
    """The local folder of ``model.name_or_path`` and the Hub commit it is (None for a plain local folder), through
    :func:`cxrgen.models.hub.find`."""
    allow = model_cfg.allow_download if allow_download is None else allow_download
    files = tuple(HUB_FILES + (["*.py"] if model_cfg.trust_remote_code else []))
    return hub.find(hub.Lookup("model.name_or_path", model_cfg.name_or_path, model_cfg.revision, files,
                               (tuple(SAFETENSORS_FILES), tuple(BIN_FILES)), allow_download=allow))


def locate(model_cfg) -> tuple[Path, str | None]:
    """(local folder, Hub commit or None) of the checkpoint, without downloading."""
    return resolve(model_cfg, allow_download=False)


def download(model_cfg) -> tuple[Path, str | None]:
    return resolve(model_cfg, allow_download=True)


def _read_config(folder: Path) -> dict:
    file = folder / "config.json"
    return read_json_object(file, f"{file}: missing (a transformers checkpoint folder has config.json)")


def _model_class(folder: Path, raw: dict, trust_remote_code: bool):
    """The config and the auto class that loads this checkpoint; a one-line ModelError when none can."""
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = raw.get("model_type")
    auto_map = raw.get("auto_map") or {}
    if model_type not in CONFIG_MAPPING and not trust_remote_code:
        if auto_map:
            raise ModelError(
                f"{folder / 'config.json'}: model_type {model_type!r} needs the checkpoint's own Python code "
                f"(auto_map: {', '.join(sorted(set(auto_map.values())))}), which runs only with "
                "model.trust_remote_code: true (off by default: it executes the repository's files)")
        raise ModelError(f"{folder / 'config.json'}: model_type {model_type!r} is not known to transformers "
                         f"{transformers.__version__}")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{folder / 'config.json'}: transformers cannot read it ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    candidates = [AutoModelForImageTextToText]
    if getattr(transformers, "AutoModelForVision2Seq", None) is not None:  # removed in transformers 5
        candidates.append(transformers.AutoModelForVision2Seq)
    for auto in candidates:
        remote = trust_remote_code and auto.__name__ in auto_map
        if remote or type(config) in auto._model_mapping:
            return config, auto
    arch = ", ".join(raw.get("architectures") or []) or "no architectures listed"
    raise ModelError(f"{folder / 'config.json'}: model_type {model_type!r} ({arch}) is not an image-text-to-text "
                     "model: AutoModelForImageTextToText cannot load it")


def _processor(folder: Path, trust_remote_code: bool):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"{folder}: no usable processor ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise ModelError(f"{folder}: no processor with both an image processor and a tokenizer "
                         f"(AutoProcessor gave {type(processor).__name__}; expected processor_config.json or "
                         "preprocessor_config.json beside the tokenizer files)")
    return processor


# -- per-study inputs --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrepareImage:
    """Picklable per-study work for the DataLoader workers: 8-bit grey PIL image -> RGB -> the processor's image
    part (a dict of numpy arrays with a batch axis of 1, the keys in ``keys``); with ``image_processor`` None, the
    RGB image itself (the whole processor then runs in the main process)."""

    image_processor: Any = None
    keys: tuple[str, ...] = ()

    def __call__(self, image):
        rgb = image.convert("RGB")
        if self.image_processor is None:
            return rgb
        out = _as_numpy(self.image_processor(images=[rgb], return_tensors="pt"))
        return {key: out[key] for key in self.keys}


def _as_numpy(features) -> dict[str, np.ndarray]:
    out = {}
    for key, value in dict(features).items():
        out[key] = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return out


def _call_processor(processor, text: str | None, images: list, text_kwargs: dict, padding: bool = False):
    """The processor on one prompt per image (no text when ``text`` is None or empty), as PyTorch tensors."""
    texts = None if text is None or text == "" else [text] * len(images)
    kwargs = dict(text_kwargs, return_tensors="pt")
    if texts is not None and padding:
        kwargs["padding"] = True
    return processor(text=texts, images=[[image] for image in images], **kwargs)


@dataclass(frozen=True)
class StudyInputs:
    """Picklable: one study's model inputs on the CPU (batch axis of 1) from what :class:`PrepareImage` gave it.

    A split processor (``text_inputs`` set): the text side, the same for every study, with the study's image part.
    Otherwise the whole ``processor`` on the RGB image and ``text``."""

    text_inputs: dict | None = None
    processor: Any = None
    text: str | None = None
    text_kwargs: dict | None = None

    def __call__(self, inputs) -> dict:
        import torch

        if self.text_inputs is not None:
            return {**self.text_inputs,
                    **{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}}
        return dict(_call_processor(self.processor, self.text, [inputs], self.text_kwargs or {}))


def _probe_images():
    """Two RGB test images of different sizes and aspect ratios, with structure (not constant)."""
    from PIL import Image

    images = []
    for w, h in ((71, 53), (40, 97)):
        y, x = np.mgrid[0:h, 0:w]
        grey = ((x * 7 + y * 3) % 256).astype(np.uint8)
        images.append(Image.fromarray(grey, mode="L").convert("RGB"))
    return images


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


# -- the backend -------------------------------------------------------------------------------------------------

class TransformersBackend:
    """A loaded transformers model and its processor behind the pipeline's interface."""

    name = "transformers"

    def __init__(self, model, processor, *, source: str, folder: Path, revision: str | None,
                 trust_remote_code: bool = False, adapter: dict | None = None, quantization: str = "none",
                 eos_token_ids: Iterable[int] = ()):
        self.model = model
        self.processor = processor
        self.source = source
        self.folder = folder
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.adapter = adapter
        self.quantization = quantization
        self.eos_token_ids = set(int(i) for i in eos_token_ids)
        processor.tokenizer.padding_side = "left"
        self.chat_template = _chat_template(processor)
        self._text_cache: dict[str, dict] = {}
        self.image_keys = self._check_split()

    @property
    def device(self):
        return self.model.device

    # -- what ran ----------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:

        classes = {"model": type(self.model), "processor": type(self.processor),
                   "image_processor": type(self.processor.image_processor),
                   "tokenizer": type(self.processor.tokenizer)}
        foreign = sorted(f"{c.__module__}.{c.__name__}" for c in classes.values()
                         if not c.__module__.startswith("transformers."))
        if not self.trust_remote_code:
            remote = "off"
        elif foreign:
            remote = "repository code was executed: " + ", ".join(foreign)
        else:
            remote = "allowed; the checkpoint has no code of its own, none was executed"
        return {"backend": self.name, "source": self.source, "folder": str(self.folder),
                "revision": self.revision, "digest": checkpoint_digest(self.folder),
                "dtype": str(self.model.dtype).replace("torch.", ""), "device": str(self.model.device),
                "adapter": self.adapter, "quantization": self.quantization,
                "trust_remote_code": self.trust_remote_code, "remote_code": remote,
                "model_class": classes["model"].__name__, "processor_class": classes["processor"].__name__,
                "image_processor_class": classes["image_processor"].__name__,
                "processor_split": "image part in the loader workers" if self.split
                else "whole processor in the main process",
                "transformers": _transformers_version(), "random_weights": random_weights(self.folder)}

    # -- prompt ------------------------------------------------------------------------------------------------

    def render_prompt(self, prompt) -> str:
        user = None if prompt is None else prompt.user
        if user is None:
            raise ModelError("prompt.user must be set for model.backend transformers (there is no "
                             "model-independent report prompt; the files in configs/ set each model's)")
        if self.chat_template is None:
            return user
        system = None if prompt is None else prompt.system
        return self._render(system, user)

    def _render(self, system: str | None, user: str) -> str:
        turn = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}
        if not system or not system.strip():
            return self._apply_template([turn])
        try:
            text = self._apply_template([{"role": "system", "content": [{"type": "text", "text": system}]}, turn])
            if "{'type': 'text'" not in text:  # a template that printed the list rather than its text
                return text
        except Exception as e:  # noqa: BLE001 - jinja raises many types for a template that wants a string
            log.debug("chat template refused a list system message (%s); trying a plain string", e)
        return self._apply_template([{"role": "system", "content": system}, turn])

    def _apply_template(self, messages) -> str:
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"{self.folder}: the chat template cannot render the prompt "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None

    def _text_kwargs(self, text: str | None) -> dict:
        """Processor text arguments as ``apply_chat_template(tokenize=True)`` would pass them."""
        bos = self.processor.tokenizer.bos_token
        if text is not None and self.chat_template is not None and bos is not None and text.startswith(bos):
            return {"add_special_tokens": False}
        return {}

    def _run_processor(self, text: str | None, images: list, padding: bool = False):
        try:
            return _call_processor(self.processor, text, images, self._text_kwargs(text), padding)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise ModelError(f"prompt.user: the processor {type(self.processor).__name__} of {self.folder} cannot "
                             f"take the prompt with an image ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None

    # -- where the processor runs ------------------------------------------------------------------------------

    def _image_part(self, image):
        return _as_numpy(self.processor.image_processor(images=[image], return_tensors="pt"))

    def _check_split(self) -> tuple[str, ...] | None:
        """The image keys of the processor output when the image part can run in the workers, else None: the text
        output must be the same for probe images of different sizes, the image processor alone must give what the
        whole processor gives, and what the processor consumes itself (e.g. ``num_crops``) must not vary."""
        try:
            pickle.dumps(self.processor.image_processor)
        except Exception as e:  # noqa: BLE001
            log.info("the image processor does not pickle (%s): the whole processor runs in the main process", e)
            return None
        text = "A chest radiograph." if self.chat_template is None else self._render(None, "Describe the image.")
        outputs = []
        for image in _probe_images():
            try:
                outputs.append((_as_numpy(self._run_processor(text, [image])), self._image_part(image)))
            except Exception as e:  # noqa: BLE001 - any failure here only means: do not split
                log.info("the processor could not be split (%s): it runs whole in the main process", e)
                return None
        (full_a, part_a), (full_b, part_b) = outputs
        image_keys = set(part_a) & set(full_a)
        if set(full_a) != set(full_b) or set(part_a) != set(part_b) or not image_keys:
            return None
        if any(not _same(full_a[k], full_b[k]) for k in set(full_a) - image_keys):
            return None  # the prompt's image tokens depend on the image
        if any(not _same(part_a[k], part_b[k]) for k in set(part_a) - image_keys):
            return None  # what the processor consumes itself varies with the image
        for full, part in ((full_a, part_a), (full_b, part_b)):
            if any(not _same(full[k], part[k]) for k in image_keys):
                return None
        if any(np.shape(part_a[k]) != np.shape(part_b[k]) for k in image_keys):
            return None
        return tuple(sorted(image_keys))

    @property
    def split(self) -> bool:
        return self.image_keys is not None

    def image_preparer(self) -> PrepareImage:
        return PrepareImage(self.processor.image_processor, self.image_keys) if self.split else PrepareImage()

    def _text_inputs(self, text: str | None) -> dict:
        """The text side of the processor output for one study (the same for every image when split)."""
        if text not in self._text_cache:
            full = self._run_processor(text, [_probe_images()[0]])
            self._text_cache[text] = {k: v for k, v in full.items() if k not in self.image_keys}
        return self._text_cache[text]

    # -- generation --------------------------------------------------------------------------------------------

    def stream(self, items: Iterable[Item], prompt, generation) -> Iterator[Finished]:
        text = self.render_prompt(prompt)
        if generation.batch_invariant:
            raise ModelError("generation.batch_invariant: true is supported by the cxr_llava backend only; "
                             "transformers' generate gives no such guarantee")
        if generation.cuda_graphs == "on":
            log.warning("generation.cuda_graphs: on has no effect on the transformers backend (it decodes with "
                        "transformers' generate)")
        if self.split:
            self._text_inputs(text)  # a prompt the processor refuses is an error before the first batch

        def generate(batch: list[Item]) -> list[GeneratedReport]:
            return self.generate_batch(batch, text, generation)

        yield from static_batches(generate, items, generation.batch_size)

    def study_inputs(self, text: str | None) -> "StudyInputs":
        """The picklable builder of one study's inputs for the prompt ``text`` (generation's batches are made of
        these; fine-tuning builds its sequences on them)."""
        if self.split:
            return StudyInputs(text_inputs=self._text_inputs(text))
        return StudyInputs(processor=self.processor, text=text, text_kwargs=self._text_kwargs(text))

    def batch_inputs(self, batch: list[Item], text: str | None) -> dict:
        import torch

        if self.split:
            study = self.study_inputs(text)
            parts = [study(item.inputs) for item in batch]
            inputs = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
        else:
            inputs = dict(self._run_processor(text, [item.inputs for item in batch], padding=True))
        dtype = self.model.dtype
        return {k: v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in inputs.items()}

    def generation_config(self, generation):
        config = copy.deepcopy(self.model.generation_config)
        config.do_sample = False  # sampling, when asked for, happens in _RowSampler
        for key in ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"):
            if hasattr(config, key):
                setattr(config, key, None)
        config.num_beams = 1
        config.num_return_sequences = 1
        config.max_new_tokens = generation.max_new_tokens
        config.max_length = None
        if config.pad_token_id is None and self.eos_token_ids:
            config.pad_token_id = min(self.eos_token_ids)
        return config

    def generate_batch(self, batch: list[Item], text: str | None, generation) -> list[GeneratedReport]:
        import torch
        from transformers import LogitsProcessorList

        inputs = self.batch_inputs(batch, text)
        sampler = _RowSampler([item.seed for item in batch], generation.temperature, generation.top_p, self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self.generation_config(generation),
                                      logits_processor=LogitsProcessorList([sampler]))
        sequences = getattr(out, "sequences", out)
        new = sequences[:, sequences.shape[1] - sampler.steps:].tolist()
        reports = []
        for row in new:
            end = next((j for j, token in enumerate(row) if token in self.eos_token_ids), None)
            ids = row if end is None else row[:end]
            text_out = self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
            reports.append(GeneratedReport(text_out, ids, len(ids), end is not None))
        return reports


class _RowSampler:
    """Last logits processor of every generate call: counts the decoding steps and, when sampling, draws each row's
    token with temperature and top-p from that row's own generator (the greedy pick that follows then takes it)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        import torch

        self.steps = 0
        self.temperature = temperature
        self.top_p = top_p
        self.generators = None
        if temperature > 0:
            self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        self.steps += 1
        if self.generators is None:
            return scores
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        probs = top_p_filter(probs, self.top_p)
        picked = torch.full_like(scores, float("-inf"))
        for row, generator in enumerate(self.generators):
            token = torch.multinomial(probs[row], 1, generator=generator)
            picked[row, token] = 0.0
        return picked


def _chat_template(processor) -> str | None:
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    return template or None


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _eos_token_ids(model, processor) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if getattr(model.config, "model_type", None) in _SEP_STOPPING:
        sep = getattr(model.config.get_text_config(), "sep_token_id", None)
        if sep is not None:
            ids.append(sep)
    if not ids and processor.tokenizer.eos_token_id is not None:
        ids.append(processor.tokenizer.eos_token_id)
    return ids


def _dtype_keyword() -> str:
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load(model_cfg) -> TransformersBackend:
    from ..base import resolve_device, resolve_dtype

    folder, commit = resolve(model_cfg)
    raw = _read_config(folder)
    trust = bool(model_cfg.trust_remote_code)
    if trust:
        log.warning("model.trust_remote_code is true: transformers may execute Python files of %s (%s)",
                    model_cfg.name_or_path, ", ".join(sorted(set((raw.get("auto_map") or {}).values()))) or
                    "its config.json maps no class to code of its own")
    config, auto = _model_class(folder, raw, trust)
    processor = _processor(folder, trust)
    try:
        device = resolve_device(model_cfg.device)
    except ValueError as e:  # e.g. model.device: cuda on a machine without CUDA
        raise ModelError(f"model.device {model_cfg.device}: {e}") from None
    dtype = resolve_dtype(model_cfg.dtype, device)
    kwargs: dict[str, Any] = {_dtype_keyword(): dtype, "trust_remote_code": trust, "local_files_only": True}

    # -- quantization (bitsandbytes): only imported when asked for
    if model_cfg.quantization != "none":
        from ..quantization import bitsandbytes_config, check_quantization

        check_quantization(model_cfg)
        quantization_config = bitsandbytes_config(model_cfg)
        if quantization_config is not None:
            kwargs.update(quantization_config=quantization_config, device_map={"": str(device)})

    try:
        model = auto.from_pretrained(folder, config=config, **kwargs)
    except ModelError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"model.name_or_path {model_cfg.name_or_path} ({folder}): the weights do not load "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()

    # -- LoRA adapter: merged into the weights, only imported when one is configured
    adapter = None
    if model_cfg.adapter:
        from ..adapters import merge_transformers_adapter

        adapter = merge_transformers_adapter(model, model_cfg)

    return TransformersBackend(model, processor, source=model_cfg.name_or_path, folder=folder, revision=commit,
                               trust_remote_code=trust, adapter=adapter, quantization=model_cfg.quantization,
                               eos_token_ids=_eos_token_ids(model, processor))
