"""CXR-LLaVA-v2 on current transformers: ViT image encoder, linear projector, Llama-2 language model.

    pixels [B,1,S,S] -> VisionTower -> patch tokens [B, (S/P)^2, width] -> mm_projector -> image embeddings
    prompt ids before <image> | image embeddings | prompt ids after <image> -> Llama-2 (llama.py) -> report tokens

Generation is batched and written out here rather than delegated to ``generate``; the language model (llama.py)
has transformers' ``LlamaForCausalLM`` module tree and parameter names, and the decoders call its submodules
(norms, projections, MLPs, head), doing the attention themselves with ``scaled_dot_product_attention`` over their
cache. Two decoders:

* decoding.py (the default, :meth:`CxrLlava.stream_reports` and :meth:`CxrLlava.generate_reports`): continuous
  batching over a fixed-shape decode step (fixed-capacity cache, per-row positions as tensors) that CUDA graphs can
  capture;
* :meth:`CxrLlava._decode` (``generate_reports(..., fixed_shape=False)``): the growing-cache loop, one static batch,
  prompts left-padded, finished rows dropped from the batch; kept as the reference the fixed-shape path is tested
  against.

In both, positions count only real tokens and padding is masked, so every row sees exactly what it would see alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..base import GeneratedReport, resolve_device, resolve_dtype, top_p_filter  # noqa: F401  (re-exported)
from . import checkpoint as ckpt
from .configuration import CheckpointError, CxrLlavaConfig
from .decoding import Request, Shapes, attention_dtype, causal_layers, decode_stream, embed_sequences, rotate_half
from .llama import LlamaForCausalLM, LlamaSizes, rope_tables
from .preprocess import preprocess_image
from .prompt import REPORT_SYSTEM_PROMPT, REPORT_USER_PROMPT, LlamaSentencePiece, PromptIds, render_prompt
from .vision import VisionTower


class CxrLlava(nn.Module):
    def __init__(self, config: CxrLlavaConfig, tokenizer: LlamaSentencePiece):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.vision_tower = VisionTower(config.vision)
        self.mm_projector = nn.Linear(config.projector_dim, config.hidden_size)
        self.language_model = LlamaForCausalLM(LlamaSizes.from_dict(config.llama))
        self.source: str | None = None  # where the weights came from
        self.revision: str | None = None  # the Hub commit, when loaded from the Hub
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self.eos_check_every: int | None = None  # None: every step on the CPU, every 8 steps on a GPU
        self.gradient_checkpointing = False  # training: recompute each Llama layer in the backward pass

    # -- loading --------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = ckpt.DEFAULT_MODEL_ID, *, revision: str | None = None,
                        device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                        allow_download: bool = False) -> "CxrLlava":
        """Load a checkpoint in the published layout from a local folder or the Hugging Face cache.

        Everything that can be checked without the weights (config.json, tokenizer files, weight files present) is
        checked first. Weights are then read tensor by tensor straight onto ``device`` in ``dtype``.
        """
        folder, commit = ckpt.resolve(str(name_or_path), revision=revision, allow_download=allow_download)
        files = ckpt.check_files(folder)
        config = CxrLlavaConfig.from_file(folder / "config.json")
        tokenizer = LlamaSentencePiece.from_dir(folder)
        if tokenizer.vocab_size != config.vocab_size:
            raise CheckpointError(
                f"{folder / 'tokenizer.model'}: {tokenizer.vocab_size} tokens, but config.json llama.vocab_size is "
                f"{config.vocab_size}"
            )
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        with torch.device("meta"):
            model = cls(config, tokenizer)
        ckpt.load_weights(model, files, device, dtype)
        model._materialise_buffers(device)
        model.source, model.revision = str(folder), commit
        return model.eval()

    def _materialise_buffers(self, device: torch.device) -> None:
        """Check that the meta-device build left nothing without values (rotary tables are computed on use)."""
        self._rope = None
        leftover = [n for n, t in list(self.named_parameters()) + list(self.named_buffers()) if t.is_meta]
        if leftover:
            raise CheckpointError(f"tensors left without values after loading: {', '.join(leftover)}")

    @property
    def device(self) -> torch.device:
        return self.mm_projector.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mm_projector.weight.dtype

    # -- inputs ---------------------------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> normalised float32 pixels [1, S, S] (see preprocess.py)."""
        cfg = self.config
        return preprocess_image(image, cfg.vision.image_size, cfg.image_mean, cfg.image_std)

    def prompt_ids(self, system: str = REPORT_SYSTEM_PROMPT, user: str = REPORT_USER_PROMPT) -> PromptIds:
        return self.tokenizer.encode_prompt(render_prompt(system, user))

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B,1,S,S] -> image embeddings [B, n_image_tokens, hidden]."""
        features = self.vision_tower(pixels.to(self.device, self.dtype))
        return self.mm_projector(features)

    # -- training -------------------------------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [b, width, vocab] of right-padded sequences (fine-tuning): ``input_ids`` hold each
        row's prompt with its image positions (``decoding.IMAGE_INDEX``) and what follows; the prefill's own
        embedding and layer code runs over them, so a sequence's prompt part is computed as generation computes it.
        The vision tower runs without gradients (it is never trained); the projector does not."""
        with torch.no_grad():
            features = self.vision_tower(pixels.to(self.device, self.dtype))
        valid = attention_mask.bool()
        x = embed_sequences(self, self.mm_projector(features), input_ids)
        x = causal_layers(self, x, valid, checkpoint=self.gradient_checkpointing and self.training)
        return self.language_model.lm_head(self.language_model.model.norm(x))

    # -- generation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_reports(self, images: Sequence[Image.Image] | torch.Tensor | np.ndarray, *,
                         prompt: PromptIds | Sequence[PromptIds] | None = None, max_new_tokens: int = 512,
                         temperature: float = 0.0, top_p: float = 1.0, seed: int | Sequence[int] | None = None,
                         cuda_graphs: str = "auto", fixed_shape: bool = True,
                         shapes: Shapes | None = None) -> list[GeneratedReport]:
        """Write one report per image, all images in one batch (a static batch: it runs until its last row ends).

        ``images``: PIL images, or already preprocessed pixels [B,1,S,S]. ``prompt``: token ids from
        :meth:`prompt_ids` (default: the published report prompt), one for all images or one per image.
        ``temperature`` 0 is greedy decoding; otherwise sampling with ``top_p``, each image from its own random
        generator seeded by ``seed`` (one seed for all images, or one per image), so that a sampled report does not
        depend on the other images in the batch. Decoding stops at ``</s>`` or after ``max_new_tokens`` tokens.
        ``fixed_shape`` False: the growing-cache reference decoder (no CUDA graphs). ``shapes``: see
        :class:`~cxrgen.models.cxr_llava.decoding.Shapes`.
        """
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image):
            pixels = torch.from_numpy(np.stack([self.preprocess(im) for im in images]))
        else:
            pixels = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        batch = pixels.shape[0]
        if batch == 0:
            return []
        if prompt is None:
            prompt = self.prompt_ids()
        prompts = [prompt] * batch if isinstance(prompt, PromptIds) else list(prompt)
        if len(prompts) != batch:
            raise ValueError(f"{len(prompts)} prompts for {batch} images")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1]; got {temperature}, {top_p}")
        seeds = [0 if seed is None else int(seed)] * batch if seed is None or isinstance(seed, int) else list(seed)
        if len(seeds) != batch:
            raise ValueError(f"{len(seeds)} seeds for {batch} images")
        if fixed_shape:
            requests = [Request(i, pixels[i], prompts[i], seeds[i]) for i in range(batch)]
            reports: list[GeneratedReport | None] = [None] * batch
            for done in self.stream_reports(requests, slots=batch, max_new_tokens=max_new_tokens,
                                            temperature=temperature, top_p=top_p, refill=False,
                                            cuda_graphs=cuda_graphs, shapes=shapes):
                for i, report in done:
                    reports[i] = report
            return reports
        embeds, valid = self._prompt_embeddings(self.encode_images(pixels), prompts)
        room = self.config.max_position_embeddings - int(valid.sum(1).max())
        max_new_tokens = max(0, min(max_new_tokens, room))
        generators = None
        if temperature > 0:
            generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        tokens, lengths, eos = self._decode(embeds, valid, max_new_tokens, temperature, top_p, generators)
        reports = []
        for row in range(batch):
            ids = tokens[row, : lengths[row]].tolist()
            reports.append(GeneratedReport(text=self.tokenizer.decode_streamed(ids), token_ids=ids,
                                           n_new_tokens=len(ids), stopped_at_eos=bool(eos[row])))
        return reports

    def stream_reports(self, requests: Iterable[Request], *, slots: int, max_new_tokens: int = 512,
                       temperature: float = 0.0, top_p: float = 1.0, refill: bool = True, cuda_graphs: str = "auto",
                       **kwargs) -> Iterator[list[tuple[Any, GeneratedReport]]]:
        """Continuous batching: ``[(key, report), ...]`` as rows finish, ``slots`` rows decoding at a time, a
        finished row's slot refilled with the next request at once (see decoding.py; ``kwargs`` go to
        :func:`decode_stream`). ``cuda_graphs``: auto (on CUDA devices) | on (a ModelError off CUDA) | off."""
        with torch.no_grad():
            yield from decode_stream(self, requests, slots=slots, max_new_tokens=max_new_tokens,
                                     temperature=temperature, top_p=top_p, refill=refill, cuda_graphs=cuda_graphs,
                                     **kwargs)

    def _prompt_embeddings(self, image_embeds: torch.Tensor, prompts: list[PromptIds]):
        """Left-padded input embeddings [B, L, hidden] and the mask of real positions [B, L]."""
        embed = self.language_model.get_input_embeddings()
        n_img = image_embeds.shape[1]
        lengths = [len(p.before) + n_img + len(p.after) for p in prompts]
        total = max(lengths)
        batch = len(prompts)
        embeds = torch.zeros(batch, total, image_embeds.shape[-1], dtype=self.dtype, device=self.device)
        valid = torch.zeros(batch, total, dtype=torch.bool, device=self.device)
        for row, (p, length) in enumerate(zip(prompts, lengths)):
            start = total - length
            ids = torch.tensor(p.before + p.after, dtype=torch.long, device=self.device)
            text = embed(ids)
            nb = len(p.before)
            embeds[row, start:start + nb] = text[:nb]
            embeds[row, start + nb:start + nb + n_img] = image_embeds[row]
            embeds[row, start + nb + n_img:] = text[nb:]
            valid[row, start:] = True
        return embeds, valid

    def _rope_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [positions, head_dim] for positions [0, length) at least (llama.rope_tables), cached."""
        if self._rope is None or self._rope[0].shape[0] < length or self._rope[0].dtype != self.dtype \
                or self._rope[0].device != self.device:
            size = max(length, self.config.max_position_embeddings)
            self._rope = rope_tables(self.language_model.config, size, self.device, self.dtype)
        return self._rope

    def _decode(self, embeds, valid, max_new_tokens, temperature, top_p, generators):
        lm = self.language_model
        cfg = lm.config
        layers = lm.model.layers
        batch, prompt_len, _ = embeds.shape
        n_heads = cfg.num_attention_heads
        n_kv = cfg.num_key_value_heads or n_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        capacity = prompt_len + max_new_tokens
        eos_id = self.tokenizer.eos_id

        cos_table, sin_table = self._rope_tables(capacity)
        cache_k = [torch.empty(batch, n_kv, capacity, head_dim, dtype=attention_dtype(self.dtype, self.device),
                               device=self.device) for _ in layers]
        cache_v = [torch.empty_like(k) for k in cache_k]
        keep = torch.zeros(batch, capacity, dtype=torch.bool, device=self.device)  # real key positions
        keep[:, :prompt_len] = valid
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)  # [B, L]
        next_position = valid.sum(1)  # [B]

        out_tokens = torch.zeros(batch, max(max_new_tokens, 1), dtype=torch.long, device=self.device)
        out_len = torch.full((batch,), max_new_tokens, dtype=torch.long, device=self.device)  # < limit: </s> seen
        rows = torch.arange(batch, device=self.device)  # original row of each active row

        def forward(x, pos, start, mask):
            """x [b,t,hidden] at cache slots [start, start+t), rotary positions pos [b,t] -> last hidden [b,hidden]."""
            b, t, _ = x.shape
            cos = cos_table[pos].unsqueeze(1)
            sin = sin_table[pos].unsqueeze(1)
            for i, layer in enumerate(layers):
                attn = layer.self_attn
                h = layer.input_layernorm(x)
                q = attn.q_proj(h).view(b, t, n_heads, head_dim).transpose(1, 2)
                k = attn.k_proj(h).view(b, t, n_kv, head_dim).transpose(1, 2)
                v = attn.v_proj(h).view(b, t, n_kv, head_dim).transpose(1, 2)
                q = (q * cos + rotate_half(q) * sin).to(cache_k[i].dtype)
                k = k * cos + rotate_half(k) * sin
                cache_k[i][:, :, start:start + t] = k
                cache_v[i][:, :, start:start + t] = v
                keys, values = cache_k[i][:, :, :start + t], cache_v[i][:, :, :start + t]
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=n_kv != n_heads)
                x = x + attn.o_proj(o.to(x.dtype).transpose(1, 2).reshape(b, t, n_heads * head_dim))
                x = x + layer.mlp(layer.post_attention_layernorm(x))
            return lm.model.norm(x[:, -1])

        def pick(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            if temperature == 0:
                return logits.argmax(-1)
            probs = top_p_filter(torch.softmax(logits.float() / temperature, dim=-1), top_p)
            return torch.cat([torch.multinomial(probs[i], 1, generator=generators[int(r)])
                              for i, r in enumerate(rows.tolist())])

        if max_new_tokens == 0:
            return out_tokens[:, :0].cpu(), [0] * batch, [False] * batch

        # Prefill: causal attention over real positions; a padding row attends to itself so no row is empty.
        causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(prompt_len, dtype=torch.bool, device=self.device)
        mask = (causal & valid[:, None, :]) | eye
        hidden = forward(embeds, positions, 0, mask[:, None])
        # </s> is looked for every `every` steps: on a GPU this lets the host queue steps ahead instead of waiting
        # for each token. Finished rows keep running (their extra tokens are never read) until a quarter of the
        # batch has finished; then they are dropped and the cache is compacted.
        every = self.eos_check_every or (1 if self.device.type == "cpu" else 8)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        checked = 0
        for step in range(max_new_tokens):
            token = pick(lm.lm_head(hidden), rows)
            out_tokens[rows, step] = token
            last = step == max_new_tokens - 1
            if (step + 1) % every == 0 or last:
                hit = out_tokens[rows, checked:step + 1] == eos_id
                new = hit.any(1) & ~finished
                checked = step + 1
                if bool(new.any()):
                    first = hit.int().argmax(1) + (checked - hit.shape[1])
                    out_len[rows[new]] = first[new]
                    finished |= new
                    if bool(finished.all()):
                        break
                    if 4 * int(finished.sum()) >= len(rows):
                        alive = ~finished
                        rows, token, next_position, keep = rows[alive], token[alive], next_position[alive], keep[alive]
                        finished = finished[alive]
                        for i in range(len(layers)):
                            cache_k[i], cache_v[i] = cache_k[i][alive], cache_v[i][alive]
            if last:
                break
            slot = prompt_len + step
            keep[:, slot] = True
            x = lm.model.embed_tokens(token)[:, None]
            hidden = forward(x, next_position[:, None], slot, keep[:, None, None, :slot + 1])
            next_position = next_position + 1
        return out_tokens.cpu(), out_len.tolist(), (out_len < max_new_tokens).tolist()

