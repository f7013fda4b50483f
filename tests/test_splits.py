"""The IU X-ray (Kaggle layout) benchmark split, checked against scikit-learn's own train_test_split."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

import generate_cxr
from cxrgen import runner
from cxrgen.config import DataConfig, load_config
from cxrgen.datasets import DatasetError, MissingSplitError, load_studies
from cxrgen.datasets.splits import (
    PANDAS_NA_STRINGS,
    REQUIRED_COLUMNS,
    SplitFilesDifferError,
    benchmark_split,
    incomplete_rows,
    make_split,
    shuffle_split,
)

REPO = Path(__file__).resolve().parent.parent
IU_REPORTS = REPO / "tests" / "data" / "iu_reports"
SPLIT_NAMES = ("train", "val", "test")


def reference_split(reports_csv: Path) -> dict[str, pd.DataFrame]:
    """The benchmark's recipe, written the plain way with pandas and scikit-learn."""
    frame = pd.read_csv(reports_csv)
    frame = frame.dropna(subset=list(REQUIRED_COLUMNS))
    train, held_out = train_test_split(frame, test_size=0.2, random_state=42)
    val, test = train_test_split(held_out, test_size=0.5, random_state=42)
    return {"train": train, "val": val, "test": test}


def assert_same_as_reference(root: Path, reference: dict[str, pd.DataFrame], same_bytes: bool = True) -> None:
    for name in SPLIT_NAMES:
        path = root / f"indiana_{name}.csv"
        ours = pd.read_csv(path)
        expected = reference[name].reset_index(drop=True)
        pd.testing.assert_frame_equal(ours, expected, check_dtype=False)
        if same_bytes:
            assert path.read_text(encoding="utf-8") == reference[name].to_csv(index=False, lineterminator="\n")


def iu_row(uid, **kw) -> dict:
    row = dict(uid=uid, MeSH="normal", Problems="normal", image="Xray Chest PA and Lateral", indication="cough",
               comparison="None.", findings=f"Findings {uid}.", impression=f"Impression {uid}.")
    row.update(kw)
    return row


