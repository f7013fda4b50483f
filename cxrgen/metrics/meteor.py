"""METEOR through NLTK (``nltk.translate.meteor_score.single_meteor_score``), only when its data exist.

NLTK's METEOR matches exact tokens, Porter stems and WordNet synonyms, so it needs the WordNet
corpus. It is used only when ``nltk.data.find`` locates it; nothing is ever downloaded. When it is
missing the metric is reported as unavailable, with the command that installs the data. Whether it
can be there at all is looked up first without importing NLTK (the folders ``nltk.data.path``
holds), since importing NLTK takes seconds.

Scores: per sample ``single_meteor_score(reference_tokens, hypothesis_tokens)`` with NLTK's
defaults (alpha 0.9, beta 3, gamma 0.5) on the tokens of the evaluation's tokenizer; 0 for an
empty hypothesis; the corpus METEOR is the mean over samples. This is NLTK's implementation, not
the Java METEOR 1.5 that coco-caption runs, and the two give different numbers; the compatibility
mode therefore does not report METEOR.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

import numpy as np

from cxrgen.metrics.base import Column, Context, MeanMetric

INSTALL_HINT = "python -m nltk.downloader wordnet"
NOT_FOUND = f"NLTK's WordNet data were not found (nltk.data.find failed); install them with: {INSTALL_HINT}"


def _wordnet_folders() -> list[str]:
    """The folders NLTK searches for its data (``nltk.data.path`` as NLTK builds it on POSIX systems)."""
    folders = [os.path.expanduser(d) for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]
    if "APPENGINE_RUNTIME" not in os.environ and os.path.expanduser("~/") != "~/":
        folders.append(os.path.expanduser("~/nltk_data"))
    return folders + [os.path.join(sys.prefix, "nltk_data"), os.path.join(sys.prefix, "share", "nltk_data"),
                      os.path.join(sys.prefix, "lib", "nltk_data"), "/usr/share/nltk_data",
                      "/usr/local/share/nltk_data", "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]


def _wordnet_may_be_installed() -> bool:
    """False when no folder NLTK searches holds a WordNet corpus (found without importing NLTK)."""
    if sys.platform.startswith("win"):  # NLTK adds Windows folders of its own: let it look
        return True
    return any(os.path.exists(os.path.join(folder, "corpora", name))
               for folder in _wordnet_folders() for name in ("wordnet", "wordnet.zip"))


@functools.lru_cache(maxsize=1)
def meteor_availability() -> tuple[bool, str]:
    """``(True, "")`` when NLTK and its WordNet data are installed, else ``(False, reason)``
    (checked once per process)."""
    if importlib.util.find_spec("nltk") is None:
        return False, "nltk is not installed (pip install nltk)"
    if not _wordnet_may_be_installed():
        return False, NOT_FOUND
    import nltk

    for resource in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(resource)
            break
        except LookupError:
            continue
    else:
        return False, NOT_FOUND
    try:
        from nltk.translate.meteor_score import single_meteor_score

        single_meteor_score(["heart", "normal"], ["heart", "normal"])
    except (LookupError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"NLTK's METEOR could not load its data ({first_line}); install them with: {INSTALL_HINT}"
    return True, ""


def nltk_version() -> str:
    import nltk

    return nltk.__version__


def meteor_scores(hyps: list[list[str]], refs: list[list[str]]) -> np.ndarray:
    """Per-sample METEOR of token lists (call only after :func:`meteor_availability` said yes)."""
    from nltk.translate.meteor_score import single_meteor_score

    out = np.zeros(len(hyps))
    for i, (h, r) in enumerate(zip(hyps, refs)):
        if h and r:
            out[i] = single_meteor_score(r, h)
    return out


class Meteor(MeanMetric):
    """NLTK's METEOR on the default tokens, when its WordNet data are installed."""

    name = "meteor"
    keys = ("meteor",)
    labels = {"meteor": "METEOR"}
    columns = (Column("meteor", "METEOR"),)
    modes = (None, "pycocoevalcap")

    def unavailable(self, ctx: Context) -> str | None:
        if ctx.compat:
            return f"not part of the {ctx.compat} compatibility mode"
        if not ctx.use_meteor:
            return "disabled"
        ok, why = meteor_availability()
        return None if ok else why

    def values(self, ctx: Context) -> np.ndarray:
        from cxrgen.metrics.bleu import tokens

        h, r = tokens(ctx)
        return meteor_scores(h, r)

    def signature(self, ctx: Context, available: bool) -> str:
        return f"meteor:nltk-{nltk_version()}" if available else "meteor:none"
