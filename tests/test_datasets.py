"""Dataset adapters: each layout on a small fixture written in tmp_path, plus the bundled demo manifest."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxrgen.config import DataConfig
from cxrgen.datasets import ADAPTERS, DatasetError, MissingSplitError, Selection, Study, load_studies, natural_key
from cxrgen.datasets.mimic_cxr import report_sections
from cxrgen.datasets.openi import image_key

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
IU_REPORTS = REPO / "tests" / "data" / "iu_reports"


def ids(selection: Selection) -> list[str]:
    return [s.id for s in selection.studies]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def test_formats_and_natural_order():
    assert tuple(ADAPTERS) == ("iu_xray_kaggle", "openi", "mimic_cxr", "manifest")
    ordered = sorted(["CXR10", "CXR2", "CXR1", "s5/b", "s5/a"], key=natural_key)
    assert ordered == ["CXR1", "CXR2", "CXR10", "s5/a", "s5/b"]
    assert sorted(["10", "9", "100", "09"], key=natural_key) == ["09", "9", "10", "100"]


@pytest.mark.parametrize(
    "field, value, key",
    [("format", "chexpert", "data.format"), ("views", "lateral", "data.views"),
     ("reference", "report", "data.reference"), ("split", "dev", "data.split")],
)
def test_unknown_option_names_the_key(tmp_path, field, value, key):
    cfg = DataConfig(format="manifest", manifest=str(tmp_path / "m.csv"))
    setattr(cfg, field, value)
    with pytest.raises(DatasetError, match=re.escape(key)):
        load_studies(cfg)


# ---------------------------------------------------------------- iu_xray_kaggle

IU_REPORTS_ROWS = [
    # uid 1: frontal + lateral; whitespace to collapse
    dict(uid=1, findings="The heart is normal.\n   Lungs  clear.", impression="No acute disease."),
    dict(uid=2, findings="Lateral only study.", impression="Fine."),  # lateral only
    dict(uid=3, findings="", impression="Normal."),  # empty findings
    dict(uid=4, findings="No image rows.", impression="x"),  # no projection rows
    dict(uid=5, findings="Two frontal images.", impression="Stable."),
    dict(uid=10, findings=" XXXX opacity in the right base. ", impression=""),
    dict(uid=11, findings="Training study.", impression="Train."),
]
IU_PROJECTIONS = [
    (1, "1_IM-0001-4001.dcm.png", "Frontal"),
    (1, "1_IM-0001-3001.dcm.png", "Lateral"),
    (2, "2_IM-0652-2001.dcm.png", "Lateral"),
    (3, "3_IM-1384-1001.dcm.png", "Frontal"),
    (5, "5_IM-0003-2001.dcm.png", "Frontal"),
    (5, "5_IM-0003-1001.dcm.png", "Frontal"),
    (10, "10_IM-0002-1001.dcm.png", "Frontal"),
    (11, "11_IM-0067-1001.dcm.png", "Frontal"),
]


def make_iu_kaggle(root: Path, image_dir: str = "images", gz: bool = False) -> Path:
    columns = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
    rows = [dict(MeSH="normal", Problems="normal", image="Xray Chest PA and Lateral", indication="cough",
                 comparison="None.", **r) for r in IU_REPORTS_ROWS]
    suffix = ".csv.gz" if gz else ".csv"
    write_csv(root / f"indiana_reports{suffix}", rows, columns)
    write_csv(root / f"indiana_projections{suffix}",
              [dict(uid=u, filename=f, projection=p) for u, f, p in IU_PROJECTIONS])
    for _, filename, _ in IU_PROJECTIONS:
        touch(root / image_dir / filename)
    test_rows = [r for r in rows if r["uid"] != 11] + [dict(rows[0], uid=99)]
    write_csv(root / "indiana_test.csv", test_rows, columns)
    write_csv(root / "indiana_train.csv", [r for r in rows if r["uid"] == 11], columns)
    write_csv(root / "indiana_val.csv", [r for r in rows if r["uid"] == 4], columns)
    return root


def iu_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(format="iu_xray_kaggle", root=str(root), **{"reference": "findings", **kw})


def test_iu_kaggle_frontal_findings_test_split(tmp_path):
    root = make_iu_kaggle(tmp_path / "iu")
    sel = load_studies(iu_cfg(root))
    assert ids(sel) == ["1", "5", "10"]  # natural order: 5 before 10
    by_id = {s.id: s for s in sel.studies}
    assert by_id["1"].reference == "The heart is normal. Lungs clear."
    assert by_id["10"].reference == "XXXX opacity in the right base."
    assert by_id["1"].image_paths == (str(root / "images" / "1_IM-0001-4001.dcm.png"),)
    # two frontal images: the tie is broken by image id order, not by file order in the CSV
    assert by_id["5"].image_paths == (str(root / "images" / "5_IM-0003-1001.dcm.png"),)
    assert by_id["1"].metadata["view"] == "Frontal"
    assert by_id["1"].metadata["study_id"] == "1"
    assert by_id["1"].metadata["split"] == "test"
    assert by_id["1"].metadata["impression"] == "No acute disease."
    assert by_id["1"].metadata["mesh"] == "normal"
    assert sel.counts == {
        "total": 7, "not_in_split": 1, "skipped_missing_split": 1, "skipped_no_image": 1,
        "skipped_no_frontal": 1, "skipped_empty_reference": 1, "selected_studies": 3, "selected": 3,
    }


def test_iu_kaggle_studies_come_in_split_file_order(tmp_path):
    root = make_iu_kaggle(tmp_path / "iu")
    order = [10, 99, 5, 3, 2, 1, 4]  # 99 is not in indiana_reports.csv
    write_csv(root / "indiana_test.csv", [dict(uid=u, findings="ignored") for u in order])
    sel = load_studies(iu_cfg(root))
    assert ids(sel) == ["10", "5", "1"]
    assert sel.studies[0].reference == "XXXX opacity in the right base."  # text from indiana_reports.csv
    every_image = load_studies(iu_cfg(root, views="all"))
    assert ids(every_image) == [  # studies in split order, each study's images in image-id order
        "10/10_IM-0002-1001.dcm.png", "5/5_IM-0003-1001.dcm.png", "5/5_IM-0003-2001.dcm.png",
        "2/2_IM-0652-2001.dcm.png", "1/1_IM-0001-3001.dcm.png", "1/1_IM-0001-4001.dcm.png",
    ]
    # Without a split file the order is the natural order of the uids.
    assert ids(load_studies(iu_cfg(root, split="all"))) == ["1", "5", "10", "11"]


def test_iu_kaggle_views_all_gives_one_row_per_image(tmp_path):
    root = make_iu_kaggle(tmp_path / "iu")
    sel = load_studies(iu_cfg(root, views="all"))
    assert ids(sel) == [
        "1/1_IM-0001-3001.dcm.png", "1/1_IM-0001-4001.dcm.png", "2/2_IM-0652-2001.dcm.png",
        "5/5_IM-0003-1001.dcm.png", "5/5_IM-0003-2001.dcm.png", "10/10_IM-0002-1001.dcm.png",
    ]
    views = [s.metadata["view"] for s in sel.studies]
    assert views == ["Lateral", "Frontal", "Lateral", "Frontal", "Frontal", "Frontal"]
    assert all(len(s.image_paths) == 1 for s in sel.studies)
    assert sel.counts["selected_studies"] == 4 and sel.counts["selected"] == 6
    assert sel.counts["skipped_no_frontal"] == 0


def test_iu_kaggle_reference_modes_and_split_all(tmp_path):
    root = make_iu_kaggle(tmp_path / "iu")
    impression = load_studies(iu_cfg(root, reference="impression", split="all"))
    assert ids(impression) == ["1", "3", "5", "11"]  # 10 has no impression
    assert impression.studies[1].reference == "Normal."
    both = load_studies(iu_cfg(root, reference="findings+impression", split="all"))
    assert ids(both) == ["1", "3", "5", "10", "11"]
    assert both.studies[0].reference == "The heart is normal. Lungs clear. No acute disease."
    assert both.studies[1].reference == "Normal."  # empty findings left out, not a leading space
    assert both.counts["not_in_split"] == 0 and both.counts["total"] == 7
    assert both.studies[0].metadata["split"] is None


def test_iu_kaggle_gzip_and_kaggle_image_folder(tmp_path):
    plain = load_studies(iu_cfg(make_iu_kaggle(tmp_path / "a")))
    root = make_iu_kaggle(tmp_path / "b", image_dir="images/images_normalized", gz=True)
    packed = load_studies(iu_cfg(root))
    assert ids(packed) == ids(plain)
    assert [s.reference for s in packed.studies] == [s.reference for s in plain.studies]
    assert packed.studies[0].image_paths == (str(root / "images" / "images_normalized" / "1_IM-0001-4001.dcm.png"),)


def test_iu_kaggle_val_split_and_empty_selection(tmp_path):
    root = make_iu_kaggle(tmp_path / "iu")
    with pytest.raises(DatasetError, match=r"no studies selected .*split=val.*skipped_no_image=1"):
        load_studies(iu_cfg(root, split="validate"))


def test_iu_kaggle_bad_input(tmp_path):
    with pytest.raises(DatasetError, match="data.root .*missing.* is not an existing folder"):
        load_studies(iu_cfg(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="data.root is required"):
        load_studies(DataConfig(format="iu_xray_kaggle", root=None))

    root = make_iu_kaggle(tmp_path / "nosplit")
    for name in ("indiana_test.csv", "indiana_train.csv", "indiana_val.csv"):
        (root / name).unlink()
    with pytest.raises(DatasetError) as err:
        load_studies(iu_cfg(root))
    message = str(err.value)
    assert "indiana_train.csv" in message and "indiana_val.csv" in message and "indiana_test.csv" in message
    assert "data.split: all" in message
    assert isinstance(err.value, MissingSplitError) and err.value.reports == root / "indiana_reports.csv"
    assert ids(load_studies(iu_cfg(root, split="all"))) == ["1", "5", "10", "11"]

    root = make_iu_kaggle(tmp_path / "badsplit")
    write_csv(root / "indiana_test.csv", [dict(id=1)])
    with pytest.raises(DatasetError, match=r"split file .*indiana_test.csv lacks column\(s\) uid"):
        load_studies(iu_cfg(root))

    root = make_iu_kaggle(tmp_path / "nocol")
    write_csv(root / "indiana_reports.csv", [dict(uid=1, findings="a")])
    with pytest.raises(DatasetError, match=r"indiana_reports.csv lacks column\(s\) impression"):
        load_studies(iu_cfg(root))

    root = make_iu_kaggle(tmp_path / "noproj")
    (root / "indiana_projections.csv").unlink()
    with pytest.raises(DatasetError, match="indiana_projections.csv not found"):
        load_studies(iu_cfg(root))

    root = make_iu_kaggle(tmp_path / "dup")
    write_csv(root / "indiana_reports.csv", [dict(uid=1, findings="a", impression="b")] * 2)
    with pytest.raises(DatasetError, match=r"uid\(s\) 1 occur more than once"):
        load_studies(iu_cfg(root))


# ---------------------------------------------------------------- openi

# Views of the demo images as recorded in demo/SOURCES.md, keyed the Kaggle way (uid, filename).
OPENI_PROJECTIONS = [
    (7, "7_IM-2263-1001.dcm.png", "Frontal"),
    (7, "7_IM-2263-2001.dcm.png", "Lateral"),
    (3, "3_IM-1384-1001.dcm.png", "Frontal"),
    (3, "3_IM-1384-2001.dcm.png", "Lateral"),
    (303, "303_IM-1404-1001.dcm.png", "Frontal"),
    # 1900 deliberately swapped: the view must come from this table, never from the "-1001" name
    (1900, "1900_IM-0584-1001.dcm.png", "Lateral"),
    (1900, "1900_IM-0584-2001.dcm.png", "Frontal"),
]
CXR7_FINDINGS = ("The cardiac contours are normal. XXXX basilar atelectasis. The lungs are clear. "
                 "Thoracic spondylosis. Lower cervical XXXX arthritis.")
CXR7_IMPRESSION = "Basilar atelectasis. No confluent lobar consolidation or pleural effusion."

NO_IMAGE_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR5000"/><IUXRId id="5000"/>
<MedlineCitation><Article><Abstract>
<AbstractText Label="FINDINGS">Lungs are clear.</AbstractText>
<AbstractText Label="IMPRESSION">Normal chest.</AbstractText>
</Abstract></Article></MedlineCitation></eCitation>
"""


