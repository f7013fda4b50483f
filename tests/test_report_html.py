"""The HTML results page: page data, escaping, summary numbers, and the rendered page in headless Chromium.

The Chromium tests need Debian's ``chromium`` package (``apt-get install -y --no-install-recommends chromium
fonts-dejavu-core``); they are skipped, saying so, where it is not installed.

``python tests/test_report_html.py docs/results-page.png`` renders the README's screenshot of a page built from
the bundled demo studies.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cxrgen.metrics import labeler  # noqa: E402
from cxrgen.report import ResultsPageError, attach_scores, build_results_page, page_data, write_results_page  # noqa: E402
from cxrgen.report.html import json_for_script  # noqa: E402

DEMO = REPO / "demo"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium package is not installed (apt-get install -y --no-install-recommends chromium)",
)

TRICKY = (
    "<script>document.title=\"pwned\"</script> \"quoted\" & 'single' \u2014 \u00d6dem \u2265 2 cm, \u80ba "
    "<img src=x onerror=\"document.title='img'\">"
)
REF_BREAKOUT = "Heart normal. </script><script>document.title='broke'</script>"
ERROR_TEXT = "CUDA out of memory </script><b>bold</b>"


def systems_fixture() -> dict[str, pd.DataFrame]:
    """Two systems over six studies with hand-set BLEU-4 values that are exact in binary.

    base: s1 .5, s2 .125, s3 .375, s4 .25, s5 0 (empty report); s6 absent.
    new:  s1 .75, s2 .5, s3 .125, s4 error, s5 .25, s6 .875; rows in another order than base's.
    """
    base = pd.DataFrame(
        [
            ("s1", "images/CXR3_IM-1384-1001.png", "No pleural effusion. Heart size is normal.", "Small left pleural effusion.", "ok", "", 0.5),
            ("s2", "images/CXR7_IM-2263-1001.png", "Large right pleural effusion.", "Large right pleural effusion.", "ok", "", 0.125),
            ("s3", "images/does-not-exist.png", REF_BREAKOUT, "Heart normal.", "ok", "", 0.375),
            ("s4", "images/00000001_000.png", "Clear lungs.", "Clear lungs.", "ok", "", 0.25),
            ("s5", "images/CXR303_IM-1404-1001.png", "Mild cardiomegaly.", "", "ok", "", 0.0),
        ],
        columns=["id", "image_path", "reference", "generated_report", "status", "error", "bleu_4"],
    )
    new = pd.DataFrame(
        [
            ("s2", "images/CXR7_IM-2263-1001.png", "Large right pleural effusion.", TRICKY, "ok", "", 0.5),
            ("s1", "images/CXR3_IM-1384-1001.png", "No pleural effusion. Heart size is normal.", "No pleural effusion.", "ok", "", 0.75),
            ("s3", "images/does-not-exist.png", REF_BREAKOUT, "Heart normal.", "ok", "", 0.125),
            ("s4", "images/00000001_000.png", "Clear lungs.", "", "error", ERROR_TEXT, np.nan),
            ("s5", "images/CXR303_IM-1404-1001.png", "Mild cardiomegaly.", "Mild cardiomegaly.", "ok", "", 0.25),
            ("s6", "images/CXR1900_IM-0584-1001.png", "Stable chest.", "Stable chest.", "ok", "", 0.875),
        ],
        columns=["id", "image_path", "reference", "generated_report", "status", "error", "bleu_4"],
    )
    return {"base": base, "new": new}


def summary_fixture() -> dict:
    per_obs = {c: {"precision": None, "recall": None, "f1": None, "tp": 0, "fp": 0, "fn": 0, "tn": 5,
                   "ref_positive": 0, "hyp_positive": 0, "n_judged": 5} for c in labeler.COLUMNS}
    per_obs["pleural_effusion"] = {
        "precision": {"value": 0.5, "ci": [0.0, 1.0]}, "recall": {"value": 0.5, "ci": [0.0, 1.0]},
        "f1": {"value": 0.5, "ci": [0.0, 1.0]}, "tp": 1, "fp": 1, "fn": 1, "tn": 2,
        "ref_positive": 2, "hyp_positive": 2, "n_judged": 5,
    }

    def system(n, n_empty, n_error, bleu4):
        return {
            "n": n, "n_empty": n_empty, "n_rows": n + n_error, "n_error": n_error, "n_empty_reference": 0,
            "n_not_shared": 1,
            "metrics": {"bleu_4": bleu4, "rouge_l": {"value": 0.25, "ci": None}},
            "clinical": {"labeler": "test", "uncertain": "positive",
                         "metrics": {"chexpert14_micro_f1": {"value": 0.5, "ci": [0.25, 0.75]}},
                         "per_observation": per_obs},
        }

    return {
        "signature": "nrefs:1|tok:cxr-v1|test<&>",
        "interval_method": "percentile bootstrap, 95%",
        "test_method": "paired bootstrap",
        "settings": {"uncertain": "positive"},
        "baseline": "base",
        "systems": {
            "base": system(4, 1, 0, {"value": 0.123456, "ci": [0.1, 0.15]}),
            "new": system(4, 0, 1, {"value": 0.2, "ci": [0.18, 0.22]}),
        },
        "comparisons": [
            {"system": "new", "baseline": "base", "metric": "bleu_4", "n": 4, "diff": 0.012345, "ci": [0.001, 0.02], "p_value": 0.0004},
            {"system": "new", "baseline": "base", "metric": "chexpert14_micro_f1", "n": 4, "diff": 0.0, "ci": [-0.1, 0.1], "p_value": 1.0},
        ],
    }


def extract_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="cxr-data">(.*?)</script>', page, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def code(labels_text: str, col: str) -> str:
    return labels_text[labeler.COLUMNS.index(col)]


# ------------------------------------------------------------------------------------------------
# Page data, without a browser


def test_json_for_script_round_trips_and_cannot_close_the_element():
    value = {"t": ["</script><!-- x -->", "a & b > c", "\u2028\u2029", "\u00d6dem \u80ba", 'q"uote']}
    text = json_for_script(value)
    assert json.loads(text) == value
    for ch in "<>&\u2028\u2029":
        assert ch not in text
    with pytest.raises(ValueError):
        json_for_script({"x": float("nan")})


def test_page_data_orders_studies_statuses_scores_and_labels():
    data = page_data(systems_fixture(), summary_fixture(), image_root=DEMO, thumbnail_px=64, page_size=4)
    assert data["systems"] == ["base", "new"] and data["baseline"] == "base"
    # Baseline's row order, then the studies only the other system has.
    assert [s["id"] for s in data["studies"]] == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert [k for k, *_ in data["scores"]] == ["bleu_4"]
    by_id = {s["id"]: s for s in data["studies"]}
    status = {sid: [x["st"] if x else None for x in s["s"]] for sid, s in by_id.items()}
    assert status == {
        "s1": ["ok", "ok"], "s2": ["ok", "ok"], "s3": ["ok", "ok"], "s4": ["ok", "error"],
        "s5": ["empty", "ok"], "s6": [None, "ok"],
    }
    assert by_id["s4"]["s"][1]["e"] == ERROR_TEXT
    assert [x["v"][0] if x else None for x in by_id["s4"]["s"]] == [0.25, None]
    assert by_id["s2"]["s"][1]["t"] == TRICKY
    assert by_id["s3"]["ref"] == REF_BREAKOUT
    # Labels: reference "No pleural effusion" is negative, base's "Small left pleural effusion" positive.
    assert code(by_id["s1"]["rl"], "pleural_effusion") == "N"
    assert code(by_id["s1"]["s"][0]["l"], "pleural_effusion") == "P"
    assert code(by_id["s1"]["s"][1]["l"], "pleural_effusion") == "N"
    assert code(by_id["s2"]["rl"], "pleural_effusion") == "P"
    assert by_id["s5"]["s"][0]["l"] == "." * 14  # an empty report mentions nothing
    assert "l" not in by_id["s4"]["s"][1]  # an error row has no report to label


def test_thumbnails_are_embedded_once_and_missing_images_get_a_reason():
    data = page_data(systems_fixture(), {}, image_root=DEMO, thumbnail_px=64, findings=False)
    by_id = {s["id"]: s for s in data["studies"]}
    uri = by_id["s1"]["img"]
    assert uri.startswith("data:image/jpeg;base64,")
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert thumb.format == "JPEG" and thumb.mode == "L" and thumb.size == (64, 64)  # 512 x 512 source
    # 512 x 492 source: the longer side becomes 64, the other 492 * 64 / 512 = 61.5, rounded to 62.
    assert Image.open(io.BytesIO(base64.b64decode(by_id["s5"]["img"].split(",", 1)[1]))).size == (64, 62)
    assert "img" not in by_id["s3"] and "does-not-exist.png" in by_id["s3"]["imgerr"]
    none = page_data(systems_fixture(), {}, image_root=DEMO, thumbnail_px=0, findings=False)
    assert all("img" not in s for s in none["studies"])


def test_label_strings_in_the_rows_are_used_instead_of_the_labeler():
    frames = systems_fixture()
    base = frames["base"].assign(hyp_labels="pleural_effusion:1;edema:-1", ref_labels="pleural_effusion:0")
    base.loc[base["id"] == "s5", "hyp_labels"] = ""

    def refuse(texts):
        raise AssertionError(f"labeler called for {texts}")

    data = page_data({"base": base}, {}, thumbnail_px=0, label_reports=refuse)
    s1 = data["studies"][0]
    assert code(s1["s"][0]["l"], "pleural_effusion") == "P" and code(s1["s"][0]["l"], "edema") == "U"
    assert s1["rl"].count(".") == 13 and code(s1["rl"], "pleural_effusion") == "N"
    bad = frames["base"].assign(hyp_labels="pleural_effusion:2")
    with pytest.raises(ResultsPageError, match=r"system 'base', study 's1', column 'hyp_labels'.*pleural_effusion:2"):
        page_data({"base": bad}, {}, thumbnail_px=0)


def test_bad_input_names_the_system_and_column():
    frames = systems_fixture()
    with pytest.raises(ResultsPageError, match=r"system 'new': no column 'reference'"):
        page_data({"base": frames["base"], "new": frames["new"].drop(columns="reference")}, {}, thumbnail_px=0)
    dup = pd.concat([frames["base"], frames["base"].iloc[[1]]])
    with pytest.raises(ResultsPageError, match=r"system 'base': duplicate ids in column 'id': s2"):
        page_data({"base": dup}, {}, thumbnail_px=0)
    with pytest.raises(ResultsPageError, match="baseline 'x' is not one of the systems"):
        page_data(frames, {}, baseline="x", thumbnail_px=0)


def test_max_studies_keeps_the_first_studies_and_says_so():
    page = build_results_page(systems_fixture(), {}, thumbnail_px=0, findings=False, plots_enabled=False, max_studies=2)
    data = extract_data(page)
    assert [s["id"] for s in data["studies"]] == ["s1", "s2"] and data["n_total"] == 6
    assert "Showing the first 2 of 6 studies." in page


def test_summary_block_formats_numbers_like_summary_md_and_escapes_markup():
    frames = systems_fixture()
    frames["<b>x</b>"] = frames.pop("new")
    summary = summary_fixture()
    summary["systems"]["<b>x</b>"] = summary["systems"].pop("new")
    for c in summary["comparisons"]:
        c["system"] = "<b>x</b>"
    page = build_results_page(frames, summary, thumbnail_px=0)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "test&lt;&amp;&gt;" in page  # the signature
    row = re.search(r'<tr data-metric="bleu_4">(.*?)</tr>', page).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells == ["0.1235 [0.1000, 0.1500]", "0.2000 [0.1800, 0.2200]", "+0.0123 (&lt;0.001)"]
    row = re.search(r'<tr data-metric="rouge_l">(.*?)</tr>', page).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row) == ["0.2500", "0.2500", "—"]
    row = re.search(r'<tr data-metric="chexpert14_micro_f1">(.*?)</tr>', page).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row)[-1] == "+0.0000 (1.000)"
    counts = re.search(r'<tr data-system="base">(.*?)</tr>', page).group(1)
    # rows, scored, ok, empty, error, empty reference, not shared
    assert re.findall(r"<td>(.*?)</td>", counts) == ["4", "4", "3", "1", "0", "0", "1"]
    # Both the markup and the page's own script are the only script elements; the data cannot add one.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert 'id="plot-distributions"' in page and 'id="plot-observation-f1"' in page and 'id="plot-differences"' in page
    figures = dict(re.findall(r'id="plot-([a-z0-9-]+)"><img alt="[^"]*" src="data:image/svg\+xml;base64,([^"]+)"', page))
    assert set(figures) == {"distributions", "observation-f1", "differences"}
    titles = {name: [t.text for t in ET.fromstring(base64.b64decode(svg)).iter("{http://www.w3.org/2000/svg}title")]
              for name, svg in figures.items()}  # each SVG parses (names escaped); every mark names its numbers
    assert "base, pleural effusion: F1 0.500 [0.000, 1.000]" in titles["observation-f1"]
    assert titles["differences"] == ["<b>x</b> − base, bleu_4: +0.0123 [+0.0010, +0.0200]",
                                     "<b>x</b> − base, chexpert14_micro_f1: +0.0000 [-0.1000, +0.1000]"]
    assert titles["distributions"][:2] == ["base: 5 studies, mean 0.250", "<b>x</b>: 5 studies, mean 0.500"]


def test_header_names_the_model_its_revision_or_digest_and_the_commit():
    run = {"model": {"source": "/ckpt/<tiny>", "backend": "cxr_llava", "revision": None, "digest": "ab12cd34",
                     "quantization": "4bit", "adapter": {"path": "lora-a"}},
           "project": {"commit": "0123456789abcdef" * 2 + "01234567", "local_changes": True, "version": "0.1.0"}}
    page = build_results_page(systems_fixture(), {"run": run}, thumbnail_px=0, findings=False, plots_enabled=False)
    line = page.split('<p class="provenance">', 1)[1].split("</p>", 1)[0]
    assert "/ckpt/&lt;tiny&gt;" in line and "digest ab12cd34" in line and "4bit" in line and "lora-a" in line
    assert "0123456789ab with local changes" in line
    run["model"]["revision"] = "f" * 40
    run["project"] = {"commit": None, "local_changes": None, "version": "0.1.0"}
    page = build_results_page(systems_fixture(), {"run": run}, thumbnail_px=0, findings=False, plots_enabled=False)
    line = page.split('<p class="provenance">', 1)[1].split("</p>", 1)[0]
    assert f"revision {'f' * 40}" in line and "digest" not in line and "version 0.1.0" in line
    assert 'class="provenance"' not in build_results_page(systems_fixture(), {}, thumbnail_px=0, findings=False,
                                                          plots_enabled=False)


def test_attach_scores_joins_per_sample_columns_by_id():
    rows = pd.DataFrame({"id": [" a", "b", "c"], "generated_report": ["x", "", "y"], "status": ["ok", "error", "ok"],
                         "rouge_l": [9.0, 9.0, 9.0]}, index=[10, 11, 12])
    per_sample = pd.DataFrame({"system": "m", "id": ["c", "a"], "bleu_4": [0.5, 0.25], "rouge_l": [0.75, 0.125]},
                              index=[2, 0])
    out = attach_scores(rows, per_sample)
    assert list(out.columns) == ["id", "generated_report", "status", "bleu_4", "rouge_l"]
    assert list(out.index) == [10, 11, 12] and out["generated_report"].tolist() == ["x", "", "y"]
    assert out["bleu_4"].tolist()[0] == 0.25 and np.isnan(out["bleu_4"].tolist()[1]) and out["bleu_4"].tolist()[2] == 0.5
    # The evaluation's scores replace the rows' own.
    assert out["rouge_l"].tolist()[0] == 0.125 and np.isnan(out["rouge_l"].tolist()[1]) and out["rouge_l"].tolist()[2] == 0.75
    with pytest.raises(ResultsPageError, match="per-sample scores: duplicate ids: a"):
        attach_scores(rows, pd.concat([per_sample, per_sample.iloc[[1]]]))


def test_page_of_a_real_evaluation_shows_the_summary_md_numbers(tmp_path):
    from cxrgen import evaluation

    manifest = pd.read_csv(DEMO / "manifest.csv", dtype=str)
    a = manifest[["id", "image_path", "reference"]].assign(
        generated_report=["No pleural effusion or pneumothorax.", "Basilar atelectasis. No effusion.",
                          "Bilateral streaky opacities, atelectasis.", "Stable chest. No acute process."],
        status="ok", error="")
    b = a.assign(generated_report=["Normal chest.", "", "Small left pleural effusion.", "Granulomas."])
    report = evaluation.evaluate_systems({"a": a, "b": b}, n_boot=50, seed=1, use_meteor=False)
    paths = evaluation.write_outputs(report, tmp_path)
    summary = json.loads(paths["summary_json"].read_text())
    frames = {n: attach_scores(f, report.systems[n].per_sample) for n, f in (("a", a), ("b", b))}
    out = write_results_page(tmp_path / "sub" / "report.html", frames, summary, image_root=DEMO, thumbnail_px=32)
    page = out.read_text(encoding="utf-8")
    md = paths["summary_md"].read_text()
    for key in ("bleu_4", "rouge_l", "cider_d", "chexpert14_micro_f1"):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", re.search(rf'<tr data-metric="{key}">(.*?)</tr>', page).group(1))
        md_row = next(line for line in md.splitlines() if line.startswith(f"| {key} |"))
        assert [html_unescape(c) for c in cells] == [c.strip() for c in md_row.strip("|").split("|")[1:]]
    data = extract_data(page)
    per_sample = report.systems["b"].per_sample.set_index("id")
    k = [s[0] for s in data["scores"]].index("rouge_l")
    for st in data["studies"]:
        assert st["s"][1]["v"][k] == pytest.approx(per_sample.loc[st["id"], "rouge_l"], abs=5e-5)
    assert [st["s"][1]["st"] for st in data["studies"]] == ["ok", "empty", "ok", "ok"]
    assert all(st["img"].startswith("data:image/jpeg") for st in data["studies"])


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


# ------------------------------------------------------------------------------------------------
# The rendered page


class _Node:
    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, _Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[_Node]:
        return [
            n for n in self.iter()
            if (tag is None or n.tag == tag) and (cls is None or cls in n.attrs.get("class", "").split())
        ]


class _Tree(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def chromium_args(profile: Path) -> list[str]:
    return [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
    ]


def render(page: Path, fragment: str = "") -> _Node:
    """The DOM of ``page`` after its script ran, opened with ``fragment`` in the URL."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            chromium_args(Path(profile)) + ["--dump-dom", page.as_uri() + fragment],
            capture_output=True, text=True, encoding="utf-8", timeout=120,
        )
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    tree = _Tree()
    tree.feed(proc.stdout)
    return tree.root


