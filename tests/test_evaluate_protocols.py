"""evaluate.py --protocol end to end, with stand-ins for the RadEval scorers (the real ones need downloaded
weights): the metrics and their definitions, the reference each protocol scores, the signature, the published-style
values, intervals and paired tests on the protocol's keys, and the errors (one line, exit 2)."""

import json

import numpy as np
import pandas as pd
import pytest

import evaluate
from cxrgen.evaluation import EvaluationInputError, evaluate_systems, format_table
from cxrgen.metrics import clinical, model_based, protocols
from cxrgen.report.html import page_data

REFS = ["Small left pleural effusion. Heart size normal.", "Heart size is enlarged. Possible edema.",
        "No acute disease. Lungs are clear.", "Right pneumothorax.", "Mild pulmonary edema and atelectasis.",
        "Possible consolidation at the right base.", "Cardiomegaly with small effusions.", "Lungs clear."]
GEN_A = ["Left pleural effusion.", "Normal heart.", "No acute disease.", "", "Edema.", "Clear lungs.",
         "Enlarged heart.", "Lungs clear."]
GEN_B = ["Small left pleural effusion.", "Enlarged heart. Possible edema.", "Clear lungs.", "Pneumothorax.",
         "Mild pulmonary edema.", "Possible right basal consolidation.", "Cardiomegaly.", "Lungs are clear."]
IDS = [f"s{i}" for i in range(len(REFS))]
WORDS = {"effusion": "Pleural Effusion", "edema": "Edema", "enlarged": "Cardiomegaly", "cardiomegaly": "Cardiomegaly",
         "pneumothorax": "Pneumothorax", "consolidation": "Consolidation", "atelectasis": "Atelectasis"}
CHEXBERT_COLUMN = {v: v.lower().replace(" ", "_") for v in WORDS.values()}


def _codes(text: str) -> np.ndarray:
    """A stand-in CheXbert: each finding word positive, or uncertain after "possible"."""
    row = np.zeros(len(clinical.COLUMNS), dtype=np.int8)
    for word, name in WORDS.items():
        if word in text.lower():
            row[clinical.COLUMNS.index(CHEXBERT_COLUMN[name])] = -1 if "possible" in text.lower() else 1
    return row


def _overlap(h: str, r: str) -> float:
    hw, rw = set(h.lower().strip(".").split()), set(r.lower().strip(".").split())
    return len(hw & rw) / max(1, len(rw))


CALLS = []


def fake_score(name, hyps, refs, **kw):
    CALLS.append(name)
    empty = np.array([not h.strip() for h in hyps])
    if name == "chexbert":
        hc = np.array([_codes(h) for h in hyps])
        hc[empty] = 0
        rc = np.array([_codes(r) for r in refs])
        return model_based.ModelScores(name=name, hyp_codes=hc, ref_codes=rc, hyp_labels=(hc != 0).astype(np.int8),
                                       ref_labels=(rc != 0).astype(np.int8), signature="radeval-test:chexbert")
    key = {"radgraph_partial": "f1_radgraph", "radgraph_combined": "radgraph", "bertscore_distilroberta": "bertscore",
           "sembscore": "sembscore", "ratescore": "ratescore"}[name]
    scale = {"bertscore": 0.8, "sembscore": 0.9, "ratescore": 0.7}.get(key, 1.0)
    values = np.array([0.0 if e else scale * _overlap(h, r) for h, r, e in zip(hyps, refs, empty)])
    return model_based.ModelScores(name=name, per_sample={key: values}, signature=f"radeval-test:{name}")


@pytest.fixture
def scorers(monkeypatch):
    CALLS.clear()
    monkeypatch.setattr(model_based, "score", fake_score)
    missing = "package green_score is missing (a stand-in reason)"
    monkeypatch.setattr(model_based, "check_available", lambda names: {n: missing for n in names if n == "green"})
    return CALLS


def _frames(**extra):
    a = pd.DataFrame({"id": IDS, "generated_report": GEN_A, "findings": REFS, **extra})
    b = pd.DataFrame({"id": IDS, "generated_report": GEN_B, "findings": REFS, **extra})
    return {"a": a, "b": b}


