"""The interface every report generator meets, and what it hands back.

The runner knows a model only through this interface::

    backend = cxrgen.models.load(cfg)                       # weights on the device, nothing read yet
    prepare = backend.image_preparer()                      # picklable: runs in the DataLoader workers
    inputs = prepare(image)                                 # 8-bit grey PIL image -> the backend's tensors
    for finished in backend.stream(items, cfg.prompt, cfg.generation):
        ...                                                 # [(item, GeneratedReport), ...] as reports finish

``stream`` takes the prepared studies as an iterator and yields reports as they finish, in any order and in
groups of any size; every item it takes is yielded exactly once. When the iterator ends (the input is exhausted,
or the runner stops feeding it after a stop signal) the backend finishes the items it has taken and returns.
How the items are grouped on the device is the backend's own business: :func:`static_batches` is the plain
fixed-batch strategy (a batch is filled, generated to its end, handed back); a backend may instead refill the
rows of a batch as they finish.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence


class ModelError(ValueError):
    """A model that cannot be found, loaded or run as configured; the message is one line naming the path or key."""


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the Hugging Face Hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


class NotInCacheError(ModelError):
    """A checkpoint or adapter on the Hub that is not in the local Hugging Face cache and may not be fetched now.

    ``repo_id`` names it and ``setting`` the key that holds it (``model.name_or_path``, ``model.adapter``)."""

    def __init__(self, setting: str, repo_id: str, revision: str | None, allow_download: bool):
        from huggingface_hub.constants import HF_HUB_CACHE

        why = ("HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub could not be reached" if allow_download
               else "downloads are off (model.allow_download: false)")
        super().__init__(f"{setting} {repo_id}{'@' + revision if revision else ''}: not in the local Hugging Face "
                         f"cache ({HF_HUB_CACHE}) and {why}; fetch it once on a machine with internet access")
        self.setting, self.repo_id, self.revision = setting, repo_id, revision


def resolve_device(device="auto"):
    """``model.device`` as a torch device: ``auto`` is CUDA when there is one, else the CPU; a CUDA device without
    CUDA is a ValueError."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available (torch {torch.__version__})")
    return device


def resolve_dtype(dtype, device):
    """``model.dtype`` as a torch dtype: ``auto`` is bfloat16 on CUDA and float32 on the CPU."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise ValueError(f"dtype must be one of auto, {', '.join(names)}; got {dtype!r}")
    return names[dtype]


def placement(model_cfg) -> dict[str, str]:
    """The kind of device (``cpu``, ``cuda``) and the dtype a run of ``model_cfg`` computes in, as they resolve on
    this machine (``auto`` differs between a GPU node and a CPU node); part of a run's identity."""
    import torch

    kind = str(model_cfg.device).split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype(model_cfg.dtype, torch.device(kind))
    return {"model.device_kind": kind, "model.dtype": str(dtype).replace("torch.", "")}


def top_p_filter(probs, top_p: float):
    """Nucleus filtering of probabilities [..., vocab]: a token is kept while the mass of the tokens ranked above it
    is below ``top_p`` (so the most probable one always is); the others get probability 0. This is the rule of
    transformers' ``TopPLogitsWarper``, which the published CXR-LLaVA code samples with."""
    import torch

    if top_p >= 1:
        return probs
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill(before >= top_p, 0.0))


#: config.json key the project's tiny builders set: the checkpoint's weights are random (its reports are noise)
RANDOM_WEIGHTS_KEY = "cxrgen_random_weights"


def random_weights(folder) -> bool:
    """Whether a checkpoint folder is one of the project's tiny random checkpoints (its config.json says so)."""
    try:
        return bool(json.loads((Path(folder) / "config.json").read_text()).get(RANDOM_WEIGHTS_KEY))
    except (OSError, ValueError, AttributeError):
        return False


def checkpoint_digest(folder) -> str | None:
    """sha256 over a checkpoint folder's config.json and weight index, and the names and sizes of its weight files:
    identifies a local checkpoint whose Hub revision is unknown, without hashing gigabytes of weights."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{path.name}:{path.stat().st_size}\0".encode())
    return digest.hexdigest()[:16]


def read_json_object(file, missing: str) -> dict:
    """A JSON object from a checkpoint or adapter file; ``missing`` is the message when the file is absent."""
    file = Path(file)
    if not file.is_file():
        raise ModelError(missing)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{file}: not a JSON object")
    return raw


@dataclass(frozen=True)
class Source:
    """The study a report was taken from, for a backend that retrieves reports rather than writing them: its id and
    image, the cosine similarity of its image to the study's, and the leakage rules (``id``, ``image``,
    ``patient``) that left index entries out of this study's candidates."""

    id: str
    image_path: str
    similarity: float
    leakage: tuple[str, ...] = ()


@dataclass
class GeneratedReport:
    text: str
    token_ids: list[int]  # generated ids, the closing end-of-sequence token excluded
    n_new_tokens: int  # len(token_ids)
    stopped_at_eos: bool  # False: the max_new_tokens limit was reached first
    source: Source | None = None  # where a retrieved report comes from (None: generated)


@dataclass
class Item:
    """One prepared study on its way through a backend."""

    key: Any  # the caller's handle for the study (handed back untouched)
    inputs: Any  # what the backend's image preparer returned for this study
    seed: int  # sampling seed of this study (unused when decoding greedily)


Finished = list[tuple[Item, GeneratedReport]]


class ReportGenerator(Protocol):
    """What a backend provides. ``cxrgen.models.load`` returns one; see the module docstring for the flow."""

    @property
    def device(self) -> Any: ...

    def describe(self) -> dict[str, Any]:
        """What ran, for run.json: backend, source, revision, dtype, device, adapter, quantization, digests."""

    def image_preparer(self) -> Callable[[Any], Any]:
        """A picklable callable: the project's 8-bit grey PIL image -> this backend's inputs for one study."""

    def render_prompt(self, prompt) -> str:
        """The prompt text exactly as the model sees it (``prompt``: a :class:`cxrgen.config.PromptConfig`)."""

    def stream(self, items: Iterable[Item], prompt, generation) -> Iterator[Finished]:
        """Reports for ``items`` as they finish (``generation``: a :class:`cxrgen.config.GenerationConfig`)."""


def static_batches(generate: Callable[[list[Item]], Sequence[GeneratedReport]], items: Iterable[Item],
                   batch_size: int) -> Iterator[Finished]:
    """Fixed batching: take ``batch_size`` items, generate them together, hand them back; the last batch may be
    smaller. ``generate`` returns one report per item, in order."""
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield _pair(batch, generate(batch))
            batch = []
    if batch:
        yield _pair(batch, generate(batch))


def _pair(batch: list[Item], reports: Sequence[GeneratedReport]) -> Finished:
    if len(reports) != len(batch):
        raise RuntimeError(f"the backend returned {len(reports)} reports for {len(batch)} studies")
    return list(zip(batch, reports))
