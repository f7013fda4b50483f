"""evaluate.py on inputs as users have them: malformed files, other column names, where the
outputs of a comparison go, the results page's place, and images that cannot be found."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import evaluate

ROOT = Path(__file__).resolve().parents[1]
REFS = ["The heart is normal in size.", "Small left pleural effusion.", "No pneumothorax.", "Lungs are clear."]
GENS = ["Heart normal.", "Left pleural effusion.", "No pneumothorax.", "Clear lungs."]
HEADER = "id,generated_report,reference"


def _run(capsys, *argv):
    rc = evaluate.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


GOOD_ROWS = "".join(f'{i},"{g}","{r}"\n' for i, (g, r) in enumerate(zip(GENS, REFS)))


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty", b"", "the file is empty"),
        ("header only", f"{HEADER}\n".encode(), "a header and no rows; nothing to score"),
        ("binary", bytes(range(256)) * 4, "not a CSV text file"),
        ("latin-1", f"{HEADER}\n1,caf\xe9,x\n".encode("latin-1"), "line 2: not valid UTF-8"),
        ("unclosed quote", f'{HEADER}\n0,a,b\n1,"never closed,b\n2,c,d\n'.encode(), "line 3"),
        ("duplicate ids", f"{HEADER}\n0,a b,c d\n1,e,f\n0,g,h\n".encode(), "duplicate ids: 0"),
        ("numbers", f"{HEADER}\n0,1,The heart.\n1,2.5,Lungs.\n2,,Clear.\n".encode(), "holds only numbers"),
        ("empty ids", f"{HEADER}\n0,a,b\n,c,d\n".encode(), "empty id at"),
        ("no reference column", b"id,generated_report,comment\n0,a,b\n", "no column for the reference report"),
    ],
)
def test_malformed_input_is_one_line(tmp_path, capsys, name, data, message):
    path = tmp_path / "r.csv"
    path.write_bytes(data)
    rc, out, err = _run(capsys, path, "--no-clinical", "--n-boot", "0")
    assert rc == 2, (name, err)
    line = _one_error_line(err)
    assert message in line and str(path) in line, (name, line)


def test_header_only_in_a_fresh_process(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(f"{HEADER}\n")
    done = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), str(path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("a header and no rows; nothing to score")


def test_bom_crlf_and_blank_cells_score_correctly(tmp_path, capsys):
    plain = tmp_path / "plain.csv"
    plain.write_text(HEADER + "\n" + GOOD_ROWS + '4,,"Heart size normal."\n5,"Text.",\n')
    messy = tmp_path / "messy.csv"
    messy.write_bytes(b"\xef\xbb\xbf" + plain.read_text().replace("\n", "\r\n").encode())
    results = {}
    for path in (plain, messy):  # both write beside their CSV: the second replaces the first on purpose
        rc, _, err = _run(capsys, path, "--no-clinical", "--n-boot", "0", "--force")
        assert rc == 0, err
        results[path.stem] = json.loads((tmp_path / "summary.json").read_text())["systems"][path.stem]
    assert results["plain"]["metrics"] == results["messy"]["metrics"]
    s = results["messy"]
    assert (s["n_rows"], s["n"], s["n_empty"], s["n_empty_reference"]) == (6, 5, 1, 1)


def test_the_replaced_benchmarks_columns_and_other_names(tmp_path, capsys):
    bench = tmp_path / "bench.csv"
    pd.DataFrame({"uid": range(4), "image_path": [f"img{i}.png" for i in range(4)], "generated_report": GENS,
                  "ground_truth_report": REFS}).to_csv(bench, index=False)
    rc, _, err = _run(capsys, bench, "--no-clinical", "--n-boot", "0")
    assert rc == 0, err
    assert "columns: id <- 'uid', generated report <- 'generated_report', reference <- 'ground_truth_report'" in err
    ref = json.loads((tmp_path / "summary.json").read_text())["systems"]["bench"]["metrics"]
    other = tmp_path / "other.csv"
    pd.DataFrame({"Study ID": range(4), "prediction": GENS, "target": REFS, "findings": ["x"] * 4}).to_csv(other, index=False)
    rc, _, err = _run(capsys, other, "--no-clinical", "--n-boot", "0", "--force")
    assert rc == 0, err
    assert "id <- 'Study ID', generated report <- 'prediction', reference <- 'target'" in err
    assert json.loads((tmp_path / "summary.json").read_text())["systems"]["other"]["metrics"] == ref
    # a name given on the command line wins over the common names
    rc, _, err = _run(capsys, other, "--ref-col", "findings", "--no-clinical", "--n-boot", "0", "--force")
    assert rc == 0 and "reference <- 'findings'" in err
    assert json.loads((tmp_path / "summary.json").read_text())["systems"]["other"]["metrics"] != ref


def _run_folder(root: Path, name: str, gens) -> Path:
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    pd.DataFrame({"id": range(4), "generated_report": gens, "reference": REFS,
                  "image_path": [f"images/{i}.png" for i in range(4)]}).to_csv(run / "reports.csv", index=False)
    return run / "reports.csv"


def test_a_comparison_writes_into_its_own_folder_with_the_page_inside(tmp_path, capsys):
    a = _run_folder(tmp_path, "model-a", GENS)
    b = _run_folder(tmp_path, "model-b", REFS)
    images = a.parent / "images"
    images.mkdir()
    for i in (0, 2):  # two of the four images exist, relative to the CSV's folder
        Image.fromarray(np.full((8, 8), 60 * i, dtype=np.uint8)).save(images / f"{i}.png")
    rc, out, err = _run(capsys, a, b, "--no-clinical", "--n-boot", "0", "--html")
    assert rc == 0, err
    cmp = tmp_path / "runs" / "model-a-vs-model-b"
    assert (cmp / "summary.json").is_file() and (cmp / "report.html").is_file()
    for run in (a.parent, b.parent):  # nothing written into the run folders
        assert sorted(p.name for p in run.iterdir()) in (["images", "reports.csv", "run.json"], ["reports.csv", "run.json"])
    assert "model-a: 2 of 4 images not found (e.g. images/1.png, images/3.png)" in out
    assert "model-b: 4 of 4 images not found" in out
    page = (cmp / "report.html").read_text()
    assert page.count("data:image/jpeg;base64") >= 2  # the images that exist are embedded
    # --html with a path writes there
    rc, _, err = _run(capsys, a, b, "--no-clinical", "--n-boot", "0", "--html", tmp_path / "pages" / "x.html")
    assert rc == 0 and (tmp_path / "pages" / "x.html").is_file()


def test_an_evaluation_does_not_replace_another_ones_outputs_without_saying_so(tmp_path, capsys):
    """Two results files in one folder both write beside themselves: the second evaluation stops, naming the
    folder and what it holds; the same evaluation again, or --force, replaces the outputs (and says so)."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for path in (a, b):
        pd.DataFrame({"id": range(4), "generated_report": GENS, "reference": REFS}).to_csv(path, index=False)
    assert _run(capsys, a, "--no-clinical", "--n-boot", "0")[0] == 0
    first = (tmp_path / "summary.json").read_text()
    rc, _, err = _run(capsys, b, "--no-clinical", "--n-boot", "0")
    assert rc == 2 and f"{tmp_path} holds the outputs of another evaluation (a)" in err and "--force" in err
    assert (tmp_path / "summary.json").read_text() == first  # untouched
    rc, _, err = _run(capsys, a, "--no-clinical", "--n-boot", "10")  # other settings: another evaluation too
    assert rc == 2
    assert _run(capsys, a, "--no-clinical", "--n-boot", "0")[0] == 0  # the same one again
    rc, out, _ = _run(capsys, b, "--no-clinical", "--n-boot", "0", "--force")
    assert rc == 0 and "replaced another evaluation's outputs" in out
    assert list(json.loads((tmp_path / "summary.json").read_text())["systems"]) == ["b"]