def test_llava_rad_metrics_signature_and_published_values(scorers):
    rep = evaluate_systems(_frames(), protocol="llava-rad", use_meteor=False, ar_trials=500)
    summary = rep.summary_dict()
    sa = summary["systems"]["a"]
    assert list(sa["metrics"]) == ["f1_radgraph", "bleu_1", "bleu_4", "rouge_l"]
    assert list(sa["labels_chexbert"]["metrics"]) == [f"chexbert_{k}" for k in
                                                      ("micro_f1_14", "micro_f1_5", "macro_f1_14", "macro_f1_5",
                                                       "micro_f1_14_plus", "micro_f1_5_plus", "macro_f1_14_plus",
                                                       "macro_f1_5_plus")]
    assert "our rule labeler" in sa["labels_rules"]["title"] and "CheXbert" not in sa["labels_rules"]["title"]
    assert sa["unavailable"] == {}
    sig = rep.signature
    assert sig.startswith("proto:llava-rad|nrefs:1|ref:findings|bleu:sacrebleu-corpus+tok:13a+case:kept")
    assert "|boot:500|" in sig and "|pub:median-b500-rs3+sacrebleu-ci-b500-s12345|" in sig
    assert "|labels_rules:rb1-" in sig and "|labels_chexbert:radeval-test:chexbert+f1:llava-rad" in sig
    assert "|f1radgraph:radeval-test:radgraph_partial|" in sig
    assert summary["protocol"]["name"] == "llava-rad" and summary["settings"]["protocol"] == "llava-rad"
    # CheXbert's labels under LLaVA-Rad's definition: uncertain negative, and positive in the _plus keys
    from sklearn.metrics import f1_score

    hc = np.array([_codes(h) if h else np.zeros(14, np.int8) for h in GEN_A])
    rc = np.array([_codes(r) for r in REFS])
    cb = sa["labels_chexbert"]["metrics"]
    assert cb["chexbert_micro_f1_14"]["value"] == pytest.approx(f1_score(rc == 1, hc == 1, average="micro",
                                                                          zero_division=0))
    assert cb["chexbert_macro_f1_14_plus"]["value"] == pytest.approx(f1_score(rc != 0, hc != 0, average="macro",
                                                                              zero_division=0))
    # published-style values for every key LLaVA-Rad reports that way; BLEU on sacrebleu's 0-100
    pub = sa["published"]
    assert set(pub) == {*cb, *sa["labels_rules"]["metrics"], "f1_radgraph", "bleu_1", "bleu_4", "rouge_l"}
    assert pub["bleu_4"]["value"] == pytest.approx(100 * sa["metrics"]["bleu_4"]["value"])
    assert pub["f1_radgraph"]["scale"] == 1 and "median" in pub["f1_radgraph"]["how"]
    # intervals and paired tests on the protocol's keys, as for every metric
    assert sa["metrics"]["rouge_l"]["ci"] is not None
    compared = {c["metric"] for c in summary["comparisons"]}
    assert {"f1_radgraph", "bleu_4", "chexbert_macro_f1_5", "rules_micro_f1_14_plus"} <= compared
    table = format_table(rep)
    assert "protocol: llava-rad" in table and "as the published code reports them" in table
    assert scorers.count("chexbert") == 2  # once per system: the label F1 and nothing else asked for it again


def test_rexrank_radcliq_from_the_same_scorer_values(scorers):
    rep = evaluate_systems(_frames(), protocol="rexrank", use_meteor=False, n_boot=200, ar_trials=200)
    sa = rep.systems["a"].summary
    assert list(sa["metrics"]) == ["bleu_2", "bertscore", "sembscore", "radgraph", "radcliq_v1", "inv_radcliq_v1",
                                   "ratescore"]
    assert "green" in sa["unavailable"] and "published" not in sa  # optional: reported, no --skip-unavailable
    per = rep.systems["a"].per_sample
    want = protocols.rexrank.radcliq_v1({k: per[k].to_numpy() for k in ("radgraph", "bertscore", "sembscore",
                                                                        "bleu_2")})
    np.testing.assert_allclose(per["radcliq_v1"], want, atol=1e-12, rtol=0)
    assert sa["metrics"]["inv_radcliq_v1"]["value"] == pytest.approx(1 / want.mean())
    assert sa["metrics"]["inv_radcliq_v1"]["ci"] is not None
    for name in ("bertscore_distilroberta", "sembscore", "radgraph_combined"):
        assert scorers.count(name) == 2  # once per system although RadCliQ-v1 uses them too
    assert rep.signature.startswith("proto:rexrank|nrefs:1|ref:findings|bleu:rexrank-sent2")
    assert "|boot:200|" in rep.signature and "|ar:200|" in rep.signature and "pub:" not in rep.signature
    assert "|bertscore:radeval-test:bertscore_distilroberta|" in rep.signature
    # the page knows RadCliQ-v1 is lower-is-better
    data = page_data({n: rep.frames[n].join(rep.systems[n].per_sample.drop(columns="id")) for n in rep.systems},
                     rep.summary_dict(), findings=False, thumbnail_px=0)
    assert ["radcliq_v1", "RadCliQ-v1", "high", "score"] in data["scores"]


