"""The studies fine-tuning trains and validates on: the dataset adapters' splits, made into training examples.

The training and validation studies are the dataset's own splits (``training.train_split``, ``training.val_split``:
the benchmark's ``train`` and ``val``), selected by the same adapters, views rule and reference section
(``data.reference``) as generation. Studies whose section is empty are left out and counted
(``skipped_empty_reference``), as are those whose sequence would not fit the model's positions (``too_long``).
A split without any study left, a split that shares studies with the other, and a missing split file are one line
naming the key or file.

Images are read and prepared in the DataLoader workers by the backend's own preparer (the one generation uses);
an image that cannot be read stops the run with one line naming its file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from ..datasets import DatasetError, MissingSplitError, Selection, Study, load_studies

#: Selection counts that are zero most of the time and not worth a log line
_QUIET = ("total", "selected", "selected_studies")


class TrainingDataError(ValueError):
    """A study that cannot be made into an example (its image cannot be read): one line naming the file.

    Raised in a DataLoader worker, it reaches the main process with the worker's traceback in its message; only its
    own last line is kept."""

    def __init__(self, message: str):
        lines = [line for line in str(message).strip().splitlines() if line.strip()]
        if len(lines) > 1 and lines[-1].startswith(f"{__name__}.{type(self).__name__}: "):
            message = lines[-1].split(": ", 1)[1]
        super().__init__(message)


@dataclass
class Split:
    """One split's studies (those kept) and their target ids, and what the selection left out."""

    name: str
    studies: list[Study]
    targets: list[list[int]]
    counts: dict[str, int]

    def describe(self) -> str:
        shown = {k: v for k, v in self.counts.items() if v and k not in _QUIET}
        left = f" (left out: {', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else ""
        return f"{self.name} split: {len(self.studies)} studies{left}"


def selections(cfg) -> dict[str, Selection]:
    """The training and validation selections (``train_split``, ``val_split`` when set), as generation selects
    a split; no model is needed."""
    out = {}
    for key in ("train_split", "val_split"):
        name = getattr(cfg.training, key)
        if name is None:
            continue
        try:
            out[key] = load_studies(replace(cfg.data, split=name))
        except MissingSplitError as e:  # keeps its type: the command line adds how to make the split files
            raise MissingSplitError(f"training.{key} {name}: {e}", e.path, e.root, e.reports) from None
        except DatasetError as e:
            raise DatasetError(f"training.{key} {name}: {e}") from None
    if "val_split" in out:
        shared = sorted({s.id for s in out["train_split"].studies} & {s.id for s in out["val_split"].studies})
        if shared:
            raise DatasetError(f"training.train_split {cfg.training.train_split} and training.val_split "
                               f"{cfg.training.val_split} share {len(shared)} studies (e.g. {', '.join(shared[:3])});"
                               " a manifest needs a split column to tell them apart")
    return out


def selection_digest(studies: list[Study]) -> str:
    """sha256 of the studies' ids, images and references: what a run trains (or validates) on."""
    h = hashlib.sha256()
    for study in studies:
        h.update(f"{study.id}\0{study.image_paths[0]}\0{study.reference}\0".encode("utf-8"))
    return h.hexdigest()[:16]


def split_of(selection: Selection, name: str, sequences) -> Split:
    """A selection with the target ids of its references; studies whose sequence would exceed the model's
    positions are left out and counted (``too_long``)."""
    counts = {**selection.counts, "too_long": 0}
    studies, targets = [], []
    limit, prompt = sequences.max_length, sequences.prompt_length
    for study in selection.studies:
        target = sequences.target(study.reference)
        if limit is not None and prompt is not None and prompt + len(target) > limit:
            counts["too_long"] += 1
            continue
        studies.append(study)
        targets.append(target)
    if not studies:
        raise DatasetError(f"{name} split: no study fits the model's {limit} positions (a prompt of {prompt} tokens; "
                           f"{counts['too_long']} too long)")
    return Split(name, studies, targets, counts)


@dataclass(frozen=True)
class ReadImage:
    """Picklable: a study's image -> the backend's prepared inputs (read as generation reads it)."""

    prepare: Callable[[Any], Any]
    max_pixels: int
    percentile_window: tuple[float, float] | None

    def __call__(self, study: Study):
        from ..imaging import ImageReadError, read_image

        try:
            image = read_image(study.image_paths[0], max_pixels=self.max_pixels,
                               percentile_window=self.percentile_window)
        except ImageReadError as e:
            raise TrainingDataError(f"study {study.id}: {e}") from None
        return self.prepare(image)


class Examples(torch.utils.data.Dataset):
    """A split as training examples: image read and prepared, sequence built (in the DataLoader workers)."""

    def __init__(self, split: Split, read: ReadImage, build: Callable[[Any, list[int]], dict]):
        self.split, self.read, self.build = split, read, build

    def __len__(self) -> int:
        return len(self.split.studies)

    def __getitem__(self, index: int) -> dict:
        return self.build(self.read(self.split.studies[index]), self.split.targets[index])


def read_image_for(cfg, prepare) -> ReadImage:
    window = tuple(cfg.loader.percentile_window) if cfg.loader.percentile_window else None
    return ReadImage(prepare, cfg.loader.max_pixels, window)
