"""Random-weight models at the published sizes, built on the device without a download, for the GPU check.

* CXR-LLaVA-v2: open_clip ViT-L/16 on 512x512 grey images (1,024 image tokens), a linear projector, Llama-2-7B
  (7.05 B parameters), with the tiny tokenizer of ``cxrgen.models.cxr_llava.tiny`` (1,000 pieces; only the token
  ids the model writes change, not its shapes). ``layers`` keeps every width and cuts the depth of both towers
  (the same matrix shapes, fewer of them). The output row of ``</s>`` is zeroed, so a report ends at its token
  limit, never earlier, and so are the rows of the 31,000 ids the tiny tokenizer lacks.
* Gemma-3 at MedGemma-4B's sizes (SigLIP 400M on 896x896, 256 image tokens, a 34-layer Gemma-3 text model with
  a 262,208-token vocabulary) with the tiny Gemma-3 processor's tokenizer.

``tiny=True`` gives the toy sizes of the tiny builders instead, for ``--cpu-smoke``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxrgen.models.cxr_llava import CxrLlava, CxrLlavaConfig, LlamaSentencePiece
from cxrgen.models.cxr_llava.tiny import tiny_config, train_tokenizer

CXR_LLAVA_V2 = {
    "clip_vision_cfg": {"image_size": 512, "layers": 24, "width": 1024, "head_width": 64, "mlp_ratio": 4.0,
                        "patch_size": 16},
    "clip_embed_dim": 768,
    "image_preprocess_cfg": {"mean": 0.5, "std": 0.25},
    "mm_projector_dim": 1024,
    "llama": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False},
}


def build_cxr_llava(folder: Path, device: torch.device, dtype: torch.dtype, *, tiny: bool = False,
                    layers: int | None = None, seed: int = 0) -> CxrLlava:
    """CXR-LLaVA-v2 with seeded random weights (N(0, 0.02) matrices, unit norms) straight on ``device``."""
    train_tokenizer(folder)
    tokenizer = LlamaSentencePiece.from_dir(folder)
    raw = tiny_config(tokenizer.vocab_size) if tiny else {**CXR_LLAVA_V2, "llama": dict(CXR_LLAVA_V2["llama"]),
                                                          "clip_vision_cfg": dict(CXR_LLAVA_V2["clip_vision_cfg"])}
    if layers:
        raw["llama"]["num_hidden_layers"] = layers
        raw["clip_vision_cfg"]["layers"] = layers
    with torch.device("meta"):
        model = CxrLlava(CxrLlavaConfig.from_dict(raw), tokenizer)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.fill_(1.0) if name.endswith("weight") else p.zero_()
            else:
                p.normal_(0, 0.02, generator=generator)
            p.requires_grad_(False)
        model.language_model.lm_head.weight[tokenizer.eos_id] = 0
        # the real vocabulary's output rows beyond the tiny tokenizer's pieces: logit 0, never the largest of ~1,000
        # random logits, so every token written can be decoded (the output layer keeps its real size and cost)
        model.language_model.lm_head.weight[tokenizer.vocab_size:] = 0
    model = model.to(dtype)
    model._materialise_buffers(device)
    return model.eval()


def medgemma_config(tokenizer_ids: dict[str, int], *, tiny: bool = False):
    """A ``Gemma3Config`` at MedGemma-4B's published sizes (or the tiny builder's), with the special-token ids of
    the tokenizer that goes with it."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    if tiny:
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=32, patch_size=8)
        text = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=64)
        tokens_per_image = 4
    else:
        vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                    num_attention_heads=16, image_size=896, patch_size=14)
        text = dict(vocab_size=262_208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                    num_attention_heads=8, num_key_value_heads=4, head_dim=256, sliding_window=1024,
                    query_pre_attn_scalar=256, rope_theta=1_000_000.0)
        tokens_per_image = 256
    text = Gemma3TextConfig(**text, max_position_embeddings=8192, bos_token_id=tokenizer_ids["<bos>"],
                            eos_token_id=tokenizer_ids["<eos>"], pad_token_id=tokenizer_ids["<pad>"])
    return Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=tokens_per_image,
                        image_token_id=tokenizer_ids["<image_soft_token>"],
                        boi_token_id=tokenizer_ids["<start_of_image>"], eoi_token_id=tokenizer_ids["<end_of_image>"])


def build_medgemma(folder: Path, device: torch.device, dtype: torch.dtype, *, tiny: bool = False):
    """(model, processor): Gemma-3 at MedGemma-4B's sizes with random weights on ``device`` and a processor whose
    image size and image-token count match it (the tiny Gemma-3 checkpoint's tokenizer and chat template)."""
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration, Gemma3Processor

    from cxrgen.models.transformers.tiny import GEMMA3_CHAT_TEMPLATE, build_tiny_gemma3

    small = AutoProcessor.from_pretrained(build_tiny_gemma3(folder))
    tokenizer = small.tokenizer
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<bos>", "<eos>", "<pad>", "<end_of_turn>", "<image_soft_token>", "<start_of_image>", "<end_of_image>")}
    config = medgemma_config(ids, tiny=tiny)
    image_size = config.vision_config.image_size
    image_processor = type(small.image_processor)(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_length=config.mm_tokens_per_image, chat_template=GEMMA3_CHAT_TEMPLATE)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Gemma3ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.bos_token_id = ids["<bos>"]
    return model.eval(), processor


def write_cxr_llava_checkpoint(folder: Path, device: torch.device, dtype: torch.dtype, *, tiny: bool = False,
                               shard_bytes: int = 2 << 30) -> Path:
    """CXR-LLaVA-v2 with :func:`build_cxr_llava`'s random weights written to ``folder`` in the published checkpoint
    layout (its parameter names, ``dtype`` safetensors shards of at most ``shard_bytes`` with their index, the
    config marked as random weights), for what loads a checkpoint from disk (fine-tuning). The shards are written
    one at a time from ``device``, so the host never holds more than one."""
    import json

    from safetensors.torch import save_file

    from cxrgen.models.base import RANDOM_WEIGHTS_KEY
    from cxrgen.models.cxr_llava.tiny import _upstream_names

    folder.mkdir(parents=True, exist_ok=True)
    model = build_cxr_llava(folder, device, dtype, tiny=tiny)
    raw = tiny_config(model.tokenizer.vocab_size) if tiny else CXR_LLAVA_V2
    (folder / "config.json").write_text(json.dumps({**raw, RANDOM_WEIGHTS_KEY: True}, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"_from_model_config": True}))
    names = _upstream_names(model)
    params = dict(model.named_parameters())
    groups, size = [[]], 0
    for name in sorted(params, key=lambda n: names[n]):
        nbytes = params[name].numel() * params[name].element_size()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({names[n]: params[n].detach().to("cpu").contiguous() for n in group}, str(folder / file),
                  metadata={"format": "pt"})
        weight_map.update({names[n]: file for n in group})
    total = sum(p.numel() * p.element_size() for p in params.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    del model, params
    return folder
