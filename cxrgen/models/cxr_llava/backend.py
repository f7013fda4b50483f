"""CXR-LLaVA-v2 as a report generator of the pipeline (:mod:`cxrgen.models.base`).

Inputs per study: the published preprocessing (preprocess.py) in the DataLoader workers, float32 pixels [1, S, S].
Prompt: the published report prompt unless ``prompt.system`` / ``prompt.user`` are set (the image goes before the
user text). Decoding: continuous batching (:meth:`CxrLlava.stream_reports`): ``generation.batch_size`` slots, a
finished study's slot refilled with the next one at once, reports handed back as they finish (completion order);
``generation.cuda_graphs`` captures the decode step on CUDA. ``CxrLlavaBackend.batching = "static"`` runs fixed
batches instead (:func:`cxrgen.models.base.static_batches`), for comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..base import Finished, Item, ModelError, checkpoint_digest, random_weights, static_batches
from . import checkpoint as ckpt
from .preprocess import preprocess_image
from .prompt import REPORT_SYSTEM_PROMPT, REPORT_USER_PROMPT, render_prompt

log = logging.getLogger("cxrgen")


@dataclass(frozen=True)
class PreparePixels:
    """Picklable per-study preprocessing: 8-bit grey PIL image -> float32 pixels [1, S, S] (numpy only)."""

    image_size: int
    mean: float
    std: float

    def __call__(self, image) -> np.ndarray:
        return preprocess_image(image, self.image_size, self.mean, self.std)


def _prompt_parts(prompt) -> tuple[str, str]:
    system = REPORT_SYSTEM_PROMPT if prompt is None or prompt.system is None else prompt.system
    user = REPORT_USER_PROMPT if prompt is None or prompt.user is None else prompt.user
    return system, user


class CxrLlavaBackend:
    """A loaded :class:`CxrLlava` behind the pipeline's interface."""

    name = "cxr_llava"
    batching = "continuous"  # or "static": fixed batches, each decoded until its longest report ends

    def __init__(self, model, *, adapter: dict | None = None, quantization: str = "none"):
        self.model = model
        self.adapter = adapter  # what was merged into the weights (path, digest, ...), or None
        self.quantization = quantization

    @property
    def device(self):
        return self.model.device

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "source": self.model.source, "revision": self.model.revision,
                "digest": checkpoint_digest(Path(self.model.source)) if self.model.source else None,
                "dtype": str(self.model.dtype).replace("torch.", ""), "device": str(self.model.device),
                "adapter": self.adapter, "quantization": self.quantization, "trust_remote_code": False,
                "random_weights": bool(self.model.source) and random_weights(Path(self.model.source))}

    def image_preparer(self) -> PreparePixels:
        cfg = self.model.config
        return PreparePixels(cfg.vision.image_size, cfg.image_mean, cfg.image_std)

    def render_prompt(self, prompt) -> str:
        return render_prompt(*_prompt_parts(prompt))

    def stream(self, items: Iterable[Item], prompt, generation) -> Iterator[Finished]:
        from .decoding import Request, Shapes, resolve_cuda_graphs

        ids = self.model.tokenizer.encode_prompt(self.render_prompt(prompt))
        cuda_graphs = generation.cuda_graphs
        if cuda_graphs == "auto" and self.quantization != "none" and self.device.type == "cuda":
            # bitsandbytes' 8-bit layers handle outliers data-dependently (host synchronisation), which graph
            # capture cannot hold; neither mode has been captured and checked, so auto leaves graphs off for both
            log.info("generation.cuda_graphs auto: off for a %s model (bitsandbytes layers)", self.quantization)
            cuda_graphs = "off"
        resolve_cuda_graphs(cuda_graphs, self.device)  # refuse `on` off CUDA before taking any study
        settings = dict(max_new_tokens=generation.max_new_tokens, temperature=generation.temperature,
                        top_p=generation.top_p, cuda_graphs=cuda_graphs,
                        shapes=Shapes(fixed=True) if generation.batch_invariant else None)
        if self.batching == "static":
            def generate(batch: list[Item]):
                pixels = np.stack([item.inputs for item in batch])
                return self.model.generate_reports(pixels, prompt=ids, seed=[item.seed for item in batch],
                                                   **settings)

            yield from static_batches(generate, items, generation.batch_size)
            return
        if self.batching != "continuous":
            raise ModelError(f"CxrLlavaBackend.batching must be continuous or static; got {self.batching!r}")
        taken: dict[int, Item] = {}

        def requests():
            for item in items:
                taken[id(item)] = item
                yield Request(id(item), item.inputs, ids, item.seed)

        for done in self.model.stream_reports(requests(), slots=generation.batch_size, **settings):
            yield [(taken.pop(key), report) for key, report in done]


def _build_tiny_if_missing(model_cfg) -> None:
    from .tiny import ensure_tiny_checkpoint

    if model_cfg.build_tiny_if_missing and not Path(model_cfg.name_or_path).exists():
        log.info("building a tiny random checkpoint at %s (reports will be noise)", model_cfg.name_or_path)
        ensure_tiny_checkpoint(model_cfg.name_or_path)


def locate(model_cfg):
    """(local folder, Hub commit or None) of the checkpoint, without downloading; builds the demo's tiny checkpoint
    when ``build_tiny_if_missing`` asks for it."""
    _build_tiny_if_missing(model_cfg)
    return ckpt.resolve(model_cfg.name_or_path, model_cfg.revision, allow_download=False)


def load(model_cfg) -> CxrLlavaBackend:
    from .modeling import CxrLlava

    _build_tiny_if_missing(model_cfg)
    quantized = model_cfg.quantization != "none"
    if quantized:
        from ..quantization import check_quantization

        check_quantization(model_cfg)
    try:
        device, dtype = model_cfg.device, model_cfg.dtype
        if quantized:  # read onto the CPU in the run's dtype; the layers are quantized on their way to the GPU
            from ..base import resolve_device, resolve_dtype

            target = resolve_device(model_cfg.device)
            device, dtype = "cpu", resolve_dtype(model_cfg.dtype, target)
        model = CxrLlava.from_pretrained(model_cfg.name_or_path, revision=model_cfg.revision,
                                         device=device, dtype=dtype, allow_download=model_cfg.allow_download)
    except ModelError:
        raise
    except ValueError as e:  # e.g. model.device: cuda on a machine without CUDA
        raise ModelError(f"model {model_cfg.name_or_path} on device {model_cfg.device}: {e}") from None
    adapter = None
    if model_cfg.adapter:
        from ..adapters import merge_cxr_llava_adapter

        adapter = merge_cxr_llava_adapter(model, model_cfg)  # in full precision, before any quantization
    if quantized:  # the Llama linear layers; the vision tower, projector, embeddings and lm_head stay as loaded
        from ..quantization import move_unquantized, quantize_linear_layers

        quantize_linear_layers(model.language_model, model_cfg.quantization, skip=("lm_head",), device=target)
        move_unquantized(model, target)
    return CxrLlavaBackend(model, adapter=adapter, quantization=model_cfg.quantization)


def download(model_cfg):
    return ckpt.resolve(model_cfg.name_or_path, model_cfg.revision, allow_download=True)
