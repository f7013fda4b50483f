"""The transformers backend on tiny random LLaVA-HF and Gemma-3 checkpoints saved by transformers itself: reports
through the pipeline equal transformers' own generate one image at a time; prompts, sampling, bad input, configs."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cxrgen import runner, runstore
from cxrgen.config import Config, ModelConfig, PromptConfig, load_config
from cxrgen.imaging import read_image
from cxrgen.models import ModelError
from cxrgen.models.transformers import TransformersBackend, load
from cxrgen.models.transformers.tiny import build_tiny_blip, build_tiny_gemma3, build_tiny_llava
from helpers import transformers_generate

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted((ROOT / "demo" / "images").glob("*.png"))
SYSTEM = "You are an expert radiologist."
USER = "Describe this chest X-ray. Write the findings and the impression."
MAX_NEW = 24
N_STUDIES = 7  # batches of 3, 3 and 1 at batch size 3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-hf")
    return {"llava": build_tiny_llava(root / "llava"), "gemma3": build_tiny_gemma3(root / "gemma3")}


@pytest.fixture(scope="module")
def backends(checkpoints) -> dict[str, TransformersBackend]:
    return {name: load(model_cfg(folder)) for name, folder in checkpoints.items()}


def model_cfg(folder, **overrides):
    return ModelConfig(**{"backend": "transformers", "name_or_path": str(folder), "device": "cpu",
                          "dtype": "float32", **overrides})


def write_manifest(folder: Path, n: int = N_STUDIES) -> Path:
    rows = [{"id": f"S{i:03d}", "image_path": str(IMAGES[i % len(IMAGES)]),
             "reference": f"Report {i}: the lungs are clear, no effusion."} for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def run_config(tmp: Path, folder: Path, run_name: str, *, system: str | None = SYSTEM, **sections) -> dict:
    cfg = {
        "model": {"backend": "transformers", "name_or_path": str(folder), "device": "cpu", "dtype": "float32"},
        "prompt": {"system": system, "user": USER},
        "generation": {"batch_size": 3, "max_new_tokens": MAX_NEW},
        "data": {"format": "manifest", "manifest": str(write_manifest(tmp)), "split": "all"},
        "loader": {"num_workers": 0},
        "output": {"dir": str(tmp / "runs"), "run_name": run_name, "html": False},
        "evaluation": {"bootstrap": 20, "clinical": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def run(tmp: Path, folder: Path, backend, run_name: str, **sections) -> pd.DataFrame:
    cfg = Config.from_dict(run_config(tmp, folder, run_name, **sections))
    assert runner.generate(cfg, model=backend, progress=False) == runner.EXIT_OK
    return runstore.read_reports_csv(tmp / "runs" / run_name / "reports.csv", "reports.csv")


@pytest.fixture(scope="module")
def reference(checkpoints) -> dict[str, list[tuple[str, int, bool]]]:
    """transformers' own generate, one image at a time (helpers.transformers_generate)."""
    images = [IMAGES[i % len(IMAGES)] for i in range(N_STUDIES)]
    return {name: transformers_generate(folder, images, SYSTEM, USER, MAX_NEW) for name, folder in checkpoints.items()}


def as_rows(frame: pd.DataFrame) -> list[tuple[str, int, bool]]:
    return [(text, int(n), bool(s)) for text, n, s in
            zip(frame["generated_report"].fillna(""), frame["n_new_tokens"], frame["stopped_at_eos"])]


# -- the bar: the pipeline equals transformers' own generate ------------------------------------------------------

@pytest.mark.parametrize("name", ["llava", "gemma3"])
def test_reports_equal_transformers_generate_one_image_at_a_time(tmp_path, checkpoints, backends, reference, name):
    expected = reference[name]
    # the tiny checkpoint covers what matters: reports differ between images, some stop at EOS and some do not
    assert len({text for text, _, _ in expected}) > 1
    assert any(s for _, _, s in expected) and not all(s for _, _, s in expected)
    b1 = run(tmp_path, checkpoints[name], backends[name], "b1", generation={"batch_size": 1})
    b3 = run(tmp_path, checkpoints[name], backends[name], "b3", loader={"num_workers": 2})
    assert as_rows(b1) == expected
    assert as_rows(b3) == expected
    info = json.loads((tmp_path / "runs" / "b3" / "run.json").read_text())
    model_info = info["model"]
    assert model_info["backend"] == "transformers" and model_info["processor_split"].startswith("image part")


