"""Prompt rendering, tokenisation and decoding exactly as the published CXR-LLaVA-v2 code does them.

The published code (written for transformers 4.36) renders a Llama-2 chat prompt, splits it at ``<image>``,
tokenises each piece with the slow sentencepiece ``LlamaTokenizer`` (which adds a BOS to every piece) and joins the
pieces around an image placeholder, keeping the first piece's BOS and dropping the others. Because the rendered text
itself starts with the literal ``<s>``, the model is fed a doubled BOS: ``[1, 1, ...]``. It decodes the generated ids
through a ``TextIteratorStreamer`` with ``skip_special_tokens=True``, which flushes its text at every line end.

Transformers' tokenizer classes have changed this behaviour since then (5.x has no slow sentencepiece tokenizer), so
this module reimplements it on the ``sentencepiece`` library directly, for both values of the tokenizer's ``legacy``
flag, and is tested token for token against the published code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from .configuration import CheckpointError

IMAGE_PLACEHOLDER = "<image>"

#: The published model's own system and user prompt for a report (``write_radiologic_report``).
REPORT_SYSTEM_PROMPT = (
    "You are a helpful radiologist. Try to interpret chest x ray image and answer to the question that user provides."
)
REPORT_USER_PROMPT = (
    "Write a radiologic report on the given chest radiograph, including information about atelectasis, "
    "cardiomegaly, consolidation, pulmonary edema, pleural effusion, and pneumothorax.\n"
)

_SPIECE_UNDERLINE = "\u2581"


def render_prompt(system: str, user: str) -> str:
    """The Llama-2 chat rendering of [system, user] with the image placeholder before the user text.

    ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<image>\\n{user} [/INST]`` where, as in the Llama-2 chat
    template, the whole content after ``[INST] `` is stripped of surrounding whitespace.
    """
    content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{IMAGE_PLACEHOLDER}\n{user}"
    return f"<s>[INST] {content.strip()} [/INST]"


@dataclass(frozen=True)
class PromptIds:
    """Token ids before and after the image: the model sees ``before + image tokens + after``."""

    before: tuple[int, ...]
    after: tuple[int, ...]


class LlamaSentencePiece:
    """The slow Llama tokenizer's encode/decode rules on a ``tokenizer.model`` file.

    Settings come from ``tokenizer_config.json`` next to it: ``legacy`` (absent means True, as in transformers 4.36),
    ``add_bos_token`` (default True), ``clean_up_tokenization_spaces`` (absent means True) and the special tokens.
    """

    def __init__(self, model_file: str | Path, tokenizer_config: dict | None = None):
        cfg = tokenizer_config or {}
        self.legacy = bool(cfg.get("legacy", True)) if cfg.get("legacy") is not None else True
        self.add_bos = bool(cfg.get("add_bos_token", True))
        self.clean_up_spaces = bool(cfg.get("clean_up_tokenization_spaces", True))
        model_file = Path(model_file)
        try:
            proto = model_file.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{model_file}: cannot read the sentencepiece tokenizer ({e.strerror})") from None
        self.sp = _load_sentencepiece(proto, add_dummy_prefix=None if self.legacy else False, source=model_file)
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        if min(self.bos_id, self.eos_id, self.unk_id) < 0:
            raise CheckpointError(f"{model_file}: the tokenizer must define <unk>, <s> and </s>")
        self.special_tokens = {
            self.sp.id_to_piece(i): i for i in (self.unk_id, self.bos_id, self.eos_id)
        }
        self.special_ids = frozenset(self.special_tokens.values())
        self._pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        self._unk_len = len(self.sp.encode(self.sp.id_to_piece(self.unk_id), out_type=str))

    @classmethod
    def from_dir(cls, directory: str | Path) -> "LlamaSentencePiece":
        directory = Path(directory)
        cfg_path = directory / "tokenizer_config.json"
        cfg = {}
        if cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{cfg_path}: not a readable JSON file ({e})") from None
        model = directory / "tokenizer.model"
        if not model.exists():
            raise CheckpointError(f"{model}: tokenizer file not found")
        return cls(model, cfg)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    # -- encoding -------------------------------------------------------------------------------------------------
    def _split_special(self, text: str) -> list[str]:
        """Split text around literal special tokens (``<s>``, ``</s>``, ``<unk>``), keeping them as pieces."""
        pieces = [text]
        for token in sorted(self.special_tokens, key=len, reverse=True):
            out = []
            for piece in pieces:
                if piece in self.special_tokens:
                    out.append(piece)
                    continue
                parts = piece.split(token)
                for i, part in enumerate(parts):
                    if i:
                        out.append(token)
                    out.append(part)
            pieces = out
        return [p for p in pieces if p]

    def _encode_piece(self, text: str) -> list[str]:
        if self.legacy or not text.startswith((_SPIECE_UNDERLINE, " ")):
            return self.sp.encode(text, out_type=str)
        unk = self.sp.id_to_piece(self.unk_id)
        pieces = self.sp.encode(unk + text, out_type=str)
        return pieces[self._unk_len:] if len(pieces) >= self._unk_len else pieces

    def tokenize(self, text: str) -> list[str]:
        if not text:
            return []
        if self.legacy:
            parts = self._split_special(text)
        else:
            parts = self._split_special(_SPIECE_UNDERLINE + text.replace(_SPIECE_UNDERLINE, " "))
        pieces: list[str] = []
        for part in parts:
            pieces.extend([part] if part in self.special_tokens else self._encode_piece(part))
        if not self.legacy and len(pieces) > 1 and pieces[0] == _SPIECE_UNDERLINE and pieces[1] in self.special_tokens:
            pieces = pieces[1:]
        return pieces

    def encode(self, text: str) -> list[int]:
        """Ids as ``tokenizer(text).input_ids``: a BOS (if ``add_bos_token``) then the text's tokens."""
        ids = [self.special_tokens[p] if p in self.special_tokens else self.sp.piece_to_id(p) for p in self.tokenize(text)]
        return ([self.bos_id] if self.add_bos else []) + ids

    def encode_prompt(self, prompt: str) -> PromptIds:
        """Ids around the one ``<image>`` placeholder, joined as the published ``tokenizer_image_token`` does."""
        chunks = prompt.split(IMAGE_PLACEHOLDER)
        if len(chunks) != 2:
            raise ValueError(f"the prompt must contain exactly one {IMAGE_PLACEHOLDER!r}, found {len(chunks) - 1}")
        first, second = (self.encode(c) for c in chunks)
        # A leading BOS on the first piece is kept once; the same leading position is dropped from the second.
        offset = 1 if first and first[0] == self.bos_id else 0
        return PromptIds(before=tuple(first), after=tuple(second[offset:]))

    def encode_reply(self, text: str) -> list[int]:
        """The ids of a reply the model writes after its prompt, then ``</s>`` (a fine-tuning target): ``text``'s
        tokens without a BOS. :meth:`decode_streamed` gives ``text`` back for text without line breaks."""
        ids = self.encode(text)
        return (ids[1:] if self.add_bos else ids) + [self.eos_id]

    # -- decoding -------------------------------------------------------------------------------------------------
    def decode(self, ids: list[int]) -> str:
        """``tokenizer.decode(ids, skip_special_tokens=True)`` of the slow Llama tokenizer."""
        pieces = [self._pieces[i] for i in ids if i not in self.special_ids]
        if not pieces:
            return ""
        if pieces[0].startswith(_SPIECE_UNDERLINE):
            pieces[0] = pieces[0][1:]
        text = self.sp.decode_pieces(pieces)
        return _clean_up_spaces(text) if self.clean_up_spaces else text

    def decode_streamed(self, ids: list[int]) -> str:
        """The text the published code returns: what a ``TextIteratorStreamer`` emits for these generated ids.

        The streamer decodes its token cache after every token and empties the cache whenever the text ends with a
        line break, so the first word after a line break loses its leading space; then it flushes what remains.
        """
        out: list[str] = []
        cache: list[int] = []
        printed = 0
        for token in ids:
            cache.append(token)
            text = self.decode(cache)
            if text.endswith("\n"):
                out.append(text[printed:])
                cache, printed = [], 0
            elif text and _is_cjk(ord(text[-1])):
                out.append(text[printed:])
                printed = len(text)
            else:
                chunk = text[printed: text.rfind(" ") + 1]
                out.append(chunk)
                printed += len(chunk)
        if cache:
            out.append(self.decode(cache)[printed:])
        return "".join(out)


def _load_sentencepiece(proto: bytes, add_dummy_prefix: bool | None, source: Path) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    if add_dummy_prefix is not None:
        try:
            from sentencepiece import sentencepiece_model_pb2 as model_pb2
        except ImportError as e:  # protobuf is missing
            raise CheckpointError(f"{source}: reading a non-legacy Llama tokenizer needs protobuf ({e})") from None
        model = model_pb2.ModelProto.FromString(proto)
        model.normalizer_spec.add_dummy_prefix = add_dummy_prefix
        proto = model.SerializeToString()
    try:
        processor.LoadFromSerializedProto(proto)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own message
        raise CheckpointError(f"{source}: not a sentencepiece model ({e})") from None
    return processor


def _clean_up_spaces(text: str) -> str:
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )
