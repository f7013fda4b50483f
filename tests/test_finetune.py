"""finetune_cxr.py on tiny random checkpoints (CXR-LLaVA, and Gemma-3, LLaVA-HF and BLIP through the transformers
backend): the training sequence is what generation feeds the model, the loss counts exactly the reference and end
tokens, a trained adapter makes generate_cxr.py write the training references, the trained model's logits are
those of base + saved adapter through generation, and the outputs a run leaves."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import finetune_cxr
import generate_cxr
from cxrgen import models
from cxrgen.config import load_config
from cxrgen.imaging import read_image
from cxrgen.models.base import Item
from cxrgen.models.transformers.tiny import build_tiny_blip, build_tiny_gemma3, build_tiny_llava
from cxrgen.training.engine import step_loss, token_nll
from cxrgen.training.sequences import IGNORE, collate, sequences
from helpers import TRAINING_REFERENCES, adapter_tensors, finetune_config, write_training_manifest

#: The factor by which training lowers the training loss (first step's loss / last step's) in the memorising runs.
LOSS_FACTOR = 5
#: Per architecture, settings under which 8 short references are memorised in a few seconds.
MEMORISE = {"cxr_llava": dict(max_steps=24, learning_rate=0.005),
            "gemma3": dict(max_steps=30, learning_rate=0.01),
            "llava": dict(max_steps=30, learning_rate=0.005)}


@pytest.fixture(scope="module")
def checkpoints(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-transformers")
    return {"cxr_llava": tiny_dir, "gemma3": build_tiny_gemma3(root / "gemma3"),
            "llava": build_tiny_llava(root / "llava"), "blip": build_tiny_blip(root / "blip")}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_training_manifest(tmp_path_factory.mktemp("training-data"))


def config_for(kind: str, tmp: Path, checkpoints, manifest, **training) -> Path:
    prompt = {"prompt__system": None, "prompt__user": ""} if kind == "blip" else {}  # BLIP: images only
    return finetune_config(tmp, checkpoints[kind], manifest, run_name=kind, **prompt,
                           **{f"training__{k}": v for k, v in training.items()})


def train(cfg_path: Path, capsys, *args: str) -> Path:
    """finetune_cxr.py in this process; returns the adapter folder it printed last."""
    assert finetune_cxr.main(["--quiet", "--config", str(cfg_path), *args]) == 0, capsys.readouterr().err
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def study_inputs(backend, manifest: Path, index: int = 0):
    return backend.image_preparer()(read_image(manifest.parent / f"study{index}.png"))


# -- the sequence --------------------------------------------------------------------------------------------------

def _capture(module, store: list):
    """A pre-hook keeping every call's tensor arguments (positional and keyword) by name."""
    def hook(mod, args, kwargs):
        names = ["x"] + [f"arg{i}" for i in range(1, len(args))]
        store.append({**{n: a for n, a in zip(names, args) if torch.is_tensor(a)},
                      **{k: v for k, v in kwargs.items() if torch.is_tensor(v)}})
    return module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("kind", ["cxr_llava", "gemma3", "llava", "blip"])