def test_whole_processor_in_the_main_process_gives_the_same_reports(tmp_path, checkpoints, backends, reference,
                                                                   monkeypatch):
    backend = backends["gemma3"]
    monkeypatch.setattr(backend, "image_keys", None)  # as for a processor whose image tokens depend on the image
    prepared = backend.image_preparer()(read_image(IMAGES[0]))
    assert prepared.mode == "RGB"
    assert as_rows(run(tmp_path, checkpoints["gemma3"], backend, "whole")) == reference["gemma3"]


def test_a_captioner_without_chat_template_runs_as_the_benchmark_ran_it(tmp_path):
    """A BLIP captioner (nathansutton/generate-cxr's layout) with prompt.user "": processor(images=image) only,
    then generate, the whole output decoded: the replaced benchmark's procedure, one image at a time."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = build_tiny_blip(tmp_path / "blip")
    backend = load(model_cfg(folder))
    assert backend.chat_template is None and backend.describe()["model_class"] == "BlipForConditionalGeneration"
    assert backend.render_prompt(prompt(SYSTEM, "the heart is")) == "the heart is"
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    expected = []
    for i in range(N_STUDIES):
        inputs = processor(images=read_image(IMAGES[i % len(IMAGES)]).convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            generated = model.generate(**inputs, max_new_tokens=MAX_NEW)
        expected.append(processor.decode(generated[0], skip_special_tokens=True).strip())
    assert len(set(expected)) > 1
    frame = run(tmp_path, folder, backend, "blip", prompt={"system": None, "user": ""})
    assert list(frame["generated_report"].fillna("")) == expected


def test_cli_runs_a_transformers_checkpoint(tmp_path, checkpoints, reference):
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(run_config(tmp_path, checkpoints["llava"], "cli")))
    result = subprocess.run([sys.executable, str(ROOT / "generate_cxr.py"), "--quiet", "--config", str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    frame = runstore.read_reports_csv(tmp_path / "runs" / "cli" / "reports.csv", "reports.csv")
    assert as_rows(frame) == reference["llava"]


def test_sampled_reports_do_not_depend_on_the_batch(tmp_path, checkpoints, backends, reference):
    sampling = {"temperature": 1.0, "top_p": 0.95, "seed": 7}
    one = run(tmp_path, checkpoints["llava"], backends["llava"], "s1", generation={"batch_size": 1, **sampling})
    three = run(tmp_path, checkpoints["llava"], backends["llava"], "s3", generation={"batch_size": 3, **sampling})
    other = run(tmp_path, checkpoints["llava"], backends["llava"], "s3b",
                generation={"batch_size": 3, **sampling, "seed": 8})
    assert as_rows(one) == as_rows(three)
    assert as_rows(three) != reference["llava"]  # sampled, not greedy
    assert as_rows(other) != as_rows(three)  # the seed matters


# -- prompt ---------------------------------------------------------------------------------------------------------

def prompt(system, user):
    return PromptConfig(system=system, user=user)


@pytest.mark.parametrize("name", ["llava", "gemma3"])
def test_prompt_renders_through_the_chat_template(backends, name):
    backend = backends[name]
    with_system = backend.render_prompt(prompt(SYSTEM, USER))
    without = backend.render_prompt(prompt(None, USER))
    assert SYSTEM in with_system and USER in with_system and SYSTEM not in without and USER in without
    assert backend.render_prompt(prompt("", USER)) == without == backend.render_prompt(prompt("  ", USER))
    image_marker = "<image>" if name == "llava" else "<start_of_image>"
    assert without.count(image_marker) == 1 and without.index(image_marker) < without.index(USER)


def test_prompt_user_is_required(backends):
    with pytest.raises(ModelError) as err:
        backends["llava"].render_prompt(prompt(SYSTEM, None))
    assert "prompt.user" in str(err.value) and "\n" not in str(err.value)


def test_batch_invariance_is_refused_before_a_study_is_taken(backends):
    """generation.batch_invariant promises what transformers' generate cannot keep: one line, no study consumed."""
    from cxrgen.config import GenerationConfig

    taken = []

    def items():
        taken.append(1)
        yield from ()

    with pytest.raises(ModelError, match="generation.batch_invariant: true is supported by the cxr_llava backend only"):
        next(iter(backends["llava"].stream(items(), prompt(SYSTEM, USER), GenerationConfig(batch_invariant=True))))
    assert not taken


