"""Helpers shared by the tests: a manifest of the bundled images, a run configuration, the CLI, a run started in a
subprocess and caught after it has committed rows, crashes injected into the run store's writes, a scripted backend,
a LoRA adapter for the tiny checkpoint, the bundled IU reports, transformers' own generate as the reference for the
transformers backend, a CXR-LLaVA stream stopped in the middle, and the stand-ins of the model-based metrics'
packages and caches (and a RadEval script run with the Hub off)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import torch
import yaml
from safetensors.torch import save_file

from cxrgen import runstore
from cxrgen.models.base import GeneratedReport

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "demo" / "images"
REPORTS = ROOT / "tests" / "data" / "iu_reports"
HIDDEN, LAYERS = 64, 2  # the tiny checkpoint's language model (tiny_config defaults)
SHAPES = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN),
          "o_proj": (HIDDEN, HIDDEN), "gate_proj": (2 * HIDDEN, HIDDEN), "up_proj": (2 * HIDDEN, HIDDEN),
          "down_proj": (HIDDEN, 2 * HIDDEN)}  # [out, in]


def write_manifest(folder: Path, n: int, broken: dict[int, str] | None = None) -> Path:
    """n studies cycling through the bundled images; ``broken`` maps a row to a bad image path."""
    images = sorted(IMAGES.glob("*.png"))
    rows = []
    for i in range(n):
        path = str(images[i % len(images)])
        if broken and i in broken:
            path = broken[i]
        rows.append({"id": f"S{i:03d}", "image_path": path, "reference": f"Report {i}: the lungs are clear, no effusion."})
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def make_config(tmp: Path, checkpoint: Path, manifest: Path, run_name: str = "run", **overrides) -> Path:
    """A run configuration file; ``section__key=value`` overrides any setting."""
    cfg = {
        "model": {"name_or_path": str(checkpoint), "device": "cpu"},
        "generation": {"batch_size": 4, "max_new_tokens": 24},
        "data": {"format": "manifest", "manifest": str(manifest), "split": "all"},
        "loader": {"num_workers": 0},
        "output": {"dir": str(tmp / "runs"), "run_name": run_name, "html": False},
        "evaluation": {"bootstrap": 50},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    path = tmp / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "generate_cxr.py"), "--quiet", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=timeout)


def reports(run_dir: Path) -> pd.DataFrame:
    return runstore.read_reports_csv(run_dir / "reports.csv", "reports.csv")


def committed_rows(run_dir: Path) -> int:
    try:
        return len(runstore.PartFile(run_dir / "parts" / "shard-0-of-1.csv").read())
    except (FileNotFoundError, runstore.RunError):  # not started yet, or a marker being replaced
        return 0


def resume_and_compare(cfg_path: Path, run_dir: Path, expected: pd.DataFrame, done_before: int):
    """Rerun the command of a killed run: it skips the committed rows and ends with exactly ``expected``'s rows.
    Returns the finished process."""
    result = run_cli("--config", str(cfg_path))
    assert result.returncode == 0, result.stderr
    assert f"{done_before} already done, {len(expected) - done_before} to go" in result.stderr
    resumed = reports(run_dir)
    assert resumed["id"].is_unique and len(resumed) == len(expected)
    pd.testing.assert_frame_equal(expected.drop(columns="seconds"), resumed.drop(columns="seconds"))
    return result


def start_until_committed(cfg_path: Path, run_dir: Path, rows: int, timeout: float = 90) -> subprocess.Popen:
    """generate_cxr.py in its own process group, returned once it has committed ``rows`` rows (still running)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "generate_cxr.py"), "--quiet", "--config", str(cfg_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout
    while committed_rows(run_dir) < rows and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    return proc


# -- crashes injected into the run store's file writes ----------------------------------------------------------------

class Crash(Exception):
    """Stands for a kill at one point of a write."""


class CrashingOs:
    """The os module, except that the ``at``-th call of write, fsync, replace or unlink raises :class:`Crash`; a
    write dies half way through its bytes."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def _tick(self) -> bool:
        self.calls += 1
        return self.calls - 1 == self.at

    def write(self, fd, data):
        if self._tick():
            os.write(fd, bytes(data[:len(data) // 2]))
            raise Crash("killed while writing")
        return os.write(fd, data)

    def fsync(self, fd):
        if self._tick():
            raise Crash("killed before fsync")
        return os.fsync(fd)

    def replace(self, src, dst):
        if self._tick():
            raise Crash("killed before the rename")
        return os.replace(src, dst)


def crash_points(monkeypatch, action):
    """Run ``action`` once per crash point (0, 1, ...) with a crash injected there, until it runs through without
    reaching one; yields the crash point after each crash."""
    at = 0
    while True:
        monkeypatch.setattr(runstore.files, "os", CrashingOs(at))
        try:
            action()
        except Crash:
            monkeypatch.setattr(runstore.files, "os", os)
            yield at
            at += 1
            continue
        monkeypatch.setattr(runstore.files, "os", os)
        return


# -- a scripted backend ---------------------------------------------------------------------------------------------

class ImageSize:
    """Picklable preparer: the scripted backend only needs to know the image was read."""

    def __call__(self, image):
        return image.size


class ScriptedBackend:
    """A report generator (the interface of cxrgen.models.base) that writes the given text for each study id
    (``default`` for the others), in batches of generation.batch_size, ``delay`` seconds per batch."""

    name = "scripted"

    def __init__(self, texts: dict[str, str] | None = None, delay: float = 0.0, default: str = "No acute disease."):
        self.texts, self.delay, self.default = texts or {}, delay, default

    @property
    def device(self):
        return torch.device("cpu")

    def describe(self):
        return {"backend": self.name, "source": "test", "revision": None, "dtype": "none", "device": "cpu"}

    def image_preparer(self):
        return ImageSize()

    def render_prompt(self, prompt):
        return "write \u2028 anything"

    def stream(self, items, prompt, generation):
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == generation.batch_size:
                yield self._finish(batch)
                batch = []
        if batch:
            yield self._finish(batch)

    def _finish(self, batch):
        time.sleep(self.delay)
        out = []
        for item in batch:
            assert item.inputs[0] > 0  # the image reached the preparer
            text = self.texts.get(item.key.id, self.default)
            out.append((item, GeneratedReport(text=text, token_ids=[1] * len(text), n_new_tokens=len(text),
                                              stopped_at_eos=True)))
        return out


# -- LoRA adapters for the tiny CXR-LLaVA checkpoint ------------------------------------------------------------------

def _module_path(layer: int, proj: str) -> str:
    return f"layers.{layer}.{'mlp' if proj in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{proj}"


def write_lora(folder: Path, *, prefix: str = "llama", targets=("q_proj", "v_proj"), r: int = 4, alpha: float = 8,
               seed: int = 1, scale: float = 1.0, **config) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A LoRA adapter folder as PEFT writes it, with random A and B; returns {published module name: (A, B)}."""
    g = torch.Generator().manual_seed(seed)
    tensors, pairs = {}, {}
    for layer in range(LAYERS):
        for proj in targets:
            out_f, in_f = SHAPES[proj]
            a = torch.randn(r, in_f, generator=g) * scale / in_f ** 0.5
            b = torch.randn(out_f, r, generator=g) * scale / r ** 0.5
            module = _module_path(layer, proj)
            tensors[f"base_model.model.{prefix}.{module}.lora_A.weight"] = a
            tensors[f"base_model.model.{prefix}.{module}.lora_B.weight"] = b
            pairs[f"llama.{module}"] = (a, b)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(targets),
           "fan_in_fan_out": False, "bias": "none", "base_model_name_or_path": None, "task_type": "CAUSAL_LM",
           **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return pairs


# -- the bundled IU X-ray reports -------------------------------------------------------------------------------------

def load_reports() -> list[str]:
    """FINDINGS + IMPRESSION of each bundled IU report XML (tests/data/iu_reports), in id order; empty ones left out."""
    texts = []
    for path in sorted(REPORTS.glob("*.xml"), key=lambda p: int(p.stem)):
        sections = {a.get("Label"): (a.text or "").strip() for a in ET.parse(path).getroot().iter("AbstractText")}
        text = " ".join(t for t in (sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")) if t)
        if text:
            texts.append(text)
    return texts


# -- transformers' own generate, the transformers backend's reference ---------------------------------------------

def transformers_generate(folder: Path, images: list[Path], system: str | None, user: str, max_new_tokens: int,
                          device: str = "cpu") -> list[tuple[str, int, bool]]:
    """(text, new tokens without the end token, stopped at an end token) per image: transformers' own ``generate``,
    greedy, one image at a time, on inputs the processor builds from the chat messages (as the model cards show),
    from a freshly loaded processor and model in float32."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cxrgen.imaging import read_image

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos)
    rows = []
    for path in images:
        image = read_image(path).convert("RGB")
        messages = ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": user}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = generated[0, inputs["input_ids"].shape[1]:].tolist()
        stopped = bool(new) and new[-1] in eos
        ids = new[:-1] if stopped else new
        rows.append((processor.decode(new, skip_special_tokens=True).strip(), len(ids), stopped))
    return rows


# -- CXR-LLaVA's continuous batching, stopped in the middle -----------------------------------------------------

def stream_tokens(model, requests, stop_after: int | None = None, **kwargs) -> dict:
    """key -> generated token ids of ``model.stream_reports(requests, **kwargs)``; ``stop_after``: close the stream
    once that many reports are back (a run stopped in the middle: the rows in flight are lost)."""
    out, stream = {}, model.stream_reports(requests, **kwargs)
    for done in stream:
        out.update((key, report.token_ids) for key, report in done)
        if stop_after and len(out) >= stop_after:
            stream.close()
            break
    return out


# -- the model-based metrics' packages and caches -------------------------------------------------------------------

def fake_metric_packages(monkeypatch, missing=()):
    """RadEval and the packages its scorers need importable (but those in ``missing``), RadEval 2.2.1 installed."""
    from cxrgen.metrics import model_based

    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        if name in missing:
            return None
        if name in ("radeval", "medspacy", "dotmap", "appdirs", "sklearn", "datasets", "accelerate"):
            return importlib.machinery.ModuleSpec(name, None)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(model_based, "_version",
                        lambda dist: {"radeval": "2.2.1", "thinc": "8.3.4", "numpy": "2.4.6"}.get(dist))


def metric_caches(monkeypatch, tmp_path: Path) -> Path:
    """Empty caches under ``tmp_path`` (XDG and Hugging Face); returns the Hugging Face hub cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf" / "hub"


def hf_cache_put(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """Files of ``repo`` in the layout of a Hugging Face cache."""
    base = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    for name, data in files.items():
        path = base / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def run_offline_script(script: str, tmp_path: Path) -> list[dict]:
    """Run ``script`` in a fresh Python with the Hub off and empty caches under ``tmp_path``; the JSON objects it
    printed, one per line (it must succeed)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # nothing may come from the network
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]


# -- fine-tuning -------------------------------------------------------------------------------------------------------

#: Short references, lower case and without punctuation, so that every tiny tokenizer (BLIP's lower-cases) writes
#: them back exactly; the first eight are the training split, the last two the validation split.
TRAINING_REFERENCES = ["no acute disease", "heart size normal lungs clear", "small left effusion",
                       "cardiomegaly without edema", "right lower lobe pneumonia", "no pneumothorax", "stable chest",
                       "mild atelectasis at the bases", "normal chest", "clear lungs"]


def write_training_manifest(folder: Path, references=TRAINING_REFERENCES, n_val: int = 2) -> Path:
    """A manifest with a split column: one distinct image per study (checkerboards of different periods and
    brightness, so that even tiny random vision towers tell them apart) and its reference; the last ``n_val``
    studies are the validation split."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, reference in enumerate(references):
        y, x = np.mgrid[0:48, 0:48]
        period = 4 + 2 * i
        pixels = (((x // period + y // period) % 2) * 120 + 20 * i).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"study{i}.png")
        rows.append({"id": f"T{i:02d}", "image_path": f"study{i}.png", "reference": reference,
                     "split": "val" if i >= len(references) - n_val else "train"})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def finetune_config(tmp: Path, checkpoint: Path, manifest: Path, run_name: str = "ft", **overrides) -> Path:
    """A fine-tuning configuration on the CPU in float32 (a short prompt, for speed); ``section__key=value``
    overrides any setting."""
    cfg = {
        "model": {"name_or_path": str(checkpoint), "device": "cpu", "dtype": "float32"},
        "prompt": {"system": "You are a radiologist.", "user": "Report."},
        "generation": {"batch_size": 8, "max_new_tokens": 16},
        "data": {"format": "manifest", "manifest": str(manifest), "split": "train"},
        "loader": {"num_workers": 0},
        "output": {"dir": str(tmp / "runs"), "run_name": f"{run_name}-gen", "html": False},
        "evaluation": {"bootstrap": 0},
        "training": {"run_name": run_name, "max_steps": 24, "batch_size": 4, "gradient_accumulation": 1,
                     "learning_rate": 0.005, "lr_scheduler": "constant", "lora_r": 8, "lora_alpha": 16,
                     "lora_dropout": 0.0, "checkpoint_every": 8, "eval_every": 8, "gradient_checkpointing": False},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def finetune_process(cfg_path: Path, *args: str, env=None) -> subprocess.Popen:
    """finetune_cxr.py in its own process group (stdout and stderr piped)."""
    return subprocess.Popen([sys.executable, str(ROOT / "finetune_cxr.py"), "--quiet", "--config", str(cfg_path),
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)


def committed_step(run_dir: Path) -> int:
    """The step of a training run's last committed checkpoint (0 before the first)."""
    try:
        return json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"]
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))
