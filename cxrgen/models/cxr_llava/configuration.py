"""CXR-LLaVA-v2 configuration, read from the checkpoint's own config.json.

The published checkpoint (``ECOFRI/CXR-LLAVA-v2``) describes itself with these keys, all of which are read here:

``clip_vision_cfg``       the open_clip ViT: ``image_size``, ``patch_size``, ``width``, ``layers``, ``head_width``,
                          ``mlp_ratio`` and open_clip options (only the plain pre-norm ViT is supported)
``clip_embed_dim``        output size of the ViT's pooled projection (``vision_tower.proj``, unused for reports)
``image_preprocess_cfg``  ``mean`` and ``std`` of the single grey channel
``mm_projector_dim``      input size of the linear projector (the ViT width)
``llama``                 the language model, a ``transformers.LlamaConfig`` dictionary

Unknown extra keys are ignored; a missing key or an unsupported option is an error that names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..base import ModelError


class CheckpointError(ModelError):
    """A checkpoint that cannot be used: names the file and the key or tensor that is wrong."""


@dataclass(frozen=True)
class VisionConfig:
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float
    layer_norm_eps: float = 1e-5
    embed_dim: int | None = None  # size of the unused pooled projection

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


@dataclass  # not frozen: transformers' Trainer sets use_cache on the config of the model it trains
class CxrLlavaConfig:
    vision: VisionConfig
    projector_dim: int
    image_mean: float
    image_std: float
    llama: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return int(self.llama["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.llama["vocab_size"])

    @property
    def max_position_embeddings(self) -> int:
        return int(self.llama.get("max_position_embeddings", 4096))

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_patches

    @classmethod
    def from_file(cls, path: str | Path) -> "CxrLlavaConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: config.json not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable JSON file ({e})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "CxrLlavaConfig":
        def need(mapping: dict, key: str, where: str) -> Any:
            if not isinstance(mapping, dict) or key not in mapping:
                raise CheckpointError(f"{source}: missing key '{where}{key}'")
            return mapping[key]

        vis = need(raw, "clip_vision_cfg", "")
        pre = need(raw, "image_preprocess_cfg", "")
        llama = need(raw, "llama", "")
        projector_dim = int(need(raw, "mm_projector_dim", ""))
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
            need(llama, key, "llama.")

        # open_clip options this architecture does not implement: refuse rather than compute something else.
        for key in ("attentional_pool", "no_ln_pre", "final_ln_after_pool", "ls_init_value", "act_kwargs",
                    "timm_model_name"):
            if vis.get(key):
                raise CheckpointError(f"{source}: clip_vision_cfg.{key}={vis[key]!r} is not supported")
        if vis.get("pos_embed_type", "learnable") != "learnable":
            raise CheckpointError(f"{source}: clip_vision_cfg.pos_embed_type={vis['pos_embed_type']!r} is not supported")
        if vis.get("pool_type", "tok") != "tok":
            raise CheckpointError(f"{source}: clip_vision_cfg.pool_type={vis['pool_type']!r} is not supported")
        if isinstance(vis.get("layers"), (list, tuple)):
            raise CheckpointError(f"{source}: clip_vision_cfg.layers must be an int (a ViT), got {vis['layers']!r}")

        image_size = need(vis, "image_size", "clip_vision_cfg.")
        patch_size = need(vis, "patch_size", "clip_vision_cfg.")
        for key, value in (("image_size", image_size), ("patch_size", patch_size)):
            if isinstance(value, (list, tuple)):
                if len(set(value)) != 1:
                    raise CheckpointError(f"{source}: clip_vision_cfg.{key}={value!r}: only square sizes are supported")
        image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
        patch_size = int(patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size)
        width = int(need(vis, "width", "clip_vision_cfg."))
        head_width = int(vis.get("head_width", 64))
        if width % head_width:
            raise CheckpointError(f"{source}: clip_vision_cfg.width {width} is not a multiple of head_width {head_width}")
        if image_size % patch_size:
            raise CheckpointError(f"{source}: image_size {image_size} is not a multiple of patch_size {patch_size}")
        norm_kwargs = vis.get("norm_kwargs") or {}
        if set(norm_kwargs) - {"eps"}:
            raise CheckpointError(f"{source}: clip_vision_cfg.norm_kwargs={norm_kwargs!r} is not supported")
        if projector_dim != width:
            raise CheckpointError(
                f"{source}: mm_projector_dim {projector_dim} must equal clip_vision_cfg.width {width} "
                "(the projector reads the ViT's patch tokens)"
            )

        vision = VisionConfig(
            image_size=image_size,
            patch_size=patch_size,
            width=width,
            layers=int(need(vis, "layers", "clip_vision_cfg.")),
            heads=width // head_width,
            mlp_ratio=float(vis.get("mlp_ratio", 4.0)),
            layer_norm_eps=float(norm_kwargs.get("eps", 1e-5)),
            embed_dim=int(raw["clip_embed_dim"]) if raw.get("clip_embed_dim") is not None else None,
        )
        mean = _scalar(need(pre, "mean", "image_preprocess_cfg."), f"{source}: image_preprocess_cfg.mean")
        std = _scalar(need(pre, "std", "image_preprocess_cfg."), f"{source}: image_preprocess_cfg.std")
        if std <= 0:
            raise CheckpointError(f"{source}: image_preprocess_cfg.std must be positive, got {std}")
        return cls(vision=vision, projector_dim=projector_dim, image_mean=mean, image_std=std,
                   llama=dict(llama), raw=raw)


def _scalar(value: Any, where: str) -> float:
    """The model reads one grey channel: mean/std are a number or a one-element list."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise CheckpointError(f"{where}: expected one value for the single grey channel, got {value!r}")
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: not a number: {value!r}") from None
