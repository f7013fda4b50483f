"""The CXR-LLaVA-v2 image encoder: an open_clip-style ViT on one grey channel.

Parameter names match the checkpoint (``vision_tower.*``) so that weights load by name:

    conv1.weight                        patch embedding, no bias, 1 input channel
    class_embedding                     [width]
    positional_embedding                [1 + grid*grid, width], learnable
    ln_pre.{weight,bias}
    transformer.resblocks.N.ln_1 / attn.in_proj_{weight,bias} / attn.out_proj / ln_2 / mlp.c_fc / mlp.c_proj
    ln_post.{weight,bias}               applied to every token

``proj`` (the pooled CLIP projection) exists in the checkpoint but is not used to write reports; the loader ignores it.
The forward pass returns the patch tokens after ``ln_post`` with the class token dropped: [batch, grid*grid, width].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import VisionConfig


class Attention(nn.Module):
    """Multi-head self-attention with open_clip's fused input projection (``in_proj_weight``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.layer_norm_eps) for _ in range(cfg.layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


def _patch_embedding(conv: nn.Conv2d, pixels: torch.Tensor) -> torch.Tensor:
    """The patch convolution; in float32 on CUDA with TF32 off for it (PyTorch lets cuDNN run float32 convolutions
    in TF32 by default, 10-bit mantissas), so that float32 means float32 as it does on the CPU."""
    if not (pixels.is_cuda and pixels.dtype == torch.float32):
        return conv(pixels)
    try:
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
    except RuntimeError:  # precision set through torch's newer fp32_precision settings: they are the user's choice
        return conv(pixels)
    try:
        return conv(pixels)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(1, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.num_patches + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.transformer = Transformer(cfg)
        self.ln_post = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [batch, 1, H, W] (normalised) -> patch tokens [batch, grid*grid, width]."""
        x = _patch_embedding(self.conv1, pixels.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [b, grid*grid, width], row-major patches
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x)
        return x[:, 1:]