def test_the_prompt_of_a_training_sequence_is_what_generation_feeds_the_model(kind, checkpoints, manifest, tmp_path):
    """What reaches the language model in generation's prefill (CXR-LLaVA: the first layer's input, prompt and image
    embeddings in place; transformers: the decoder's inputs, image features merged or cross-attended) equals the
    prompt part of the same study's training sequence, exactly."""
    cfg = load_config(config_for(kind, tmp_path, checkpoints, manifest))
    backend = models.load(cfg.model)
    seqs = sequences(backend, cfg.prompt)
    inputs = study_inputs(backend, manifest)
    example = seqs.example(inputs, seqs.target(TRAINING_REFERENCES[0]))
    n_prompt = int((example["labels"] == IGNORE).sum())
    if kind == "cxr_llava":
        watched = backend.model.language_model.model.layers[0].input_layernorm
    else:
        watched = backend.model.get_decoder()
    generated, trained = [], []
    handle = _capture(watched, generated)
    next(iter(backend.stream(iter([Item("s", inputs, 0)]), cfg.prompt, cfg.generation)))
    handle.remove()
    handle = _capture(watched, trained)
    batch = collate([example], seqs.pad_id)
    with torch.no_grad():
        backend.model(**{k: v for k, v in batch.items() if k != "labels"})
    handle.remove()
    prefill, forward = generated[0], trained[0]
    checked = 0
    for name, value in prefill.items():
        if name not in forward or value.dim() < 2 or value.shape[0] != 1:
            continue
        if value.shape[1] == n_prompt:  # a sequence: the training one holds the prompt, then the reference
            assert forward[name].shape[1] == n_prompt + len(seqs.target(TRAINING_REFERENCES[0])), name
            assert torch.equal(forward[name][:, :n_prompt], value), name
            checked += 1
        elif name == "encoder_hidden_states":  # BLIP's image features
            assert torch.equal(forward[name], value), name
            checked += 1
    assert checked >= (2 if kind == "blip" else 1), (sorted(prefill), n_prompt)


@pytest.mark.parametrize("kind", ["cxr_llava", "gemma3", "blip"])
def test_the_loss_counts_exactly_the_reference_and_end_tokens(kind, checkpoints, manifest, tmp_path):
    """Labels are the target ids at the reference and end positions and -100 everywhere else (prompt, image,
    padding); the loss is the token mean over exactly those positions, whatever the other logits are."""
    cfg = load_config(config_for(kind, tmp_path, checkpoints, manifest))
    backend = models.load(cfg.model)
    seqs = sequences(backend, cfg.prompt)
    stops = backend.eos_token_ids if kind != "cxr_llava" else {backend.model.tokenizer.eos_id}
    examples, targets = [], []
    for i in (0, 1, 6):  # references of 3, 5 and 2 words: rows padded differently
        targets.append(seqs.target(TRAINING_REFERENCES[i]))
        examples.append(seqs.example(study_inputs(backend, manifest, i), targets[-1]))
    batch = collate(examples, seqs.pad_id)
    labels, width = batch["labels"], batch["labels"].shape[1]
    for row, (example, target) in enumerate(zip(examples, targets)):
        n_prompt = len(example["input_ids"]) - len(target)
        counted = (labels[row] != IGNORE).nonzero().flatten().tolist()
        assert counted == list(range(n_prompt, n_prompt + len(target)))
        assert labels[row, counted].tolist() == target and target[-1] in stops
        assert batch["attention_mask"][row].tolist() == [1] * len(example["input_ids"]) + [0] * (
            width - len(example["input_ids"]))
        text = (backend.model.tokenizer.decode_streamed(target[:-1]) if kind == "cxr_llava"
                else backend.processor.tokenizer.decode(target[:-1], skip_special_tokens=True).strip())
        assert text == TRAINING_REFERENCES[(0, 1, 6)[row]]

    logits = torch.randn(len(examples), width, 50)
    targets_t = torch.randint(0, 50, labels.shape)
    labels = torch.where(labels != IGNORE, targets_t, labels)  # ids inside the random logits' vocabulary
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[r, t - 1], labels[r, t])
                            for r in range(len(examples)) for t in range(width) if labels[r, t] != IGNORE])
    assert torch.allclose(step_loss(logits, labels), expected.mean(), atol=1e-6)
    noise = torch.randn_like(logits) * 10
    uncounted = torch.ones(labels.shape, dtype=torch.bool)
    uncounted[:, :-1] = labels[:, 1:] == IGNORE  # logits at t predict label t + 1
    changed = torch.where(uncounted[..., None], logits + noise, logits)
    assert torch.equal(token_nll(changed, labels)[0], token_nll(logits, labels)[0])
    assert token_nll(changed, labels)[1] == sum(len(t) for t in targets)


