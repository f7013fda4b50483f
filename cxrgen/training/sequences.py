"""Training sequences, token for token what generation feeds the model, per backend.

A study's sequence is the rendered generation prompt (the same chat template, image tokens and image
preprocessing, through the backend's own preparer and prompt code) followed by the reference and the token
generation stops at; its labels are -100 (not counted in the loss) on the prompt, image and padding positions and
the token ids on the reference and end positions::

    prompt (image included)            | reference tokens | end
    labels: -100 ...                   | ids ...          | end id

Each backend gives a :class:`Sequences`: the module PEFT wraps, a picklable example builder that runs in the
DataLoader workers (prepared image inputs + target ids -> one example), the target ids of a reference, the LoRA
targets, and the adapter's tensor names as ``model.adapter`` reads them.

* ``cxr_llava``: the prompt ids around ``<image>`` as the published code tokenises them
  (:meth:`~cxrgen.models.cxr_llava.prompt.LlamaSentencePiece.encode_prompt`), the image positions marked with
  ``IMAGE_INDEX``; :meth:`CxrLlava.forward` runs the prefill's own code over them. Target: the reference's tokens
  without BOS, then ``</s>``.
* ``transformers``: :meth:`TransformersBackend.study_inputs`, the object generation builds its batches from. Target:
  the reference tokenised without special tokens, then the end id (the tokenizer's EOS when generation stops at
  it, else the smallest id it stops at: BLIP's ``[SEP]``). BLIP's own ``generate`` rewrites the prompt before its
  text decoder sees it (first id -> the decoder's BOS, the last, ``[SEP]``, dropped; no text: the BOS alone);
  training sequences are built the same way, since the decoder is what is trained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from PIL import Image

from ..models import ModelError

#: CXR-LLaVA's default LoRA targets: the Llama attention and MLP projections (names the vision tower does not use).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE = -100  # a label that the loss does not count


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of examples: per-token tensors (1-D) right-padded (ids with ``pad_id``, labels with -100, masks and
    type ids with 0); image tensors (batch axis 1) concatenated."""
    width = max(len(e["input_ids"]) for e in examples)
    batch = {}
    for key, first in examples[0].items():
        if first.dim() != 1:
            batch[key] = torch.cat([e[key] for e in examples])
            continue
        fill = IGNORE if key == "labels" else pad_id if key == "input_ids" else 0
        out = torch.full((len(examples), width), fill, dtype=first.dtype)
        for row, e in enumerate(examples):
            out[row, :len(e[key])] = e[key]
        batch[key] = out
    return batch


def _sequence(prompt_ids: list[int], target: list[int], per_token: dict[str, torch.Tensor]) -> dict:
    """input_ids, attention_mask and labels of prompt + target, and other per-token prompt tensors (token type
    ids) extended with zeros."""
    n = len(prompt_ids)
    out = {"input_ids": torch.tensor(prompt_ids + target), "attention_mask": torch.ones(n + len(target),
                                                                                        dtype=torch.long),
           "labels": torch.tensor([IGNORE] * n + target)}
    for key, value in per_token.items():
        out[key] = torch.cat([value, torch.zeros(len(target), dtype=value.dtype)])
    return out


@dataclass
class Sequences:
    """What fine-tuning needs from a backend (see the module docstring)."""

    module: torch.nn.Module  # what PEFT wraps and the Trainer trains
    example: Callable[[Any, list[int]], dict]  # picklable: (prepared inputs, target ids) -> an example
    target: Callable[[str], list[int]]  # a reference -> its target ids (end id included)
    pad_id: int
    max_length: int | None  # the model's positions: longer sequences are left out
    prompt_length: int | None  # in tokens, image included (None: it depends on the image)
    lora_targets: Callable[[list[str] | None], Any]  # training.target_modules -> LoraConfig.target_modules
    export_name: Callable[[str], str]  # a PEFT tensor name -> the name model.adapter reads
    frozen: tuple[str, ...]  # module name prefixes that must never get LoRA (the vision tower)


# -- CXR-LLaVA -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CxrLlavaExample:
    """Picklable: preprocessed pixels [1, S, S] and target ids -> an example of :meth:`CxrLlava.forward`."""

    prompt: tuple[int, ...]  # the prompt's ids with its image positions (IMAGE_INDEX)

    def __call__(self, pixels, target: list[int]) -> dict:
        return {"pixels": torch.as_tensor(pixels)[None], **_sequence(list(self.prompt), target, {})}


def cxr_llava(backend, prompt_cfg) -> Sequences:
    from ..models.cxr_llava.checkpoint import source_name
    from ..models.cxr_llava.decoding import sequence_ids

    model = backend.model
    tokenizer = model.tokenizer
    prompt = sequence_ids(tokenizer.encode_prompt(backend.render_prompt(prompt_cfg)), model.config.vision.num_patches)

    def lora_targets(names):
        return list(names) if names else list(LLAMA_PROJECTIONS)

    def export_name(key: str) -> str:  # the published checkpoint's module names (llama.layers.N...)
        prefix = "base_model.model."
        return prefix + source_name(key[len(prefix):]) if key.startswith(prefix) else key

    return Sequences(module=model, example=CxrLlavaExample(tuple(prompt)), target=tokenizer.encode_reply,
                     pad_id=0, max_length=model.config.max_position_embeddings,
                     prompt_length=len(prompt), lora_targets=lora_targets, export_name=export_name,
                     frozen=("vision_tower",))


