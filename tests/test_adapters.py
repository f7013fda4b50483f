"""model.adapter: a PEFT LoRA merged at load time gives the reports of a checkpoint with W + scaling * B @ A
written into its weights beforehand, for both backends; adapters that do not fit are refused by name."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cxrgen.config import ModelConfig
from cxrgen.models import ModelError, load
from cxrgen.models.adapters import merge_cxr_llava_adapter, merge_transformers_adapter
from cxrgen.models.cxr_llava import CxrLlava
from helpers import HIDDEN, LAYERS, write_lora

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted((ROOT / "demo" / "images").glob("*.png"))[:2]


@pytest.fixture(scope="module")
def base_reports(tiny_dir):
    return _reports(CxrLlava.from_pretrained(tiny_dir, device="cpu"))


def _reports(model) -> list[list[int]]:
    return [r.token_ids for r in model.generate_reports([Image.open(p) for p in IMAGES], max_new_tokens=24)]


def premerged_checkpoint(tiny_dir: Path, out: Path, pairs, scaling) -> Path:
    """A copy of the checkpoint with W + scaling(module) * B @ A written into its safetensors files."""
    shutil.copytree(tiny_dir, out)
    done = set()
    for file in sorted(out.glob("*.safetensors")):
        tensors = load_file(str(file))
        for module, (a, b) in pairs.items():
            key = module + ".weight"
            if key in tensors:
                tensors[key] = tensors[key] + scaling(module) * (b @ a)
                done.add(module)
        save_file(tensors, str(file), metadata={"format": "pt"})
    assert done == set(pairs)
    return out


def cfg(tiny_dir: Path, adapter: Path | str | None, **kw) -> ModelConfig:
    return ModelConfig(name_or_path=str(tiny_dir), device="cpu", adapter=str(adapter) if adapter else None, **kw)


# -- CXR-LLaVA ----------------------------------------------------------------------------------------------------

def test_published_layout_adapter_equals_premerged_checkpoint(tiny_dir, base_reports, tmp_path):
    pairs = write_lora(tmp_path / "lora", prefix="llama")
    merged = premerged_checkpoint(tiny_dir, tmp_path / "merged", pairs, lambda m: 8 / 4)
    backend = load(cfg(tiny_dir, tmp_path / "lora"))  # through the backend's load(), as a run does
    reference = CxrLlava.from_pretrained(merged, device="cpu")
    ours, theirs = dict(backend.model.named_parameters()), dict(reference.named_parameters())
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)
    with_adapter = _reports(backend.model)
    assert with_adapter == _reports(reference)
    assert with_adapter != base_reports  # the adapter changes the reports, so the equality above means something

    record = backend.describe()["adapter"]
    weights = tmp_path / "lora" / "adapter_model.safetensors"
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (record["r"], record["lora_alpha"], record["target_modules"]) == (4, 8, ["q_proj", "v_proj"])
    assert record["modules_merged"] == 2 * LAYERS and record["folder"] == str(tmp_path / "lora")
    assert record["commit"] is None


def test_plain_llama_layout_other_targets_and_fan_in_fan_out(tiny_dir, base_reports, tmp_path, caplog):
    """Keys as PEFT writes them for a LlamaForCausalLM, non-square MLP targets, and fan_in_fan_out: true, which
    (as in PEFT) does not transpose anything for nn.Linear layers."""
    targets = ("o_proj", "gate_proj", "down_proj")
    pairs = write_lora(tmp_path / "lora", prefix="model", targets=targets, r=4, alpha=8, fan_in_fan_out=True)
    merged = premerged_checkpoint(tiny_dir, tmp_path / "merged", pairs, lambda m: 8 / 4)
    model = CxrLlava.from_pretrained(tiny_dir, device="cpu")
    with caplog.at_level(logging.WARNING, logger="cxrgen"):
        record = merge_cxr_llava_adapter(model, cfg(tiny_dir, tmp_path / "lora"))
    assert "fan_in_fan_out" in caplog.text
    assert record["modules_merged"] == len(targets) * LAYERS
    reports = _reports(model)
    assert reports == _reports(CxrLlava.from_pretrained(merged, device="cpu"))
    assert reports != base_reports


def test_rslora_rank_and_alpha_patterns(tiny_dir, tmp_path):
    """use_rslora scales by alpha / sqrt(r); alpha_pattern gives one module its own alpha."""
    pairs = write_lora(tmp_path / "lora", r=4, alpha=8, use_rslora=True, rank_pattern={"v_proj": 4},
                       alpha_pattern={r"layers\.1\.self_attn\.q_proj": 2})
    base = dict(CxrLlava.from_pretrained(tiny_dir, device="cpu").named_parameters())
    model = CxrLlava.from_pretrained(tiny_dir, device="cpu")
    merge_cxr_llava_adapter(model, cfg(tiny_dir, tmp_path / "lora"))
    params = dict(model.named_parameters())
    for module, (a, b) in pairs.items():
        name = "language_model.model." + module[len("llama."):] + ".weight"
        alpha = 2 if module == "llama.layers.1.self_attn.q_proj" else 8
        assert torch.equal(params[name], base[name] + (b @ a) * (alpha / math.sqrt(4))), module
    untouched = "language_model.model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(params[untouched], base[untouched])


def test_bfloat16_merge_is_done_in_float32_then_cast(tiny_dir, tmp_path):
    pairs = write_lora(tmp_path / "lora", targets=("q_proj",))
    base = CxrLlava.from_pretrained(tiny_dir, device="cpu", dtype="float32")
    model = CxrLlava.from_pretrained(tiny_dir, device="cpu", dtype="bfloat16")
    merge_cxr_llava_adapter(model, cfg(tiny_dir, tmp_path / "lora"))
    a, b = pairs["llama.layers.0.self_attn.q_proj"]
    w = base.language_model.model.layers[0].self_attn.q_proj.weight
    got = model.language_model.model.layers[0].self_attn.q_proj.weight
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, (w.bfloat16().float() + 2 * (b @ a)).bfloat16())


def test_hub_id_is_read_from_the_local_cache_only(tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-lora"
    write_lora(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = CxrLlava.from_pretrained(tiny_dir, device="cpu")
    record = merge_cxr_llava_adapter(model, cfg(tiny_dir, "someone/tiny-lora"))
    assert record["commit"] == commit and record["path"] == "someone/tiny-lora"
    with pytest.raises(ModelError, match="someone/other-lora: not in the local Hugging Face cache"):
        merge_cxr_llava_adapter(model, cfg(tiny_dir, "someone/other-lora"))


def _refusal(tiny_dir, adapter, model_cfg=None) -> str:
    """The one-line error for ``adapter``; the model's weights are unchanged afterwards."""
    model = CxrLlava.from_pretrained(tiny_dir, device="cpu")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ModelError) as e:
        merge_cxr_llava_adapter(model, model_cfg or cfg(tiny_dir, adapter))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    message = str(e.value)
    assert "\n" not in message
    return message


