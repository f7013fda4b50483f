"""Continuous batching over a fixed-shape decode step (CXR-LLaVA-v2's Llama-2 decoder).

A fixed number of *slots* decode together. Each slot owns one row of a key/value cache of fixed *capacity*
(longest prompt + ``max_new_tokens``, at most the model's positions). A row's prompt sits at cache positions
``[0, L)`` and its n-th generated token at ``L + n``, so the cache position of a token is also its rotary position:
positions count only real tokens, and every row sees exactly what it would see alone.

One decode step has the same shapes whatever the rows are doing: token ids ``[slots]`` and positions ``[slots]`` in,
logits ``[slots, vocab]`` out; keys and values are written with ``scatter_`` at each row's own position; attention
runs over the whole capacity under a boolean mask of the positions written so far (a masked key gets weight exactly
0 after the softmax; the sums over the longer range run in another order, which can change the last bit of a
value but, in float32, no greedy token in the tests). Nothing in a step reads a tensor back to the host, so on
CUDA the step is captured once per slot count as a CUDA graph and replayed (``generation.cuda_graphs``: auto = on
for CUDA devices, falling back to eager steps with a warning if the capture fails; on = required, a ModelError on
a CPU device or when the capture fails; off). Positions advance on the device. Eager steps (CPU, graphs off) attend
only up to the highest live position, which the host knows without asking; on the CPU keys, values and attention
are in float32 (bfloat16 attention kernels are several times slower there; the upcast is exact).

The host keeps the bookkeeping: which study is in which slot, how many tokens each has produced (known without
asking the device), and every ``eos_check_every`` steps (1 on the CPU, 8 on a GPU) it copies the new tokens back and
looks for ``</s>``. A row that ended (``</s>`` or its token limit) is handed back at once; when requests are left,
its slot is refilled: image encoding and prompt of the new rows (prefill), their keys and values written into the
freed cache rows, while the other rows keep their cache. When no requests are left, the live rows are moved to the
front and the step shrinks to the next power of two (a few graphs at most).

Greedy reports are the same as one image at a time; a sampled row draws from its own generator seeded per study,
one draw per token, so it does not depend on its batch or slot either.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..base import GeneratedReport, ModelError, top_p_filter
from .prompt import PromptIds

log = logging.getLogger("cxrgen")


@dataclass
class Request:
    """One study to decode: preprocessed pixels [1, S, S], prompt ids, sampling seed, optional own token limit."""

    key: Any
    pixels: Any
    prompt: PromptIds
    seed: int | None = None
    max_new_tokens: int | None = None  # a lower limit for this study (None: the decoder's)


@dataclass
class DecodeStats:
    """What a decode run did (for benchmarks): decode steps, rows x steps, prefill calls and rows, graphs captured
    and the seconds their captures took."""

    steps: int = 0
    row_steps: int = 0
    live_row_steps: int = 0
    prefills: int = 0
    prefill_rows: int = 0
    graphs: int = 0
    graph_sizes: list[int] = field(default_factory=list)
    capture_seconds: float = 0.0


@dataclass(frozen=True)
class Shapes:
    """How the decoder shapes its work on the device.

    ``fixed``: a study's numbers depend on it alone, not on the studies decoded beside it nor on where a run was
    stopped and resumed (``generation.batch_invariant``). Matrix kernels pick their reduction order by shape, so
    every shape a study passes through is kept constant: each step runs over all slots to the end (no shrinking),
    one study per prefill pass, attention over the whole cache capacity, a capacity of longest prompt +
    ``max_new_tokens``, and on CUDA attention by kernels whose numbers for a row do not depend on the batch
    (``SlotDecoder._attention_kernels``). Exact on the CPU (tests/test_cxr_llava.py); on CUDA in bfloat16 see
    bench/RESULTS.md. Default: shapes that follow the work (prefill in groups, shrinking when draining, eager steps
    attending only up to the highest live position), for speed.
    """

    fixed: bool = False


def resolve_cuda_graphs(setting: str | bool, device: torch.device) -> bool:
    """``generation.cuda_graphs``: auto = on for CUDA devices; on with a non-CUDA device is a ModelError."""
    if isinstance(setting, bool):
        setting = "on" if setting else "off"
    if setting not in ("auto", "on", "off"):
        raise ModelError(f"generation.cuda_graphs must be auto, on or off; got {setting!r}")
    if setting == "on" and device.type != "cuda":
        raise ModelError(f"generation.cuda_graphs: on needs a CUDA device, but the model runs on {device}; "
                         f"use auto or off")
    return setting != "off" and device.type == "cuda"


def attention_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """Keys, values and attention in float32 on the CPU, where bfloat16/float16 attention kernels are about 4x
    slower than float32 (the upcast is exact); in the model's dtype elsewhere."""
    return torch.float32 if device.type == "cpu" else dtype


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