# -- training, then generation ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(checkpoints, manifest, tmp_path_factory):
    """Per architecture (built on first use): the config and adapter of a run memorising the 8 training studies."""
    runs = {}

    def get(kind: str, capsys):
        if kind not in runs:
            tmp = tmp_path_factory.mktemp(f"memorise-{kind}")
            cfg_path = config_for(kind, tmp, checkpoints, manifest, val_split=None, batch_size=8,
                                  **MEMORISE[kind])
            runs[kind] = (cfg_path, train(cfg_path, capsys))
        return runs[kind]
    return get


@pytest.mark.parametrize("kind", ["cxr_llava", "gemma3", "llava"])
def test_training_memorises_eight_studies_and_generate_cxr_writes_their_references(kind, trained, capsys):
    cfg_path, adapter = trained(kind, capsys)
    record = json.loads((adapter.parent / "train.json").read_text())
    losses = [s["loss"] for s in record["steps"]]
    assert len(losses) == MEMORISE[kind]["max_steps"] and losses[0] / losses[-1] >= LOSS_FACTOR, losses
    assert adapter.name == "last"  # no validation split: the last step's adapter

    assert generate_cxr.main(["--quiet", "--config", str(cfg_path), "--set", f"model.adapter={adapter}"]) == 0
    cfg = load_config(cfg_path)
    reports = pd.read_csv(cfg.run_dir / "reports.csv")
    exact = (reports["generated_report"] == reports["reference"]).sum()
    assert len(reports) == 8 and exact >= 7, reports[["reference", "generated_report"]]

    assert generate_cxr.main(["--quiet", "--config", str(cfg_path), "--run-name", "base"]) == 0
    base = pd.read_csv(Path(cfg.output.dir) / "base" / "reports.csv")
    assert (base["generated_report"] == base["reference"]).sum() == 0  # the base model does not know them


def test_trained_logits_equal_base_plus_saved_adapter_through_generation(trained, capsys):
    """The model as the Trainer last saved it (PEFT's unmerged LoRA, training's forward pass) and the base model
    with the saved adapter merged by model.adapter (generation's prefill and decode steps) give the same logits at
    every reference position of every training study (float32: to 1e-5); and merging the trained weights in memory
    gives exactly the weights model.adapter builds from the saved folder."""
    from peft import PeftModel

    from cxrgen.models.cxr_llava import CxrLlava

    cfg_path, adapter = trained("cxr_llava", capsys)
    cfg = load_config(cfg_path)
    checkpoint = json.loads((adapter.parent / "checkpoints" / "latest.json").read_text())["checkpoint"]
    peft_model = PeftModel.from_pretrained(CxrLlava.from_pretrained(cfg.model.name_or_path, device="cpu"),
                                           str(adapter.parent / "checkpoints" / checkpoint)).eval()
    generation = models.load(load_config(cfg_path, [f"model.adapter={adapter}"]).model)
    seqs = sequences(generation, cfg.prompt)
    manifest = Path(cfg.data.manifest)
    for index in range(8):
        inputs = study_inputs(generation, manifest, index)
        target = seqs.target(TRAINING_REFERENCES[index])
        batch = collate([seqs.example(inputs, target)], seqs.pad_id)
        with torch.no_grad():
            forward = peft_model(**{k: v for k, v in batch.items() if k != "labels"})[0]
        steps: list[torch.Tensor] = []
        head = generation.model.language_model.lm_head.register_forward_hook(lambda m, a, out: steps.append(out))
        report = generation.model.generate_reports(torch.as_tensor(inputs)[None], prompt=generation.model.tokenizer
                                                   .encode_prompt(generation.render_prompt(cfg.prompt)),
                                                   max_new_tokens=len(target))[0]
        head.remove()
        n_prompt = len(batch["input_ids"][0]) - len(target)
        agree = next((i for i, (a, b) in enumerate(zip(report.token_ids, target)) if a != b), len(report.token_ids))
        for i in range(agree + 1):  # the prefill's logits, then each decode step's while the tokens agree
            assert torch.allclose(steps[i].reshape(-1), forward[n_prompt - 1 + i], atol=1e-5), (index, i)

    merged = peft_model.merge_and_unload()
    ours = dict(generation.model.named_parameters())
    assert all(torch.equal(p, ours[n]) for n, p in merged.named_parameters())
    assert any(not torch.equal(p, q) for (_, p), (_, q) in zip(
        CxrLlava.from_pretrained(cfg.model.name_or_path, device="cpu").named_parameters(),
        merged.named_parameters()))  # the adapter changed the weights