def test_rexrank_findings_impression_reference(scorers):
    impression = ["No acute process.", "", "Normal chest.", "Pneumothorax.", "Edema.", "Pneumonia?", "CHF.", ""]
    frames = _frames(impression=impression)
    frames["a"].loc[7, "findings"] = ""
    frames["b"].loc[7, "findings"] = ""
    rep = evaluate_systems(frames, protocol="rexrank-fi", use_meteor=False, n_boot=0)
    refs = rep.frames["a"]["reference"]
    assert refs[0] == f"Findings: {REFS[0]} Impression: No acute process."
    assert refs[1] == f"Findings: {REFS[1]} Impression: None."
    assert 7 not in set(rep.frames["a"].index[rep.frames["a"]["id"].isin(rep.systems["a"].per_sample["id"])])
    assert rep.systems["a"].summary["n_empty_reference"] == 1  # both sections empty: no reference
    assert "|ref:findings+impression:rexrank-json(stripped,empty=None.)|" in rep.signature
    # a reference column already written that way is used as it is; any other is an error naming the columns
    written = pd.DataFrame({"id": IDS, "generated_report": GEN_A,
                            "reference": [f"Findings: {r} Impression: None." for r in REFS]})
    rep = evaluate_systems({"a": written}, protocol="rexrank-fi", use_meteor=False, n_boot=0)
    assert list(rep.frames["a"]["reference"]) == list(written["reference"])
    plain = pd.DataFrame({"id": IDS, "generated_report": GEN_A, "reference": REFS})
    with pytest.raises(EvaluationInputError, match="no findings and impression columns"):
        evaluate_systems({"a": plain}, protocol="rexrank-fi", use_meteor=False, n_boot=0)


def test_findings_protocols_prefer_a_findings_column_and_refuse_impressions(scorers, tmp_path, capsys):
    both = pd.DataFrame({"id": IDS, "generated_report": GEN_A, "reference": ["Impression text."] * 8,
                         "findings": REFS})
    rep = evaluate_systems({"a": both}, protocol="rexrank", use_meteor=False, n_boot=0)
    assert list(rep.frames["a"]["reference"]) == REFS
    impression_only = pd.DataFrame({"id": IDS, "generated_report": GEN_A, "impression": REFS})
    with pytest.raises(EvaluationInputError, match="scores the findings section, but the reference column is "
                                                   "'impression'"):
        evaluate_systems({"a": impression_only}, protocol="llava-rad", use_meteor=False, n_boot=0)
    # a run whose run.json says its references are impressions
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"id": IDS, "generated_report": GEN_A, "reference": REFS, "status": ["ok"] * 8}).to_csv(
        run / "reports.csv", index=False)
    (run / "run.json").write_text(json.dumps({"config": {"data": {"reference": "impression"}}}))
    assert evaluate.main([str(run / "reports.csv"), "--protocol", "rexrank", "--n-boot", "0"]) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("evaluate.py: error:")]
    assert len(errors) == 1 and str(run / "run.json") in errors[0] and "data.reference: findings" in errors[0]
    (run / "run.json").write_text(json.dumps({"config": {"data": {"reference": "findings"}}}))
    assert evaluate.main([str(run / "reports.csv"), "--protocol", "rexrank", "--n-boot", "0"]) == 0