def make_openi(root: Path, projections: bool = True) -> Path:
    xml_dir = root / "ecgen-radiology"
    xml_dir.mkdir(parents=True)
    for number in (7, 1900, 3, 303):
        shutil.copy(DEMO / "reports" / f"{number}.xml", xml_dir / f"{number}.xml")
    (xml_dir / "5000.xml").write_text(NO_IMAGE_XML, encoding="utf-8")
    (root / "NLMCXR_png").mkdir()
    if projections:
        write_csv(root / "indiana_projections.csv",
                  [dict(uid=u, filename=f, projection=p) for u, f, p in OPENI_PROJECTIONS])
    return root


def openi_cfg(root: Path, **kw) -> DataConfig:
    kw.setdefault("split", "all")
    return DataConfig(format="openi", root=str(root), **{"reference": "findings", **kw})


def test_openi_image_key():
    assert image_key("7_IM-2263-1001.dcm.png") == "IM-2263-1001"
    assert image_key("CXR7_IM-2263-1001.png") == "IM-2263-1001"
    assert image_key("CXR7_IM-2263-1001") == "IM-2263-1001"
    assert image_key("/x/CXR1_1_IM-0001-4001.PNG") == "IM-0001-4001"
    assert image_key("1021_IM-0017-1001-0001.dcm.png") == "IM-0017-1001-0001"


