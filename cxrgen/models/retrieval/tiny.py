"""Tiny random image encoders, written by transformers' own ``save_pretrained``: a DINOv2 model in RAD-DINO's
layout (``Dinov2Model`` with a ``BitImageProcessor``: resize the shortest edge, centre crop, normalise; patch 14)
and a two-tower CLIP model (``CLIPModel`` with a ``CLIPImageProcessor``) for the ``image_features`` pooling rule.
The weights are random, so nearest neighbours are arbitrary but deterministic."""

from __future__ import annotations

from pathlib import Path

import torch


def _bit_processor(image_size: int):
    import transformers

    cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
               do_center_crop=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])


def build_tiny_dinov2(out_dir: str | Path, *, seed: int = 0, image_size: int = 56, patch_size: int = 14,
                      hidden_size: int = 32) -> Path:
    """A tiny ``Dinov2Model`` (RAD-DINO's architecture at toy size) and its image processor."""
    from transformers import Dinov2Config, Dinov2Model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = Dinov2Config(hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          image_size=image_size, patch_size=patch_size)
    torch.manual_seed(seed)
    Dinov2Model(config).save_pretrained(out)
    _bit_processor(image_size).save_pretrained(out)
    return out


def build_tiny_clip(out_dir: str | Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """A tiny two-tower ``CLIPModel`` and its ``CLIPImageProcessor``."""
    import transformers
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size)
    text = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    processor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor(size={"shortest_edge": image_size},
              crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out