#: An image position in a sequence of token ids (the published LLaVA code's ``IMAGE_TOKEN_INDEX``).
IMAGE_INDEX = -200


def sequence_ids(prompt: PromptIds, n_image: int, after: Sequence[int] = ()) -> list[int]:
    """The ids of a prompt with its image positions (``IMAGE_INDEX``), followed by ``after`` (a training target)."""
    return [*prompt.before, *[IMAGE_INDEX] * n_image, *prompt.after, *after]


def pad_right(rows: Sequence[Sequence[int]], device, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids as one right-padded tensor [b, width] and the mask of their real positions."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(r)] = torch.tensor(r, dtype=torch.long)
    valid = torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]
    return ids.to(device), valid.to(device)


def embed_sequences(model, image: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings [b, width, hidden] of ids [b, width]: the token embeddings, with the image embeddings
    [b, n_image, hidden] at each row's ``IMAGE_INDEX`` positions (in order)."""
    is_image = ids == IMAGE_INDEX
    x = model.language_model.get_input_embeddings()(ids.masked_fill(is_image, 0))
    return x.masked_scatter(is_image[..., None], image.to(x.dtype))


def causal_layers(model, x: torch.Tensor, valid: torch.Tensor, *, keep: Callable | None = None,
                  checkpoint: bool = False) -> torch.Tensor:
    """The Llama decoder layers over right-padded sequences (the prefill, and training's forward pass): x [b, width,
    hidden], each row attending causally to its own real positions (``valid`` [b, width]); returns the hidden
    states before the final norm. ``keep(layer, keys, values)`` gets each layer's rotated keys and values (the
    prefill writes them into its cache). ``checkpoint``: recompute each layer in the backward pass instead of
    keeping its activations (gradient checkpointing)."""
    from torch.utils.checkpoint import checkpoint as recompute

    lm = model.language_model
    cfg = lm.config
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    b, width, _ = x.shape
    dtype = attention_dtype(model.dtype, x.device)
    mask = (torch.ones(width, width, dtype=torch.bool, device=x.device).tril() & valid[:, None, :])[:, None]
    cos, sin = (t[:width][None, None] for t in model._rope_tables(width))

    def layer_pass(layer, x):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, width, nh, hd).transpose(1, 2)
        k = attn.k_proj(h).view(b, width, nkv, hd).transpose(1, 2)
        v = attn.v_proj(h).view(b, width, nkv, hd).transpose(1, 2)
        q = (q * cos + rotate_half(q) * sin).to(dtype)
        k = (k * cos + rotate_half(k) * sin).to(dtype)
        v = v.to(dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=nkv != nh)
        x = x + attn.o_proj(o.to(x.dtype).transpose(1, 2).reshape(b, width, nh * hd))
        return x + layer.mlp(layer.post_attention_layernorm(x)), k, v

    for i, layer in enumerate(lm.model.layers):
        if checkpoint:
            x = recompute(lambda x, layer=layer: layer_pass(layer, x)[0], x, use_reentrant=False)
            continue
        x, k, v = layer_pass(layer, x)
        if keep is not None:
            keep(i, k, v)
    return x


