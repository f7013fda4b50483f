"""evaluate.py end to end: outputs, systems and shards, comparisons, bad input, --label-only."""

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cxrgen.metrics
import evaluate
from cxrgen import evaluation
from cxrgen.metrics import bootstrap

ROOT = Path(__file__).resolve().parents[1]
REFS = [
    "The heart is normal in size. The lungs are clear.",
    "Mild cardiomegaly. No pleural effusion.",
    "No acute cardiopulmonary abnormality.",
    "Small right pleural effusion. XXXX opacity at the right base.",
    "Lungs are hyperexpanded. No focal consolidation.",
    "Stable cardiomediastinal silhouette. No pneumothorax.",
]
GEN = [
    "The heart is normal. The lungs are clear.",
    "Heart size is enlarged. No effusion.",
    "No acute disease.",
    "Right pleural effusion.",
    "The lungs are clear.",
    "No pneumothorax.",
]


def _results(ids, gens, refs, status=None):
    return pd.DataFrame(
        {
            "id": ids,
            "image_path": [f"img/{i}.png" for i in ids],
            "reference": refs,
            "generated_report": gens,
            "status": status or ["ok"] * len(ids),
            "error": [""] * len(ids),
            "n_new_tokens": [10] * len(ids),
            "stopped_at_eos": [True] * len(ids),
            "seconds": [1.0] * len(ids),
        }
    )


def _write(path: Path, df: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def _write_part(path: Path, df: pd.DataFrame) -> Path:
    """A shard part whose rows are all committed (its marker covers the whole file), as the runner leaves it."""
    _write(path, df)
    path.with_suffix(".committed").write_text(str(path.stat().st_size))
    return path


def _run(capsys, *argv):
    rc = evaluate.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


IDS = [f"s{i}" for i in range(6)]


def test_single_run_outputs_and_summary_shape(tmp_path, capsys):
    csv = _write(tmp_path / "runs" / "llava" / "results.csv", _results(IDS, GEN, REFS))
    rc, out, err = _run(capsys, csv, "--no-clinical", "--n-boot", "200")
    assert rc == 0, err
    run = tmp_path / "runs" / "llava"
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) >= {"signature", "systems", "comparisons"}
    assert list(summary["systems"]) == ["llava"]  # named after the run folder
    sys_ = summary["systems"]["llava"]
    assert sys_["n"] == 6 and sys_["n_empty"] == 0
    assert list(sys_["metrics"])[:6] == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"]
    assert summary["comparisons"] == []
    per = pd.read_csv(run / "per_sample.csv")
    # ROUGE-L is a mean of per-sample scores: its interval is the percentile interval of the means
    # of the seeded resamples (a percentile interval need not contain the point estimate itself)
    counts = np.vstack(list(bootstrap.resample_counts(6, 200, seed=0)))
    means = counts @ per["rouge_l"].to_numpy() / 6
    assert sys_["metrics"]["rouge_l"]["ci"] == pytest.approx(np.percentile(means, [2.5, 97.5]), abs=1e-12)
    assert per["id"].tolist() == IDS and {"bleu_4", "rouge_l", "cider_d", "system"} <= set(per.columns)
    # the summary value equals the mean of the per-sample ROUGE-L
    assert sys_["metrics"]["rouge_l"]["value"] == pytest.approx(per["rouge_l"].mean())
    table = pd.read_csv(run / "summary.csv")
    assert set(table["metric"]) >= {"bleu_4", "cider_d"}
    md = (run / "summary.md").read_text()
    assert summary["signature"] in md and "| bleu_4 |" in md
    assert summary["signature"] in out and "bleu_4" in out and "meteor: not computed" in out


