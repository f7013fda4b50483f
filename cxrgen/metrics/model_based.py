"""Optional model-based metrics through the packages that implement them, never downloading anything.

Enabled by name (``--model-metrics bertscore,chexbert,radgraph`` or ``all``). Each one is computed
only when its package is importable and its weights are already in the local Hugging Face cache;
it then runs with ``HF_HUB_OFFLINE=1``. Otherwise it is reported as unavailable, with the
command that would install and fetch what is missing. Any error raised by the package is reported
the same way instead of stopping the evaluation.

* ``bertscore`` (package ``bert-score``): per-sample BERTScore F1 with ``roberta-large``, layer 17
  (the package's English default), no IDF weighting, no baseline rescaling; the corpus value is
  the mean, with the usual bootstrap interval. Key ``bertscore_f1``.
* ``chexbert`` (package ``f1chexbert``): each report is labelled by CheXbert with the package's
  ``rrg`` mode (positive or uncertain -> 1, else 0); the labels feed the same outcome counts as
  :mod:`cxrgen.metrics.clinical`, giving micro and macro F1 over the 14 and 5 observations with
  intervals. Keys ``chexbert_chexpert14_micro_f1``, ``chexbert_chexbert5_micro_f1``, and ``..._macro_f1``.
* ``radgraph`` (package ``radgraph``): per-sample RadGraph F1 (``F1RadGraph``, reward level
  ``partial``); the corpus value is the mean. Key ``radgraph_f1``.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from typing import Sequence

import numpy as np

from cxrgen.metrics import clinical

KNOWN = ("bertscore", "chexbert", "radgraph")
_PACKAGE = {"bertscore": "bert_score", "chexbert": "f1chexbert", "radgraph": "radgraph"}
_PIP = {"bertscore": "bert-score", "chexbert": "f1chexbert", "radgraph": "radgraph"}
_REPOS = {
    "bertscore": (("roberta-large", "FacebookAI/roberta-large"),),
    "chexbert": (("StanfordAIMI/RRG_scorers",), ("bert-base-uncased", "google-bert/bert-base-uncased")),
    "radgraph": (("StanfordAIMI/RRG_scorers",),),
}
# CheXbert's output order of the 14 conditions.
_CHEXBERT_ORDER = (
    "enlarged_cardiomediastinum", "cardiomegaly", "lung_opacity", "lung_lesion", "edema", "consolidation",
    "pneumonia", "atelectasis", "pneumothorax", "pleural_effusion", "pleural_other", "fracture",
    "support_devices", "no_finding",
)


def resolve(names: Sequence[str] | str | None) -> list[str]:
    """Canonical list of requested model metrics (``all`` expands); unknown names are an error."""
    if not names:
        return []
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: list[str] = []
    for n in names:
        n = n.strip().lower()
        if n == "all":
            out += [k for k in KNOWN if k not in out]
        elif n in KNOWN:
            if n not in out:
                out.append(n)
        else:
            raise ValueError(f"unknown model-based metric {n!r}; known: {', '.join(KNOWN)}, all")
    return out


def fetch_command(name: str) -> str:
    repos = " && ".join(f"huggingface-cli download {alts[0]}" for alts in _REPOS[name])
    return f"pip install {_PIP[name]} && {repos}"


def _cached_repos() -> set[str]:
    try:
        from huggingface_hub import scan_cache_dir

        return {r.repo_id for r in scan_cache_dir().repos}
    except Exception:
        return set()


def availability(name: str) -> tuple[bool, str]:
    """``(True, "")`` when the package is importable and its weights are cached, else the reason."""
    if importlib.util.find_spec(_PACKAGE[name]) is None:
        return False, f"package {_PIP[name]} is not installed; to use it: {fetch_command(name)}"
    cached = _cached_repos()
    missing = [alts[0] for alts in _REPOS[name] if not any(a in cached for a in alts)]
    if missing:
        return False, (
            f"weights not in the local Hugging Face cache ({', '.join(missing)}); to fetch them: {fetch_command(name)}"
        )
    return True, ""


@contextmanager
def _offline():
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bertscore(hyps: list[str], refs: list[str]) -> np.ndarray:
    import bert_score

    _, _, f1 = bert_score.score(hyps, refs, model_type="roberta-large", num_layers=17, verbose=False)
    return np.asarray(f1, dtype=np.float64)


def _radgraph(hyps: list[str], refs: list[str]) -> np.ndarray:
    from radgraph import F1RadGraph

    scorer = F1RadGraph(reward_level="partial")
    _, reward_list, _, _ = scorer(hyps=hyps, refs=refs)
    return np.asarray(reward_list, dtype=np.float64)


def _chexbert_codes(texts: list[str]) -> np.ndarray:
    from f1chexbert import F1CheXbert

    labeler = F1CheXbert()
    out = np.full((len(texts), len(clinical.COLUMNS)), clinical.NOT_MENTIONED, dtype=np.int8)
    for i, t in enumerate(texts):
        if not t:
            continue
        labels = list(labeler.get_label(t, mode="rrg"))
        for cond, v in zip(_CHEXBERT_ORDER, labels):
            out[i, clinical.COLUMNS.index(cond)] = 1 if int(v) == 1 else 0
    return out


def add_model_metrics(scores, names: Sequence[str], hyps: Sequence[str], refs: Sequence[str], uncertain: str) -> None:
    """Compute each requested metric into ``scores`` (a :class:`cxrgen.metrics.suite.Scores`) or
    record why it is unavailable."""
    for name in names:
        ok, why = availability(name)
        if not ok:
            scores.unavailable[name] = why
            continue
        empty = np.array([not h for h in hyps])
        try:
            with _offline():
                if name == "bertscore":
                    vals = _bertscore(list(hyps), list(refs))
                    scores.add_mean_metric("bertscore_f1", np.where(empty, 0.0, vals), "model")
                elif name == "radgraph":
                    vals = _radgraph(list(hyps), list(refs))
                    scores.add_mean_metric("radgraph_f1", np.where(empty, 0.0, vals), "model")
                else:
                    hc = _chexbert_codes(list(hyps))
                    rc = _chexbert_codes(list(refs))
                    _add_chexbert(scores, clinical.outcome_counts(hc, rc, "negative"))
        except Exception as exc:  # the package's own failure is reported, not raised
            scores.unavailable[name] = f"{type(exc).__name__}: {exc}"


def _add_chexbert(scores, outcomes: np.ndarray) -> None:
    from cxrgen.metrics.suite import MetricDef

    n_obs = len(clinical.COLUMNS)
    col = scores.stats.shape[1]
    scores.stats = np.hstack([scores.stats, outcomes.reshape(scores.n, n_obs * 4)])
    cols = slice(col, col + n_obs * 4)
    for set_name in ("chexpert14", "chexbert5"):
        for avg in ("micro", "macro"):
            key = f"{set_name}_{avg}_f1"
            scores.metrics.append(
                MetricDef(
                    f"chexbert_{key}",
                    cols,
                    lambda s, key=key: clinical.set_metrics(s.reshape(*s.shape[:-1], n_obs, 4))[key],
                    "model",
                )
            )