def _edit_tensors(folder: Path, edit) -> None:
    file = folder / "adapter_model.safetensors"
    tensors = edit(load_file(str(file)))
    save_file(tensors, str(file))


def test_refuses_tensors_that_match_nothing(tiny_dir, tmp_path):
    write_lora(tmp_path / "gpt2", prefix="transformer")
    assert "tensor base_model.model.transformer.layers.0.self_attn.q_proj.lora_A.weight matches no module" in \
        _refusal(tiny_dir, tmp_path / "gpt2")
    write_lora(tmp_path / "extra")
    _edit_tensors(tmp_path / "extra", lambda t: {**t, "base_model.model.lm_head.weight": torch.zeros(3)})
    assert "tensor base_model.model.lm_head.weight is not a LoRA A or B matrix" in \
        _refusal(tiny_dir, tmp_path / "extra")
    write_lora(tmp_path / "untargeted", target_modules=["v_proj"])
    assert "q_proj, which target_modules ['v_proj']" in _refusal(tiny_dir, tmp_path / "untargeted")
    write_lora(tmp_path / "all-linear", target_modules="all-linear")  # PEFT's all-linear leaves lm_head out
    _edit_tensors(tmp_path / "all-linear", lambda t: {**t, "base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64),
                                                      "base_model.model.lm_head.lora_B.weight": torch.zeros(1000, 4)})
    assert "lm_head, which target_modules 'all-linear'" in _refusal(tiny_dir, tmp_path / "all-linear")
    write_lora(tmp_path / "lonely")
    dropped = "base_model.model.llama.layers.1.self_attn.v_proj.lora_B.weight"
    _edit_tensors(tmp_path / "lonely", lambda t: {k: v for k, v in t.items() if k != dropped})
    assert "layers.1.self_attn.v_proj.lora_A.weight has no matching lora_B" in _refusal(tiny_dir, tmp_path / "lonely")


def test_refuses_shapes_that_do_not_fit(tiny_dir, tmp_path):
    write_lora(tmp_path / "wide")
    key = "base_model.model.llama.layers.0.self_attn.q_proj.lora_A.weight"
    _edit_tensors(tmp_path / "wide", lambda t: {**t, key: torch.zeros(4, HIDDEN + 1)})
    assert f"tensor {key} has shape (4, 65), but language_model.model.layers.0.self_attn.q_proj needs (4, 64)" in \
        _refusal(tiny_dir, tmp_path / "wide")
    write_lora(tmp_path / "rank", r=8, alpha=16)  # tensors of rank 8 ...
    config = json.loads((tmp_path / "rank" / "adapter_config.json").read_text())
    (tmp_path / "rank" / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))  # ... config says 4
    assert "has rank 8, but adapter_config.json gives r=4" in _refusal(tiny_dir, tmp_path / "rank")


