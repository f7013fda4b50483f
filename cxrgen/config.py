"""Run configuration: the schema of config.yaml, command-line overrides and validation.

Every setting lives in a YAML file (``config.yaml`` is the documented default); ``--set section.key=value`` overrides
any key, the value parsed as YAML (``--set generation.temperature=0.2``, ``--set data.root=null``). Unknown keys and
bad values stop the run at start with one line naming the key and what is allowed. Relative paths are taken relative
to the directory the command is run from.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration file, key or value; the message is one line naming it."""


@dataclass
class DataConfig:
    """Where the studies come from and which text is the reference.

    format      iu_xray_kaggle | openi | mimic_cxr | manifest
    root        dataset folder (iu_xray_kaggle, openi, mimic_cxr)
    manifest    CSV or JSONL file (format: manifest)
    split       train | val | test | all (val is MIMIC-CXR's "validate")
    views       frontal (one frontal image per study, PA preferred over AP) | all (one row per image)
    reference   findings | impression | findings+impression
    id_column, image_column, reference_column, view_column   manifest column names (view_column optional)
    reports     mimic_cxr only: a sectioned reports CSV (study,impression,findings,...); empty = the
                files/pXX/pXXXXXXXX/sXXXXXXXX.txt report files under root
    projections openi only: a projections CSV (uid,filename,projection), e.g. the Kaggle release's
                indiana_projections.csv; the Open-i XMLs carry no per-image view, so views=frontal needs it
    """

    format: str = "iu_xray_kaggle"
    root: str | None = None
    manifest: str | None = None
    split: str = "test"
    views: str = "frontal"
    reference: str = "impression"
    id_column: str = "id"
    image_column: str = "image_path"
    reference_column: str = "reference"
    view_column: str | None = None
    reports: str | None = None
    projections: str | None = None


@dataclass
class ModelConfig:
    """The checkpoint, how it is loaded and where it runs.

    backend          auto | cxr_llava | transformers | retrieval (auto: cxr_llava when the checkpoint's
                     config.json has clip_vision_cfg, else transformers; retrieval is always named)
    name_or_path     Hugging Face id (read from the local cache) or a local checkpoint folder
    revision         Hub branch, tag or commit to use (null: main)
    dtype            auto (bfloat16 on CUDA, float32 on CPU) | bfloat16 | float16 | float32
    device           auto | cpu | cuda | cuda:N
    adapter          a PEFT LoRA adapter folder or Hub id, merged into the weights at load time (null: none)
    quantization     none | 8bit | 4bit (bitsandbytes on CUDA; 4bit is NF4 with bfloat16 compute)
    trust_remote_code  transformers backend: allow the checkpoint's own Python files to run (off by default)
    allow_download   fetch missing files from the Hub (off: compute nodes have no internet)
    build_tiny_if_missing   build a tiny random checkpoint at name_or_path when the folder is absent (demo only)
    """

    backend: str = "auto"
    name_or_path: str = "ECOFRI/CXR-LLAVA-v2"
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    adapter: str | None = None
    quantization: str = "none"
    trust_remote_code: bool = False
    allow_download: bool = False
    build_tiny_if_missing: bool = False


@dataclass
class PromptConfig:
    """The chat prompt; the image goes before the user text. null: the model's own report prompt."""

    system: str | None = None
    user: str | None = None


@dataclass
class GenerationConfig:
    """Decoding settings.

    batch_size       studies decoded together on the device
    max_new_tokens   report length limit in tokens
    temperature      0 = greedy (reproducible); > 0 samples with top_p, each study seeded from seed and its id
    cuda_graphs      auto | on | off: capture the fixed-shape decode step as a CUDA graph (auto: on CUDA only)
    batch_invariant  a study's report does not depend on the studies decoded beside it or on where a run was
                     resumed (cxr_llava backend: every kernel sees one shape; see decoding.Shapes)
    """

    batch_size: int = 16
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    cuda_graphs: str = "auto"
    batch_invariant: bool = False


@dataclass
class LoaderConfig:
    """Image decoding and preprocessing in background worker processes.

    num_workers        worker processes (0 = in the main process; auto = from the CPUs allotted to the process)
    prefetch_batches   batches each worker prepares ahead
    max_pixels         refuse images with more pixels (decompression bombs)
    percentile_window  [low, high] percentiles for 16-bit/float images without a DICOM window (null: full range)
    """

    num_workers: int | str = "auto"
    prefetch_batches: int = 2
    max_pixels: int = 89_478_485
    percentile_window: list[float] | None = None


