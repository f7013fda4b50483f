"""Tokenizers for the text metrics: one default tokenizer and one compatibility cleaner.

Every text metric (BLEU, ROUGE-L, CIDEr-D, METEOR) sees the tokens produced by exactly one of the two
functions below, chosen by the evaluation mode; the choice is recorded in the signature (``tok:...``).

Default, ``cxr-v1`` (:func:`tokenize_cxr`):

1. Unicode NFKC normalisation, then lower case (``str.lower``).
2. De-identification placeholders become one token, ``xxxx``: a whole word made only of three or more
   ``x`` (Open-i / IU X-ray write ``XXXX``) and a run of two or more underscores (MIMIC-CXR writes
   ``___``). ``XXXX-year-old`` becomes ``xxxx - year - old``; ``XXXX.`` becomes ``xxxx .``.
3. The text is split into tokens, scanning left to right and taking the first rule that matches:
   a number with decimal or thousands separators (``1.5``, ``2,300``: digits, then one or more
   groups of ``.`` or ``,`` followed by digits) is one token; a run of letters and digits is one
   token (``t12``, ``cm``, ``xxxx``); any other non-space character is a token on its own
   (``.``, ``,``, ``-``, ``/``, ``(``, ...). Whitespace separates tokens and is dropped.
   Punctuation is therefore split off the words and kept as tokens (as sacrebleu's ``13a`` does),
   so sentence ends count as n-gram boundaries.

Compatibility, ``pycoco-strip`` (:func:`clean_pycoco`), used by ``--compat pycocoevalcap``:

1. Lower case (``str.lower``, no Unicode normalisation).
2. Every character of the 32 ASCII punctuation characters
   ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~`` (Python's ``string.punctuation``) is deleted, not replaced by
   a space: ``x-ray`` becomes ``xray``, ``1.5`` becomes ``15``, ``XXXX.`` becomes ``xxxx``.
3. Runs of whitespace become one space; leading and trailing whitespace is removed.

The cleaned string is then split on spaces by the pycocoevalcap-compatible scorers. On text that is
already lower case, free of those punctuation characters and single-spaced without leading or
trailing spaces, :func:`clean_pycoco` returns its input unchanged.

RadEval-compatible, ``ws-split`` (:func:`tokenize_whitespace`), used by ``--compat radeval`` for BLEU:
the raw text split on whitespace (``str.split``), case and punctuation kept (``lungs.`` and ``Lungs``
are different tokens), which is what RadEval passes to its copy of pycocoevalcap's BLEU scorer.
RadEval's ROUGE uses rouge-score's own tokenizer (see :mod:`cxrgen.metrics.rouge`).

``13a`` (:func:`tokenize_13a`), used by the ``llava-rad`` protocol's BLEU: the tokenizer of mteval-v13a.pl as
sacrebleu 2.x applies it by default (trailing whitespace stripped; ``<skipped>`` removed, ``-`` at a line end joined,
line breaks as spaces, the HTML entities ``&quot; &amp; &lt; &gt;`` decoded; every ASCII punctuation character but
``' , - .`` split off; ``.`` and ``,`` split off unless between digits; ``-`` split off after a digit). Case is kept.

Each mode's tokenizer fields of the signature are in :data:`MODE_FIELDS`.
"""

from __future__ import annotations

import re
import string
import unicodedata

DEFAULT_TOKENIZER = "cxr-v1"
COMPAT_TOKENIZER = "pycoco-strip"
COMPAT_MODES = ("pycocoevalcap", "radeval")
# Signature fields of each mode: references per sample, tokenizer, case, de-identification rule.
MODE_FIELDS: dict[str | None, tuple[str, ...]] = {
    None: ("nrefs:1", "tok:cxr-v1", "case:lc", "deid:xxxx"),
    "pycocoevalcap": ("nrefs:1", "tok:pycoco-strip", "case:lc", "deid:none"),
    "radeval": ("nrefs:1", "tok:ws-split", "case:kept", "deid:none"),
}
DEID_TOKEN = "xxxx"

_DEID_X = re.compile(r"(?<![^\W_])x{3,}(?![^\W_])")
_DEID_UNDERSCORE = re.compile(r"_{2,}")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+|\S")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_SPACES = re.compile(r"\s+")


def tokenize_cxr(text: str) -> list[str]:
    """Tokens of ``text`` under the default ``cxr-v1`` rules (module docstring); ``[]`` for empty text."""
    if not text:
        return []
    text = unicodedata.normalize("NFKC", text).lower()
    text = _DEID_UNDERSCORE.sub(f" {DEID_TOKEN} ", text)
    text = _DEID_X.sub(DEID_TOKEN, text)
    return _TOKEN.findall(text)


def clean_pycoco(text: str) -> str:
    """``text`` cleaned under the ``pycoco-strip`` rules (module docstring): lower case, ASCII
    punctuation deleted, whitespace collapsed to single spaces and stripped."""
    if not text:
        return ""
    return _SPACES.sub(" ", text.lower().translate(_PUNCT_TABLE)).strip()


def tokenize_pycoco(text: str) -> list[str]:
    """Tokens of ``text`` in compatibility mode: :func:`clean_pycoco` then split on spaces."""
    return clean_pycoco(text).split()


def tokenize_whitespace(text: str) -> list[str]:
    """Tokens of ``text`` in RadEval mode: the raw text split on whitespace."""
    return text.split() if text else []


# mteval-v13a: the punctuation split off everywhere (all ASCII punctuation except ' , - .), then the rules for
# periods and commas (kept inside numbers) and for a dash after a digit.
_13A_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))
_13A_RULES = (
    (re.compile(r"([!\"#$%&()*+/:;<=>?@\[\\\]^_`{|}~ ])"), r" \1 "),
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)


def tokenize_13a(text: str) -> list[str]:
    """Tokens of ``text`` under mteval-v13a's rules as sacrebleu applies them (module docstring); case kept."""
    if not text:
        return []
    line = text.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in _13A_ENTITIES:
            line = line.replace(entity, char)
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return line.split()


def tokenizer_for(compat: str | None):
    """The tokenizer of a mode (``None`` default, ``"pycocoevalcap"``, ``"radeval"``)."""
    if compat is None:
        return tokenize_cxr
    if compat == "pycocoevalcap":
        return tokenize_pycoco
    if compat == "radeval":
        return tokenize_whitespace
    raise ValueError(f"unknown compatibility mode {compat!r}; known: {', '.join(COMPAT_MODES)}")
