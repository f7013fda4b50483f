"""The metric registry: a metric registered in one place shows up in the scores, intervals,
comparisons, summaries, tables, signature and results page; the built-in list per mode."""

import numpy as np
import pandas as pd
import pytest

from cxrgen.evaluation import csv_rows, evaluate_systems, format_table, markdown
from cxrgen.metrics import bootstrap, registry
from cxrgen.metrics.base import Column, Computed, Metric
from cxrgen.metrics.signature import parse_signature
from cxrgen.report import page_data


# The toy metric of the README's "Adding a metric".
class LengthRatio(Metric):
    """Words generated per reference word, over the corpus: sum(hyp words) / sum(ref words)."""

    name = "length"
    keys = ("length_ratio",)
    labels = {"length_ratio": "length ratio"}
    columns = (Column("length_ratio", "length ratio", scale=2.0),)
    modes = (None, "pycocoevalcap", "radeval")

    def compute(self, ctx):
        h = np.array([len(t.split()) for t in ctx.hyps], dtype=float)
        r = np.array([len(t.split()) for t in ctx.refs], dtype=float)
        return Computed(stats=np.column_stack([h, r]), per_sample={"length_ratio": h / r})

    def aggregate(self, sums):
        return {"length_ratio": sums[..., 0] / sums[..., 1]}

    def signature(self, ctx, available):
        return "length:words"


@pytest.fixture
def toy():
    registry.register(LengthRatio(), before="clinical")
    yield
    registry.unregister("length")


REFS = ["The heart is normal in size.", "Small left effusion.", "No pneumothorax.", "Lungs are clear bilaterally."]
A = ["Heart normal.", "Small left pleural effusion is seen.", "No pneumothorax.", "Clear."]
B = ["The heart is normal in size.", "Left effusion.", "No pneumothorax or effusion.", "Lungs are clear."]


def _frame(gen):
    return pd.DataFrame({"id": [f"s{i}" for i in range(4)], "generated_report": gen, "reference": REFS})


def test_a_registered_metric_appears_everywhere(toy):
    rep = evaluate_systems({"a": _frame(A), "b": _frame(B)}, n_boot=100, seed=2, use_meteor=False)
    words = lambda texts: sum(len(t.split()) for t in texts)  # noqa: E731
    entry = rep.systems["a"].summary["metrics"]["length_ratio"]
    assert entry["value"] == pytest.approx(words(A) / words(REFS))
    # its interval comes from the shared bootstrap draws applied to its own statistics
    counts = np.vstack(list(bootstrap.resample_counts(4, 100, seed=2)))
    h = np.array([len(t.split()) for t in A], float)
    r = np.array([len(t.split()) for t in REFS], float)
    assert entry["ci"] == pytest.approx(np.percentile((counts @ h) / (counts @ r), [2.5, 97.5]))
    # registered before the clinical metrics: after the text metrics in the summary's order
    assert list(rep.systems["a"].summary["metrics"])[-1] == "length_ratio"
    comp = {c["metric"]: c for c in rep.comparisons}
    assert comp["length_ratio"]["diff"] == pytest.approx(words(B) / words(REFS) - words(A) / words(REFS))
    summary = rep.summary_dict()
    table = format_table(summary)
    row = next(line for line in table.splitlines() if line.startswith("length_ratio"))
    assert f"{entry['value']:.4f} [{entry['ci'][0]:.4f}, {entry['ci'][1]:.4f}]" in row
    assert table.index("length_ratio") < table.index("clinical (CheXpert labels)")
    assert "| length_ratio |" in markdown(summary)
    assert {(r_["system"], r_["metric"]) for r_ in csv_rows(summary)} >= {("a", "length_ratio"), ("b", "length_ratio")}
    fields = list(parse_signature(rep.signature))
    assert "length" in fields and fields.index("length") < fields.index("ci")
    assert parse_signature(rep.signature)["length"] == "words"
    per = rep.systems["a"].per_sample
    assert per["length_ratio"].tolist() == pytest.approx((h / r).tolist())
    # the results page lists its per-sample column with its label
    frames = {n: rep.frames[n].join(rep.systems[n].per_sample.drop(columns=["id"])) for n in rep.systems}
    data = page_data(frames, summary, findings=False, thumbnail_px=0)
    assert ["length_ratio", "length ratio", "low", "score"] in data["scores"]


def test_unregistered_metric_is_gone_and_names_are_unique(toy):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(LengthRatio())
    registry.unregister("length")
    rep = evaluate_systems({"a": _frame(A)}, n_boot=0, use_meteor=False, clinical_metrics=False)
    assert "length_ratio" not in rep.systems["a"].summary["metrics"] and "length:" not in rep.signature
    registry.register(LengthRatio())  # for the fixture's clean-up


def test_each_mode_takes_its_metrics_from_the_registry():
    keys = {mode: [k for m in registry.for_mode(mode) for k in m.keys if m.group == "text"]
            for mode in (None, "pycocoevalcap", "radeval")}
    assert keys[None] == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d", "meteor"]
    assert keys["pycocoevalcap"] == keys[None]
    assert keys["radeval"] == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_1", "rouge_2", "rouge_l"]
    # and the summary follows it
    rep = evaluate_systems({"a": _frame(A)}, n_boot=0, compat="radeval", clinical_metrics=False)
    assert list(rep.systems["a"].summary["metrics"]) == keys["radeval"]