class DecodeStep(nn.Module):
    """One token per slot through the Llama decoder over fixed-capacity caches; no host synchronisation.

    ``forward(tokens [b], positions [b], caches_k, caches_v, keys)`` writes each row's key and value at its
    position and returns the logits [b, vocab]. The caches are lists (one per layer) of [b, kv_heads, capacity,
    head_dim]. ``keys``: attend over cache positions [0, keys) only (None: the whole capacity, the fixed shape that
    CUDA graphs capture; eager runs pass one past the highest live position, which the host knows, and save the
    attention over positions no live row can see).
    """

    def __init__(self, model, capacity: int):
        super().__init__()
        lm = model.language_model
        cfg = lm.config
        self.lm = lm
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        cos, sin = model._rope_tables(capacity)
        self.register_buffer("cos", cos[:capacity], persistent=False)
        self.register_buffer("sin", sin[:capacity], persistent=False)
        self.register_buffer("key_index", torch.arange(capacity, device=cos.device), persistent=False)
        # scatter_ is one small kernel on CUDA (and capturable); on the CPU it is slow for bfloat16, index_put_ is not
        self.scatter = cos.device.type == "cuda"

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, caches_k: list[torch.Tensor],
                caches_v: list[torch.Tensor], keys: int | None = None) -> torch.Tensor:
        lm, nh, nkv, hd = self.lm, self.n_heads, self.n_kv, self.head_dim
        b = tokens.shape[0]
        x = lm.model.embed_tokens(tokens)[:, None]  # [b, 1, hidden]
        cos = self.cos[positions][:, None, None]  # [b, 1, 1, head_dim]
        sin = self.sin[positions][:, None, None]
        key_index = self.key_index if keys is None else self.key_index[:keys]
        # additive mask, made once per step for all layers (a boolean one is converted in every attention call)
        mask = torch.zeros(b, 1, 1, key_index.shape[0], dtype=caches_k[0].dtype, device=tokens.device)
        mask.masked_fill_(key_index[None, None, None] > positions[:, None, None, None], float("-inf"))
        if self.scatter:
            where = positions.view(b, 1, 1, 1).expand(b, nkv, 1, hd)
        else:
            where = (torch.arange(b, device=tokens.device)[:, None], torch.arange(nkv, device=tokens.device)[None],
                     positions[:, None])
        for layer, cache_k, cache_v in zip(lm.model.layers, caches_k, caches_v):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, 1, nh, hd).transpose(1, 2)
            k = attn.k_proj(h).view(b, 1, nkv, hd).transpose(1, 2)
            v = attn.v_proj(h).view(b, 1, nkv, hd).transpose(1, 2)
            q = (q * cos + rotate_half(q) * sin).to(cache_k.dtype)
            k = (k * cos + rotate_half(k) * sin).to(cache_k.dtype)
            v = v.to(cache_k.dtype)
            if self.scatter:
                cache_k.scatter_(2, where, k)
                cache_v.scatter_(2, where, v)
            else:
                cache_k.index_put_(where, k[:, :, 0])
                cache_v.index_put_(where, v[:, :, 0])
            if keys is not None:
                cache_k, cache_v = cache_k[:, :, :keys], cache_v[:, :, :keys]
            o = F.scaled_dot_product_attention(q, cache_k, cache_v, attn_mask=mask, enable_gqa=nkv != nh)
            x = x + attn.o_proj(o.to(x.dtype).transpose(1, 2).reshape(b, 1, nh * hd))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return lm.lm_head(lm.model.norm(x[:, -1]))