# -- transformers ----------------------------------------------------------------------------------------------------

#: Model types whose ``generate`` starts the text decoder with this config id in place of the prompt's first id and
#: drops the prompt's last one (``BlipForConditionalGeneration.generate``).
_DECODER_START = {"blip": "bos_token_id"}


@dataclass(frozen=True)
class TransformersExample:
    """Picklable: what :class:`PrepareImage` gave and target ids -> an example of the model's forward pass."""

    study: Any  # the backend's StudyInputs for the rendered prompt
    decoder_start: int | None  # see _DECODER_START

    def prompt(self, inputs) -> dict[str, torch.Tensor]:
        """The study's inputs as the model's decoder sees them in generation (batch axis 1)."""
        out = self.study(inputs)
        if self.decoder_start is not None:
            ids = out.get("input_ids")
            start = torch.tensor([[self.decoder_start]])
            out["input_ids"] = start if ids is None else torch.cat([start, ids[:, 1:-1]], 1)
            out["attention_mask"] = torch.ones_like(out["input_ids"])
        return out

    def __call__(self, inputs, target: list[int]) -> dict:
        out = self.prompt(inputs)
        ids = out.pop("input_ids")
        n = ids.shape[1]
        out.pop("attention_mask", None)
        per_token = {k: out.pop(k)[0] for k in list(out) if out[k].dim() == 2 and out[k].shape[1] == n
                     and not out[k].is_floating_point()}
        return {**out, **_sequence(ids[0].tolist(), target, per_token)}


def transformers(backend, prompt_cfg) -> Sequences:
    model = backend.model
    tokenizer = backend.processor.tokenizer
    stops = backend.eos_token_ids
    if not stops:
        raise ModelError(f"{backend.folder}: no end-of-sequence token (generation_config.json eos_token_id, or the "
                         "tokenizer's): a fine-tuned report would never end")
    end = tokenizer.eos_token_id if tokenizer.eos_token_id in stops else min(stops)
    text_config = model.config.get_text_config()
    start_key = _DECODER_START.get(getattr(model.config, "model_type", None))
    example = TransformersExample(backend.study_inputs(backend.render_prompt(prompt_cfg)),
                                  getattr(text_config, start_key) if start_key else None)
    try:
        decoder = model.get_decoder()
        decoder_name = next(n for n, m in model.named_modules() if m is decoder and n)
    except (AttributeError, StopIteration):
        raise ModelError(f"{backend.folder}: {type(model).__name__} does not say which of its modules is the "
                         "language model (get_decoder), so no LoRA target can be chosen") from None
    heads = {id(m) for m in (model.get_output_embeddings(), getattr(decoder, "get_output_embeddings",
                                                                      lambda: None)()) if m is not None}
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    language = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                and n.startswith(decoder_name + ".") and id(m) not in heads]

    def lora_targets(names):
        """A regular expression selecting the language model's linear layers (those with these leaf names)."""
        leaves = sorted(set(names) if names else {n.rsplit(".", 1)[-1] for n in language})
        chosen = {n for n in language if n.rsplit(".", 1)[-1] in leaves}
        missing = sorted(set(leaves) - {n.rsplit(".", 1)[-1] for n in chosen})
        if missing:
            raise ModelError(f"training.target_modules: the language model ({decoder_name}) has no linear layer "
                             f"named {', '.join(missing)}")
        pattern = rf"{re.escape(decoder_name)}\..*\.(?:{'|'.join(map(re.escape, leaves))})"
        if {n for n in linear if re.fullmatch(pattern, n)} != chosen:  # a leaf name shared with an output layer
            pattern = "|".join(map(re.escape, sorted(chosen)))
        return pattern

    probe = example.prompt(backend.image_preparer()(Image.new("L", (64, 64))))
    return Sequences(module=model, example=example,
                     target=lambda reference: tokenizer(reference, add_special_tokens=False)["input_ids"] + [end],
                     pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end,
                     max_length=getattr(text_config, "max_position_embeddings", None),
                     prompt_length=probe["input_ids"].shape[1] if backend.split else None,
                     lora_targets=lora_targets, export_name=lambda key: key, frozen=())


BUILDERS = {"cxr_llava": cxr_llava, "transformers": transformers}


def sequences(backend, prompt_cfg) -> Sequences:
    """The training sequences of a loaded backend (``backend.name``) for the configured prompt."""
    if backend.name not in BUILDERS:
        raise ModelError(f"model.backend {backend.name}: fine-tuning supports {', '.join(BUILDERS)}")
    return BUILDERS[backend.name](backend, prompt_cfg)