def test_refuses_other_peft_types_missing_folders_and_other_bases(tiny_dir, tmp_path, caplog):
    write_lora(tmp_path / "ia3")
    (tmp_path / "ia3" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"],
         "feedforward_modules": ["down_proj"]}))
    assert "peft_type is 'IA3'; only LoRA adapters" in _refusal(tiny_dir, tmp_path / "ia3")
    assert f"model.adapter {tmp_path / 'nowhere'}: no such adapter folder" in _refusal(tiny_dir, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no adapter_config.json in" in _refusal(tiny_dir, tmp_path / "empty")
    write_lora(tmp_path / "dora", use_dora=True)
    assert "use_dora is set" in _refusal(tiny_dir, tmp_path / "dora")

    write_lora(tmp_path / "llama", base_model_name_or_path="meta-llama/Llama-2-7b-chat-hf")
    hub_cfg = replace(cfg(tiny_dir, tmp_path / "llama"), name_or_path="ECOFRI/CXR-LLAVA-v2")
    assert ("base_model_name_or_path is meta-llama/Llama-2-7b-chat-hf, but the model is ECOFRI/CXR-LLAVA-v2"
            in _refusal(tiny_dir, None, hub_cfg))
    # the same Hub id in another case, or a local path that differs: merged (a warning for the path)
    write_lora(tmp_path / "same", base_model_name_or_path="ecofri/cxr-llava-v2")
    merge_cxr_llava_adapter(CxrLlava.from_pretrained(tiny_dir, device="cpu"),
                            replace(hub_cfg, adapter=str(tmp_path / "same")))
    write_lora(tmp_path / "local", base_model_name_or_path="/elsewhere/checkpoints/cxr-llava")
    with caplog.at_level(logging.WARNING, logger="cxrgen"):
        record = merge_cxr_llava_adapter(CxrLlava.from_pretrained(tiny_dir, device="cpu"),
                                         cfg(tiny_dir, tmp_path / "local"))
    assert "differs from model.name_or_path" in caplog.text and record["modules_merged"] == 2 * LAYERS


# -- transformers (through PEFT) ----------------------------------------------------------------------------------

def _tiny_llava(seed: int = 0):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=127, image_seq_length=16,
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llava") / "tiny-llava"
    _tiny_llava().save_pretrained(folder)
    return folder


def _llava(folder):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def _llava_generate(model) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    ids = torch.tensor([[1, 5] + [127] * 16 + [9, 10, 11]] * 2)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                             max_new_tokens=12, do_sample=False)
    return out[:, ids.shape[1]:].tolist()


def write_peft_adapter(base_folder: Path, out: Path, **lora) -> Path:
    """An adapter written by PEFT itself, with random (non-zero) B."""
    from peft import LoraConfig, get_peft_model

    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    torch.manual_seed(3)
    peft_model = get_peft_model(_llava(base_folder), LoraConfig(**{**settings, **lora}))
    peft_model.save_pretrained(out)
    return out


def test_transformers_adapter_written_by_peft_equals_premerged(llava_dir, tmp_path):
    adapter = write_peft_adapter(llava_dir, tmp_path / "lora")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    premerged = _llava(llava_dir)
    n = 0
    with torch.no_grad():
        for key, a in tensors.items():
            if ".lora_A." in key:
                module = premerged.get_submodule(key[len("base_model.model."):].split(".lora_A.")[0])
                module.weight += (8 / 4) * (tensors[key.replace("lora_A", "lora_B")] @ a)
                n += 1
    model = _llava(llava_dir)
    record = merge_transformers_adapter(model, ModelConfig(name_or_path=str(llava_dir), adapter=str(adapter)))
    assert not [name for name, _ in model.named_modules() if "lora_" in name]  # merged and unloaded in place
    assert record["modules_merged"] == n and n > 0
    assert record["sha256"] == hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    ours, theirs = dict(model.named_parameters()), dict(premerged.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6, rtol=0) for k in theirs)
    generated = _llava_generate(model)
    assert generated == _llava_generate(premerged)
    assert generated != _llava_generate(_llava(llava_dir))


