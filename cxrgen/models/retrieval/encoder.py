"""An image encoder loaded through transformers, and the rule that turns an image into one unit vector.

Loading: ``AutoImageProcessor`` + ``AutoModel`` from a local folder or a Hub snapshot in the local cache (the same
lookup as the transformers backend: nothing is downloaded unless ``model.allow_download``, the checkpoint's own
Python files run only with ``model.trust_remote_code``). Each study's 8-bit grey image is converted to RGB and goes
through the checkpoint's image processor (its resizing, cropping and normalisation) in the DataLoader workers.

Pooling (``retrieval.pooling``; ``auto`` picks by the checkpoint's ``model_type``, :data:`AUTO_POOLING`):

* ``pooler`` for DINOv2 (RAD-DINO is one): ``pooler_output``, which for DINOv2 is the CLS token after the final
  layer norm. DINOv2's self-distillation loss is put on that token, so it is the image's global descriptor, and
  RAD-DINO's model card lists "image retrieval, using nearest neighbors of the CLS token" and reads it from
  ``pooler_output``. Also for CLIP's and SigLIP's vision towers alone (CLIP: the CLS token after its last layer
  norm; SigLIP: its attention-pooling head).
* ``image_features`` for two-tower CLIP/SigLIP checkpoints: ``get_image_features``, the projected embedding the
  contrastive loss compares with text.
* ``cls`` for ViT: the first token of ``last_hidden_state`` (ViT's ``pooler_output`` is a tanh layer trained for
  classification, or absent).
* ``mean``: the mean of ``last_hidden_state`` over its tokens; never chosen by ``auto``.

Other model types are refused at load until ``retrieval.pooling`` names a rule. The vector is then L2-normalised in
float32, so that a dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..base import ModelError, checkpoint_digest, read_json_object, resolve_device, resolve_dtype

log = logging.getLogger("cxrgen")

#: model_type -> pooling rule under ``retrieval.pooling: auto`` (module docstring says why).
AUTO_POOLING = {
    "dinov2": "pooler", "dinov2_with_registers": "pooler",
    "clip": "image_features", "siglip": "image_features", "siglip2": "image_features",
    "clip_vision_model": "pooler", "siglip_vision_model": "pooler", "siglip2_vision_model": "pooler",
    "vit": "cls",
}
_DIGESTS: dict[tuple, str] = {}  # weight digests of local folders, by (path, size, mtime) of every file hashed


@dataclass(frozen=True)
class PrepareImage:
    """Picklable per-study work for the DataLoader workers: 8-bit grey PIL image -> the image processor's
    ``pixel_values`` (float32 numpy, batch axis of 1) and ``digest``, a sha256 of the grey pixels and their size
    (the image's content, whatever file it came from; the leakage rule compares it)."""

    image_processor: Any

    def __call__(self, image) -> dict[str, Any]:
        pixels = self.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels.numpy().astype(np.float32, copy=False), "digest": image_digest(image)}


def image_digest(image) -> str:
    """sha256 of a PIL image's mode, size and pixel bytes."""
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


#: Files fetched from the Hub: the configs (config.json, preprocessor_config.json) and the model's own weights,
#: safetensors or else .bin; other weight files some repositories hold beside them (RAD-DINO: a DINOv2-code backbone
#: and a DINO head) are neither fetched nor digested.
CONFIG_FILES = ("*.json",)
WEIGHT_FILES = (("model.safetensors", "model-*-of-*.safetensors"), ("pytorch_model.bin", "pytorch_model-*-of-*.bin"))


def resolve(model_cfg, allow_download: bool = False) -> tuple[Path, str | None]:
    """(local folder, Hub commit or None) of the encoder, through :func:`cxrgen.models.hub.find`."""
    from .. import hub

    files = CONFIG_FILES + (("*.py",) if model_cfg.trust_remote_code else ())
    return hub.find(hub.Lookup("model.name_or_path", model_cfg.name_or_path, model_cfg.revision, files,
                               WEIGHT_FILES, what="image encoder", allow_download=allow_download))


def weights_digest(folder: Path, commit: str | None) -> str:
    """What identifies the encoder's weights: the Hub commit, or for a local folder a sha256 of config.json,
    preprocessor_config.json and the weight files' bytes (two random checkpoints of the same shapes differ here,
    unlike in :func:`cxrgen.models.base.checkpoint_digest`)."""
    if commit:
        return commit
    files = [folder / n for n in ("config.json", "preprocessor_config.json") if (folder / n).is_file()]
    files += sorted({path for patterns in WEIGHT_FILES for pattern in patterns for path in folder.glob(pattern)})
    stamp = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _DIGESTS:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
        _DIGESTS[stamp] = digest.hexdigest()
    return _DIGESTS[stamp]


def pooling_rule(model_type: str | None, setting: str, folder: Path) -> str:
    """The pooling rule of ``retrieval.pooling`` (``auto``: by model type); a one-line ModelError for a model type
    ``auto`` does not know."""
    if setting != "auto":
        return setting
    if model_type not in AUTO_POOLING:
        raise ModelError(f"{folder / 'config.json'}: retrieval.pooling auto knows no rule for model_type "
                         f"{model_type!r} (it knows {', '.join(sorted(AUTO_POOLING))}); set retrieval.pooling to "
                         "cls, pooler, mean or image_features")
    return AUTO_POOLING[model_type]


