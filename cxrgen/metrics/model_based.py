"""Model-based report metrics through RadEval (``pip install -r requirements-metrics.txt``).

Five scorers, each the one RadEval 2.2 runs under the same name, with RadEval's settings:

``chexbert``
    CheXbert (``chexbert.pth`` of ``StanfordAIMI/RRG_scorers`` on ``bert-base-uncased``) labels
    every report. Label mapping, as RadEval's ``f1chexbert`` (``mode="rrg"``): an observation is 1
    when CheXbert says *positive* or *uncertain*, 0 when it says *negative* or leaves it *blank*
    (No Finding: 1 when positive). The labels come back as ``hyp_labels``/``ref_labels``, ``(n, 14)``
    in :data:`cxrgen.metrics.clinical.COLUMNS` order; counted as :mod:`cxrgen.metrics.clinical`
    counts them (1 positive) they give micro and macro F1 over the 14 and the 5 observations
    ("SembScore" is the 14-observation micro F1 of these labels). Micro F1 equals RadEval's; macro
    F1 averages only the observations positive in at least one report, where scikit-learn (used by
    RadEval) also counts never-positive observations as 0.
``radgraph``
    F1-RadGraph with the RadGraph-XL model (``radgraph-xl.tar.gz`` of ``StanfordAIMI/RRG_scorers``),
    per sample at the three reward levels: ``radgraph_simple`` (entities), ``radgraph_partial``
    (entities and relations, the usual "RadGraph F1") and ``radgraph_complete``.
``bertscore``
    BERTScore of ``distilbert-base-uncased``, layer 5, no idf, rescaled with the published baseline
    (so values can be negative): ``bertscore_precision``, ``bertscore_recall``, ``bertscore_f1``.
``ratescore``
    RaTEScore (``Angelakeke/RaTE-NER-Deberta`` and ``FremyCompany/BioLORD-2023-C``, "long" affinity
    matrix): ``ratescore``.
``green``
    GREEN with ``StanfordAIMI/GREEN-radllama2-7b`` (a 7B model; float16 on a CUDA GPU): ``green``,
    and ``green_parsed`` (1 where the model's answer could be parsed; an unparsable answer scores 0).

Four more scorers (:data:`PROTOCOL_SCORERS`) hold the definitions of the published protocols
(:mod:`cxrgen.metrics.protocols`) where they differ from the five above, on RadEval's code and models:

``radgraph_partial``
    LLaVA-Rad's F1-RadGraph: RadEval's ``F1RadGraph(reward_level="partial")`` with the original RadGraph
    model (``radgraph.tar.gz`` of ``StanfordAIMI/RRG_scorers``, as radgraph 0.0.9 used): ``f1_radgraph``.
``radgraph_combined``
    ReXrank's RadGraph (CXR-Report-Metric's ``radgraph_combined``): RadEval's ``RadGraphRadCliQ``, per pair
    (entity F1 + relation F1) / 2 with the original RadGraph model: ``radgraph``.
``bertscore_distilroberta``
    ReXrank's BERTScore: ``distilroberta-base``, layer 5, rescaled with the published baseline, **no idf**
    (CXR-Report-Metric's ``USE_IDF = False``; RadEval's own RadCliQ turns idf on), runs of spaces collapsed
    first as CXR-Report-Metric does: ``bertscore`` (F1).
``sembscore``
    SembScore: cosine of the CheXbert [CLS] embeddings of the two reports (RadEval's
    ``semantic_embedding_scores``, the same CheXbert as ``chexbert``): ``sembscore``.

``chexbert`` also returns each observation's class (``hyp_codes``/``ref_codes``: 1 positive, -1
uncertain, 0 negative or blank), for definitions that count uncertain differently (LLaVA-Rad's).

Every per-sample array has one value per (hypothesis, reference) pair, in the order given, and its
mean is the corpus value. An empty (or whitespace-only) hypothesis is not scored: every value is 0
and every label 0. An empty reference is an error naming its row.

Weights are fetched once, where the Hub can be reached, by :func:`fetch` (``python evaluate.py
--fetch-metric-models NAME``) into the caches RadEval reads: the Hugging Face cache for the
transformers models and RadEval's own ``~/.cache/chexbert`` and ``~/.cache/radgraph/0.1.18``
(``$XDG_CACHE_HOME`` if set) for the two ``RRG_scorers`` files. :func:`score` runs with the Hub
switched off (``HF_HUB_OFFLINE=1``) unless downloads are allowed. RadEval is imported only by
:func:`score` and :func:`fetch`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from cxrgen.metrics import clinical

log = logging.getLogger("cxrgen")

KNOWN: tuple[str, ...] = ("chexbert", "radgraph", "bertscore", "ratescore", "green")
#: Scorers of the published protocols' own definitions (module docstring); fetched like the others.
PROTOCOL_SCORERS: tuple[str, ...] = ("radgraph_partial", "radgraph_combined", "bertscore_distilroberta", "sembscore")
SCORERS: tuple[str, ...] = KNOWN + PROTOCOL_SCORERS
PIP_COMMAND = "pip install -r requirements-metrics.txt"
RADEVAL_SERIES = "2.2"

RRG_SCORERS = "StanfordAIMI/RRG_scorers"
CHEXBERT_FILE = "chexbert.pth"
CHEXBERT_BACKBONE = "bert-base-uncased"
RADGRAPH_MODEL = "radgraph-xl"
RADGRAPH_FILE = "radgraph-xl.tar.gz"
RADGRAPH_CACHE_VERSION = "0.1.18"  # the cache sub-folder RadEval's vendored RadGraph reads
BERTSCORE_MODEL = "distilbert-base-uncased"
BERTSCORE_LAYER = 5
BERTSCORE_REXRANK_MODEL = "distilroberta-base"
# The RadGraph model of each RadGraph scorer (RadEval's model_type; its archive is <model>.tar.gz).
_RADGRAPH_MODELS = {"radgraph": RADGRAPH_MODEL, "radgraph_partial": "radgraph", "radgraph_combined": "radgraph"}
RATE_NER_MODEL = "Angelakeke/RaTE-NER-Deberta"
RATE_EVAL_MODEL = "FremyCompany/BioLORD-2023-C"
GREEN_MODEL = "StanfordAIMI/GREEN-radllama2-7b"

# Per scorer: the Hugging Face repositories it loads with from_pretrained, and what it needs of each:
# "config" (configuration and tokenizer files), "model" (those and the weights), "remote" (those,
# the weights and the repository's own Python code, for trust_remote_code).
_HF_REPOS: dict[str, tuple[tuple[str, str], ...]] = {
    "chexbert": ((CHEXBERT_BACKBONE, "config"),),
    "radgraph": (),  # the encoder named in the RadGraph archive's config.json, found after extraction
    "bertscore": ((BERTSCORE_MODEL, "model"),),
    "ratescore": ((RATE_NER_MODEL, "model"), (RATE_EVAL_MODEL, "model")),
    "green": ((GREEN_MODEL, "remote"),),
    "radgraph_partial": (),
    "radgraph_combined": (),
    "bertscore_distilroberta": ((BERTSCORE_REXRANK_MODEL, "model"),),
    "sembscore": ((CHEXBERT_BACKBONE, "config"),),
}
# Extra importable modules a scorer needs beyond radeval (module, what it is for).
_EXTRA_MODULES: dict[str, tuple[tuple[str, str], ...]] = {
    "chexbert": (("sklearn", "scikit-learn"), ("appdirs", "appdirs")),
    "radgraph": (("dotmap", "dotmap"), ("appdirs", "appdirs")),
    "bertscore": (("pandas", "pandas"),),
    "ratescore": (("medspacy", "medspacy"),),
    "green": (("datasets", "datasets"), ("accelerate", "accelerate")),
    "radgraph_partial": (("dotmap", "dotmap"), ("appdirs", "appdirs")),
    "radgraph_combined": (("dotmap", "dotmap"), ("appdirs", "appdirs")),
    "bertscore_distilroberta": (("pandas", "pandas"),),
    "sembscore": (("sklearn", "scikit-learn"), ("appdirs", "appdirs")),
}
_SETTINGS = {
    "chexbert": "chexbert-rrg_scorers+bert-base-uncased:pos+unc=1,neg+blank=0",
    "radgraph": "radgraph-xl:simple+partial+complete",
    "bertscore": f"bertscore-{BERTSCORE_MODEL}-l{BERTSCORE_LAYER}+noidf+rescaled",
    "ratescore": "ratescore-rate-ner-deberta+biolord-2023-c:long",
    "green": "green-radllama2-7b:fp16",
    "radgraph_partial": "radgraph-original:partial",
    "radgraph_combined": "radgraph-original:(entity-f1+relation-f1)/2",
    "bertscore_distilroberta": f"bertscore-{BERTSCORE_REXRANK_MODEL}-l{BERTSCORE_LAYER}+noidf+rescaled+spaces1",
    "sembscore": "chexbert-rrg_scorers+bert-base-uncased:cls-cosine",
}
_CONFIG_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja")
_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


class ModelMetricError(RuntimeError):
    """A scorer failed (one line: which, and why)."""


class FetchError(RuntimeError):
    """The weights could not be fetched (one line: what, and why)."""


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@dataclass
class ModelScores:
    """What :func:`score` returns for one scorer and one list of pairs."""

    name: str
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    hyp_labels: np.ndarray | None = None  # (n, 14) 0/1 in clinical.COLUMNS order (chexbert only)
    ref_labels: np.ndarray | None = None
    hyp_codes: np.ndarray | None = None  # (n, 14) 1 positive, -1 uncertain, 0 negative or blank (chexbert only)
    ref_codes: np.ndarray | None = None
    signature: str = ""
    n_empty: int = 0  # empty hypotheses, scored 0 without running the model

    def outcome_counts(self) -> np.ndarray:
        """``(n, 14, 4)`` tp/fp/fn/tn of the CheXbert labels (1 positive)."""
        if self.hyp_labels is None or self.ref_labels is None:
            raise ValueError(f"model metric {self.name} has no labels")
        return clinical.outcome_counts(self.hyp_labels, self.ref_labels, "negative")


# ---------------------------------------------------------------- names and availability


def parse_names(text: str, known: Sequence[str] = KNOWN) -> list[str]:
    """Names from ``"chexbert,radgraph"`` or ``"all"`` (every one of ``known``), in the order given, without
    repeats."""
    out: list[str] = []
    for part in str(text).split(","):
        n = part.strip().lower()
        if not n:
            continue
        if n == "all":
            out += [k for k in known if k not in out]
        elif n in known:
            if n not in out:
                out.append(n)
        else:
            raise ValueError(f"unknown model-based metric {part.strip()!r}; known: {', '.join(known)}, all")
    return out


def _check_name(name: str) -> None:
    if name not in SCORERS:
        raise ValueError(f"unknown model-based metric {name!r}; known: {', '.join(SCORERS)}")


def fetch_command(name: str) -> str:
    return f"python evaluate.py --fetch-metric-models {name}"


def _xdg_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return _xdg_cache() / "huggingface" / "hub"


def chexbert_cache_dir() -> Path:
    """Where RadEval's CheXbert looks for ``chexbert.pth`` (appdirs' user cache, on Linux)."""
    return _xdg_cache() / "chexbert"


def radgraph_cache_dir() -> Path:
    """Where RadEval's vendored RadGraph keeps its archives and the extracted models."""
    return _xdg_cache() / "radgraph" / RADGRAPH_CACHE_VERSION