# -- what a run leaves -----------------------------------------------------------------------------------------------

def test_a_run_with_validation_writes_best_and_last_adapters_train_json_and_a_loss_curve(checkpoints, manifest,
                                                                                         tmp_path, capsys):
    cfg_path = config_for("cxr_llava", tmp_path, checkpoints, manifest, max_steps=12, eval_every=4,
                          checkpoint_every=5)
    adapter = train(cfg_path, capsys)
    run = adapter.parent
    record = json.loads((run / "train.json").read_text())
    best = record["best"]
    assert adapter == run / "best" and record["adapters"]["last"] == str(run / "last")
    assert [v["step"] for v in record["validation"]] == [4, 8, 12]
    assert best["loss"] == min(v["loss"] for v in record["validation"])
    from safetensors import safe_open

    with safe_open(str(run / "best" / "adapter_model.safetensors"), "pt") as f:
        assert int(f.metadata()["step"]) == best["step"] and float(f.metadata()["eval_loss"]) == best["loss"]
    assert [s["step"] for s in record["steps"]] == list(range(1, 13))
    assert all(s["learning_rate"] == 0.005 and s["loss"] > 0 for s in record["steps"])
    assert record["splits"]["train"]["studies"] == 8 and record["splits"]["val"]["studies"] == 2
    assert record["splits"]["train"]["counts"]["not_in_split"] == 2
    assert record["model"]["digest"] and record["model_identity"]["model.checkpoint"]
    assert [f["sha256"] for f in record["data_files"]] and record["project"]["commit"]
    assert record["versions"]["peft"] and record["versions"]["torch"]
    assert record["tokens_per_second"] > 0 and record["wall_seconds"] > 0 and record["tokens"] > 0
    assert record["config"]["training"]["max_steps"] == 12
    assert len(record["starts"]) == 1 and record["starts"][0]["step_after"] == 12
    svg = ET.fromstring((run / "loss.svg").read_text())
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}circle")) == 4  # 3 + best
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(checkpoints["cxr_llava"])
    assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                       "down_proj"])
    names = list(adapter_tensors(run / "last"))
    assert names and all(n.startswith("base_model.model.llama.layers.") for n in names)  # the published layout
    assert not (run / "checkpoints" / "checkpoint-10").exists()  # only the last commit is kept
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 12

    # the same command again: nothing to do, the same adapter
    assert train(cfg_path, capsys) == adapter
    assert json.loads((run / "train.json").read_text()) == record


def test_default_lora_targets_leave_the_vision_tower_and_output_layer_alone(checkpoints, manifest, tmp_path):
    """CXR-LLaVA: the seven Llama projections of every layer; transformers: every linear layer of the language
    model and nothing else; a target in the vision tower is refused."""
    from cxrgen.models import ModelError
    from cxrgen.training.run import _lora

    for kind in ("cxr_llava", "gemma3", "blip"):
        cfg = load_config(config_for(kind, tmp_path, checkpoints, manifest))
        backend = models.load(cfg.model)
        seqs = sequences(backend, cfg.prompt)
        peft_model = _lora(seqs, backend, cfg)
        adapted = {n.split("base_model.model.", 1)[1].rsplit(".lora_", 1)[0]
                   for n, _ in peft_model.named_parameters() if ".lora_" in n}
        base = peft_model.get_base_model()
        linear = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) or hasattr(m, "base_layer")}
        linear = {n for n in linear if not n.endswith(".base_layer") and ".lora_" not in n}
        if kind == "cxr_llava":
            layers = backend.model.config.llama["num_hidden_layers"]
            assert len(adapted) == 7 * layers and all(n.startswith("language_model.model.layers.") for n in adapted)
        else:
            decoder = next(n for n, m in base.named_modules() if m is base.get_decoder())
            heads = {n for n, m in base.named_modules() if m is base.get_output_embeddings() or
                     m is getattr(base.get_decoder(), "get_output_embeddings", lambda: None)()}
            assert adapted == {n for n in linear if n.startswith(decoder + ".")} - heads
            assert adapted and not any("vision" in n for n in adapted)
    cfg = load_config(config_for("cxr_llava", tmp_path, checkpoints, manifest, target_modules=["q_proj", "out_proj"]))
    backend = models.load(cfg.model)
    with pytest.raises(ModelError, match="training.target_modules .*vision tower"):
        _lora(sequences(backend, cfg.prompt), backend, cfg)


