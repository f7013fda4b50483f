"""Build a tiny CXR-LLaVA-v2 checkpoint with random weights, in the published layout.

Tests and the CPU demo use it: it goes through exactly the same loading and generation code as the real 7B model
(config.json with the same keys, sharded safetensors with the same tensor names, a Llama-style sentencepiece
tokenizer), but it is a few MB and writes noise. It is trained and written offline in a few seconds.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from ..base import RANDOM_WEIGHTS_KEY
from .checkpoint import source_name, target_name
from .configuration import CxrLlavaConfig
from .prompt import REPORT_SYSTEM_PROMPT, REPORT_USER_PROMPT, LlamaSentencePiece

_REPO = Path(__file__).resolve().parents[3]
#: Report texts the tiny tokenizer is trained on (bundled with the project).
CORPUS_DIRS = [_REPO / "tests" / "data" / "iu_reports", _REPO / "demo" / "reports"]

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def tiny_config(vocab_size: int, *, image_size: int = 64, patch_size: int = 8, width: int = 64, layers: int = 2,
                hidden_size: int = 64, llm_layers: int = 2, heads: int = 4, kv_heads: int | None = None) -> dict:
    """config.json content with the keys of the published checkpoint, at toy sizes."""
    return {
        "architectures": ["CXRLLAVAModel"],
        "model_type": "CXR-LLAVA",
        "clip_vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "head_width": width // 2,
                            "mlp_ratio": 4.0, "patch_size": patch_size, "output_tokens": True},
        "clip_embed_dim": width // 2,
        "clip_vision_tower_dtype": "fp32",
        "image_preprocess_cfg": {"mean": 0.5, "std": 0.25},
        "mm_projector_dim": width,
        "llama": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": hidden_size, "intermediate_size": hidden_size * 2, "num_hidden_layers": llm_layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads or heads, "vocab_size": vocab_size,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
        },
        "torch_dtype": "float32",
    }


def _corpus() -> list[str]:
    texts = [REPORT_SYSTEM_PROMPT, REPORT_USER_PROMPT, "[INST] <<SYS>> <</SYS>> [/INST]"]
    for folder in CORPUS_DIRS:
        for xml in sorted(folder.glob("*.xml")):
            for node in ET.parse(xml).iter("AbstractText"):
                if node.text and node.get("Label") in {"FINDINGS", "IMPRESSION"}:
                    texts.append(node.text.strip())
    return texts


def train_tokenizer(out_dir: Path, vocab_size: int = 1000, legacy: bool = False) -> None:
    """A Llama-style sentencepiece BPE (byte fallback, <unk>=0, <s>=1, </s>=2) and its tokenizer_config.json."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buffer, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        character_coverage=1.0, num_threads=1, minloglevel=2, max_sentence_length=8192,
    )
    (out_dir / "tokenizer.model").write_bytes(buffer.getvalue())
    special = {name: {"content": tok, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
               for name, tok in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "legacy": legacy, "model_max_length": 1000000000000000019884624838656,
        "pad_token": None, "sp_model_kwargs": {}, "chat_template": LLAMA2_CHAT_TEMPLATE,
        "added_tokens_decoder": {str(i): {**special[n], "special": True}
                                 for i, n in ((0, "unk_token"), (1, "bos_token"), (2, "eos_token"))},
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def _upstream_names(model) -> dict[str, str]:
    """Checkpoint name for each parameter of a CxrLlava module (the inverse of checkpoint.target_name)."""
    names = {}
    for name, _ in model.named_parameters():
        ckpt = source_name(name)
        assert target_name(ckpt) == name
        names[name] = ckpt
    return names


def build_tiny_checkpoint(out_dir: str | Path, *, seed: int = 0, shards: int = 3, legacy: bool = False,
                          weight_scale: float = 1.0, never_eos: bool = False, **sizes) -> Path:
    """Write a complete tiny checkpoint to ``out_dir`` (created) and return it.

    ``shards`` > 1 writes ``model-0000N-of-0000M.safetensors`` with ``model.safetensors.index.json``; 1 writes a
    single ``model.safetensors``. ``never_eos`` zeroes the ``</s>`` row of the output layer, so that every report
    runs to ``max_new_tokens`` (for benchmarks). The weights are random (seeded), with a larger spread than a training init so that
    different images give different reports, and ``vision_tower.proj`` is included as in the real checkpoint.
    """
    from safetensors.torch import save_file

    from .modeling import CxrLlava

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(out, legacy=legacy)
    tokenizer = LlamaSentencePiece.from_dir(out)
    raw = {**tiny_config(tokenizer.vocab_size, **sizes), RANDOM_WEIGHTS_KEY: True}
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"_from_model_config": True}, indent=2))

    torch.manual_seed(seed)
    model = CxrLlava(CxrLlavaConfig.from_dict(raw), tokenizer)
    tensors: dict[str, torch.Tensor] = {}
    names = _upstream_names(model)
    for name, param in model.named_parameters():
        if name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
            value = 1 + 0.1 * torch.randn(param.shape)
        elif name.endswith("bias") and "ln_" in name:
            value = 0.1 * torch.randn(param.shape)
        else:
            fan_in = param.shape[-1] if param.dim() > 1 else param.shape[0]
            if param.dim() == 4:
                fan_in = param[0].numel()
            value = weight_scale * torch.randn(param.shape) / fan_in ** 0.5
        tensors[names[name]] = value.contiguous()
    if never_eos:
        tensors["lm_head.weight"][tokenizer.eos_id] = 0
    vis = raw["clip_vision_cfg"]
    tensors["vision_tower.proj"] = torch.randn(vis["width"], raw["clip_embed_dim"]) / vis["width"] ** 0.5

    keys = sorted(tensors)
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()
    if shards <= 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        groups = [keys[i::shards] for i in range(shards)]
        weight_map = {}
        for i, group in enumerate(groups, start=1):
            fname = f"model-{i:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k] for k in group}, str(out / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in group})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return out


def ensure_tiny_checkpoint(path: str | Path, build=None, **kwargs) -> Path:
    """Build the tiny checkpoint at ``path`` unless it is already there (``build``: the builder, by default this
    module's :func:`build_tiny_checkpoint`; ``kwargs`` go to it).

    The checkpoint is written to a temporary folder and renamed into place, so a concurrent or interrupted build
    never leaves a half-written checkpoint behind.
    """
    path = Path(path)
    if path.is_dir():
        return path
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (build or build_tiny_checkpoint)(tmp, **kwargs)
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return path