def write_reports(root: Path, rows: list[dict], columns=REQUIRED_COLUMNS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "indiana_reports.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- the split itself


def test_na_strings_are_exactly_what_pandas_reads_as_missing(tmp_path):
    try:
        from pandas._libs.parsers import STR_NA_VALUES
    except ImportError:  # private location; the behavioural check below still runs
        STR_NA_VALUES = PANDAS_NA_STRINGS
    assert PANDAS_NA_STRINGS == frozenset(STR_NA_VALUES)
    near_misses = [" NA", "NA ", "na", "NONE", "none", "None.", "nil", "0", "-", "XXXX", "N A", "'NA'"]
    cells = sorted(PANDAS_NA_STRINGS) + near_misses
    text = "a,b\n" + "".join(f'{i},"{c}"\n' for i, c in enumerate(cells))  # quoted: the quotes do not matter
    text += "".join(f"{i + len(cells)},{c}\n" for i, c in enumerate(cells) if "," not in c and '"' not in c)
    path = tmp_path / "cells.csv"
    path.write_text(text, encoding="utf-8")
    default = pd.read_csv(path)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    assert incomplete_rows(raw, ("b",)).tolist() == default["b"].isna().tolist()
    assert default["b"].isna().sum() == 2 * len(PANDAS_NA_STRINGS)


def test_shuffle_split_equals_scikit_learn_for_every_small_size_and_the_kaggle_size():
    for n in list(range(1, 80)) + [491, 492, 2459, 3851]:
        for test_size, seed in ((0.2, 42), (0.5, 42), (0.2, 0), (0.3, 7)):
            try:
                want_train, want_test = train_test_split(np.arange(n), test_size=test_size, random_state=seed)
            except ValueError:
                with pytest.raises(DatasetError, match="train part would be empty"):
                    shuffle_split(n, test_size, seed)
                continue
            train, test = shuffle_split(n, test_size, seed)
            assert train.tolist() == want_train.tolist() and test.tolist() == want_test.tolist(), (n, test_size)
            assert len(test) == math.ceil(test_size * n)


def test_benchmark_split_sizes_on_the_kaggle_count():
    parts = benchmark_split(2459)
    assert {name: len(idx) for name, idx in parts.items()} == {"train": 1967, "val": 246, "test": 246}
    joined = np.concatenate([parts["train"], parts["val"], parts["test"]])
    assert sorted(joined.tolist()) == list(range(2459))


MISSING = ["", "NA", "nan", "NaN", "None", "N/A", "null", "#N/A", "<NA>"]
NOT_MISSING = [" NA", "None.", "na", "NONE", "-", "XXXX"]


def synthetic_rows(n: int, seed: int, missing_uids: bool = False) -> list[dict]:
    rng = np.random.RandomState(seed)
    rows = []
    for uid in rng.permutation(np.arange(1, 3 * n + 1))[:n]:
        row = iu_row(int(uid))
        for column in REQUIRED_COLUMNS:
            if column == "uid" and not missing_uids:
                continue
            draw = rng.rand()
            if column == "uid":  # a uid is either missing or unique
                if draw < 0.04:
                    row[column] = MISSING[rng.randint(len(MISSING))]
                continue
            if draw < 0.04:
                row[column] = MISSING[rng.randint(len(MISSING))]
            elif draw < 0.07:
                row[column] = NOT_MISSING[rng.randint(len(NOT_MISSING))]
            elif draw < 0.09:
                row[column] = f'text, with "quotes"\nand a line break {uid}'
        rows.append(row)
    return rows


@pytest.mark.parametrize("n", [1, 2, 3, 6, 7, 10, 2459, 3000])
def test_make_split_equals_pandas_and_scikit_learn_on_synthetic_reports(tmp_path, n):
    root = tmp_path / "iu"
    rows = synthetic_rows(n, seed=n)
    reports = write_reports(root, rows)
    try:
        reference = reference_split(reports)
    except ValueError:  # scikit-learn refuses: too few complete rows
        with pytest.raises(DatasetError, match=r"indiana_reports.csv: \d+ complete report\(s\) are too few"):
            make_split(root)
        assert not list(root.glob("indiana_t*.csv")) and not (root / "indiana_val.csv").exists()
        return
    result = make_split(root)
    assert_same_as_reference(root, reference)
    complete = len(pd.read_csv(reports).dropna(subset=list(REQUIRED_COLUMNS)))
    assert result.counts == {
        "reports": n, "incomplete": n - complete, "kept": complete,
        "train": len(reference["train"]), "val": len(reference["val"]), "test": len(reference["test"]),
    }
    assert result.status == {name: "written" for name in SPLIT_NAMES}


def test_make_split_with_missing_uids_and_an_extra_column(tmp_path):
    root = tmp_path / "iu"
    rows = synthetic_rows(400, seed=1, missing_uids=True)
    for i, row in enumerate(rows):
        row["note"] = "NA" if i % 3 == 0 else f"note {i}"
    reports = write_reports(root, rows, columns=REQUIRED_COLUMNS + ("note",))
    reference = reference_split(reports)
    assert pd.read_csv(reports)["uid"].isna().any()  # the case under test
    make_split(root)
    # Same rows in the same order; the cells keep their text ("NA" in the extra column stays "NA").
    assert_same_as_reference(root, reference, same_bytes=False)
    raw = pd.read_csv(root / "indiana_train.csv", dtype=str, keep_default_na=False)
    assert list(raw.columns) == list(REQUIRED_COLUMNS) + ["note"]
    assert (raw["note"] == "NA").any()


def kaggle_rows_from_openi_xml(folder: Path) -> list[dict]:
    """indiana_reports.csv rows built from Open-i report XMLs (uid = IUXRId; a missing section is an empty cell)."""
    rows = []
    for path in sorted(folder.glob("*.xml"), key=lambda p: int(p.stem)):
        doc = ET.parse(path).getroot()
        sections = {el.get("Label"): " ".join((el.text or "").split()) for el in doc.iter("AbstractText")}
        majors = [" ".join((el.text or "").split()) for el in doc.iter("major")]
        captions = [" ".join((el.text or "").split()) for el in doc.iter("caption")]
        rows.append(dict(
            uid=int(doc.find("IUXRId").get("id")),
            MeSH=";".join(majors),
            Problems=";".join(dict.fromkeys(m.split("/")[0] for m in majors)),
            image=captions[0] if captions else "",
            indication=sections.get("INDICATION", ""),
            comparison=sections.get("COMPARISON", ""),
            findings=sections.get("FINDINGS", ""),
            impression=sections.get("IMPRESSION", ""),
        ))
    return rows


def test_make_split_on_the_bundled_iu_reports(tmp_path):
    rows = kaggle_rows_from_openi_xml(IU_REPORTS)
    assert len(rows) == 300
    root = tmp_path / "iu"
    reports = write_reports(root, rows)
    reference = reference_split(reports)
    result = make_split(root)
    assert_same_as_reference(root, reference)
    complete = [r for r in rows if all(str(r[c]) not in PANDAS_NA_STRINGS for c in REQUIRED_COLUMNS)]
    assert result.counts["kept"] == len(complete) and 0 < len(complete) < 300
    # A comparison of exactly "None" counts as missing, as it does for pandas' read_csv (pandas >= 2.0).
    none_comparison = [r["uid"] for r in rows if r["comparison"] == "None"]
    kept = set(pd.read_csv(root / "indiana_train.csv")["uid"]) | set(pd.read_csv(root / "indiana_test.csv")["uid"])
    assert none_comparison and not kept & set(none_comparison)
    assert result.counts["test"] == result.counts["val"] == math.ceil(0.2 * len(complete)) // 2


@pytest.mark.skipif(not os.environ.get("CXRGEN_IU_KAGGLE"), reason="set CXRGEN_IU_KAGGLE to a Kaggle IU X-ray folder")
def test_make_split_on_the_kaggle_download(tmp_path):
    """The Kaggle indiana_reports.csv (3,851 reports) gives the benchmark's 1,967 : 246 : 246."""
    reports = Path(os.environ["CXRGEN_IU_KAGGLE"]) / "indiana_reports.csv"
    root = tmp_path / "iu"
    root.mkdir()
    shutil.copy(reports, root / "indiana_reports.csv")
    result = make_split(root)
    assert result.counts == {"reports": 3851, "incomplete": 1392, "kept": 2459, "train": 1967, "val": 246, "test": 246}
    assert_same_as_reference(root, reference_split(reports))


# ---------------------------------------------------------------- bad input, existing files


def test_duplicated_uids_are_rejected_naming_file_and_uids(tmp_path):
    root = tmp_path / "iu"
    rows = [iu_row(u) for u in (1, 2, 3, 2, 4, 5, 6, 7, 3, 8)]
    rows[3]["findings"] = ""  # still a repeated uid even though that row is incomplete
    write_reports(root, rows)
    with pytest.raises(DatasetError, match=r"^reports file .*indiana_reports.csv: uid\(s\) 2, 3 occur more than once$"):
        make_split(root)
    assert not (root / "indiana_train.csv").exists()


def test_missing_or_bad_reports_file(tmp_path):
    with pytest.raises(DatasetError, match="is not an existing folder"):
        make_split(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"indiana_reports.csv not found"):
        make_split(tmp_path / "empty")
    write_reports(tmp_path / "nocol", [iu_row(1)], columns=("uid", "findings", "impression"))
    with pytest.raises(DatasetError, match=r"lacks column\(s\) MeSH, Problems, image, indication, comparison"):
        make_split(tmp_path / "nocol")


def test_existing_files_identical_differing_and_force(tmp_path):
    root = tmp_path / "iu"
    write_reports(root, [iu_row(u) for u in range(1, 31)])
    first = make_split(root)
    assert first.counts["train"] == 24 and first.counts["val"] == 3 and first.counts["test"] == 3
    files = {name: root / f"indiana_{name}.csv" for name in SPLIT_NAMES}
    original = {name: path.read_bytes() for name, path in files.items()}

    # Same rows written differently (every cell quoted): left as it is.
    requoted = pd.read_csv(files["test"], dtype=str, keep_default_na=False)
    requoted.to_csv(files["test"], index=False, quoting=csv.QUOTE_ALL)
    requoted_bytes = files["test"].read_bytes()
    again = make_split(root)
    assert again.status == {"train": "unchanged", "val": "unchanged", "test": "unchanged"}
    assert files["test"].read_bytes() == requoted_bytes

    # A differing val file is refused, by name, and nothing is written.
    changed = pd.read_csv(files["val"], dtype=str, keep_default_na=False).iloc[::-1]
    changed.to_csv(files["val"], index=False)
    changed_bytes = files["val"].read_bytes()
    files["train"].unlink()
    with pytest.raises(SplitFilesDifferError) as err:
        make_split(root)
    assert err.value.paths == (files["val"],)
    assert str(files["val"]) in str(err.value) and "indiana_test.csv" not in str(err.value)
    assert files["val"].read_bytes() == changed_bytes and not files["train"].exists()

    forced = make_split(root, force=True)
    assert forced.status == {"train": "written", "val": "replaced", "test": "unchanged"}
    assert files["val"].read_bytes() == original["val"] and files["train"].read_bytes() == original["train"]
    assert not list(root.glob(".*.tmp"))


# ---------------------------------------------------------------- the command line and the loader


def make_kaggle_folder(root: Path, n: int = 40) -> Path:
    rows = [iu_row(u) for u in range(1, n + 1)]
    rows[4]["indication"] = ""  # incomplete: not in any split
    rows[9]["comparison"] = "NA"
    write_reports(root, rows)
    projections = [dict(uid=u, filename=f"{u}_IM-{u:04d}-1001.dcm.png", projection="Frontal") for u in range(1, n + 1)]
    pd.DataFrame(projections).to_csv(root / "indiana_projections.csv", index=False)
    images = root / "images" / "images_normalized"
    images.mkdir(parents=True)
    for p in projections:
        (images / p["filename"]).write_bytes(b"")
    return root


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = generate_cxr.main(["--config", str(REPO / "config.yaml"), *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_make_split_end_to_end(tmp_path, capsys):
    root = make_kaggle_folder(tmp_path / "iu")
    common = ["--set", f"data.root={root}", "--set", f"output.dir={tmp_path / 'runs'}"]

    rc, _, err = run_cli(capsys, *common)
    assert rc == runner.EXIT_USAGE
    assert "indiana_test.csv" in err and "python generate_cxr.py --make-split --set data.root=" in err
    assert len(err.strip().splitlines()) == 1

    rc, out, _ = run_cli(capsys, "--make-split", *common)
    assert rc == runner.EXIT_OK
    assert "40 reports, 2 left out for a missing value; 38 split into train 30, val 4, test 4" in out
    assert out.count(", written") == 3
    reference = reference_split(root / "indiana_reports.csv")
    assert_same_as_reference(root, reference)

    rc, out, _ = run_cli(capsys, "--make-split", *common)
    assert rc == runner.EXIT_OK and out.count("already there with these rows") == 3

    pd.read_csv(root / "indiana_val.csv").head(2).to_csv(root / "indiana_val.csv", index=False)
    rc, _, err = run_cli(capsys, "--make-split", *common)
    assert rc == runner.EXIT_USAGE and "indiana_val.csv" in err and "--force replaces them" in err
    rc, out, _ = run_cli(capsys, "--make-split", "--force", *common)
    assert rc == runner.EXIT_OK and "indiana_val.csv: 4 studies, replaced" in out

    rc, _, err = run_cli(capsys, "--force", *common)
    assert rc == runner.EXIT_USAGE and "--force only goes with --make-split" in err
    rc, _, err = run_cli(capsys, "--make-split", "--set", "data.format=openi", *common)
    assert rc == runner.EXIT_USAGE and "needs data.format iu_xray_kaggle" in err

    # A run then takes the test split in the split file's order: --limit 3 is its first three rows.
    cfg = load_config(str(REPO / "config.yaml"), [f"data.root={root}"])
    selection = runner.select_studies(cfg, 3)
    assert [s.id for s in selection.studies] == [str(u) for u in reference["test"]["uid"][:3]]


def test_missing_root_names_the_expected_files(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "--set", "data.root=null")
    assert rc == runner.EXIT_USAGE
    assert re.search(r"data.root must name the dataset folder when data.format is iu_xray_kaggle: .*"
                     r"indiana_reports.csv, indiana_projections.csv and images/ \(README.md", err)
    rc, _, err = run_cli(capsys, "--make-split", "--set", f"data.root={tmp_path / 'absent'}")
    assert rc == runner.EXIT_USAGE and "is not an existing folder" in err
    with pytest.raises(DatasetError, match=r"is not an existing folder .*indiana_reports.csv, indiana_projections"):
        load_studies(DataConfig(format="iu_xray_kaggle", root=str(tmp_path / "absent")))


def test_missing_split_error_carries_the_reports_file(tmp_path):
    root = make_kaggle_folder(tmp_path / "iu")
    with pytest.raises(MissingSplitError) as err:
        load_studies(DataConfig(format="iu_xray_kaggle", root=str(root), split="val"))
    assert err.value.path == root / "indiana_val.csv" and err.value.reports == root / "indiana_reports.csv"
    assert "--" not in str(err.value)  # the library names no command-line flag