def _cached(repo: str, filename: str, cache_dir: Path) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir))
    return path if isinstance(path, str) else None


def _repo_missing(repo: str, need: str, cache_dir: Path) -> str | None:
    """What of ``repo`` is not in the cache (None when complete enough to load offline)."""
    if _cached(repo, "config.json", cache_dir) is None:
        return f"{repo} (config.json)"
    if _cached(repo, "tokenizer_config.json", cache_dir) is None:
        return f"{repo} (tokenizer)"
    if need == "config":
        return None
    for weights in _WEIGHT_NAMES:
        if _cached(repo, weights, cache_dir):
            return None
        index = _cached(repo, weights + ".index.json", cache_dir)
        if index:
            try:
                shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError) as exc:
                return f"{repo} ({Path(index).name} unreadable: {exc})"
            lost = [s for s in shards if _cached(repo, s, cache_dir) is None]
            return f"{repo} ({len(lost)} of {len(shards)} weight shards)" if lost else None
    return f"{repo} (weights)"


def _radgraph_model_dir(name: str = "radgraph") -> Path:
    return radgraph_cache_dir() / _RADGRAPH_MODELS[name]


def _radgraph_encoders(model_dir: Path) -> list[str]:
    """The transformers models the extracted RadGraph config names (tokenizer and embedder)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    names = [
        cfg["dataset_reader"]["token_indexers"]["bert"]["model_name"],
        cfg["model"]["embedder"]["token_embedders"]["bert"]["model_name"],
    ]
    return list(dict.fromkeys(names))


def _missing_weights(name: str) -> list[str]:
    missing: list[str] = []
    hf = hf_cache_dir()
    if name in ("chexbert", "sembscore") and _cached(RRG_SCORERS, CHEXBERT_FILE, chexbert_cache_dir()) is None:
        missing.append(f"{RRG_SCORERS}/{CHEXBERT_FILE} in {chexbert_cache_dir()}")
    repos = list(_HF_REPOS[name])
    if name in _RADGRAPH_MODELS:
        model_dir = _radgraph_model_dir(name)
        if not (model_dir / "config.json").is_file() or not (model_dir / "weights.th").is_file():
            missing.append(f"{RRG_SCORERS}/{model_dir.name}.tar.gz extracted in {model_dir}")
        else:
            try:
                repos += [(r, "config") for r in _radgraph_encoders(model_dir)]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                missing.append(f"{model_dir / 'config.json'} unreadable ({type(exc).__name__}: {exc})")
    for repo, need in repos:
        why = _repo_missing(repo, need, hf)
        if why:
            missing.append(why)
    return missing


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def _package_problem(name: str) -> str | None:
    if importlib.util.find_spec("radeval") is None:
        return f"package radeval is not installed; to use {name}: {PIP_COMMAND}"
    for module, dist in _EXTRA_MODULES[name]:
        if importlib.util.find_spec(module) is None:
            return f"package {dist} (needed by {name}) is not installed; to use it: {PIP_COMMAND}"
    if name == "ratescore":
        thinc, numpy_version = _version("thinc"), _version("numpy")
        if thinc and numpy_version and _major_minor(thinc) < (8, 3) and _major_minor(numpy_version)[0] >= 2:
            return (
                f"ratescore needs medspacy, which on Python < 3.12 pins spacy 3.7 and thinc {thinc}, built for "
                f"numpy < 2 (numpy {numpy_version} is installed); it runs on Python 3.12+ (spacy 3.8) or with numpy < 2"
            )
    return None


def _gpu_problem() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return f"green runs a 7B model ({GREEN_MODEL}, ~14 GB in float16) and needs a CUDA GPU; none is visible"
    return None


def check_available(names: Iterable[str]) -> dict[str, str]:
    """``{name: reason}`` for each scorer that cannot run here (empty when all can): its package is
    not installed, its weights are not in the local caches, or (GREEN) there is no GPU. Imports
    neither RadEval nor the models."""
    out: dict[str, str] = {}
    for name in names:
        _check_name(name)
        problem = _package_problem(name)
        if problem is None:
            missing = _missing_weights(name)
            if missing:
                size = " (a 7B model, ~14 GB, run on a GPU)" if name == "green" else ""
                problem = (
                    f"weights not in the local cache{size}: {'; '.join(missing)}; to fetch them where the "
                    f"Hub can be reached: {fetch_command(name)}"
                )
        if problem is None and name == "green":
            problem = _gpu_problem()
        if problem:
            out[name] = problem
    return out


# ---------------------------------------------------------------- offline switch


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the Hub is switched off, by the environment or in huggingface_hub."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    hub = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(hub, "HF_HUB_OFFLINE", False))


@contextlib.contextmanager
def offline():
    """Switch the Hub off for the duration (environment and huggingface_hub's import-time flag)."""
    from huggingface_hub import constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_flag = constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------- scoring


def _device(device: str | None) -> str:
    if device:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def signature(name: str, device: str | None = None) -> str:
    """``radeval-<version>:<scorer settings>`` (GREEN runs in float32 on the CPU)."""
    settings = _SETTINGS[name]
    if name == "green" and device is not None and not str(device).startswith("cuda"):
        settings = settings.replace(":fp16", ":fp32")
    return f"radeval-{_version('radeval') or 'none'}:{settings}"


def _column(label_name: str) -> str:
    col = label_name.strip().lower().replace(" ", "_")
    if col not in clinical.COLUMNS:
        raise ValueError(f"CheXbert label {label_name!r} is not one of the 14 observations")
    return col


def _label_matrix(rows: Sequence[Sequence[int]], label_names: Sequence[str], what: str) -> np.ndarray:
    """CheXbert rows in the labeler's order -> ``(n, 14)`` in clinical.COLUMNS order, each 1 (positive), -1
    (uncertain) or 0 (negative or blank)."""
    cols = [clinical.COLUMNS.index(_column(n)) for n in label_names]
    if sorted(cols) != list(range(len(clinical.COLUMNS))):
        raise ValueError(f"CheXbert labels {list(label_names)} do not cover the 14 observations once each")
    out = np.zeros((len(rows), len(clinical.COLUMNS)), dtype=np.int8)
    for i, row in enumerate(rows):
        if len(row) != len(cols):
            raise ValueError(f"{what}: row {i} has {len(row)} CheXbert labels, expected {len(cols)}")
        for j, v in zip(cols, row):
            if v not in (0, 1, -1):
                raise ValueError(f"{what}: row {i}, {clinical.COLUMNS[j]!r}: CheXbert label {v!r} is not 1, 0 or -1")
            out[i, j] = int(v)
    return out


def score(
    name: str,
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    device: str | None = None,
    batch_size: int | None = None,
    allow_download: bool = False,
) -> ModelScores:
    """Score each (hypothesis, reference) pair with one scorer (see the module text).

    ``device`` defaults to ``cuda`` when available, else ``cpu``; ``batch_size`` defaults to each
    scorer's RadEval default. Without ``allow_download`` the Hub is switched off for the call, so
    missing weights are an error instead of a download."""
    _check_name(name)
    hyps, refs = [str(h) for h in hyps], [str(r) for r in refs]
    if len(hyps) != len(refs):
        raise ValueError(f"model metric {name}: {len(hyps)} hypotheses for {len(refs)} references")
    for i, r in enumerate(refs):
        if not r.strip():
            raise ValueError(f"model metric {name}: reference {i} is empty")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"model metric {name}: batch_size must be at least 1, not {batch_size}")
    n = len(hyps)
    keep = [i for i, h in enumerate(hyps) if h.strip()]
    if name == "green":
        device = _device(device)  # the signature records the precision, which follows the device
    result = ModelScores(name=name, signature=signature(name, device), n_empty=n - len(keep))
    if name == "chexbert":
        result.hyp_codes = np.zeros((n, len(clinical.COLUMNS)), dtype=np.int8)
        result.ref_codes = np.zeros((n, len(clinical.COLUMNS)), dtype=np.int8)
        result.hyp_labels, result.ref_labels = result.hyp_codes.copy(), result.ref_codes.copy()
    if n == 0:
        result.per_sample = {k: np.zeros(0) for k in _KEYS[name]}
        return result
    if name == "chexbert":
        # Labels depend on the text alone: each distinct text is labelled once; every reference is
        # labelled (its positives count against an empty hypothesis too).
        texts = list(dict.fromkeys([hyps[i] for i in keep] + refs))
        raw = _run(name, texts, [], device, batch_size, allow_download)
        labels = list(raw["labels"])
        if len(labels) != len(texts):
            raise ValueError(f"model metric chexbert: {len(labels)} label rows for {len(texts)} reports")
        matrix = _label_matrix(labels, raw["label_names"], "chexbert")
        row = {t: k for k, t in enumerate(texts)}
        result.hyp_codes[keep] = matrix[[row[hyps[i]] for i in keep]]
        result.ref_codes = matrix[[row[r] for r in refs]]
        # RadEval's "rrg" labels: positive or uncertain is 1
        result.hyp_labels = (result.hyp_codes != 0).astype(np.int8)
        result.ref_labels = (result.ref_codes != 0).astype(np.int8)
        return result
    if not keep:
        result.per_sample = {k: np.zeros(n) for k in _KEYS[name]}
        return result
    raw = _run(name, [hyps[i] for i in keep], [refs[i] for i in keep], device, batch_size, allow_download)
    per_sample: dict[str, np.ndarray] = {}
    for key in _KEYS[name]:
        values = raw.get(key)
        if values is None:
            raise ValueError(f"model metric {name}: RadEval returned no {key!r}")
        values = list(values)
        if len(values) != len(keep):
            raise ValueError(f"model metric {name}: {len(values)} values of {key!r} for {len(keep)} reports")
        full = np.zeros(n, dtype=np.float64)
        full[keep] = [0.0 if v is None else float(v) for v in values]
        per_sample[key] = full
    if name == "green":
        unparsed = int(len(keep) - per_sample["green_parsed"][keep].sum())
        if unparsed:
            log.warning("GREEN: %d of %d answers could not be parsed and score 0", unparsed, len(keep))
    result.per_sample = per_sample
    return result