def shown_ids(dom: _Node) -> list[str]:
    return [tr.attrs["data-id"] for tr in dom.find_all("tr", "study")]


def cell(dom: _Node, study: str, system_index: int) -> _Node:
    row = next(tr for tr in dom.find_all("tr", "study") if tr.attrs["data-id"] == study)
    return row.find_all("td", "gen")[system_index]


@pytest.fixture(scope="module")
def rendered_page(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page") / "report.html"
    return write_results_page(path, systems_fixture(), summary_fixture(), image_root=DEMO, thumbnail_px=64, page_size=4)


@needs_chromium
def test_chromium_shows_rows_images_and_report_text_literally(rendered_page):
    dom = render(rendered_page)
    assert [t.text() for t in dom.find_all("title")] == ["Results: base, new"]  # no injected script ran
    assert shown_ids(dom) == ["s1", "s2", "s3", "s4"]  # input order, first page of 4
    assert "page 1 of 2 · 6 studies" in dom.find_all("span", "page-info")[0].text()
    scripts = dom.find_all("script")
    assert [s.attrs.get("type", "") for s in scripts] == ["application/json", ""]
    imgs = [i.attrs["src"] for i in dom.find_all("img")]
    assert all(src.startswith("data:") for src in imgs)
    row_imgs = {tr.attrs["data-id"]: tr.find_all("img") for tr in dom.find_all("tr", "study")}
    assert row_imgs["s1"][0].attrs["src"].startswith("data:image/jpeg;base64,")
    assert row_imgs["s3"] == [] and "does-not-exist.png" in next(
        tr for tr in dom.find_all("tr", "study") if tr.attrs["data-id"] == "s3").find_all("div", "noimg")[0].attrs["title"]
    # Report text is text: the markup-looking generated report, reference and error appear verbatim.
    assert cell(dom, "s2", 1).find_all("p", "report")[0].text() == TRICKY
    ref_cell = next(tr for tr in dom.find_all("tr", "study") if tr.attrs["data-id"] == "s3").find_all("td", "ref")[0]
    assert ref_cell.text() == REF_BREAKOUT
    assert cell(dom, "s4", 1).find_all("p", "error")[0].text() == ERROR_TEXT
    assert cell(dom, "s4", 1).find_all("b") == []
    # Words shared with the reference are marked (stop words are not).
    assert [m.text() for m in cell(dom, "s1", 0).find_all("mark")] == ["pleural", "effusion"]
    assert [m.text() for m in cell(dom, "s1", 1).find_all("mark")] == ["No", "pleural", "effusion"]
    # Findings: base calls an effusion the reference rules out; that cell is marked, new's is not.
    row = next(tr for tr in dom.find_all("tr", "study") if tr.attrs["data-id"] == "s1")
    eff = next(tr for tr in row.find_all("tr") if tr.attrs.get("data-obs") == "pleural_effusion")
    ref_td, base_td, new_td = eff.find_all("td")
    assert (ref_td.text(), base_td.text(), new_td.text()) == ("\u2212", "+", "\u2212")
    assert "dis" in base_td.attrs["class"].split() and "dis" not in new_td.attrs["class"].split()


@needs_chromium
def test_chromium_sorts_pages_and_filters_from_the_url_fragment(rendered_page):
    # base's BLEU-4 ascending; s6 has no base score and goes last.
    assert shown_ids(render(rendered_page, "#sort=bleu_4&dir=asc")) == ["s5", "s2", "s4", "s3"]
    dom = render(rendered_page, "#sort=bleu_4&dir=asc&page=2")
    assert shown_ids(dom) == ["s1", "s6"]
    assert "page 2 of 2" in dom.find_all("span", "page-info")[0].text()
    # new minus base, largest first: s2 +.375, s1 +.25 and s5 +.25 (tie: input order), s3 -.25; no difference last.
    dom = render(rendered_page, "#sort=bleu_4&sys=new&diff=1&dir=desc&size=10")
    assert shown_ids(dom) == ["s2", "s1", "s5", "s3", "s4", "s6"]
    assert [b.text() for b in cell(dom, "s2", 1).find_all("span", "delta")] == ["Δ BLEU-4 +0.375"]
    assert shown_ids(render(rendered_page, "#status=error")) == ["s4"]
    assert shown_ids(render(rendered_page, "#finding=pleural_effusion&fmode=dis")) == ["s1", "s2"]


def write_screenshot(out: Path, n_boot: int = 200) -> Path:
    """Render the README screenshot: the bundled IU X-ray studies with two illustrative systems."""
    from cxrgen import evaluation

    manifest = pd.read_csv(DEMO / "manifest.csv", dtype=str)
    a = manifest[["id", "image_path", "reference"]].assign(
        generated_report=[
            "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax. "
            "No acute cardiopulmonary abnormality.",
            "Normal cardiac contours. Bibasilar atelectasis. No focal consolidation or pleural effusion.",
            "Low lung volumes with bibasilar streaky opacities, likely atelectasis. Small left pleural effusion "
            "cannot be excluded.",
            "Postoperative changes of sternotomy. Calcified granulomas. No focal airspace disease, "
            "pleural effusion, or pneumothorax.",
        ],
        status="ok", error="", seconds=["3.1", "2.8", "3.4", "3.0"])
    b = a.assign(
        generated_report=[
            "Heart size normal. No focal consolidation.",
            "Mild cardiomegaly. Right lower lobe pneumonia.",
            "",
            "Stable chest. No acute process.",
        ],
        status=["ok", "ok", "error", "ok"],
        error=["", "", "CUDA out of memory while decoding", ""],
    )
    report = evaluation.evaluate_systems({"model-a": a, "model-b": b}, n_boot=n_boot, seed=0)
    summary = report.summary_dict()
    frames = {"model-a": attach_scores(a, report.systems["model-a"].per_sample),
              "model-b": attach_scores(b, report.systems["model-b"].per_sample)}
    with tempfile.TemporaryDirectory() as tmp:
        page = write_results_page(Path(tmp) / "report.html", frames, summary, image_root=DEMO, title="Results: model-a vs model-b")
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                chromium_args(Path(profile))
                + ["--window-size=1400,2250", "--hide-scrollbars", f"--screenshot={Path(out).resolve()}", page.as_uri()],
                capture_output=True, timeout=120, check=True,
            )
    # A 256-colour palette keeps the file small; the page is mostly flat colours and grey X-rays.
    Image.open(out).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return Path(out)


if __name__ == "__main__":
    if CHROMIUM is None:
        sys.exit("chromium is not installed")
    print(write_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "results-page.png")))