@dataclass
class OutputConfig:
    """Results go to <dir>/<run_name>/ (reports.csv, metrics.json, run.json, report.html, parts/)."""

    dir: str = "runs"
    run_name: str = "cxr-llava-v2_iu-xray_test"
    html: bool = True


@dataclass
class EvaluationConfig:
    """Metrics computed at the end of a run (the same code as evaluate.py).

    bootstrap   resamples for the 95% intervals (0: no intervals)
    seed        bootstrap seed
    clinical    CheXpert-style findings labels and clinical-efficacy F1
    uncertain   how an uncertain finding counts: positive | negative | exclude
    """

    bootstrap: int = 1000
    seed: int = 0
    clinical: bool = True
    uncertain: str = "positive"


@dataclass
class RetrievalConfig:
    """The retrieval backend (model.backend: retrieval): the report of the most similar study of an index.

    split       the split of the run's dataset (data:, with its reference section and views) whose studies make
                the index: train | val | test | all
    k           neighbours considered per study: 1 takes the nearest study's report; more take, among the k
                nearest, the report most similar to the other k-1 (README, "Retrieval")
    pooling     auto | cls | pooler | mean | image_features: how an image becomes one vector (auto: by model family)
    chunk_size  index rows per matrix product on the device (memory, not results)
    index_dir   folder of the cached indexes, one subfolder per index key
    leakage     exclude (index entries with the study's own id, image content or patient are left out of its
                candidates) | off (nothing left out: only to check an index, never for reported numbers)
    """

    split: str = "train"
    k: int = 1
    pooling: str = "auto"
    chunk_size: int = 65536
    index_dir: str = ".cache/retrieval"
    leakage: str = "exclude"


@dataclass
class TrainingConfig:
    """Fine-tuning a LoRA adapter (finetune_cxr.py; README, "Fine-tuning").

    run_name               the training run's folder, <output.dir>/<run_name>/
    train_split, val_split data.split of the studies trained on, and of those validated on (null: no validation)
    lora_r, lora_alpha     LoRA rank and scaling numerator (the update is lora_alpha / lora_r * B @ A)
    lora_dropout           dropout on the adapted layers' inputs
    target_modules         names of the linear layers that get LoRA (null: the backend's default: the Llama
                           attention and MLP projections for cxr_llava, the language model's linear layers for
                           transformers; a vision tower is never trained)
    learning_rate, lr_scheduler, warmup_steps, weight_decay, max_grad_norm (0: no clipping)
    epochs, max_steps      passes over the training split, or optimizer steps when max_steps is set
    batch_size             studies per device and forward pass
    gradient_accumulation  forward passes per optimizer step (global batch: batch_size x this x processes)
    seed                   LoRA initialisation, data order and dropout
    gradient_checkpointing recompute activations in the backward pass (less memory, about a third more time)
    checkpoint_every       optimizer steps between checkpoints
    eval_every             optimizer steps between validations (and after the last step)
    early_stopping_patience  validations without a new best validation loss before training stops (null: never)
    """

    run_name: str = "finetune"
    train_split: str = "train"
    val_split: str | None = "val"
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 4
    gradient_accumulation: int = 4
    seed: int = 0
    gradient_checkpointing: bool = True
    checkpoint_every: int = 100
    eval_every: int = 100
    early_stopping_patience: int | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "saved configuration",
                  origins: dict[str, str] | None = None) -> "Config":
        """Build and validate; ``origins`` maps dotted keys to where their value came from (``--set``), so that an
        error names that instead of ``source``."""
        origins = origins or {}
        cfg = _build(cls, raw, "", source, origins)
        try:
            validate(cfg)
        except ConfigError as e:
            key = str(e).split(" ", 1)[0]
            if key in origins:
                raise ConfigError(f"{origins[key]} {e}") from None
            raise
        return cfg

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / self.output.run_name