def _run(name: str, hyps: list[str], refs: list[str], device, batch_size, allow_download: bool) -> dict:
    guard = contextlib.nullcontext() if allow_download else offline()
    try:
        with guard:
            return _call_radeval(name, hyps, refs, device=_device(device), batch_size=batch_size)
    except Exception as exc:  # the scorer's own failure, as one line naming the scorer
        hint = "" if allow_download else f" (ran with the Hub off; if weights are missing: {fetch_command(name)})"
        raise ModelMetricError(f"model metric {name} failed: {_one_line(exc)}{hint}") from exc


_KEYS: dict[str, tuple[str, ...]] = {
    "chexbert": (),
    "radgraph": ("radgraph_simple", "radgraph_partial", "radgraph_complete"),
    "bertscore": ("bertscore_precision", "bertscore_recall", "bertscore_f1"),
    "ratescore": ("ratescore",),
    "green": ("green", "green_parsed"),
    "radgraph_partial": ("f1_radgraph",),
    "radgraph_combined": ("radgraph",),
    "bertscore_distilroberta": ("bertscore",),
    "sembscore": ("sembscore",),
}


# ---------------------------------------------------------------- the calls into RadEval


class _RadEvalAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``RadEval.*`` to the installed ``radeval.*`` modules (the same module objects).

    RadEval 2.2's vendored RadGraph still imports itself as ``RadEval.metrics.radgraph._vendor``
    although the package was renamed ``radeval``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "RadEval" or fullname.startswith("RadEval."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module("radeval" + spec.name[len("RadEval"):])

    def exec_module(self, module):
        pass


def _install_radeval_alias() -> None:
    if importlib.util.find_spec("radeval") is None:
        return
    if any(isinstance(f, _RadEvalAlias) for f in sys.meta_path):
        return
    if "RadEval" not in sys.modules and _find_spec_quiet("RadEval") is not None:
        return  # a real RadEval package (an older RadEval) is importable: leave it alone
    sys.meta_path.insert(0, _RadEvalAlias())


def _find_spec_quiet(module: str):
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _import_radeval():
    """Import radeval without its import-time NLTK download when the Hub is off (none of these
    five scorers uses the ``punkt_tab`` data it fetches)."""
    if "radeval" in sys.modules:
        return sys.modules["radeval"]
    if not hub_offline():
        return importlib.import_module("radeval")
    import nltk

    real = nltk.download
    nltk.download = lambda *a, **k: False
    try:
        return importlib.import_module("radeval")
    finally:
        nltk.download = real


def _call_radeval(name: str, hyps: list[str], refs: list[str], *, device: str, batch_size: int | None) -> dict:
    """Run one RadEval scorer; everything this module knows of RadEval's internals is here.

    Returns, in the order of the inputs: ``chexbert``: ``{"labels": rows, "label_names": names}``
    for the texts in ``hyps`` (``refs`` unused; rows in the labeler's order, 1 positive, -1 uncertain, 0
    negative or blank); the others: the per-sample lists of :data:`_KEYS` for the pairs."""
    _import_radeval()
    try:
        call = _RADEVAL_CALLS[name]
    except KeyError:
        raise ValueError(f"unknown model-based metric {name!r}; known: {', '.join(SCORERS)}") from None
    return call(hyps, refs, device, batch_size)


def _cuda_index(device: str) -> int:
    """RadEval's RadGraph ``cuda`` argument: the GPU index, -1 for the CPU."""
    return int(device.split(":")[1]) if device.startswith("cuda:") else (0 if device == "cuda" else -1)


def _chexbert_call(hyps, refs, device, batch_size) -> dict:
    from radeval.metrics.f1chexbert.f1chexbert import F1CheXbert

    labeler = F1CheXbert(device=device, batch_size=batch_size or 64)
    return {"labels": labeler.get_labels(hyps, mode="classification"), "label_names": list(labeler.TARGET_NAMES)}


def _f1radgraph_call(name: str, reward_level: str):
    def call(hyps, refs, device, batch_size) -> dict:
        _install_radeval_alias()
        from radeval.metrics.radgraph import F1RadGraph

        scorer = F1RadGraph(reward_level=reward_level, model_type=_RADGRAPH_MODELS[name], cuda=_cuda_index(device))
        _, rewards, _, _ = scorer(refs=refs, hyps=hyps)
        per_level = rewards if reward_level == "all" else (rewards,)
        return dict(zip(_KEYS[name], (list(v) for v in per_level)))

    return call


def _radgraph_combined_call(hyps, refs, device, batch_size) -> dict:
    _install_radeval_alias()
    from radeval.metrics.radgraph_radcliq.radgraph_radcliq import RadGraphRadCliQ

    scorer = RadGraphRadCliQ(model_type=_RADGRAPH_MODELS["radgraph_combined"])  # on the GPU when there is one
    _, scores = scorer(hyps=hyps, refs=refs)
    return {"radgraph": list(scores)}


def _bertscore_call(name: str, model: str, preprocess: Callable[[str], str] = lambda t: t):
    def call(hyps, refs, device, batch_size) -> dict:
        from radeval.metrics.bertscore._vendor import BERTScorer

        bs = batch_size or 64
        scorer = BERTScorer(
            model_type=model, num_layers=BERTSCORE_LAYER, batch_size=bs, nthreads=4, all_layers=False,
            idf=False, device=device, lang="en", rescale_with_baseline=True, baseline_path=None,
            use_fast_tokenizer=False,
        )
        p, r, f = scorer.score(cands=[preprocess(h) for h in hyps], refs=[preprocess(t) for t in refs],
                               verbose=False, batch_size=bs)
        values = (p, r, f) if len(_KEYS[name]) == 3 else (f,)
        return dict(zip(_KEYS[name], (t.tolist() for t in values)))

    return call


def _collapse_spaces(text: str) -> str:
    """CXR-Report-Metric's only text preparation for BERTScore: runs of spaces become one (newlines stay)."""
    return re.sub(r" +", " ", text)


def _sembscore_call(hyps, refs, device, batch_size) -> dict:
    from radeval.metrics.RadCliQv1.semb_score import semantic_embedding_scores

    return {"sembscore": [float(v) for v in semantic_embedding_scores(refs, hyps, device=device)]}


def _ratescore_call(hyps, refs, device, batch_size) -> dict:
    from radeval.metrics.RaTEScore.scorer import RaTEScore

    scorer = RaTEScore(
        bert_model=RATE_NER_MODEL, eval_model=RATE_EVAL_MODEL, batch_size=batch_size or 1,
        use_gpu=device.startswith("cuda"), affinity_matrix="long",
    )
    scores, _, _ = scorer.compute_score(candidate_list=hyps, reference_list=refs)
    return {"ratescore": list(scores)}


def _green_call(hyps, refs, device, batch_size) -> dict:
    from radeval.metrics.green_score.green import GREEN

    scorer = GREEN(GREEN_MODEL, output_dir=".", cpu=not device.startswith("cuda"), num_gpus=1)
    if batch_size:
        scorer.batch_size = batch_size
    _, _, scores, _ = scorer(refs, hyps)
    scores = list(scores)
    return {"green": scores, "green_parsed": [v is not None for v in scores]}


_RADEVAL_CALLS: dict[str, Callable[[list[str], list[str], str, int | None], dict]] = {
    "chexbert": _chexbert_call,
    "radgraph": _f1radgraph_call("radgraph", "all"),
    "bertscore": _bertscore_call("bertscore", BERTSCORE_MODEL),
    "ratescore": _ratescore_call,
    "green": _green_call,
    "radgraph_partial": _f1radgraph_call("radgraph_partial", "partial"),
    "radgraph_combined": _radgraph_combined_call,
    "bertscore_distilroberta": _bertscore_call("bertscore_distilroberta", BERTSCORE_REXRANK_MODEL, _collapse_spaces),
    "sembscore": _sembscore_call,
}


# ---------------------------------------------------------------- fetching


def _hub_call(what: str, fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # network, authorisation, missing file: one line naming what was wanted
        raise FetchError(f"cannot fetch {what} from the Hugging Face Hub: {_one_line(exc)}") from exc


def _select_files(files: list[str], need: str) -> list[str]:
    root = [f for f in files if "/" not in f]
    chosen = [f for f in root if any(fnmatch.fnmatch(f, p) for p in _CONFIG_PATTERNS)]
    if need == "remote":
        chosen += [f for f in root if f.endswith(".py")]
    if need in ("model", "remote"):
        for weights in _WEIGHT_NAMES:
            stem = weights.rsplit(".", 1)[0]
            ext = weights.rsplit(".", 1)[1]
            found = [f for f in root if f == weights or (f.startswith(stem + "-") and f.endswith("." + ext))]
            if found:
                chosen += found
                break
        else:
            raise FetchError(f"no {' or '.join(_WEIGHT_NAMES)} (or shards) in {files[:20]}")
    return sorted(set(chosen))


def _fetch_repo(repo: str, need: str, cache_dir: Path) -> list[str]:
    from huggingface_hub import hf_hub_download, list_repo_files

    files = _hub_call(f"the file list of {repo}", list_repo_files, repo)
    try:
        chosen = _select_files(list(files), need)
    except FetchError as exc:
        raise FetchError(f"{repo}: {exc}") from None
    return [
        _hub_call(f"{repo}/{f}", hf_hub_download, repo, f, cache_dir=str(cache_dir)) for f in chosen
    ]


def _extract(archive: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        try:
            tar.extractall(path=dest, filter="data")
        except TypeError:  # Python without extraction filters
            for member in tar.getmembers():
                target = (dest / member.name).resolve()
                if not str(target).startswith(str(dest.resolve())) or member.issym() or member.islnk():
                    raise FetchError(f"{archive}: unsafe member {member.name!r}")
            tar.extractall(path=dest)


def fetch(names: Iterable[str]) -> list[str]:
    """Download into the local caches exactly what each scorer loads; return the local paths.

    Raises :class:`FetchError` (one line) when the Hub is switched off or cannot be reached."""
    names = list(names)
    for name in names:
        _check_name(name)
    if hub_offline():
        raise FetchError(
            "cannot fetch model-metric weights: the Hugging Face Hub is switched off (HF_HUB_OFFLINE/"
            "TRANSFORMERS_OFFLINE is set); fetch on a machine with internet access"
        )
    from huggingface_hub import hf_hub_download

    hf = hf_cache_dir()
    fetched: list[str] = []
    for name in names:
        if name in ("chexbert", "sembscore"):
            cache = chexbert_cache_dir()
            fetched.append(_hub_call(f"{RRG_SCORERS}/{CHEXBERT_FILE}", hf_hub_download, RRG_SCORERS, CHEXBERT_FILE,
                                     cache_dir=str(cache)))
        repos = list(_HF_REPOS[name])
        if name in _RADGRAPH_MODELS:
            model_dir = _radgraph_model_dir(name)
            archive_name = f"{model_dir.name}.tar.gz"
            archive = _hub_call(f"{RRG_SCORERS}/{archive_name}", hf_hub_download, RRG_SCORERS, archive_name,
                                cache_dir=str(radgraph_cache_dir()))
            fetched.append(archive)
            if not (model_dir / "config.json").is_file():
                _extract(archive, model_dir)
            fetched.append(str(model_dir))
            repos += [(r, "config") for r in _radgraph_encoders(model_dir)]
        for repo, need in repos:
            fetched += _fetch_repo(repo, need, hf)
        log.info("fetched the weights of %s", name)
    return fetched
