"""Tiny random image-text-to-text checkpoints, written by transformers' own ``save_pretrained``.

Tests (and anyone who wants to see the ``transformers`` backend run without real weights) build them offline in
seconds: a LLaVA-HF checkpoint (``LlavaForConditionalGeneration`` + ``LlavaProcessor``: CLIP vision tower, Llama
text model) and a Gemma-3 one (``Gemma3ForConditionalGeneration`` + ``Gemma3Processor``: SigLIP vision tower,
Gemma-3 text model; MedGemma's architecture), each with a real byte-fallback BPE tokenizer trained here on the
bundled report texts and a chat template on the processor, and a BLIP captioner (``BlipForConditionalGeneration`` +
``BlipProcessor``, a WordPiece tokenizer, no chat template: nathansutton/generate-cxr's layout). The weights are
random, so the reports are noise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..base import RANDOM_WEIGHTS_KEY

#: Chat templates in the layout of the two model families, written for these tiny checkpoints. Message content may
#: be a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}{% for p in parts if p['type'] == 'text' %}{{ p['text'] }}{% endfor %}"
    "{{ '\\n' }}{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for p in parts if p['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}"
    "{% for p in parts if p['type'] == 'text' %}{{ p['text'] }}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(prefix='') %}{% set turns = messages %}"
    "{% if messages and messages[0]['role'] == 'system' %}{% set turns = messages[1:] %}"
    "{% if messages[0]['content'] is string %}{% set ns.prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% else %}{% set ns.prefix = messages[0]['content'][0]['text'] + '\\n\\n' %}{% endif %}{% endif %}"
    "{% for message in turns %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if loop.first %}{{ ns.prefix }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for p in message['content'] %}{% if p['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif p['type'] == 'text' %}{{ p['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def _bpe_tokenizer(special: list[str], bos: str, vocab_size: int):
    """A Metaspace byte-fallback BPE trained on the bundled reports, BOS prepended: a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from ..cxr_llava.tiny import _corpus

    tokenizer = Tokenizer(models.BPE(unk_token=special[0], byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="first"),
                                           decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special + byte_tokens, show_progress=False)
    texts = _corpus() + ["USER: ASSISTANT: model user system \n\n"]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(bos)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                             special_tokens=[(bos, bos_id)])
    return tokenizer


def _scale_weights(model, std: float, seed: int, eos_ids: list[int], eos_scale: float) -> None:
    """Redraw the matrices with a larger spread than the training init, so that different images give different
    reports; norms and biases keep the model's own init (which knows, e.g., that Gemma's norms scale by 1 + w).
    The output rows of the end-of-sequence tokens are scaled by ``eos_scale``, so that some reports end before
    ``max_new_tokens`` and others do not."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "norm" not in name:
                param.copy_(std * torch.randn(param.shape, generator=generator))
        head = model.get_output_embeddings()
        if head is None:  # BLIP keeps its output layer in the text decoder
            head = model.text_decoder.get_output_embeddings()
        head.weight[eos_ids] *= eos_scale


def build_tiny_llava(out_dir: str | Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                     std: float = 0.4, eos_scale: float = 1.5) -> Path:
    """A tiny ``LlavaForConditionalGeneration`` (CLIP vision + Llama text) with its ``LlavaProcessor``."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe_tokenizer(special, "<s>", 600), unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(
        "<image>"), vision_feature_select_strategy="default", vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _scale_weights(model, std, seed, [tokenizer.eos_token_id], eos_scale)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    setattr(model.config, RANDOM_WEIGHTS_KEY, True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_gemma3(out_dir: str | Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                      tokens_per_image: int = 4, std: float = 0.15, eos_scale: float = 1.5) -> Path:
    """A tiny ``Gemma3ForConditionalGeneration`` (SigLIP vision + Gemma-3 text) with its ``Gemma3Processor``."""
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              Gemma3TextConfig, PreTrainedTokenizerFast, SiglipVisionConfig)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
               "<end_of_image>", "<image_soft_token>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(special, "<bos>", 600), unk_token="<unk>", bos_token="<bos>",
        eos_token="<eos>", pad_token="<pad>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"})
    image_processor = Gemma3ImageProcessor(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_length=tokens_per_image, chat_template=GEMMA3_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=image_size, patch_size=patch_size)
    text = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=64,
                            max_position_embeddings=512, bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                            pad_token_id=ids["<pad>"], tie_word_embeddings=False)
    config = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=tokens_per_image,
                          image_token_id=ids["<image_soft_token>"], boi_token_id=ids["<start_of_image>"],
                          eoi_token_id=ids["<end_of_image>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    _scale_weights(model, std, seed, [ids["<eos>"], ids["<end_of_turn>"]], eos_scale)
    model.generation_config.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.bos_token_id = ids["<bos>"]
    setattr(model.config, RANDOM_WEIGHTS_KEY, True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_blip(out_dir: str | Path, *, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                    std: float = 0.3, eos_scale: float = 1.5) -> Path:
    """A tiny ``BlipForConditionalGeneration`` captioner with its ``BlipProcessor`` (no chat template), the layout
    of nathansutton/generate-cxr; a lower-cased WordPiece tokenizer as BERT's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor,
                              BlipTextConfig, BlipVisionConfig, PreTrainedTokenizerFast)

    from ..cxr_llava.tiny import _corpus

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    wordpiece.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=500, special_tokens=special,
                                                                       show_progress=False))
    ids = {t: wordpiece.token_to_id(t) for t in special}
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size)
    text = BlipTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, encoder_hidden_size=32, bos_token_id=ids["[DEC]"],
                          pad_token_id=ids["[PAD]"], sep_token_id=ids["[SEP]"], eos_token_id=ids["[SEP]"])
    config = BlipConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), projection_dim=32,
                        image_text_hidden_size=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    _scale_weights(model, std, seed, [ids["[SEP]"]], eos_scale)
    setattr(model.config, RANDOM_WEIGHTS_KEY, True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