def test_comparison_with_partial_overlap(tmp_path, capsys):
    a = _write(tmp_path / "a" / "results.csv", _results(IDS, GEN, REFS))
    # b: the perfect system, misses s5, has an extra s9, and failed on s0
    b_df = _results(IDS[:5] + ["s9"], REFS[:5] + ["x"], REFS[:5] + ["y"], status=["error"] + ["ok"] * 5)
    b = _write(tmp_path / "b" / "results.csv", b_df)
    out_dir = tmp_path / "cmp"
    rc, out, err = _run(capsys, a, b, "--no-clinical", "--n-boot", "300", "--output-dir", out_dir)
    assert rc == 0, err
    s = json.loads((out_dir / "summary.json").read_text())
    assert s["alignment"]["n_shared"] == 4
    da, db = s["alignment"]["dropped"]["a"], s["alignment"]["dropped"]["b"]
    assert da["n"] == 2 and da["reasons"] == {"status error in b": 1, "absent from b": 1}
    assert db["n"] == 1 and db["reasons"] == {"absent from a": 1}
    assert s["systems"]["a"]["n"] == s["systems"]["b"]["n"] == 4
    assert s["systems"]["b"]["n_error"] == 1
    comp = {c["metric"]: c for c in s["comparisons"] if c["system"] == "b"}
    assert set(comp) >= {"bleu_1", "bleu_4", "rouge_l", "cider_d"}
    assert comp["rouge_l"]["baseline"] == "a"
    assert comp["rouge_l"]["diff"] == pytest.approx(
        s["systems"]["b"]["metrics"]["rouge_l"]["value"] - s["systems"]["a"]["metrics"]["rouge_l"]["value"]
    )
    assert comp["rouge_l"]["diff"] > 0 and 0 < comp["rouge_l"]["p_value"] <= 1
    assert s["systems"]["b"]["metrics"]["bleu_4"]["value"] == pytest.approx(1.0)
    per = pd.read_csv(out_dir / "per_sample.csv")
    assert sorted(per["system"].unique()) == ["a", "b"] and len(per) == 8
    table = pd.read_csv(out_dir / "summary.csv")
    row = table[(table.system == "b") & (table.metric == "rouge_l")].iloc[0]
    assert row["p_value"] == pytest.approx(comp["rouge_l"]["p_value"])
    assert "Δ b (p)" in out and "dropped from a: 2" in out


def test_baseline_choice_and_explicit_names(tmp_path, capsys):
    a = _write(tmp_path / "x.csv", _results(IDS, GEN, REFS))
    b = _write(tmp_path / "y.csv", _results(IDS, REFS, REFS))
    rc, _, err = _run(capsys, f"old={a}", f"new={b}", "--baseline", "new", "--no-clinical", "--n-boot", "100")
    assert rc == 0, err
    # a comparison gets a folder of its own, named after the systems, beside the first CSV
    s = json.loads((tmp_path / "new-vs-old" / "summary.json").read_text())
    assert not (tmp_path / "summary.json").exists()
    assert list(s["systems"]) == ["new", "old"]
    assert {c["baseline"] for c in s["comparisons"]} == {"new"}
    assert all(c["diff"] <= 1e-12 for c in s["comparisons"])


def test_identical_systems_have_p_value_one(tmp_path):
    df = _results(IDS, GEN, REFS)
    rep = evaluation.evaluate_systems({"a": df, "b": df.copy()}, clinical_metrics=False, n_boot=100)
    assert all(c["diff"] == 0 and c["p_value"] == 1.0 for c in rep.comparisons)
    # the intervals of a system do not depend on the other systems it is evaluated with
    alone = evaluation.evaluate_frame(df, name="a", clinical=False, n_boot=100)
    assert alone.summary["metrics"] == rep.systems["a"].summary["metrics"]