# -- bad input: one line ---------------------------------------------------------------------------------------------

def _iu_layout(root: Path, findings: dict[int, str]) -> Path:
    """A small IU X-ray (Kaggle) folder: studies 1-4 train, 5-6 val, each with a frontal image."""
    from PIL import Image

    columns = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
    rows = [dict(uid=u, MeSH="normal", Problems="normal", image="Xray Chest PA", indication="cough",
                 comparison="None.", findings=findings.get(u, ""), impression=f"impression {u}") for u in range(1, 7)]
    (root / "images").mkdir(parents=True)
    for u in range(1, 7):
        Image.new("L", (32, 32), 40 * u).save(root / "images" / f"{u}_IM-1.png")
    pd.DataFrame(rows, columns=columns).to_csv(root / "indiana_reports.csv", index=False)
    pd.DataFrame([dict(uid=u, filename=f"{u}_IM-1.png", projection="Frontal") for u in range(1, 7)]).to_csv(
        root / "indiana_projections.csv", index=False)
    pd.DataFrame(rows[:4], columns=columns).to_csv(root / "indiana_train.csv", index=False)
    pd.DataFrame(rows[4:], columns=columns).to_csv(root / "indiana_val.csv", index=False)
    return root


@pytest.mark.parametrize("case,message", [
    ("unknown key", "unknown key 'training.lora_rank'"),
    ("bad value", "training.learning_rate must be > 0; got -0.001"),
    ("split without references", "training.val_split val: manifest"),
    ("missing section", "training.val_split val: "),
    ("missing split file", "indiana_val.csv, which is missing (split files looked for"),
    ("shared studies", "share 2 studies"),
    ("quantization on the CPU", "model.quantization 4bit needs a CUDA GPU"),
    ("an adapter to start from", "model.adapter must be null for fine-tuning"),
    ("a retrieval model", "model.backend retrieval: an image encoder and an index have nothing to fine-tune"),
    ("unreadable image", "study T03: "),
    ("target in no layer", "training.target_modules"),
])
def test_bad_input_is_one_line_and_exit_2(case, message, checkpoints, manifest, tmp_path, capsys):
    overrides: list[str] = []
    cfg_path = config_for("cxr_llava", tmp_path, checkpoints, manifest, max_steps=2)
    if case == "unknown key":
        overrides = ["training.lora_rank=4"]
    elif case == "bad value":
        overrides = ["training.learning_rate=-0.001"]
    elif case == "split without references":
        frame = pd.read_csv(manifest)
        frame.loc[frame["split"] == "val", "reference"] = ""
        frame.to_csv(tmp_path / "manifest.csv", index=False)
        overrides = [f"data.manifest={tmp_path / 'manifest.csv'}"]
        for i in range(10):
            (tmp_path / f"study{i}.png").symlink_to(manifest.parent / f"study{i}.png")
    elif case in ("missing section", "missing split file"):
        root = _iu_layout(tmp_path / "iu", findings={1: "clear", 2: "clear", 3: "clear", 4: "clear"})
        if case == "missing split file":
            (root / "indiana_val.csv").unlink()
        overrides = ["data.format=iu_xray_kaggle", f"data.root={root}", "data.reference=findings"]
    elif case == "shared studies":
        overrides = ["training.train_split=all"]
    elif case == "quantization on the CPU":
        overrides = ["model.quantization=4bit"]
    elif case == "an adapter to start from":
        overrides = [f"model.adapter={tmp_path}"]
    elif case == "a retrieval model":
        overrides = ["model.backend=retrieval"]
    elif case == "unreadable image":
        frame = pd.read_csv(manifest)
        frame["image_path"] = [str(manifest.parent / p) for p in frame["image_path"]]
        (tmp_path / "broken.png").write_bytes(b"not an image")
        frame.loc[3, "image_path"] = str(tmp_path / "broken.png")
        frame.to_csv(tmp_path / "broken.csv", index=False)
        overrides = [f"data.manifest={tmp_path / 'broken.csv'}"]
    elif case == "target in no layer":
        overrides = ["training.target_modules=[no_such_proj]"]
    args = ["--quiet", "--config", str(cfg_path)] + [a for o in overrides for a in ("--set", o)]
    assert finetune_cxr.main(args) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], captured.err[-2000:]
    assert "Traceback" not in captured.err and captured.out == ""