CHOICES = {
    "model.dtype": ("auto", "bfloat16", "float16", "float32"),
    "model.quantization": ("none", "8bit", "4bit"),
    "generation.cuda_graphs": ("auto", "on", "off"),
    "data.split": ("train", "val", "validate", "test", "all"),
    "data.views": ("frontal", "all"),
    "data.reference": ("findings", "impression", "findings+impression"),
    "evaluation.uncertain": ("positive", "negative", "exclude"),
    "retrieval.split": ("train", "val", "validate", "test", "all"),
    "retrieval.pooling": ("auto", "cls", "pooler", "mean", "image_features"),
    "retrieval.leakage": ("exclude", "off"),
}


def choices() -> dict[str, tuple]:
    """The allowed values of every setting with a fixed set; backends and dataset formats are those registered
    (:data:`cxrgen.models.BACKENDS`, :data:`cxrgen.datasets.ADAPTERS`)."""
    from cxrgen import datasets, models

    return {**CHOICES, "model.backend": ("auto", *models.BACKENDS), "data.format": tuple(datasets.ADAPTERS)}


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: Config | None = None,
                **flags: Any) -> Config:
    """Defaults (or ``base``, e.g. the settings a run was made with) <- YAML file <- ``--set`` overrides <- non-None
    ``flags`` (dotted keys), then validated."""
    raw: dict[str, Any] = copy.deepcopy(base.to_dict()) if base is not None else {}
    source = "defaults" if base is None else "saved configuration"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the configuration ({e.strerror})") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, ...)")
    origins: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        _assign(raw, key.strip(), _parse_override(key.strip(), value), "--set")
        origins[key.strip()] = "--set"
    for key, value in flags.items():
        if value is not None:
            _assign(raw, key, value, "command line")
            origins[key] = "command line"
    return Config.from_dict(raw, source, origins)


def _parse_override(dotted: str, value: str) -> Any:
    """A ``--set`` value: the text as it is for text settings (``null`` or nothing for none), else parsed as YAML."""
    section, _, name = dotted.partition(".")
    section_cls = typing.get_type_hints(Config).get(section)
    if section_cls is None:
        raise ConfigError(f"--set {dotted}: unknown section '{section}' (sections: {', '.join(_fields(Config))})")
    hint = typing.get_type_hints(section_cls).get(name)
    if hint is None:
        raise ConfigError(f"--set {dotted}: unknown key '{dotted}' (allowed in {section}: "
                          f"{', '.join(_fields(section_cls))})")
    if hint is not None and str in (typing.get_args(hint) or (hint,)):
        return None if value.strip() in ("", "null", "~") else value.replace("\\n", "\n")
    try:
        return yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {dotted}={value!r}: not a valid value ({str(e).splitlines()[0]})") from None


def _assign(raw: dict, dotted: str, value: Any, where: str) -> None:
    section, _, key = dotted.partition(".")
    if not key:
        raise ConfigError(f"{where}: {dotted!r} must be section.key (sections: {', '.join(_fields(Config))})")
    node = raw.setdefault(section, {})
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: {section!r} is not a section")
    node[key] = value


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, raw: dict, prefix: str, source: str, origins: dict[str, str]):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.')}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = _fields(cls)
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (allowed in {prefix.rstrip('.') or 'the top level'}: "
            f"{', '.join(names)})"
        )
    values = {}
    for name in names:
        if name not in raw:
            continue
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name] or {}, key + ".", source, origins)
        else:
            values[name] = _coerce(raw[name], hint, key, origins.get(key, source))
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {key} must not be empty")
    origin = typing.get_origin(base)
    if origin is list and typing.get_args(base) == (str,):
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{source}: {key} must be a non-empty list of names, got {value!r}")
        return list(value)
    if origin is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
            raise ConfigError(f"{source}: {key} must be a list of numbers, got {value!r}")
        return [float(v) for v in value]
    if set(args) - {type(None)} == {int, str}:  # a count or the word auto
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise ConfigError(f"{source}: {key} must be an integer or auto, got {value!r}")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if base is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{source}: {key} must be text, got {value!r}")
        return str(value)
    return value