def test_each_system_is_named_after_its_model_and_shown_with_what_it_was_made_with(tmp_path, capsys, tiny_dir):
    """Two runs with run.json (one real, one a copy whose run.json says another model, split and decoding):
    without NAME= each system is named after its model; summary.json, summary.md, the terminal and the page name
    per system the model, decoding, data and commit, the page holds each rendered prompt, the split difference is
    one warning line, and the tiny random checkpoint is called noise."""
    import shutil

    from cxrgen import runner
    from cxrgen.config import load_config
    from helpers import make_config, write_manifest

    cfg = make_config(tmp_path, tiny_dir, write_manifest(tmp_path, 4), "first", generation__max_new_tokens=6,
                      evaluation__clinical=False)
    assert runner.generate(load_config(cfg), progress=False) == 0
    first = tmp_path / "runs" / "first"
    second = tmp_path / "runs" / "second"
    shutil.copytree(first, second)
    run = json.loads((second / "run.json").read_text())
    run["config"]["model"]["name_or_path"] = "ExampleOrg/Other-Model"
    run["config"]["data"]["split"] = "test"
    run["config"]["generation"]["temperature"] = 0.7
    run["prompt"] = "<s>[INST] another prompt [/INST]"
    run["model"]["random_weights"] = False
    (second / "run.json").write_text(json.dumps(run))
    out_dir = tmp_path / "cmp"
    rc, out, err = _run(capsys, first / "reports.csv", second / "reports.csv", "--n-boot", "0", "--no-clinical",
                        "--output-dir", out_dir, "--html")
    assert rc == 0, err
    tiny_name = tiny_dir.name
    summary = json.loads((out_dir / "summary.json").read_text())
    assert list(summary["systems"]) == [tiny_name, "Other-Model"]
    origin = summary["systems"]["Other-Model"]["origin"]
    assert origin["prompt"] == "<s>[INST] another prompt [/INST]" and origin["data"]["split"] == "test"
    assert origin["decoding"]["temperature"] == 0.7 and origin["model"]["backend"] == "cxr_llava"
    assert summary["systems"][tiny_name]["origin"]["decoding"]["max_new_tokens"] == 6
    assert any("different data.split" in w and "Other-Model: test" in w for w in summary["warnings"])
    assert any(w.startswith(f"{tiny_name}: made with a tiny random checkpoint") for w in summary["warnings"])
    assert not any(w.startswith("Other-Model: made with") for w in summary["warnings"])
    md = (out_dir / "summary.md").read_text()
    assert f"model {tiny_dir} (cxr_llava, digest" in md and "greedy, max_new_tokens 6, batch 4" in md
    assert "model ExampleOrg/Other-Model (cxr_llava" in md and "temperature 0.7" in md
    assert "lengths: mean" in md and "stopped at the token limit" in out
    page = (out_dir / "report.html").read_text()
    assert 'id="origins"' in page and "another prompt" in page and "data manifest test" in page