def test_shard_parts_and_globs(tmp_path, capsys):
    run = tmp_path / "run7"
    full = _results(IDS, GEN, REFS)
    _write_part(run / "parts" / "shard-0-of-2.csv", full.iloc[:3])
    _write_part(run / "parts" / "shard-1-of-2.csv", full.iloc[3:])
    _write(run / "parts" / "shard-2-of-2.csv", full.iloc[3:])  # no marker: nothing committed, no rows
    rc, _, err = _run(capsys, run / "parts" / "shard-*.csv", "--no-clinical", "--n-boot", "50")
    assert rc == 0, err
    s = json.loads((run / "summary.json").read_text())
    assert list(s["systems"]) == ["run7"] and s["systems"]["run7"]["n"] == 6
    # same numbers as the unsharded file
    ref = evaluation.evaluate_frame(full, name="run7", clinical=False, n_boot=50)
    assert s["systems"]["run7"]["metrics"] == ref.summary["metrics"]
    rc, _, err = _run(capsys, tmp_path / "nothing-*.csv")
    assert rc == 2 and "matches no file" in err


def test_shard_parts_are_read_up_to_their_committed_length(tmp_path, capsys):
    run = tmp_path / "run8"
    full = _results(IDS, GEN, REFS)
    p0 = _write(run / "parts" / "shard-0-of-3.csv", full.iloc[:3])
    committed = p0.stat().st_size
    (run / "parts" / "shard-0-of-3.committed").write_text(str(committed))
    with open(p0, "a") as f:
        f.write('s9,img,"half a row')  # a batch cut off mid-write
    p1 = _write(run / "parts" / "shard-1-of-3.csv", full.iloc[3:])
    (run / "parts" / "shard-1-of-3.committed").write_text(str(p1.stat().st_size))
    (run / "parts" / "shard-2-of-3.csv").write_text("")
    (run / "parts" / "shard-2-of-3.committed").write_text("0")
    rc, _, err = _run(capsys, run / "parts" / "shard-*.csv", "--no-clinical", "--n-boot", "20")
    assert rc == 0, err
    assert "ignoring" in err and "shard-0-of-3.csv" in err and "shard-2-of-3.csv: skipped" in err
    s = json.loads((run / "summary.json").read_text())
    assert s["systems"]["run8"]["n"] == 6


def test_custom_column_names(tmp_path, capsys):
    df = pd.DataFrame({"study": IDS, "pred": GEN, "gt": REFS})
    csv = _write(tmp_path / "preds.csv", df)
    rc, _, err = _run(capsys, csv, "--id-col", "study", "--hyp-col", "pred", "--ref-col", "gt", "--no-clinical", "--n-boot", "20")
    assert rc == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert list(s["systems"]) == ["preds"] and s["systems"]["preds"]["n"] == 6


# --- bad input -----------------------------------------------------------------------------------


def test_missing_column_lists_the_columns(tmp_path, capsys):
    csv = _write(tmp_path / "r.csv", _results(IDS, GEN, REFS).drop(columns=["generated_report"]))
    rc, _, err = _run(capsys, csv, "--no-clinical")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "no column for the generated report" in err and "(set it with --hyp-col)" in err
    assert "id, image_path, reference, status, error" in err
    assert "_source" not in err
    rc, _, err = _run(capsys, csv, "--no-clinical", "--hyp-col", "pred")
    assert rc == 2 and "no column 'pred' for the generated report" in err and "--hyp-col" in err


def test_empty_and_nan_reports_score_zero_and_are_counted(tmp_path, capsys):
    df = _results(IDS, GEN, REFS)
    df.loc[1, "generated_report"] = np.nan  # written as an empty field
    df.loc[2, "generated_report"] = "   "
    df.loc[3, "generated_report"] = "NaN"
    csv = _write(tmp_path / "r.csv", df)
    rc, _, err = _run(capsys, csv, "--no-clinical", "--n-boot", "50")
    assert rc == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())["systems"]["r"]
    assert s["n"] == 6 and s["n_empty"] == 3 and s["empty_ids"] == ["s1", "s2", "s3"]
    per = pd.read_csv(tmp_path / "per_sample.csv").set_index("id")
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider_d"):
        assert (per.loc[["s1", "s2", "s3"], key] == 0).all()
    assert per.loc[["s1", "s2", "s3"], "empty_hyp"].all()