@pytest.mark.parametrize("flags, named", [(["--compat", "radeval"], "--compat"),
                                          (["--model-metrics", "bertscore"], "--model-metrics"),
                                          (["--uncertain", "negative"], "--uncertain")])
def test_a_protocol_takes_no_other_definitions(tmp_path, capsys, flags, named):
    csv = tmp_path / "a.csv"
    _frames()["a"].to_csv(csv, index=False)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([str(csv), "--protocol", "llava-rad", *flags])
    assert exit_.value.code == 2
    assert f"--protocol llava-rad fixes the metrics and their definitions; drop {named}" in capsys.readouterr().err


def test_unavailable_scorers_stop_unless_skipped(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(model_based, "check_available",
                        lambda names: {n: f"weights missing; to fetch them: python evaluate.py --fetch-metric-models {n}"
                                       for n in names})
    csv = tmp_path / "a.csv"
    _frames()["a"].to_csv(csv, index=False)
    assert evaluate.main([str(csv), "--protocol", "llava-rad", "--n-boot", "0"]) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("evaluate.py: error:")]
    assert len(errors) == 1 and "--fetch-metric-models radgraph_partial" in errors[0]
    assert errors[0].endswith("(everything the protocol uses: python evaluate.py --fetch-metric-models llava-rad; "
                              "or --skip-unavailable)")
    assert "chexbert" not in errors[0]  # CheXbert is optional in this protocol: never a reason to stop
    assert evaluate.main([str(csv), "--protocol", "llava-rad", "--n-boot", "0", "--skip-unavailable",
                          "--output-dir", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out" / "summary.json").read_text())["systems"]["a"]
    assert set(out["unavailable"]) == {"labels_chexbert", "f1radgraph"}
    assert "rules_micro_f1_14" in out["labels_rules"]["metrics"] and "bleu_4" in out["published"]


def test_fetch_metric_models_takes_a_protocol(monkeypatch, capsys):
    got = []
    monkeypatch.setattr(model_based, "fetch", lambda names: got.append(list(names)) or ["/cache/x"])
    assert evaluate.main(["--fetch-metric-models", "rexrank"]) == 0
    assert got[-1] == ["bertscore_distilroberta", "sembscore", "radgraph_combined", "ratescore", "green"]
    assert evaluate.main(["--fetch-metric-models", "llava-rad,bertscore"]) == 0
    assert got[-1] == ["chexbert", "radgraph_partial", "bertscore"]
    assert evaluate.main(["--fetch-metric-models", "cider"]) == 2
    assert "or a protocol: llava-rad, rexrank, rexrank-fi" in capsys.readouterr().err


def test_protocol_outputs_and_page(scorers, tmp_path, capsys):
    frames = _frames()
    paths = []
    for name, df in frames.items():
        paths.append(tmp_path / f"{name}.csv")
        df.to_csv(paths[-1], index=False)
    out = tmp_path / "out"
    assert evaluate.main([f"a={paths[0]}", f"b={paths[1]}", "--protocol", "llava-rad", "--output-dir", str(out),
                          "--ar-trials", "200", "--html"]) == 0
    md = (out / "summary.md").read_text()
    assert "Protocol: llava-rad" in md and "## As the published code reports them" in md
    assert "CheXpert-label F1, our rule labeler" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert 'id="published"' in page and "proto:llava-rad" in page
    rows = pd.read_csv(out / "summary.csv")
    assert {"rules_macro_f1_14_plus", "chexbert_micro_f1_5", "f1_radgraph"} <= set(rows["metric"])


def test_a_manifest_runs_reference_is_its_column_not_data_reference(tmp_path):
    """A manifest run's run.json still carries data.reference (a default nobody set): it decides nothing, so a
    findings protocol does not refuse the run for it; another layout's recorded section is taken at its word."""
    from cxrgen.evaluation.common import SOURCE_FILE
    from cxrgen.evaluation.sections import recorded_section

    run = tmp_path / "run"
    run.mkdir()
    frame = pd.DataFrame({SOURCE_FILE: [str(run / "reports.csv")]})
    for fmt, expected in (("manifest", None), ("iu_xray_kaggle", (str(run / "run.json"), "impression"))):
        (run / "run.json").write_text(json.dumps({"config": {"data": {"format": fmt, "reference": "impression"}}}))
        assert recorded_section(frame) == expected
