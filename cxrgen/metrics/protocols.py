"""Published evaluation protocols as presets: the one place that says what ``evaluate.py --protocol NAME`` computes.

A :class:`Protocol` fixes, for one published evaluation:

* its **metric set and their definitions**: a list of :class:`~cxrgen.metrics.base.Metric` objects
  (:mod:`cxrgen.metrics.llava_rad`, :mod:`cxrgen.metrics.rexrank` where a definition is the protocol's own, the
  model-based scorers of :mod:`cxrgen.metrics.model_based` through RadEval), so intervals, paired tests, tables,
  summaries and the results page treat them like every other metric;
* the **reference** it scores (:class:`Reference`: the findings section, or ReXrank's
  ``"Findings: {f} Impression: {i}"``);
* its **bootstrap settings** (``n_boot``) and, where the published code reports something other than the
  full-sample value, the **published-style values** (:class:`Published`): the same statistic computed with the
  published code's own resampling, e.g. LLaVA-Rad's median of 500 bootstrap values;
* the fields it puts first in the signature (``proto:<name>|nrefs:1|ref:<reference>``, then each metric's own
  component, the interval settings and ``pub:<published-style schemes>``).

Adding a protocol: a :class:`Protocol` entry in :data:`PROTOCOLS` (and a module of Metric classes for the
definitions that are its own). Nothing else changes: the CLI's ``--protocol`` choices, ``--fetch-metric-models
NAME`` and the registry's look-ups of labels and directions (:func:`catalogue`) read this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable

import numpy as np

from cxrgen.metrics import llava_rad, rexrank
from cxrgen.metrics.base import Metric
from cxrgen.metrics.model_metric import ModelBased
from cxrgen.metrics.rouge import RougeScore

SECTIONS = ("findings", "findings+impression")


@dataclass(frozen=True)
class Reference:
    """Which text a protocol scores as the reference: ``section`` (``findings`` or ``findings+impression``),
    ``tag`` (its signature value) and ``description`` (one line for the summary)."""

    section: str
    tag: str
    description: str

    def format(self, findings: str, impression: str) -> str:
        """ReXrank's "Findings + Impression" reference from the two sections (already text, "" when missing), as
        the ``report`` field of ReXrank's JSON files writes it: ``"Findings: {f} Impression: {i}"``, each section
        stripped, an empty one written ``None.``; "" when both are empty (an empty reference, excluded). ReXrank's
        own script writes a missing section as ``None`` (no period, unstripped) instead: which of the two the
        leaderboard scored is not published."""
        f, i = findings.strip(), impression.strip()
        if not f and not i:
            return ""
        return f"Findings: {f or 'None.'} Impression: {i or 'None.'}"


FINDINGS = Reference("findings", "findings", "the findings section")
FINDINGS_IMPRESSION = Reference(
    "findings+impression", "findings+impression:rexrank-json(stripped,empty=None.)",
    "'Findings: {findings} Impression: {impression}', sections stripped, an empty one written 'None.'",
)


class Published:
    """How a published evaluation reports a value: ``draws(n)`` gives its resamples of the n studies as a
    ``(B, n)`` count matrix, ``summarise`` turns the B resampled values and the full-sample value into the
    reported ``(value, [low, high])``; ``tag`` names it in the signature, ``how`` in the summary; ``scale``
    multiplies value and interval (100 for sacrebleu's BLEU)."""

    tag = ""  # the same tag means the same resamples
    how = ""
    scale = 1.0
    n_resamples = 500

    def draws(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def summarise(self, values: np.ndarray, point: float) -> tuple[float, list[float]]:
        raise NotImplementedError


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Draw counts ``(B, n)`` of a ``(B, n)`` matrix of drawn study indices."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


class BootstrapMedian(Published):
    """The median of 500 bootstrap values drawn with ``RandomState(3)``, and their 2.5th and 97.5th percentiles
    (numpy's linear interpolation); ``how`` says whose code reports it so:

    * LLaVA-Rad's CheXbert F1 and F1-RadGraph (``chexbert.py:227-261``, ``f1radgraph.py:112-133``):
      ``scipy.stats.bootstrap(..., method="percentile", n_resamples=500, random_state=3)``, whose resamples are
      ``RandomState(3).randint(0, n, size=(500, n))``, reported as ``np.median`` of the 500 values;
    * LLaVA-Rad's ROUGE-L (``rrg_eval/rouge.py``): rouge-score's ``BootstrapAggregator(n_samples=500)``, 500
      resamples ``np.random.choice(n, size=n)`` drawn one by one from numpy's global generator, which ``run.py``
      seeds with 3 at import; its "mid" is the median of the 500 resampled means. Those draws are the same as
      the ones above; whether anything draws from the global generator before ROUGE-L in LLaVA-Rad's run is not
      published."""

    tag = "median-b500-rs3"

    def __init__(self, how: str):
        self.how = how

    def draws(self, n: int) -> np.ndarray:
        return _counts(np.random.RandomState(3).randint(0, n, size=(self.n_resamples, n)), n)

    def summarise(self, values, point):
        return float(np.median(values)), [float(x) for x in np.percentile(values, [2.5, 97.5])]


class SacrebleuInterval(Published):
    """LLaVA-Rad's BLEU (``run.py:28-41``): the full-sample corpus score on sacrebleu's 0-100 scale, with
    sacrebleu's bootstrap interval: 500 resamples ``default_rng(12345).choice(n, size=(500, n))``, reported as
    ``mean +- half the range between the sorted values at n//40 and n - n//40 - 1``."""

    tag = "sacrebleu-ci-b500-s12345"
    how = "corpus score x100; mean +- half-width of sacrebleu's 500-resample bootstrap (SACREBLEU_SEED 12345)"
    scale = 100.0

    def draws(self, n: int) -> np.ndarray:
        return _counts(np.random.default_rng(12345).choice(n, size=(self.n_resamples, n), replace=True), n)

    def summarise(self, values, point):
        ordered = np.sort(values)
        low = len(ordered) // 40
        half = 0.5 * (ordered[len(ordered) - low - 1] - ordered[low])
        mean = float(np.mean(values))
        return float(point), [mean - half, mean + half]


@dataclass(frozen=True)
class Protocol:
    """One published evaluation (module docstring). ``build`` returns fresh Metric objects in the order the
    published tables list them; ``published`` maps metric names to how the published code reports them."""

    name: str
    title: str
    source: str
    reference: Reference
    n_boot: int
    build: Callable[[], list[Metric]]
    published: dict[str, Published] = field(default_factory=dict)

    def metrics(self) -> list[Metric]:
        return self.build()

    def signature_fields(self) -> list[str]:
        """The fields the signature starts with."""
        return [f"proto:{self.name}", "nrefs:1", f"ref:{self.reference.tag}"]

    def published_field(self) -> str | None:
        """``pub:<schemes>`` when the protocol has published-style values."""
        tags = list(dict.fromkeys(p.tag for p in self.published.values()))
        return f"pub:{'+'.join(tags)}" if tags else None

    def scorers(self) -> list[str]:
        """Every model-based scorer its metrics use (for ``--fetch-metric-models NAME``)."""
        return list(dict.fromkeys(s for m in self.metrics() for s in getattr(m, "scorers", ())))


def _llava_rad_metrics() -> list[Metric]:
    return [
        llava_rad.LabelF1("chexbert", optional=True),
        llava_rad.LabelF1("rules"),
        ModelBased("radgraph_partial", name="f1radgraph",
                   labels={"f1_radgraph": "F1-RadGraph (partial reward, original RadGraph, RadEval)"}),
        llava_rad.SacreBleu(),
        RougeScore(types=("rougeL",), stemmer=False, modes=()),
    ]


def _rexrank_metrics() -> list[Metric]:
    return [
        rexrank.SentenceBleu2(),
        ModelBased("bertscore_distilroberta", name="bertscore",
                   labels={"bertscore": "BERTScore (distilroberta-base L5, rescaled, no idf)"}),
        ModelBased("sembscore", labels={"sembscore": "SembScore (CheXbert embedding cosine)"}),
        ModelBased("radgraph_combined", name="radgraph",
                   labels={"radgraph": "RadGraph ((entity F1 + relation F1) / 2)"}),
        rexrank.RadCliQ(),
        rexrank.InvRadCliQ(),
        ModelBased("ratescore", optional=True, labels={"ratescore": "RaTEScore"}),
        ModelBased("green", optional=True, labels={"green": "GREEN"}),
    ]


_MEDIAN = BootstrapMedian("median of 500 bootstrap values, RandomState(3) (LLaVA-Rad's scipy.stats.bootstrap)")
_ROUGE = BootstrapMedian("median of 500 bootstrap means, RandomState(3) (LLaVA-Rad's rouge-score aggregator)")
_SACREBLEU = SacrebleuInterval()

LLAVA_RAD = Protocol(
    name="llava-rad",
    title="LLaVA-Rad",
    source="microsoft/LLaVA-Rad llava/eval/rrg_eval (run.py, factuality_eval.py, chexbert.py, f1radgraph.py)",
    reference=FINDINGS,
    n_boot=500,
    build=_llava_rad_metrics,
    published={"labels_chexbert": _MEDIAN, "labels_rules": _MEDIAN, "f1radgraph": _MEDIAN, "bleu": _SACREBLEU,
               "rouge": _ROUGE},
)
REXRANK = Protocol(
    name="rexrank",
    title="ReXrank, Findings table",
    source="rajpurkarlab/ReXrank with rajpurkarlab/CXR-Report-Metric (CXRMetric/run_eval.py)",
    reference=FINDINGS,
    n_boot=1000,
    build=_rexrank_metrics,
)
REXRANK_FI = replace(REXRANK, name="rexrank-fi", title="ReXrank, Findings + Impression table",
                     reference=FINDINGS_IMPRESSION)
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (LLAVA_RAD, REXRANK, REXRANK_FI)}


def get(name: str) -> Protocol:
    """The protocol called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None


@lru_cache(maxsize=1)
def _catalogue() -> tuple[Metric, ...]:
    return tuple(m for p in PROTOCOLS.values() for m in p.metrics())


def catalogue() -> list[Metric]:
    """One instance of every protocol's metrics (for the registry's look-ups of labels, columns and directions;
    never computed)."""
    return list(_catalogue())


def published_values(protocol: Protocol, scores) -> dict[str, dict]:
    """The published-style value of every key of ``scores`` (a :class:`~cxrgen.metrics.suite.Scores`) whose metric
    has a :class:`Published` rule in ``protocol``: ``{key: {"value", "ci", "scale", "how"}}``, ``value`` None
    where undefined. Computed from the per-sample statistics under the published code's own resamples."""
    out: dict[str, dict] = {}
    point = scores.point()
    resampled: dict[str, dict[str, np.ndarray]] = {}  # by tag: rules with one tag draw the same resamples
    for m in scores.metrics:
        rule = protocol.published.get(m.name)
        if rule is None:
            continue
        if rule.tag not in resampled:
            resampled[rule.tag] = scores.from_sums(rule.draws(scores.n) @ scores.stats)
        for k in scores.keys[m.name]:
            values = resampled[rule.tag][k]
            if np.isnan(values).any() or not np.isfinite(point[k]):
                out[k] = {"value": None, "ci": None, "scale": rule.scale, "how": rule.how}
                continue
            value, ci = rule.summarise(values, point[k])
            out[k] = {"value": value * rule.scale, "ci": [c * rule.scale for c in ci], "scale": rule.scale,
                      "how": rule.how}
    return out
