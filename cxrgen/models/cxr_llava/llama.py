"""The Llama-2 language model of CXR-LLaVA-v2 as plain modules: the layers the decoders call, nothing else.

The module tree and parameter names are those of ``transformers.LlamaForCausalLM`` (``model.embed_tokens``,
``model.layers.N.self_attn.q_proj``, ``...mlp.gate_proj``, ``model.norm``, ``lm_head``), and each layer computes
what transformers' computes (RMSNorm in float32, SiLU-gated MLP, rotary tables in float32 then cast), so checkpoints,
adapters and layer quantization address it the same way; tests/test_cxr_llava.py checks the tokens against
transformers' ``generate``. Written out so that loading the model does not import transformers (about 2 s of
start-up on the development machine, more than the model itself on small runs). Attention is done by the
decoders (decoding.py, modeling.py) over their own key/value caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .configuration import CheckpointError


@dataclass(frozen=True)
class LlamaSizes:
    """The ``llama`` block of config.json, with transformers' LlamaConfig defaults."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    head_dim: int
    attention_bias: bool
    mlp_bias: bool

    @classmethod
    def from_dict(cls, llama: dict[str, Any], source: str = "config.json") -> "LlamaSizes":
        act = llama.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{source}: llama.hidden_act={act!r} is not supported (silu only)")
        rope = llama.get("rope_scaling")
        if rope and (rope.get("rope_type") or rope.get("type")) not in (None, "default"):
            raise CheckpointError(f"{source}: llama.rope_scaling={rope!r} is not supported")
        if llama.get("pretraining_tp", 1) not in (None, 1):
            raise CheckpointError(f"{source}: llama.pretraining_tp={llama['pretraining_tp']!r} is not supported")
        heads = int(llama["num_attention_heads"])
        hidden = int(llama["hidden_size"])
        return cls(hidden_size=hidden, intermediate_size=int(llama["intermediate_size"]),
                   num_hidden_layers=int(llama["num_hidden_layers"]), num_attention_heads=heads,
                   num_key_value_heads=int(llama.get("num_key_value_heads") or heads),
                   vocab_size=int(llama["vocab_size"]),
                   max_position_embeddings=int(llama.get("max_position_embeddings", 2048)),
                   rms_norm_eps=float(llama.get("rms_norm_eps", 1e-6)),
                   rope_theta=float(llama.get("rope_theta", 10000.0)),
                   head_dim=int(llama.get("head_dim") or hidden // heads),
                   attention_bias=bool(llama.get("attention_bias", False)), mlp_bias=bool(llama.get("mlp_bias", False)))


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    """The projections only; the decoders do the attention over their caches."""

    def __init__(self, c: LlamaSizes):
        super().__init__()
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.attention_bias)


class MLP(nn.Module):
    def __init__(self, c: LlamaSizes):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: LlamaSizes):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class LlamaModel(nn.Module):
    def __init__(self, c: LlamaSizes):
        super().__init__()
        # weights come from the checkpoint: no random initialisation (on the meta device, nn.Embedding's
        # normal_ alone costs a second of lazy imports)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, _weight=torch.empty(c.vocab_size, c.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, c: LlamaSizes):
        super().__init__()
        self.config = c
        self.model = LlamaModel(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens


def rope_tables(c: LlamaSizes, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, head_dim] for positions [0, length), computed in float32 and cast to ``dtype``."""
    inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64).to(device=device,
                                                                                         dtype=torch.float)
                                       / c.head_dim))
    freqs = torch.arange(length, device=device).float()[:, None] * inv_freq[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
