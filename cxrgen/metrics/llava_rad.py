"""The metrics of LLaVA-Rad's evaluation (microsoft/LLaVA-Rad, ``llava/eval/rrg_eval``), as Metric classes.

What LLaVA-Rad's ``run.py`` computes by default, one metric each (the protocol is
:data:`cxrgen.metrics.protocols.LLAVA_RAD`):

* **CheXpert-label F1** (:class:`LabelF1`), ``factuality_eval.py``: both reports labelled with the 14 CheXpert
  observations (No Finding included), binarised per observation, then scikit-learn's
  ``classification_report(..., zero_division=0)`` on the ``(n, 14)`` and ``(n, 5)`` indicator matrices:

  - default columns (LLaVA-Rad's "rrg" mode): only *positive* is 1; uncertain, negative and blank are 0;
  - "+" columns ("rrg+"): positive **or uncertain** is 1;
  - micro F1 = ``2 TP / (2 TP + FP + FN)`` over the set's summed counts; macro F1 = the unweighted mean of the
    per-observation F1, where an observation with ``2 TP + FP + FN = 0`` (absent from both sides) counts as
    **F1 = 0 and is included**; every value is 0 where its denominator is 0 (never undefined);
  - the 5 observations: cardiomegaly, edema, consolidation, atelectasis, pleural effusion.

  LLaVA-Rad labels with CheXbert; :class:`LabelF1` takes its labels either from CheXbert through RadEval
  (``source="chexbert"``: the published model, keys ``chexbert_*``) or from our rule labeler
  (``source="rules"``: keys ``rules_*``, labelled as ours everywhere; CheXbert's numbers they are not).
* **BLEU-1, BLEU-4** (:class:`SacreBleu`), ``run.py:28-41`` on its default bootstrap path: sacrebleu's
  ``BLEU(max_ngram_order=N).corpus_score``: corpus BLEU on mteval-v13a tokens, case kept, ``exp`` smoothing
  (:func:`cxrgen.metrics.bleu.corpus_bleu`, ``variant="sacrebleu"``), reported here on the **0-1 scale** like every
  other number (sacrebleu and LLaVA-Rad's tables print 0-100).
* **ROUGE-L**: rouge-score's ``rougeL`` F-measure without the stemmer, averaged over the pairs
  (:class:`cxrgen.metrics.rouge.RougeScore` with ``types=("rougeL",), stemmer=False``).
* **F1-RadGraph**: the partial reward of the original RadGraph model, averaged over the pairs, through RadEval
  (:mod:`cxrgen.metrics.model_based` scorer ``radgraph_partial``).

The point values here are full-sample values; LLaVA-Rad's tables print the median of its 500 bootstrap values for
some of them, which :func:`cxrgen.metrics.protocols.published_values` reproduces beside them.
"""

from __future__ import annotations

import numpy as np

from cxrgen.metrics import clinical
from cxrgen.metrics.base import Column, Computed, Context, Metric
from cxrgen.metrics.bleu import MAX_N, N_STATS, bleu_stats_row, corpus_bleu, ngram_counts
from cxrgen.metrics.model_metric import scored, unavailable_scorers
from cxrgen.metrics.tokenize import tokenize_13a

#: LLaVA-Rad's 5 observations (``factuality_utils.py:18``), as :data:`cxrgen.metrics.clinical.COLUMNS` names.
FIVE = ("cardiomegaly", "edema", "consolidation", "atelectasis", "pleural_effusion")
SETS = (("14", clinical.COLUMNS), ("5", FIVE))
#: ``(suffix, policy)``: LLaVA-Rad's "rrg" (uncertain negative) and "rrg+" (uncertain positive), as the uncertain
#: policies of :func:`cxrgen.metrics.clinical.outcome_counts`.
VARIANTS = (("", "negative"), ("_plus", "positive"))
AVERAGES = ("micro", "macro")
_WIDTH = len(clinical.COLUMNS) * 4  # tp, fp, fn, tn per observation