def test_system_as_a_string_for_templates_that_take_only_strings(backends, monkeypatch):
    backend = backends["llava"]
    string_only = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ 'SYSTEM: ' + m['content'] + '\\n' }}"
                   "{% else %}{{ 'USER: ' }}{% for p in m['content'] %}{% if p['type'] == 'image' %}{{ '<image>\\n' }}"
                   "{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %} ASSISTANT:")
    monkeypatch.setattr(backend.processor, "chat_template", string_only)
    assert backend.render_prompt(prompt(SYSTEM, USER)) == f"SYSTEM: {SYSTEM}\nUSER: <image>\n{USER} ASSISTANT:"


def test_without_a_chat_template_the_user_text_is_the_prompt(backends, monkeypatch):
    backend = backends["llava"]
    monkeypatch.setattr(backend, "chat_template", None)
    assert backend.render_prompt(prompt(SYSTEM, "a chest radiograph of")) == "a chest radiograph of"


# -- what ran --------------------------------------------------------------------------------------------------------

def test_describe_says_what_ran(checkpoints, backends):
    from cxrgen.models.base import checkpoint_digest

    info = backends["gemma3"].describe()
    assert (info["backend"], info["model_class"], info["processor_class"]) == \
        ("transformers", "Gemma3ForConditionalGeneration", "Gemma3Processor")
    assert (info["dtype"], info["device"], info["revision"], info["adapter"], info["quantization"]) == \
        ("float32", "cpu", None, None, "none")
    assert info["trust_remote_code"] is False and info["remote_code"] == "off"
    assert info["digest"] == checkpoint_digest(checkpoints["gemma3"])
    assert backends["llava"].describe()["digest"] != info["digest"]


def fake_hub_cache(cache: Path, repo: str, folder: Path, commit: str) -> None:
    owner, name = repo.split("/")
    repo_dir = cache / f"models--{owner}--{name}"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