def test_transformers_refusals(llava_dir, tmp_path):
    def refusal(adapter: Path) -> str:
        model = _llava(llava_dir)
        before = {n: p.clone() for n, p in model.named_parameters()}
        with pytest.raises(ModelError) as e:
            merge_transformers_adapter(model, ModelConfig(name_or_path=str(llava_dir), adapter=str(adapter)))
        assert "\n" not in str(e.value)
        assert {n for n, _ in model.named_parameters()} == before.keys()  # no LoRA layer left behind
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        return str(e.value)

    good = write_peft_adapter(llava_dir, tmp_path / "good")
    renamed = tmp_path / "renamed"
    shutil.copytree(good, renamed)
    _edit_tensors(renamed, lambda t: {k.replace(".layers.0.", ".blocks.0."): v for k, v in t.items()})
    assert "matches no LoRA layer of the model" in refusal(renamed)
    wrong = tmp_path / "wrong"
    shutil.copytree(good, wrong)
    _edit_tensors(wrong, lambda t: {k: (torch.zeros(v.shape[0], v.shape[1] + 1) if ".lora_A." in k else v)
                                    for k, v in t.items()})
    assert "size mismatch" in refusal(wrong)
    nothing = tmp_path / "nothing"
    shutil.copytree(good, nothing)
    config = json.loads((nothing / "adapter_config.json").read_text())
    (nothing / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["c_attn"]}))
    assert "c_attn" in refusal(nothing)
    ia3 = tmp_path / "ia3"
    shutil.copytree(good, ia3)
    (ia3 / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    assert "peft_type is 'IA3'" in refusal(ia3)
    assert "no such adapter folder" in refusal(tmp_path / "nowhere")


def test_the_cxr_llava_path_does_not_import_peft():
    """The adapter module imports without pulling in peft (the cxr_llava backend does not need it)."""
    import subprocess
    import sys

    code = "import sys, cxrgen.models.adapters; print('peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_transformers_backend_reports_with_adapter_equal_premerged_checkpoint(tmp_path, family):
    """Through the transformers backend's load() and stream(): the tiny LLaVA-HF / Gemma-3 checkpoints."""
    from transformers import AutoModelForImageTextToText

    from cxrgen.config import GenerationConfig, PromptConfig
    from cxrgen.models.base import Item
    from cxrgen.models.transformers import tiny

    base = getattr(tiny, f"build_tiny_{family}")(tmp_path / "base")
    adapter = tmp_path / "lora"
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(5)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                      init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32), lora)
    peft_model.save_pretrained(adapter)
    # a strong adapter, so that it changes even the tiny Gemma-3's (repetitive) greedy reports
    _edit_tensors(adapter, lambda t: {k: v * 20 if ".lora_B." in k else v for k, v in t.items()})
    premerged = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    with torch.no_grad():
        for key, a in tensors.items():
            if ".lora_A." in key:
                module = premerged.get_submodule(key[len("base_model.model."):].split(".lora_A.")[0])
                module.weight += 2.0 * (tensors[key.replace("lora_A", "lora_B")] @ a)
    shutil.copytree(base, tmp_path / "merged")
    premerged.save_pretrained(tmp_path / "merged")

    def reports(folder, lora=None):
        backend = load(ModelConfig(name_or_path=str(folder), backend="transformers", device="cpu",
                                   dtype="float32", adapter=str(lora) if lora else None))
        prepare = backend.image_preparer()
        items = [Item(i, prepare(Image.open(p).convert("L")), 0) for i, p in enumerate(IMAGES)]
        out = {}
        for done in backend.stream(iter(items), PromptConfig(user="Describe the findings."),
                                   GenerationConfig(batch_size=2, max_new_tokens=12)):
            out.update({item.key: report.token_ids for item, report in done})
        return out, backend.describe()

    with_adapter, described = reports(base, adapter)
    assert described["adapter"]["modules_merged"] > 0 and described["adapter"]["r"] == 4
    assert with_adapter == reports(tmp_path / "merged")[0]
    assert with_adapter != reports(base)[0]


def test_a_run_refuses_to_resume_when_the_adapter_files_changed(tiny_dir, tmp_path):
    """The adapter's content, not only its path, defines a run: new weights under the same path are not mixed in."""
    from cxrgen import runner
    from cxrgen.config import load_config

    images = sorted((Path(__file__).resolve().parents[1] / "demo" / "images").glob("*.png"))[:2]
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image_path,reference\n" + "".join(f"s{i},{p},clear lungs\n" for i, p in enumerate(images)))
    write_lora(tmp_path / "lora", seed=1)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "model": {"name_or_path": str(tiny_dir), "device": "cpu", "adapter": str(tmp_path / "lora")},
        "generation": {"max_new_tokens": 4}, "data": {"format": "manifest", "manifest": str(manifest), "split": "all"},
        "loader": {"num_workers": 0}, "output": {"dir": str(tmp_path / "runs"), "run_name": "a", "html": False},
        "evaluation": {"bootstrap": 0}}))
    assert runner.generate(load_config(config), progress=False) == 0
    assert runner.generate(load_config(config), progress=False) == 0  # same files: resumes (nothing to do)
    write_lora(tmp_path / "lora", seed=2)
    with pytest.raises(runner.RunError, match="model.adapter_sha256"):
        runner.generate(load_config(config), progress=False)