def test_resuming_under_other_settings_is_refused_naming_them(checkpoints, manifest, tmp_path, capsys):
    cfg_path = config_for("cxr_llava", tmp_path, checkpoints, manifest, max_steps=4, checkpoint_every=2,
                          eval_every=4)
    train(cfg_path, capsys)
    (tmp_path / "runs" / "cxr_llava" / "train.json").unlink()  # as if stopped before the end
    assert finetune_cxr.main(["--quiet", "--config", str(cfg_path), "--set", "training.lora_r=4",
                              "--set", "training.checkpoint_every=3"]) == 2
    err = capsys.readouterr().err
    assert "training.lora_r (4 now, 8 in the run)" in err and "checkpoint_every" not in err and "(--no-resume)" in err
    assert train(cfg_path, capsys, "--set", "training.lora_r=4", "--no-resume").name == "best"
    assert yaml.safe_load(cfg_path.read_text())["training"]["lora_r"] == 8


def test_the_throughput_benchmark_runs(tmp_path):
    """bench/bench_finetune.py, at the smallest size, writes its row (the command bench/RESULTS.md shows)."""
    import subprocess
    import sys

    from helpers import ROOT

    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_finetune.py"), "--steps", "2",
                             "--batch-sizes", "2", "--studies", "4", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["steps"] == 2 and row["tokens"] > 0 and row["tokens_per_second"] > 0 and row["max_rss_gb"] > 0
    assert "| b2-none-gc | cpu, float32 | 2 |" in result.stdout


def test_early_stopping_ends_the_run_and_an_ended_run_is_not_trained_further(checkpoints, manifest, tmp_path,
                                                                             capsys):
    """With a learning rate that overfits 8 studies at once, the validation loss stops improving: after
    ``early_stopping_patience`` validations without a new best the run ends, keeping the state it ended in; its
    outputs written again from that state (train.json lost) are the same, with no step trained further."""
    cfg_path = config_for("cxr_llava", tmp_path, checkpoints, manifest, max_steps=60, eval_every=2,
                          checkpoint_every=50, early_stopping_patience=2, learning_rate=0.05)
    adapter = train(cfg_path, capsys)
    run = adapter.parent
    record = json.loads((run / "train.json").read_text())
    losses = [v["loss"] for v in record["validation"]]
    assert record["status"] == "early stopped" and record["schedule"]["steps"] < 60
    assert losses[-3] == min(losses[-3:]) and losses.index(min(losses)) == len(losses) - 3  # 2 without a new best
    assert record["best"]["step"] == record["validation"][-3]["step"]
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["ended"] and latest["step"] == record["schedule"]["steps"]

    (run / "train.json").unlink()
    assert train(cfg_path, capsys) == adapter
    again = json.loads((run / "train.json").read_text())
    assert again["steps"] == record["steps"] and again["validation"] == record["validation"]
    assert again["starts"][-1]["steps_run"] == 0
    assert adapter_tensors(run / "last").keys() == adapter_tensors(run / "best").keys()
