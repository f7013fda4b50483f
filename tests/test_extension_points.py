"""Adding a backend or a dataset layout is one module plus one registry line (README, "Adding a backend or a dataset
layout"): a backend and a layout defined here, registered with one line each, run through generate_cxr.py — the
configuration check, the selection, the image workers, the run store, the merge, the metrics — with no other edit."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import yaml

import generate_cxr
from cxrgen import datasets, models
from cxrgen.config import ConfigError, load_config
from cxrgen.datasets.common import Found, Image, Layout, Record, clean_text, require_root
from cxrgen.models.base import GeneratedReport, static_batches
from helpers import IMAGES, reports

# -- the layout: a folder of images, each with its report in a .txt file of the same name ----------------------------

layout = types.ModuleType("toy_layout")
layout.LAYOUT = Layout("root", "*.png images, each with a .txt report beside it")


def _read(cfg, split, counts):
    root = require_root(cfg, layout.LAYOUT)
    records = [Record(png.stem, [Image(str(png), png.stem, "PA")], clean_text(png.with_suffix(".txt").read_text()))
               for png in sorted(root.glob("*.png"))]
    counts["total"] = len(records)
    return Found(records, f"toy folder {root}")


layout.read = _read


# -- the backend: reports each image's size ------------------------------------------------------------------------

class ImageSize:
    def __call__(self, image):
        return image.size


class SizeReporter:
    name = "toy"
    device = "cpu"

    def describe(self):
        return {"backend": "toy", "source": "here", "revision": None, "dtype": "none", "device": "cpu"}

    def image_preparer(self):
        return ImageSize()

    def render_prompt(self, prompt):
        return "describe the size"

    def stream(self, items, prompt, generation):
        def generate(batch):
            return [GeneratedReport(f"an image of {w} by {h} pixels", [1], 1, True) for w, h in
                    (item.inputs for item in batch)]

        return static_batches(generate, items, generation.batch_size)


backend = types.ModuleType("toy_backend")
backend.load = lambda model_cfg: SizeReporter()
backend.locate = lambda model_cfg: (Path(model_cfg.name_or_path), None)
backend.download = backend.locate


def test_a_backend_and_a_layout_defined_here_run_through_the_whole_pipeline(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for png in sorted(IMAGES.glob("CXR*.png"))[:3]:
        shutil.copy(png, data / png.name)
        (data / png.name).with_suffix(".txt").write_text(f"An image of {png.stem}.")
    cfg_path = tmp_path / "toy.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"backend": "toy", "name_or_path": str(tmp_path), "device": "cpu"},
        "data": {"format": "toy", "root": str(data), "split": "all"},
        "loader": {"num_workers": 1},
        "output": {"dir": str(tmp_path / "runs"), "run_name": "toy", "html": True},
        "evaluation": {"bootstrap": 20},
    }))
    with pytest.raises(ConfigError, match="model.backend must be one of auto, cxr_llava, transformers, retrieval; got .toy."):
        load_config(cfg_path)

    monkeypatch.setitem(sys.modules, "toy_layout", layout)  # the modules, as if they were files in the package
    monkeypatch.setitem(sys.modules, "toy_backend", backend)
    monkeypatch.setitem(datasets.ADAPTERS, "toy", "toy_layout")  # and one registry line each
    monkeypatch.setitem(models.BACKENDS, "toy", "toy_backend")

    assert generate_cxr.main(["--config", str(cfg_path), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "toy"
    rows = reports(run_dir)
    assert list(rows["id"]) == sorted((p.stem for p in data.glob("*.png")), key=datasets.natural_key)
    assert list(rows["reference"]) == [f"An image of {i}." for i in rows["id"]]
    assert set(rows["generated_report"]) <= {"an image of 512 by 512 pixels", "an image of 512 by 492 pixels"}
    assert json.loads((run_dir / "metrics.json").read_text())["n"] == 3 and (run_dir / "report.html").exists()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["model"]["backend"] == "toy" and info["prompt"] == "describe the size"
    assert info["config"]["data"]["format"] == "toy"