@dataclass
class _Row:
    key: Any
    limit: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    produced: int = 0  # tokens picked so far, including those not yet read back
    eos: bool = False


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class SlotDecoder:
    """The state of one continuous-batching run; see the module docstring. Use :func:`decode_stream`."""

    def __init__(self, model, *, slots: int, capacity: int, temperature: float, top_p: float, graphs: bool,
                 eos_check_every: int, step: Callable | None, stats: DecodeStats, shapes: "Shapes"):
        lm = model.language_model
        self.model, self.slots, self.capacity = model, slots, capacity
        self.temperature, self.top_p, self.every, self.stats = temperature, top_p, eos_check_every, stats
        self.shapes = shapes
        self.device, self.dtype = model.device, model.dtype
        self.eos_id = model.tokenizer.eos_id
        self.step_module = DecodeStep(model, capacity)
        self.step = step(self.step_module) if step is not None else self.step_module
        n_kv, hd = self.step_module.n_kv, self.step_module.head_dim
        # zeros, not empty: masked positions are read with weight 0, and 0 * NaN would not be 0
        self.cache_k = [torch.zeros(slots, n_kv, capacity, hd, dtype=attention_dtype(self.dtype, self.device),
                                    device=self.device)
                        for _ in lm.model.layers]
        self.cache_v = [torch.zeros_like(k) for k in self.cache_k]
        self.tokens = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.positions = torch.full((slots,), capacity - 1, dtype=torch.long, device=self.device)
        self.rows: list[_Row | None] = [None] * slots
        self.width = slots  # slots the step runs over (shrinks when draining)
        self.graphs_on = graphs
        self.graphs_required = False  # cuda_graphs: on (a capture failure is an error, not a warning)
        # eager: attend only up to the highest live position (not when a row's numbers must not depend on others)
        self.trim_keys = not graphs and step is None and not shapes.fixed
        self.prompt_lengths = [0] * slots  # of the study in each slot (host-side, for the key range)
        self.graphs: dict[int, tuple[Any, torch.Tensor]] = {}

    # -- prefill ---------------------------------------------------------------------------------------------------
    def prefill(self, slots: list[int], requests: list[Request], limits: list[int]) -> None:
        """Encode the images and prompts of ``requests``, write their keys and values into cache rows ``slots``,
        pick each one's first token. With fixed shapes, one study per pass (its numbers then depend on it alone)."""
        if self.shapes.fixed and len(requests) > 1:
            for s, r, limit in zip(slots, requests, limits):
                self.prefill([s], [r], [limit])
            return
        with self._attention_kernels():
            self._prefill(slots, requests, limits)

    def _prefill(self, slots: list[int], requests: list[Request], limits: list[int]) -> None:
        model, lm = self.model, self.model.language_model
        dev = self.device
        if all(isinstance(r.pixels, torch.Tensor) for r in requests):
            pixels = torch.stack([r.pixels for r in requests])
        else:
            pixels = torch.from_numpy(np.stack([np.asarray(r.pixels, dtype=np.float32) for r in requests]))
        if dev.type == "cuda" and pixels.device.type == "cpu":
            pixels = pixels.pin_memory().to(dev, non_blocking=True)
        image = model.encode_images(pixels)
        ids, valid = pad_right([sequence_ids(r.prompt, image.shape[1]) for r in requests], dev)
        lengths = valid.sum(1).tolist()
        b, width = ids.shape
        # right padding: row j's tokens at [0, L_j), which is where they go in its cache row
        where = torch.tensor(slots, dtype=torch.long, device=dev)

        def keep(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
            self.cache_k[i][:, :, :width].index_copy_(0, where, k)
            self.cache_v[i][:, :, :width].index_copy_(0, where, v)

        x = causal_layers(model, embed_sequences(model, image, ids), valid, keep=keep)
        last = torch.tensor([n - 1 for n in lengths], device=dev)
        logits = lm.lm_head(lm.model.norm(x[torch.arange(b, device=dev), last]))
        rows = []
        for r, limit in zip(requests, limits):
            gen = None
            if self.temperature > 0:
                gen = torch.Generator(device=dev).manual_seed(0 if r.seed is None else int(r.seed))
            rows.append(_Row(r.key, limit, gen))
        first = self.pick(logits, [row.generator for row in rows])
        self.tokens.index_copy_(0, where, first)
        self.positions.index_copy_(0, where, torch.tensor(lengths, dtype=torch.long, device=dev))
        for s, row, length in zip(slots, rows, lengths):
            self.rows[s] = row
            row.produced = 1
            self.prompt_lengths[s] = length
        self.stats.prefills += 1
        self.stats.prefill_rows += b
        self.read_back({s: [t] for s, t in zip(slots, first.tolist())})

    # -- decoding --------------------------------------------------------------------------------------------------
    def pick(self, logits: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
        greedy = logits.float().argmax(-1)  # exact upcast; bfloat16 argmax is slow on the CPU
        if self.temperature == 0:
            return greedy
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        probs = top_p_filter(probs, self.top_p)
        sampled = [i for i, g in enumerate(generators) if g is not None]
        if sampled:
            draws = torch.cat([torch.multinomial(probs[i], 1, generator=generators[i]) for i in sampled])
            greedy[torch.tensor(sampled, device=greedy.device)] = draws
        return greedy

    def _attention_kernels(self):
        """With fixed shapes on CUDA, attention runs on PyTorch's flash and memory-efficient kernels only: cuDNN's
        (PyTorch's choice for bfloat16 with a mask on Hopper GPUs) gave a study other numbers at batch 1 than at
        batch 32 in the GPU check (bench/gpu_check.py, section kernels), the memory-efficient kernel did not."""
        if not (self.shapes.fixed and self.device.type == "cuda"):
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def _logits(self) -> torch.Tensor:
        n = self.width
        args = (self.tokens[:n], self.positions[:n], [c[:n] for c in self.cache_k], [c[:n] for c in self.cache_v])
        if not self.graphs_on:
            if self.trim_keys:  # the position a row writes now: prompt length + tokens fed so far
                top = max(self.prompt_lengths[s] + row.produced - 1 for s, row in enumerate(self.rows[:n])
                          if row is not None)
                return self.step(*args, keys=min(self.capacity, top + 1))
            return self.step(*args)
        if n not in self.graphs:
            started = time.perf_counter()
            try:
                self.graphs[n] = self._capture(args)
            except Exception as e:  # e.g. a quantized layer whose kernels cannot be captured
                if self.graphs_required:
                    raise ModelError(f"generation.cuda_graphs: on, but the decode step cannot be captured as a "
                                     f"CUDA graph: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                                     ) from None
                log.warning("the decode step cannot be captured as a CUDA graph (%s: %s); decoding without "
                            "(generation.cuda_graphs: off hides this warning)", type(e).__name__, e)
                self.graphs_on = False
                return self.step(*args)
            self.stats.graphs += 1
            self.stats.graph_sizes.append(n)
            self.stats.capture_seconds += time.perf_counter() - started
        graph, out = self.graphs[n]
        graph.replay()
        return out

    def _capture(self, args):
        """CUDA graph of one step at the current width. The warm-up runs write exactly what the next real step
        writes (same tokens, same positions), so they change nothing."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.step(*args)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.step(*args)
        torch.cuda.current_stream(self.device).synchronize()  # the warm-up steps count in the capture's time
        return graph, out

    def run_steps(self, count: int) -> None:
        """``count`` decode steps over the current width, then read the new tokens back once."""
        n = self.width
        history = []
        live = [s for s in range(n) if self.rows[s] is not None]
        gens = [row.generator if row is not None else None for row in self.rows[:n]]
        for _ in range(count):
            with self._attention_kernels():
                logits = self._logits()
            new = self.pick(logits, gens)
            self.tokens[:n].copy_(new)
            self.positions[:n].add_(1).clamp_(max=self.capacity - 1)  # idle rows stay inside the cache
            history.append(new)
            for s in live:
                self.rows[s].produced += 1
        self.stats.steps += count
        self.stats.row_steps += count * n
        self.stats.live_row_steps += count * len(live)
        table = torch.stack(history, 1).tolist()
        self.read_back({s: table[s] for s in live})

    def read_back(self, new_tokens: dict[int, list[int]]) -> None:
        for s, ids in new_tokens.items():
            row = self.rows[s]
            for t in ids:
                if t == self.eos_id:
                    row.eos = True
                    break
                row.tokens.append(t)
                if len(row.tokens) >= row.limit:
                    break

    def finished(self) -> list[tuple[Any, GeneratedReport]]:
        done = []
        for s, row in enumerate(self.rows):
            if row is not None and (row.eos or len(row.tokens) >= row.limit):
                done.append((row.key, self.report(row)))
                self.rows[s] = None
        return done

    def report(self, row: _Row) -> GeneratedReport:
        ids = row.tokens
        return GeneratedReport(text=self.model.tokenizer.decode_streamed(ids), token_ids=list(ids),
                               n_new_tokens=len(ids), stopped_at_eos=row.eos)

    def steps_to_run(self) -> int:
        """Steps until the next read-back: ``eos_check_every``, or fewer when a row reaches its limit sooner."""
        left = min(row.limit - row.produced for row in self.rows if row is not None)
        return max(1, min(self.every, left))

    def shrink(self) -> None:
        """No requests left: move the live rows to the front; run the step over the next power of two of them.
        Not with fixed shapes: the step keeps its width to the end."""
        if self.shapes.fixed:
            return
        live = [s for s in range(self.width) if self.rows[s] is not None]
        target = _next_pow2(len(live))
        if target > self.width // 2:
            return
        if live != list(range(len(live))):
            where = torch.tensor(live, dtype=torch.long, device=self.device)
            m = len(live)
            for cache in self.cache_k + self.cache_v:
                cache[:m] = cache.index_select(0, where)
            self.tokens[:m] = self.tokens.index_select(0, where)
            self.positions[:m] = self.positions.index_select(0, where)
            self.rows = [self.rows[s] for s in live] + [None] * (self.slots - m)
            self.prompt_lengths = [self.prompt_lengths[s] for s in live] + [0] * (self.slots - m)
        self.width = target


def decode_stream(model, requests: Iterable[Request], *, slots: int, max_new_tokens: int, temperature: float = 0.0,
                  top_p: float = 1.0, refill: bool = True, cuda_graphs: str | bool = "auto",
                  eos_check_every: int | None = None, max_prompt_len: int | None = None,
                  step: Callable | None = None, stats: DecodeStats | None = None, shapes: Shapes | None = None,
                  ) -> Iterator[list[tuple[Any, GeneratedReport]]]:
    """Decode ``requests`` in ``slots`` slots; yield ``[(key, report), ...]`` as rows finish (completion order).

    ``refill`` False: take one group of ``slots`` requests and decode it to its end (static batch, for comparison).
    ``max_prompt_len``: longest prompt in tokens, image included (None: the longest of the first group; a longer
    prompt later is an error). ``step``: wraps the :class:`DecodeStep` module (e.g. ``torch.compile``).
    ``shapes``: see :class:`Shapes` (default: shapes that follow the work, for speed).
    """
    if slots < 1:
        raise ValueError(f"slots must be >= 1; got {slots}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1]; got {temperature}, {top_p}")
    device = model.device
    graphs = resolve_cuda_graphs(cuda_graphs, device)
    stats = stats if stats is not None else DecodeStats()
    every = eos_check_every or model.eos_check_every or (1 if device.type == "cpu" else 8)
    n_img = model.config.vision.num_patches
    max_pos = model.config.max_position_embeddings
    source = iter(requests)

    def prompt_len(r: Request) -> int:
        return len(r.prompt.before) + n_img + len(r.prompt.after)

    def limit_of(r: Request) -> int:
        wanted = max_new_tokens if r.max_new_tokens is None else min(r.max_new_tokens, max_new_tokens)
        return max(0, min(wanted, max_pos - prompt_len(r)))

    first: list[Request] = []
    for r in source:
        first.append(r)
        if len(first) == slots:
            break
    if not first:
        return
    shapes = shapes or Shapes()
    longest = max_prompt_len or max(prompt_len(r) for r in first)
    capacity = max(1, min(max_pos, longest + max(limit_of(r) for r in first) if not refill and not shapes.fixed
                          else longest + max_new_tokens))
    dec = SlotDecoder(model, slots=slots if shapes.fixed else len(first), capacity=capacity,
                      temperature=temperature, top_p=top_p, graphs=graphs, eos_check_every=every, step=step,
                      stats=stats, shapes=shapes)
    dec.graphs_required = cuda_graphs in ("on", True)
    exhausted = not refill or len(first) < slots
    queue = first

    def take(free: int) -> list[Request]:
        nonlocal exhausted
        got = []
        while len(got) < free and not exhausted:
            try:
                got.append(next(source))
            except StopIteration:
                exhausted = True
        return got

    while True:
        # fill free slots; rows with a limit of 0 are done without touching the device
        while True:
            free = [s for s in range(dec.width) if dec.rows[s] is None]
            if not queue:
                queue = take(len(free)) if free else []
            if not queue:
                break
            empty = [(r.key, GeneratedReport("", [], 0, False)) for r in queue if limit_of(r) == 0]
            todo = [r for r in queue if limit_of(r) > 0]
            queue = []
            for r in todo:
                if prompt_len(r) > longest:
                    raise ValueError(f"study {r.key}: prompt of {prompt_len(r)} tokens is longer than the "
                                     f"{longest} the cache was sized for")
            if todo:
                dec.prefill(free[:len(todo)], todo, [limit_of(r) for r in todo])
            done = empty + dec.finished()
            if done:
                yield done
        if all(row is None for row in dec.rows):
            if exhausted:
                return
            continue
        if exhausted:
            dec.shrink()
        dec.run_steps(dec.steps_to_run())
        done = dec.finished()
        if done:
            yield done