def test_duplicate_ids_are_an_error_naming_them(tmp_path, capsys):
    df = _results(["a", "b", "a", "c", "c", "d"], GEN, REFS)
    rc, _, err = _run(capsys, _write(tmp_path / "r.csv", df), "--no-clinical")
    assert rc == 2 and "duplicate ids" in err and "a, c" in err


def test_duplicate_ids_across_shard_parts(tmp_path, capsys):
    full = _results(IDS, GEN, REFS)
    _write_part(tmp_path / "run" / "parts" / "shard-0-of-2.csv", full.iloc[:4])
    _write_part(tmp_path / "run" / "parts" / "shard-1-of-2.csv", full.iloc[3:])
    rc, _, err = _run(capsys, tmp_path / "run" / "parts" / "*.csv", "--no-clinical")
    assert rc == 2 and "duplicate ids" in err and "s3" in err


def test_mangled_quoting_reports_the_line(tmp_path, capsys):
    text = (
        "id,reference,generated_report\n"
        's0,"Heart normal.","Lungs clear."\n'
        's1,"Multi-line\nreference.","ok"\n'
        's2,"Broken "quote" here","x"\n'
        "s3,a,b\n"
    )
    path = tmp_path / "bad.csv"
    path.write_text(text)
    rc, _, err = _run(capsys, path, "--no-clinical")
    assert rc == 2 and "bad.csv, line 5" in err and "quoting" in err
    # an unterminated quote swallows the rest of the file: reported at the record's first line
    path.write_text('id,reference,generated_report\ns0,a,b\ns1,"never closed,b\ns2,c,d\n')
    rc, _, err = _run(capsys, path, "--no-clinical")
    assert rc == 2 and "line 3" in err
    # a row with too many fields
    path.write_text("id,reference,generated_report\ns0,a,b\ns1,a,b,c\n")
    rc, _, err = _run(capsys, path, "--no-clinical")
    assert rc == 2 and "line 3: 4 fields where the header has 3" in err


def test_empty_references_and_errors_are_excluded_and_counted(tmp_path, capsys):
    df = _results(IDS, GEN, REFS, status=["ok", "error", "ok", "ok", "ok", "ok"])
    df.loc[2, "reference"] = ""
    df.loc[1, "generated_report"] = ""
    rc, out, err = _run(capsys, _write(tmp_path / "r.csv", df), "--no-clinical", "--n-boot", "20")
    assert rc == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())["systems"]["r"]
    assert (s["n_rows"], s["n"], s["n_error"], s["n_empty_reference"], s["n_empty"]) == (6, 4, 1, 1, 0)
    assert s["excluded"] == {"error": ["s1"], "empty_reference": ["s2"]}
    assert "1 status-error rows excluded, 1 empty references excluded" in out


def test_different_references_for_a_shared_id_is_an_error(tmp_path):
    a = _results(IDS, GEN, REFS)
    b = a.copy()
    b.loc[2, "reference"] = "Something else."
    with pytest.raises(evaluation.EvaluationInputError, match="different references.*s2"):
        evaluation.evaluate_systems({"a": a, "b": b}, clinical_metrics=False, n_boot=0)


def test_nothing_scorable_is_an_error(tmp_path):
    df = _results(IDS[:2], GEN[:2], ["", ""])
    with pytest.raises(evaluation.EvaluationInputError, match="no row can be scored"):
        evaluation.evaluate_frame(df, name="x", clinical=False)


# --- METEOR is reported, never downloaded --------------------------------


def test_meteor_unavailable_without_download(monkeypatch):
    import nltk

    from cxrgen.metrics import meteor

    def no_download(*a, **k):
        raise AssertionError("nltk.download must not be called")

    monkeypatch.setattr(nltk, "download", no_download)
    ok, why = meteor.meteor_availability()
    ev = evaluation.evaluate_frame(_results(IDS, GEN, REFS), name="x", clinical=False, n_boot=10)
    if ok:
        assert "meteor" in ev.summary["metrics"] and "meteor:nltk-" in ev.signature
    else:
        assert ev.summary["unavailable"]["meteor"] == why and "nltk.downloader wordnet" in why
        assert "meteor" not in ev.summary["metrics"] and "meteor:none" in ev.signature