def test_openi_frontal_views_come_from_projection_table(tmp_path):
    root = make_openi(tmp_path / "openi")
    sel = load_studies(openi_cfg(root))
    assert ids(sel) == ["CXR7", "CXR303", "CXR1900"]  # CXR3 has no findings
    by_id = {s.id: s for s in sel.studies}
    assert by_id["CXR7"].image_paths == (str(root / "NLMCXR_png" / "CXR7_IM-2263-1001.png"),)
    assert by_id["CXR1900"].image_paths == (str(root / "NLMCXR_png" / "CXR1900_IM-0584-2001.png"),)
    assert by_id["CXR7"].reference == CXR7_FINDINGS
    assert by_id["CXR7"].metadata["impression"] == CXR7_IMPRESSION
    assert by_id["CXR7"].metadata["uid"] == "7"
    assert by_id["CXR7"].metadata["mesh"] == [
        "Pulmonary Atelectasis/base", "Spondylosis/thoracic vertebrae", "Arthritis/cervical vertebrae"]
    assert by_id["CXR7"].metadata["view"] == "Frontal"
    assert sel.counts["total"] == 5
    assert sel.counts["skipped_no_image"] == 1  # 5000.xml
    assert sel.counts["skipped_empty_reference"] == 1  # CXR3
    assert sel.counts["images_without_view"] == 0


def test_openi_projections_file_elsewhere_and_unmatched_images(tmp_path):
    root = make_openi(tmp_path / "openi", projections=False)
    table = write_csv(tmp_path / "proj.csv",
                      [dict(uid=7, filename="CXR7_IM-2263-2001.png", projection="Lateral"),
                       dict(uid=303, filename="303_IM-1404-1001.dcm.png", projection="Frontal")])
    sel = load_studies(openi_cfg(root, projections=str(table), reference="impression"))
    assert ids(sel) == ["CXR303"]
    # CXR7 has a lateral and an image the table does not name; 1900 and 3 are not in it at all
    assert sel.counts["skipped_no_frontal"] == 3
    assert sel.counts["images_without_view"] == 5
    with pytest.raises(DatasetError, match="data.projections file .*nope.csv not found"):
        load_studies(openi_cfg(root, projections=str(tmp_path / "nope.csv")))


def test_openi_without_projections(tmp_path):
    root = make_openi(tmp_path / "openi", projections=False)
    with pytest.raises(DatasetError, match=r"no per-image view.*data.projections.*data.views: all"):
        load_studies(openi_cfg(root))
    sel = load_studies(openi_cfg(root, views="all", reference="findings+impression"))
    assert ids(sel) == ["CXR3/CXR3_IM-1384-1001", "CXR3/CXR3_IM-1384-2001", "CXR7/CXR7_IM-2263-1001",
                        "CXR7/CXR7_IM-2263-2001", "CXR303/CXR303_IM-1404-1001",
                        "CXR1900/CXR1900_IM-0584-1001", "CXR1900/CXR1900_IM-0584-2001"]
    assert all(s.metadata["view"] is None for s in sel.studies)
    assert sel.studies[2].reference == f"{CXR7_FINDINGS} {CXR7_IMPRESSION}"
    assert "images_without_view" not in sel.counts


def test_openi_split_file(tmp_path):
    root = make_openi(tmp_path / "openi")
    write_csv(root / "indiana_test.csv", [dict(uid=1900), dict(uid=7), dict(uid=42)])
    sel = load_studies(openi_cfg(root, split="test"))
    assert ids(sel) == ["CXR7", "CXR1900"]  # Open-i keeps the natural order of its ids, whatever the split file's
    assert sel.counts["not_in_split"] == 3 and sel.counts["skipped_missing_split"] == 1
    with pytest.raises(MissingSplitError, match="indiana_val.csv, which is missing") as err:
        load_studies(openi_cfg(root, split="val"))
    assert err.value.reports is None  # no indiana_reports.csv to make it from