def test_a_hub_id_loads_offline_from_the_cache_with_its_commit(tmp_path, checkpoints, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-llava", checkpoints["llava"], commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for revision in (None, "main", commit):
        backend = load(model_cfg("tiny-org/tiny-llava", revision=revision))
        assert backend.describe()["revision"] == commit and backend.describe()["source"] == "tiny-org/tiny-llava"


def test_adapter_and_quantization_code_is_not_imported_when_unused(checkpoints, monkeypatch):
    monkeypatch.setitem(sys.modules, "cxrgen.models.adapters", None)  # an import would fail
    monkeypatch.setitem(sys.modules, "cxrgen.models.quantization", None)
    assert load(model_cfg(checkpoints["llava"])).describe()["adapter"] is None


def test_trust_remote_code_is_logged_and_recorded(checkpoints, caplog):
    with caplog.at_level(logging.WARNING, logger="cxrgen"):
        backend = load(model_cfg(checkpoints["llava"], trust_remote_code=True))
    assert any("trust_remote_code" in r.getMessage() for r in caplog.records)
    info = backend.describe()
    assert info["trust_remote_code"] is True and "none was executed" in info["remote_code"]


# -- bad input: one line naming the path or key, before any image is read ---------------------------------------

def one_line_error(cfg) -> str:
    with pytest.raises(ModelError) as err:
        load(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_hub_id_neither_cached_nor_downloadable(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    message = one_line_error(model_cfg("nobody/no-such-model"))
    assert "nobody/no-such-model" in message and "not in the local Hugging Face cache" in message
    assert "model.allow_download: false" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in one_line_error(model_cfg("nobody/no-such-model", allow_download=True))
    assert "no such checkpoint folder" in one_line_error(model_cfg(tmp_path / "missing"))


def test_a_folder_without_a_processor(tmp_path, checkpoints):
    folder = tmp_path / "no-processor"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(checkpoints["llava"] / name, folder / name)
    message = one_line_error(model_cfg(folder))
    assert str(folder) in message and "processor" in message


def test_a_model_class_that_is_not_image_text_to_text(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    message = one_line_error(model_cfg(folder))
    assert str(folder / "config.json") in message and "'bert'" in message
    assert "AutoModelForImageTextToText cannot load it" in message


def test_remote_code_needed_but_off(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my-cxr-model", "auto_map": {"AutoConfig": "configuration_my.MyConfig",
                                                   "AutoModelForImageTextToText": "modeling_my.MyModel"}}))
    message = one_line_error(model_cfg(folder))
    assert str(folder / "config.json") in message and "model.trust_remote_code: true" in message
    assert "modeling_my.MyModel" in message


def test_cli_bad_model_exits_2_before_reading_images(tmp_path, checkpoints, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_cxr_cli", ROOT / "generate_cxr.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    folder = tmp_path / "no-processor"
    folder.mkdir()
    shutil.copy(checkpoints["llava"] / "config.json", folder / "config.json")
    cfg = run_config(tmp_path, folder, "bad")
    pd.DataFrame([{"id": "X1", "image_path": str(tmp_path / "unreadable.png"), "reference": "r"}]).to_csv(
        cfg["data"]["manifest"], index=False)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["--quiet", "--config", str(path)]) == runner.EXIT_USAGE
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(folder) in errors[0] and "processor" in errors[0]
    assert "unreadable.png" not in err  # no image was read


# -- shipped configurations ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    documented = yaml.safe_load(path.read_text())
    if cfg.model.backend in ("transformers", "retrieval"):  # the model configs list every key, as config.yaml does
        expected = {s: set(v) for s, v in cfg.to_dict().items()}
        if cfg.model.backend == "retrieval":  # fine-tuning refuses it: the config says so instead of a section
            del expected["training"]
            assert "finetune_cxr.py refuses" in path.read_text()
        assert {s: set(v) for s, v in documented.items()} == expected
        assert cfg.model.trust_remote_code is False
        assert (cfg.prompt.user is not None) == (cfg.model.backend == "transformers")  # retrieval writes no prompt


def test_model_configs_are_shipped():
    names = {load_config(p).model.name_or_path for p in (ROOT / "configs").glob("*.yaml")}
    assert {"google/medgemma-4b-it", "nathansutton/generate-cxr"} <= names


def test_top_p_keeps_tokens_while_the_mass_above_them_is_below_top_p():
    """One nucleus rule for both backends, transformers' own: compared with TopPLogitsWarper, ties included."""
    import torch
    from transformers.generation.logits_process import TopPLogitsWarper

    from cxrgen.models.base import top_p_filter

    # binary fractions, so that the mass above a token can equal top_p exactly (0.5, 0.75)
    probs = torch.tensor([[0.5, 0.25, 0.1875, 0.0625], [0.0625, 0.4375, 0.125, 0.375],
                          [0.9375, 0.03125, 0.0234375, 0.0078125]])
    for top_p in (0.3, 0.5, 0.6, 0.75, 0.8, 0.95, 0.99):
        ours = top_p_filter(probs, top_p) > 0
        theirs = torch.isfinite(TopPLogitsWarper(top_p)(None, probs.log()))
        assert torch.equal(ours, theirs), top_p
    assert (top_p_filter(probs, 0.75)[0] > 0).tolist() == [True, True, False, False]  # mass above == top_p: dropped