def test_the_wordnet_lookup_without_nltk_searches_where_nltk_does(tmp_path, monkeypatch):
    """METEOR's availability is decided without importing NLTK when no WordNet corpus is in any folder NLTK
    searches: those folders must be NLTK's own, and a corpus in one of them must be seen."""
    import nltk

    from cxrgen.metrics import meteor

    assert meteor._wordnet_folders() == nltk.data.path
    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    found_before = meteor._wordnet_may_be_installed()
    (tmp_path / "corpora" / "wordnet").mkdir(parents=True)
    assert meteor._wordnet_may_be_installed()
    if not found_before:  # and without one, NLTK itself finds none either
        monkeypatch.setattr(nltk.data, "path", meteor._wordnet_folders()[1:])
        with pytest.raises(LookupError):
            nltk.data.find("corpora/wordnet")


# --- runner API ----------------------------------------------------------------------------------


def test_evaluate_frame_indexes_like_the_usable_rows_and_writes_metrics_json(tmp_path):
    df = _results(IDS, GEN, REFS, status=["ok", "error", "ok", "ok", "ok", "ok"])
    df.index = [10, 11, 12, 13, 14, 15]
    ev = evaluation.evaluate_frame(df, name="run", clinical=False, n_boot=30)
    assert ev.per_sample.index.tolist() == [10, 12, 13, 14, 15]
    assert ev.per_sample["id"].tolist() == ["s0", "s2", "s3", "s4", "s5"]
    path = evaluation.write_metrics_json(ev, tmp_path / "metrics.json")
    m = json.loads(path.read_text())
    assert set(m) == {"signature", "n", "n_empty", "lengths", "metrics", "clinical"}
    assert m["lengths"] == {"unit": "tokens", "mean": 10.0, "median": 10.0, "p95": 10.0, "max": 10,
                            "stopped_at_limit": 0.0, "empty": 0.0}
    assert m["n"] == 5 and m["metrics"]["bleu_4"] == ev.summary["metrics"]["bleu_4"]


# --- labelling and the clinical block through the CLI --------------------------------------------


def _fake_labeler(monkeypatch):
    def label_reports(texts):
        out = []
        for t in texts:
            t = t.lower()
            lab = {"cardiomegaly": 1} if ("cardiomegaly" in t or "enlarged" in t) else {}
            if "no pleural effusion" in t or "no effusion" in t:
                lab["pleural_effusion"] = 0
            elif "effusion" in t:
                lab["pleural_effusion"] = 1
            if "possible" in t:
                lab["edema"] = -1
            out.append(lab)
        return out

    fake = types.SimpleNamespace(label_reports=label_reports, LABELER_VERSION="fake-1")
    monkeypatch.setitem(sys.modules, "cxrgen.metrics.labeler", fake)
    monkeypatch.setattr(cxrgen.metrics, "labeler", fake, raising=False)


def test_clinical_block_by_default(tmp_path, capsys, monkeypatch):
    _fake_labeler(monkeypatch)
    csv = _write(tmp_path / "r.csv", _results(IDS, GEN, REFS))
    rc, out, err = _run(capsys, csv, "--n-boot", "100", "--uncertain", "negative")
    assert rc == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    cl = s["systems"]["r"]["clinical"]
    assert cl["labeler"] == "fake-1" and cl["uncertain"] == "negative"
    assert "clin:fake-1+unc:neg" in s["signature"]
    # card: s1 tp; effusion: s1 tn, s3 tp -> micro P = R = F1 = 1
    assert cl["metrics"]["chexpert14_micro_f1"]["value"] == pytest.approx(1.0)
    assert cl["per_observation"]["pleural_effusion"]["tp"] == 1
    assert "chexbert5_micro_f1" in out and "cxrllava6_macro_f1" in out
    md = (tmp_path / "summary.md").read_text()
    assert "Per-observation labels: r" in md and "| pleural_effusion |" in md