def f1_zero_division(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 as scikit-learn computes it with ``zero_division=0``: ``2 TP / (2 TP + FP + FN)``, 0 where that
    denominator is 0."""
    den = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)


def label_f1(sums: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Every key of :class:`LabelF1` from outcome sums ``(..., 2 * 14 * 4)`` (the two variants' tp/fp/fn/tn per
    observation, :data:`cxrgen.metrics.clinical.COLUMNS` order)."""
    sums = np.asarray(sums, dtype=np.float64)
    grid = sums.reshape(*sums.shape[:-1], len(VARIANTS), len(clinical.COLUMNS), 4)
    out = {}
    for v, (suffix, _) in enumerate(VARIANTS):
        for avg in AVERAGES:
            for set_name, cols in SETS:
                sub = grid[..., v, [clinical.COLUMNS.index(c) for c in cols], :]
                tp, fp, fn = sub[..., 0], sub[..., 1], sub[..., 2]
                if avg == "micro":
                    value = f1_zero_division(tp.sum(-1), fp.sum(-1), fn.sum(-1))
                else:
                    value = f1_zero_division(tp, fp, fn).mean(-1)
                out[f"{prefix}_{avg}_f1_{set_name}{suffix}"] = value
    return out


class LabelF1(Metric):
    """LLaVA-Rad's CheXpert-label F1 (module docstring): micro and macro over 14 and over 5 observations, uncertain
    as negative and ("_plus") as positive; labels from ``source``: ``"rules"`` (our rule labeler) or
    ``"chexbert"`` (CheXbert through RadEval, model-based; ``optional``: reported unavailable where it cannot run)."""

    group = "clinical"
    uses_support = False

    def __init__(self, source: str, optional: bool = False):
        if source not in ("rules", "chexbert"):
            raise ValueError(f"unknown label source {source!r}; known: rules, chexbert")
        self.source = source
        self.optional = optional
        self.name = f"labels_{source}"
        self.scorers = ("chexbert",) if source == "chexbert" else ()
        self.keys = tuple(label_f1(np.zeros(2 * _WIDTH), source))
        self._who = "CheXbert through RadEval" if source == "chexbert" else "our rule labeler"
        self.labels = {k: f"{_published_name(k)} ({self._who}, LLaVA-Rad's definition)" for k in self.keys}

    def unavailable(self, ctx: Context) -> str | None:
        if not ctx.clinical:
            return "disabled"
        if self.scorers:
            return unavailable_scorers(self.scorers)
        return None

    def _codes(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        """Label codes ``(n, 14)`` of both texts (1 positive, -1 uncertain, 0 negative, not mentioned or blank)."""
        if self.source == "chexbert":
            result = scored(ctx, "chexbert")
            return np.asarray(result.hyp_codes), np.asarray(result.ref_codes)
        refs = ctx.shared_refs("clinical_labels", lambda: clinical.label_texts(list(ctx.refs), ctx.label_reports))
        hyps = clinical.label_texts(list(ctx.hyps), ctx.label_reports)
        return (clinical.label_codes(hyps, "generated-report labels"),
                clinical.label_codes(refs, "reference labels"))

    def compute(self, ctx: Context) -> Computed:
        hc, rc = self._codes(ctx)
        blocks = [clinical.outcome_counts(hc, rc, policy).reshape(ctx.n, _WIDTH) for _, policy in VARIANTS]
        own = self.source == "rules"  # the label strings of per_sample.csv are the rule labeler's codes
        return Computed(stats=np.hstack(blocks), hyp_labels=hc if own else None, ref_labels=rc if own else None)

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return label_f1(sums, self.source)

    def key_columns(self, key: str) -> list[int]:
        variant = 1 if key.endswith("_plus") else 0
        cols = dict(SETS)[key.removesuffix("_plus").rsplit("_", 1)[1]]
        return [variant * _WIDTH + 4 * clinical.COLUMNS.index(c) + k for c in cols for k in range(4)]

    def _version(self, ctx: Context) -> str:
        if self.source == "chexbert":
            result = ctx.cache.get("model:chexbert")
            return getattr(result, "signature", "") or "chexbert"
        if ctx.label_reports is None:
            return clinical.labeler_version()
        return str(getattr(ctx.label_reports, "LABELER_VERSION", None) or getattr(ctx.label_reports, "__name__", "custom"))

    def signature(self, ctx: Context, available: bool) -> str:
        if not available:
            return f"{self.name}:none"
        return f"{self.name}:{self._version(ctx)}+f1:llava-rad(unc:neg,plus:unc:pos,macro:all-14-or-5)"

    def summary_block(self, keys, point, boot, stats, entry, ctx) -> dict:
        grid = stats.sum(axis=0).reshape(len(VARIANTS), len(clinical.COLUMNS), 4)
        metrics = {}
        for k in keys:
            variant = 1 if k.endswith("_plus") else 0
            idx = [clinical.COLUMNS.index(c) for c in dict(SETS)[k.removesuffix("_plus").rsplit("_", 1)[1]]]
            g = grid[variant, idx]
            metrics[k] = {**entry(point[k], boot[k] if boot else None),
                          "ref_positive": int(g[:, 0].sum() + g[:, 2].sum()),
                          "hyp_positive": int(g[:, 0].sum() + g[:, 1].sum())}
        labeler = self._version(ctx)
        return {
            "title": f"CheXpert-label F1, {self._who} ({labeler}), LLaVA-Rad's definition",
            "labeler": labeler,
            "definition": ("scikit-learn classification_report(zero_division=0): micro and macro F1 over 14 and 5 "
                           "observations; an observation absent from both sides counts F1 0 in the macro mean; "
                           "uncertain counts as negative, and as positive in the _plus keys"),
            "metrics": metrics,
        }


def _published_name(key: str) -> str:
    """LLaVA-Rad's column name of a :class:`LabelF1` key: ``rules_micro_f1_14_plus`` -> ``Micro-F1-14+``."""
    parts = key.split("_")
    avg, size = parts[1], parts[3]
    return f"{avg.capitalize()}-F1-{size}" + ("+" if key.endswith("_plus") else "")


class SacreBleu(Metric):
    """BLEU-1 and BLEU-4 as LLaVA-Rad computes them (module docstring): sacrebleu's corpus BLEU on 13a tokens,
    case kept, exp smoothing, on the 0-1 scale. The per-sample columns apply the same formula to each pair."""

    name = "bleu"
    keys = ("bleu_1", "bleu_4")
    labels = {"bleu_1": "BLEU-1 (sacrebleu 13a, 0-1)", "bleu_4": "BLEU-4 (sacrebleu 13a, 0-1)"}
    columns = (Column("bleu_1", "BLEU-1"), Column("bleu_4", "BLEU-4"),
               Column("hyp_tokens", "tokens", kind="extra"), Column("ref_tokens", "reference tokens", kind="data"))
    modes = ()

    def compute(self, ctx: Context) -> Computed:
        hyps = [tokenize_13a(h) for h in ctx.hyps]
        refs = ctx.shared_refs("tokens:13a", lambda: [tokenize_13a(r) for r in ctx.refs])
        ref_counts = ctx.shared_refs("ngrams:13a", lambda: [ngram_counts(r) for r in refs])
        rows = [bleu_stats_row(ngram_counts(h), rc, len(h), len(r)) for h, rc, r in zip(hyps, ref_counts, refs)]
        stats = np.asarray(rows, dtype=np.float64).reshape(ctx.n, N_STATS)
        per_sample = {k: corpus_bleu(stats, int(k[-1]), "sacrebleu") for k in self.keys}
        per_sample.update(hyp_tokens=stats[:, 2 * MAX_N].astype(int), ref_tokens=stats[:, 2 * MAX_N + 1].astype(int))
        return Computed(stats=stats, per_sample=per_sample)

    def aggregate(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return {k: corpus_bleu(sums, int(k[-1]), "sacrebleu") for k in self.keys}

    def signature(self, ctx: Context, available: bool) -> str:
        return "bleu:sacrebleu-corpus+tok:13a+case:kept+smooth:exp+scale:0-1"