def _raw_config(folder: Path, trust_remote_code: bool) -> dict:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    file = folder / "config.json"
    raw = read_json_object(file, f"{file}: missing (an image encoder's folder has config.json)")
    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING and not trust_remote_code:
        if raw.get("auto_map"):
            raise ModelError(f"{file}: model_type {model_type!r} needs the checkpoint's own Python code, which runs "
                             "only with model.trust_remote_code: true (off by default: it executes the repository's "
                             "files)")
        raise ModelError(f"{file}: model_type {model_type!r} is not known to transformers {transformers.__version__}")
    return raw


def image_processor(folder: Path, trust_remote_code: bool):
    """The checkpoint's image processor (``AutoImageProcessor``); a one-line ModelError when there is none."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"{folder}: no usable image processor, expected preprocessor_config.json "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def key_fields(cfg) -> dict[str, Any]:
    """What of the encoder decides its embeddings, read from its files without loading the weights: the weights'
    digest, model type, pooling rule, the dtype it computes in here, and the image processor's class and settings."""
    from ..base import placement

    folder, commit = resolve(cfg.model)
    raw = _raw_config(folder, cfg.model.trust_remote_code)
    processor = image_processor(folder, cfg.model.trust_remote_code)
    return {"source": cfg.model.name_or_path, "weights": weights_digest(folder, commit),
            "model_type": raw.get("model_type"),
            "pooling": pooling_rule(raw.get("model_type"), cfg.retrieval.pooling, folder),
            "dtype": placement(cfg.model)["model.dtype"],
            "image_processor": {"class": type(processor).__name__,
                                "settings": json.loads(processor.to_json_string())}}


class Encoder:
    """A loaded image encoder: :meth:`embed` turns a batch of ``pixel_values`` into unit vectors (float32)."""

    def __init__(self, model, processor, *, pooling: str, folder: Path, revision: str | None, source: str,
                 fields: dict, trust_remote_code: bool = False):
        self.model, self.processor, self.pooling = model, processor, pooling
        self.folder, self.revision, self.source, self.fields = folder, revision, source, fields
        self.trust_remote_code = trust_remote_code
        self.dim = int(self.embed(self._probe()).shape[1])  # a rule the model cannot follow fails here, at load

    @property
    def device(self):
        return self.model.device

    def image_preparer(self) -> PrepareImage:
        return PrepareImage(self.processor)

    def _probe(self) -> np.ndarray:
        from PIL import Image

        y, x = np.mgrid[0:53, 0:71]
        image = Image.fromarray(((x * 7 + y * 3) % 256).astype(np.uint8), mode="L")
        return PrepareImage(self.processor)(image)["pixel_values"]

    def embed(self, pixel_values: np.ndarray):
        """[B, C, H, W] float32 pixels -> [B, dim] L2-normalised float32 embeddings on the device."""
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(pixel_values)).to(self.device, dtype=self.model.dtype)
        with torch.inference_mode():
            vectors = self._pool(pixels)
        return torch.nn.functional.normalize(vectors.float(), dim=1)

    def _pool(self, pixels):
        import torch

        try:
            if self.pooling == "image_features":
                out = self.model.get_image_features(pixel_values=pixels)
                return out if torch.is_tensor(out) else out.pooler_output
            tower = getattr(self.model, "vision_model", self.model) if hasattr(self.model, "get_image_features") \
                else self.model
            out = tower(pixel_values=pixels)
            if self.pooling == "pooler":
                if getattr(out, "pooler_output", None) is None:
                    raise TypeError("the model returns no pooler_output")
                return out.pooler_output
            hidden = out.last_hidden_state
            return hidden[:, 0] if self.pooling == "cls" else hidden.mean(dim=1)
        except (AttributeError, TypeError, ValueError) as e:
            raise ModelError(f"retrieval.pooling {self.pooling}: {type(self.model).__name__} of {self.folder} cannot "
                             f"give it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None

    def describe(self) -> dict[str, Any]:
        import transformers

        return {"source": self.source, "folder": str(self.folder), "revision": self.revision,
                "digest": checkpoint_digest(self.folder), "weights": self.fields["weights"],
                "dtype": str(self.model.dtype).replace("torch.", ""), "device": str(self.device),
                "trust_remote_code": self.trust_remote_code,
                "model_class": type(self.model).__name__, "image_processor_class": type(self.processor).__name__,
                "pooling": self.pooling, "dim": self.dim, "transformers": transformers.__version__}


def load_encoder(cfg) -> Encoder:
    """The encoder of ``cfg.model`` on its device; every check (folder, processor, model, pooling) happens here."""
    from transformers import AutoModel

    from ..transformers.backend import _dtype_keyword

    model_cfg = cfg.model
    if model_cfg.quantization != "none" or model_cfg.adapter:
        key = "model.quantization" if model_cfg.quantization != "none" else "model.adapter"
        raise ModelError(f"{key}: not supported by model.backend retrieval (an encoder runs in model.dtype, "
                         "without adapters)")
    folder, commit = resolve(model_cfg)
    fields = key_fields(cfg)
    processor = image_processor(folder, model_cfg.trust_remote_code)
    try:
        device = resolve_device(model_cfg.device)
    except ValueError as e:
        raise ModelError(f"model.device {model_cfg.device}: {e}") from None
    dtype = resolve_dtype(model_cfg.dtype, device)
    try:
        model = AutoModel.from_pretrained(folder, **{_dtype_keyword(): dtype}, local_files_only=True,
                                          trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"model.name_or_path {model_cfg.name_or_path} ({folder}): the encoder does not load "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    model.to(device).eval()
    return Encoder(model, processor, pooling=fields["pooling"], folder=folder, revision=commit,
                   source=model_cfg.name_or_path, fields=fields, trust_remote_code=model_cfg.trust_remote_code)