def test_label_only_writes_observation_columns(tmp_path, capsys, monkeypatch):
    _fake_labeler(monkeypatch)
    src = tmp_path / "reports.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "report": ["Cardiomegaly. Possible edema.", "No effusion.", ""]}).to_csv(src, index=False)
    out_csv = tmp_path / "labels.csv"
    rc, out, err = _run(capsys, "--label-only", src, "--text-col", "report", "--output", out_csv)
    assert rc == 0, err
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "id," + ",".join(cxrgen.metrics.clinical.COLUMNS)
    got = pd.read_csv(out_csv, dtype=str, keep_default_na=False).set_index("id")
    assert got.loc["a", "cardiomegaly"] == "1" and got.loc["a", "edema"] == "-1"
    assert got.loc["b", "pleural_effusion"] == "0" and got.loc["b", "cardiomegaly"] == ""
    assert (got.loc["c"] == "").all()
    rc, _, err = _run(capsys, "--label-only", src, "--text-col", "text", "--output", out_csv)
    assert rc == 2 and "no column 'text' for the report text; the columns are: id, report (set it with --text-col)" in err


def test_label_only_with_the_rule_labeler(tmp_path, capsys):
    src = tmp_path / "reports.csv"
    pd.DataFrame({"id": ["a"], "report": ["The heart is enlarged. There is no pleural effusion."]}).to_csv(src, index=False)
    out_csv = tmp_path / "labels.csv"
    rc, _, err = _run(capsys, "--label-only", src, "--text-col", "report", "--output", out_csv)
    assert rc == 0, err
    got = pd.read_csv(out_csv, dtype=str, keep_default_na=False).set_index("id")
    assert got.loc["a", "cardiomegaly"] == "1" and got.loc["a", "pleural_effusion"] == "0"


def test_help_is_helpful():
    out = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "-h"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for flag in ("--id-col", "--hyp-col", "--ref-col", "--compat", "--n-boot", "--seed", "--baseline", "--uncertain", "--label-only", "--text-col", "--output-dir", "--model-metrics",
                 "--significance", "--ar-trials", "--skip-unavailable", "--fetch-metric-models", "--html"):
        assert flag in out.stdout
    assert "shard-<i>-of-<n>.csv" in out.stdout
    assert "radeval" in out.stdout and "ground_truth_report" in out.stdout


def test_report_lengths_and_truncation_of_a_run_with_known_lengths():
    """Tokens where the runner wrote them (n_new_tokens; stopped_at_eos false = cut at max_new_tokens), words
    otherwise; over the scored rows only (the error row is left out)."""
    ids = [f"s{i}" for i in range(6)]
    gens = ["a b", "a b c", "x", "long " * 20, "", "never scored"]
    df = _results(ids, gens, REFS[:6], status=["ok"] * 5 + ["error"])
    df["n_new_tokens"] = [4, 8, 2, 512, 0, 99]
    df["stopped_at_eos"] = [True, True, True, False, True, False]
    lengths = evaluation.evaluate_frame(df, name="run", clinical=False, n_boot=0).summary["lengths"]
    assert lengths == {"unit": "tokens", "mean": pytest.approx(105.2), "median": 4.0,
                       "p95": pytest.approx(float(np.percentile([4, 8, 2, 512, 0], 95))), "max": 512,
                       "stopped_at_limit": pytest.approx(0.2), "empty": pytest.approx(0.2)}
    plain = df[["id", "generated_report", "reference"]].iloc[:5]
    words = evaluation.evaluate_frame(plain, name="csv", clinical=False, n_boot=0).summary["lengths"]
    assert words["unit"] == "words" and words["max"] == 20 and words["stopped_at_limit"] is None