def validate(cfg: Config) -> None:
    """Range and choice checks that the types alone do not express."""
    _validate_training(cfg.training)
    for key, allowed in choices().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    device = cfg.model.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"model.device must be auto, cpu, cuda or cuda:N; got {device!r}")
    checks = [
        ("generation.batch_size", cfg.generation.batch_size >= 1, "a positive integer"),
        ("generation.max_new_tokens", cfg.generation.max_new_tokens >= 1, "a positive integer"),
        ("generation.temperature", cfg.generation.temperature >= 0, ">= 0 (0 is greedy)"),
        ("generation.top_p", 0 < cfg.generation.top_p <= 1, "in (0, 1]"),
        ("loader.num_workers", cfg.loader.num_workers == "auto" or cfg.loader.num_workers >= 0, ">= 0 or auto"),
        ("loader.prefetch_batches", cfg.loader.prefetch_batches >= 1, ">= 1"),
        ("loader.max_pixels", cfg.loader.max_pixels >= 1, "a positive integer"),
        ("evaluation.bootstrap", cfg.evaluation.bootstrap >= 0, ">= 0"),
        ("retrieval.k", cfg.retrieval.k >= 1, "a positive integer"),
        ("retrieval.chunk_size", cfg.retrieval.chunk_size >= 1, "a positive integer"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            section, name = key.split(".")
            raise ConfigError(f"{key} must be {allowed}; got {getattr(getattr(cfg, section), name)!r}")
    window = cfg.loader.percentile_window
    if window is not None and not (len(window) == 2 and 0 <= window[0] < window[1] <= 100):
        raise ConfigError(f"loader.percentile_window must be [low, high] with 0 <= low < high <= 100; got {window!r}")
    if not cfg.output.run_name or "/" in cfg.output.run_name:
        raise ConfigError(f"output.run_name must be a plain folder name; got {cfg.output.run_name!r}")
    from cxrgen.datasets import adapter

    layout = adapter(cfg.data.format).LAYOUT
    if not getattr(cfg.data, layout.source):
        what = "name the dataset folder" if layout.source == "root" else "be set"
        raise ConfigError(f"data.{layout.source} must {what} when data.format is {cfg.data.format}: {layout.hint()}")


LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


def _validate_training(t: TrainingConfig) -> None:
    """The training section's ranges and choices (checked for every command: a config file is one schema)."""
    splits = ("train", "val", "validate", "test", "all")
    checks = [
        ("training.run_name", bool(t.run_name) and "/" not in t.run_name, "a plain folder name"),
        ("training.train_split", t.train_split in splits, f"one of {', '.join(splits)}"),
        ("training.val_split", t.val_split is None or t.val_split in splits, f"null or one of {', '.join(splits)}"),
        ("training.lora_r", t.lora_r >= 1, "a positive integer"),
        ("training.lora_alpha", t.lora_alpha > 0, "> 0"),
        ("training.lora_dropout", 0 <= t.lora_dropout < 1, "in [0, 1)"),
        ("training.learning_rate", t.learning_rate > 0, "> 0"),
        ("training.lr_scheduler", t.lr_scheduler in LR_SCHEDULERS, f"one of {', '.join(LR_SCHEDULERS)}"),
        ("training.warmup_steps", t.warmup_steps >= 0, ">= 0"),
        ("training.weight_decay", t.weight_decay >= 0, ">= 0"),
        ("training.max_grad_norm", t.max_grad_norm >= 0, ">= 0 (0: no clipping)"),
        ("training.epochs", t.epochs >= 1, "a positive integer"),
        ("training.max_steps", t.max_steps is None or t.max_steps >= 1, "null or a positive integer"),
        ("training.batch_size", t.batch_size >= 1, "a positive integer"),
        ("training.gradient_accumulation", t.gradient_accumulation >= 1, "a positive integer"),
        ("training.checkpoint_every", t.checkpoint_every >= 1, "a positive integer"),
        ("training.eval_every", t.eval_every >= 1, "a positive integer"),
        ("training.early_stopping_patience", t.early_stopping_patience is None or t.early_stopping_patience >= 1,
         "null or a positive integer"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{key} must be {allowed}; got {getattr(t, key.split('.')[1])!r}")
    same = {"val": "val", "validate": "val"}
    if t.val_split is not None and same.get(t.val_split, t.val_split) == same.get(t.train_split, t.train_split):
        raise ConfigError(f"training.val_split must differ from training.train_split; both are {t.train_split!r}")
    if t.early_stopping_patience is not None and t.val_split is None:
        raise ConfigError("training.early_stopping_patience needs validation studies; training.val_split is null")