def test_openi_bad_input(tmp_path):
    root = make_openi(tmp_path / "a")
    (root / "ecgen-radiology" / "9.xml").write_text("<eCitation><uId id='CXR9'/>", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"9.xml cannot be parsed as XML"):
        load_studies(openi_cfg(root))
    (root / "ecgen-radiology" / "9.xml").write_text("<eCitation><uId id='CXR9'/></eCitation>", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"9.xml has no <IUXRId"):
        load_studies(openi_cfg(root))
    root = make_openi(tmp_path / "b")
    shutil.rmtree(root / "NLMCXR_png")
    with pytest.raises(DatasetError, match="image folder .*NLMCXR_png not found"):
        load_studies(openi_cfg(root))
    root = make_openi(tmp_path / "c")
    write_csv(root / "indiana_projections.csv", [dict(uid=7, file="x", projection="Frontal")])
    with pytest.raises(DatasetError, match=r"indiana_projections.csv lacks column\(s\) filename"):
        load_studies(openi_cfg(root))
    with pytest.raises(DatasetError, match="report folder .*ecgen-radiology not found"):
        load_studies(openi_cfg(tmp_path))


def test_openi_on_bundled_reports_matches_an_independent_count(tmp_path):
    """300 real XMLs, views=all: rows = images of reports whose FINDINGS text is not blank (counted by regex)."""
    root = tmp_path / "openi"
    shutil.copytree(IU_REPORTS, root / "ecgen-radiology")
    (root / "NLMCXR_png").mkdir()
    expected_rows = expected_studies = 0
    for path in IU_REPORTS.glob("*.xml"):
        text = path.read_text(encoding="utf-8")
        findings = re.search(r'<AbstractText Label="FINDINGS">([^<]*)</AbstractText>', text)
        n_images = len(re.findall(r"<parentImage id=", text))
        if findings and findings.group(1).strip() and n_images:
            expected_rows += n_images
            expected_studies += 1
    sel = load_studies(openi_cfg(root, views="all"))
    assert sel.counts["total"] == 300
    assert sel.counts["selected"] == expected_rows == len(sel.studies)
    assert sel.counts["selected_studies"] == expected_studies
    assert len(set(ids(sel))) == len(sel.studies)
    assert ids(sel) == sorted(ids(sel), key=natural_key)
    assert sel.counts["total"] == sum(sel.counts[k] for k in (
        "not_in_split", "skipped_no_image", "skipped_no_frontal", "skipped_empty_reference", "selected_studies"))


# ---------------------------------------------------------------- mimic_cxr

REPORT_1 = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough

 FINDINGS:

 No focal consolidation.  Heart size
 is normal.

 IMPRESSION:  No acute cardiopulmonary process.
"""
REPORT_2 = """ FINAL REPORT
 IMPRESSION:
 Stable right
 pleural effusion.
"""
REPORT_3 = """ FINDINGS: Left basilar opacity.
 IMPRESSION: Pneumonia, XXXX.
"""
# (dicom_id, subject, study, ViewPosition, split)
MIMIC_IMAGES = [
    ("d1a", "10000001", "50000001", "LATERAL", "test"),
    ("d1b", "10000001", "50000001", "PA", "test"),
    ("d2a", "10000001", "50000002", "AP", "test"),
    ("d2b", "10000001", "50000002", "PA", "test"),
    ("d3a", "11000003", "50000003", "AP", "test"),
    ("d4a", "11000003", "50000004", "LATERAL", "test"),
    ("d5a", "11000003", "50000005", "PA", "test"),  # no report
    ("d6a", "12000006", "50000006", "PA", "train"),
    ("d8a", "13000008", "50000008", "PA", "validate"),
]
MIMIC_REPORTS = {"50000001": REPORT_1, "50000002": REPORT_2, "50000003": REPORT_3,
                 "50000004": REPORT_1, "50000006": REPORT_1, "50000008": REPORT_3}


def make_mimic(root: Path, gz: bool = False, reports_under: Path | None = None) -> Path:
    meta = [dict(dicom_id=d, subject_id=p, study_id=s, PerformedProcedureStepDescription="CHEST",
                 ViewPosition=v, Rows=3056, Columns=2544) for d, p, s, v, _ in MIMIC_IMAGES]
    split = [dict(dicom_id=d, study_id=s, subject_id=p, split=sp) for d, p, s, _, sp in MIMIC_IMAGES]
    split.append(dict(dicom_id="d7a", study_id="50000007", subject_id="14000007", split="test"))
    suffix = ".csv.gz" if gz else ".csv"
    write_csv(root / f"mimic-cxr-2.0.0-metadata{suffix}", meta)
    write_csv(root / f"mimic-cxr-2.0.0-split{suffix}", split)
    for d, p, s, _, _ in MIMIC_IMAGES:
        touch(root / "files" / f"p{p[:2]}" / f"p{p}" / f"s{s}" / f"{d}.jpg")
    report_root = (reports_under or root) / "files"
    for d, p, s, _, _ in MIMIC_IMAGES:
        if s in MIMIC_REPORTS:
            path = report_root / f"p{p[:2]}" / f"p{p}" / f"s{s}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(MIMIC_REPORTS[s], encoding="utf-8")
    return root


def mimic_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(format="mimic_cxr", root=str(root), **{"reference": "findings", **kw})


def test_mimic_report_sections():
    sections = report_sections(REPORT_1)
    assert sections == {"EXAMINATION": "CHEST (PA AND LAT)", "INDICATION": "___ with cough",
                        "FINDINGS": "No focal consolidation. Heart size is normal.",
                        "IMPRESSION": "No acute cardiopulmonary process."}
    assert report_sections("FINDINGS: a.\nIMPRESSION: b.\nFINDINGS: c.") == {"FINDINGS": "a. c.", "IMPRESSION": "b."}
    assert report_sections("no headers at all") == {}
    # a time of day or a lower-case phrase with a colon does not start a section
    assert report_sections("FINDINGS: seen at 10:30.\nHeart size: normal.") == {
        "FINDINGS": "seen at 10:30. Heart size: normal."}


def test_mimic_text_reports_frontal_findings(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    sel = load_studies(mimic_cfg(root))
    assert ids(sel) == ["s50000001", "s50000003"]
    first, third = sel.studies
    assert first.image_paths == (str(root / "files/p10/p10000001/s50000001/d1b.jpg"),)
    assert first.reference == "No focal consolidation. Heart size is normal."
    assert first.metadata["impression"] == "No acute cardiopulmonary process."
    assert first.metadata["subject_id"] == "10000001" and first.metadata["split"] == "test"
    assert first.metadata["view"] == "PA"
    assert third.metadata["view"] == "AP" and third.reference == "Left basilar opacity."
    assert sel.counts == {
        "total": 7, "not_in_split": 2, "skipped_missing_split": 1, "skipped_no_report": 1, "skipped_no_image": 0,
        "skipped_no_frontal": 1, "skipped_empty_reference": 1, "selected_studies": 2, "selected": 2,
    }


def test_mimic_pa_preferred_over_ap_and_views_all(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    sel = load_studies(mimic_cfg(root, reference="impression"))
    assert ids(sel) == ["s50000001", "s50000002", "s50000003"]  # s50000004 has only a lateral
    assert sel.studies[1].image_paths == (str(root / "files/p10/p10000001/s50000002/d2b.jpg"),)  # PA, not d2a AP
    assert sel.studies[1].reference == "Stable right pleural effusion."
    every = load_studies(mimic_cfg(root, reference="impression", views="all"))
    assert ids(every) == ["s50000001/d1a", "s50000001/d1b", "s50000002/d2a", "s50000002/d2b",
                          "s50000003/d3a", "s50000004/d4a"]
    assert [s.metadata["view"] for s in every.studies] == ["LATERAL", "PA", "AP", "PA", "AP", "LATERAL"]


def test_mimic_val_split_gzip_and_report_folder(tmp_path):
    root = make_mimic(tmp_path / "mimic", gz=True, reports_under=tmp_path / "reports")
    with pytest.raises(DatasetError, match=r"none of the 5 studies of split test has a report \(first missing: "
                                           r".*files/p10/p10000001/s50000001.txt\); set data.reports"):
        load_studies(mimic_cfg(root))
    with pytest.raises(DatasetError, match="data.reports .*nowhere not found"):
        load_studies(mimic_cfg(root, reports=str(tmp_path / "nowhere")))
    sel = load_studies(mimic_cfg(root, split="val", reports=str(tmp_path / "reports")))
    assert ids(sel) == ["s50000008"]
    assert sel.studies[0].metadata["split"] == "validate"
    assert sel.counts["not_in_split"] == 6


def test_mimic_sectioned_csv_matches_text_reports(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    rows = []
    for study, text in MIMIC_REPORTS.items():
        sections = report_sections(text)
        rows.append(dict(study=f"s{study}", impression=sections.get("IMPRESSION", ""),
                         findings=sections.get("FINDINGS", ""), last_paragraph="", comparison=""))
    csv_path = write_csv(tmp_path / "mimic_cxr_sectioned.csv", rows)
    for mode in ("findings", "impression", "findings+impression"):
        from_text = load_studies(mimic_cfg(root, reference=mode))
        from_csv = load_studies(mimic_cfg(root, reference=mode, reports=str(csv_path)))
        assert [(s.id, s.reference, s.image_paths) for s in from_csv.studies] == \
               [(s.id, s.reference, s.image_paths) for s in from_text.studies]
        assert from_csv.counts == from_text.counts
    write_csv(csv_path, [dict(study="s50000001", findings="a")])
    with pytest.raises(DatasetError, match=r"lacks column\(s\) impression"):
        load_studies(mimic_cfg(root, reference="impression", reports=str(csv_path)))


def test_mimic_bad_input(tmp_path):
    root = make_mimic(tmp_path / "a")
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(DatasetError, match="data.split=test needs .*mimic-cxr-2.0.0-split.csv"):
        load_studies(mimic_cfg(root))
    assert ids(load_studies(mimic_cfg(root, split="all"))) == ["s50000001", "s50000003", "s50000006", "s50000008"]
    write_csv(root / "mimic-cxr-2.0.0-split.csv", [dict(dicom_id="d1a", study_id=1)])
    with pytest.raises(DatasetError, match=r"split file .*lacks column\(s\) split"):
        load_studies(mimic_cfg(root))
    (root / "mimic-cxr-2.0.0-metadata.csv").unlink()
    with pytest.raises(DatasetError, match="mimic-cxr-2.0.0-metadata.csv .*not found"):
        load_studies(mimic_cfg(root))
    root = make_mimic(tmp_path / "b")
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", [dict(dicom_id="d1a", subject_id=1, study_id=2)])
    with pytest.raises(DatasetError, match=r"metadata file .*lacks column\(s\) ViewPosition"):
        load_studies(mimic_cfg(root))


# ---------------------------------------------------------------- manifest

MANIFEST_ROWS = [
    dict(id="case10", image_path="img/10.png", reference="  Mild   cardiomegaly. ", view="PA", site="A"),
    dict(id="case2", image_path="img/2.png", reference="Normal chest.", view="frontal", site="B"),
    dict(id="case3", image_path="img/3.png", reference="Lateral view.", view="LATERAL", site="A"),
    dict(id="case4", image_path="img/4.png", reference="", view="AP", site="B"),
]


def manifest_cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(format="manifest", manifest=str(path), **kw)


def test_manifest_csv_with_view_column(tmp_path):
    rows = MANIFEST_ROWS + [dict(id="case5", image_path=str(tmp_path / "abs.png"), reference="Abs.", view="ap",
                                 site="C")]
    path = write_csv(tmp_path / "data" / "m.csv", rows)
    sel = load_studies(manifest_cfg(path))
    assert ids(sel) == ["case2", "case5", "case10"]
    by_id = {s.id: s for s in sel.studies}
    assert by_id["case10"].image_paths == (str(tmp_path / "data" / "img" / "10.png"),)
    assert by_id["case5"].image_paths == (str(tmp_path / "abs.png"),)
    assert by_id["case10"].reference == "Mild cardiomegaly."
    assert by_id["case10"].metadata == {"site": "A", "view": "PA", "study_id": "case10", "image_id": "case10",
                                        "dataset": "manifest"}
    assert sel.counts["total"] == 5 and sel.counts["skipped_no_frontal"] == 1
    assert sel.counts["skipped_empty_reference"] == 1
    every = load_studies(manifest_cfg(path, views="all"))
    assert ids(every) == ["case2", "case3", "case5", "case10"]


def test_manifest_without_view_column_uses_every_row(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "view"} for r in MANIFEST_ROWS]
    path = write_csv(tmp_path / "m.csv", rows)
    sel = load_studies(manifest_cfg(path))
    assert ids(sel) == ["case2", "case3", "case10"]
    assert all(s.metadata["view"] is None for s in sel.studies)
    with pytest.raises(DatasetError, match=r"lacks column\(s\) position"):
        load_studies(manifest_cfg(path, view_column="position"))


def test_manifest_jsonl_equals_csv_and_custom_columns(tmp_path):
    csv_path = write_csv(tmp_path / "m.csv", MANIFEST_ROWS)
    renamed = [dict(key=r["id"], file=r["image_path"], text=r["reference"], position=r["view"], site=r["site"])
               for r in MANIFEST_ROWS]
    jsonl = tmp_path / "m.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as handle:
        for row in renamed:
            handle.write(json.dumps(row) + "\n\n")
    from_csv = load_studies(manifest_cfg(csv_path))
    from_jsonl = load_studies(manifest_cfg(jsonl, id_column="key", image_column="file", reference_column="text",
                                           view_column="position"))
    assert from_jsonl.studies == from_csv.studies
    assert from_jsonl.counts == from_csv.counts


def test_manifest_split_column(tmp_path):
    rows = [dict(r, split=s) for r, s in zip(MANIFEST_ROWS, ["test", "validate", "test", "test"])]
    path = write_csv(tmp_path / "m.csv", rows)
    assert ids(load_studies(manifest_cfg(path, split="test"))) == ["case10"]
    assert ids(load_studies(manifest_cfg(path, split="val"))) == ["case2"]
    sel = load_studies(manifest_cfg(path, split="all"))
    assert ids(sel) == ["case2", "case10"] and sel.studies[0].metadata["split"] == "validate"


def test_manifest_bad_input(tmp_path):
    path = write_csv(tmp_path / "m.csv", MANIFEST_ROWS + [dict(MANIFEST_ROWS[1], image_path="x.png"),
                                                          dict(MANIFEST_ROWS[0])])
    with pytest.raises(DatasetError, match="duplicate id.*case2, case10"):
        load_studies(manifest_cfg(path))
    path = write_csv(tmp_path / "m.csv", [dict(id="a", image_path="", reference="r")])
    with pytest.raises(DatasetError, match="data row 1 .*empty 'image_path'"):
        load_studies(manifest_cfg(path))
    path = write_csv(tmp_path / "m.csv", [dict(id="a", image="x.png", reference="r")])
    with pytest.raises(DatasetError, match=r"lacks column\(s\) image_path \(has: id, image, reference\)"):
        load_studies(manifest_cfg(path))
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"id": "a", "image_path": "a.png", "reference": "r"}\n\n{"id": "b",\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="line 3 is not valid JSON"):
        load_studies(manifest_cfg(bad))
    with pytest.raises(DatasetError, match="unknown suffix"):
        load_studies(manifest_cfg(touch(tmp_path / "m.tsv")))
    with pytest.raises(DatasetError, match="data.manifest .*none.csv not found"):
        load_studies(manifest_cfg(tmp_path / "none.csv"))
    path = write_csv(tmp_path / "m.csv", [dict(id="a", image_path="a.png", reference="")])
    with pytest.raises(DatasetError, match="no studies selected.*skipped_empty_reference=1"):
        load_studies(manifest_cfg(path))


def test_demo_manifest_matches_the_demo_reports():
    sel = load_studies(manifest_cfg(DEMO / "manifest.csv"))
    assert ids(sel) == ["CXR3", "CXR7", "CXR303", "CXR1900"]
    for study in sel.studies:
        (image,) = study.image_paths
        assert Path(image).is_file()
        assert Path(image).name.startswith(study.id + "_IM-")
        text = (DEMO / "reports" / f"{study.id[3:]}.xml").read_text(encoding="utf-8")
        assert f'<parentImage id="{Path(image).stem}">' in text
        parts = [" ".join(m.split()) for m in re.findall(r'Label="(?:FINDINGS|IMPRESSION)">([^<]*)<', text)]
        assert study.reference == " ".join(p for p in parts if p)
        assert study.metadata["view"] == "frontal"
    findings_only = load_studies(manifest_cfg(DEMO / "manifest.csv", reference_column="findings"))
    assert ids(findings_only) == ["CXR7", "CXR303", "CXR1900"]
    assert findings_only.studies[0].reference == CXR7_FINDINGS


def test_study_is_frozen():
    study = Study(id="a", image_paths=("/x.png",), reference="r", metadata={})
    with pytest.raises(AttributeError):
        study.id = "b"
