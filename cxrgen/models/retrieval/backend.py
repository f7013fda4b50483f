"""Retrieval as a report generator (:mod:`cxrgen.models.base`): each study gets the report of the most similar
study of an index (the nearest-neighbour baseline of report generation).

``load(cfg)`` loads the image encoder (:mod:`.encoder`) and opens the index of ``retrieval.split``
(:mod:`.index`), building it first when it is missing. ``stream`` embeds each batch of studies, finds the k
nearest index rows by exact cosine similarity (:func:`.search.nearest`) and hands back the chosen report
(k = 1: the nearest; k > 1: :func:`.search.consensus`) with its :class:`~cxrgen.models.base.Source`: the study it
came from, that study's image and the similarity. Nothing is decoded: ``n_new_tokens`` is 0 and ``stopped_at_eos``
true; the prompt and ``generation.max_new_tokens`` do not apply.

**Leakage** (``retrieval.leakage: exclude``, the default): index rows that hold the study itself are left out of
its candidates, never refused: rows with the same study id, with the same image content (sha256 of the decoded
grey pixels, whatever the file), or of the same patient (``subject_id`` in the study's metadata: MIMIC-CXR's, or a
manifest column of that name). Each row names the rules that left something out (the ``leakage`` column); the log
and run.json count them. ``off`` leaves nothing out, to check an index (an image identical to an indexed one then
gets that study, similarity 1), never for reported numbers.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

import numpy as np

from ...runstore import LEAKAGE_RULES
from ..base import Finished, GeneratedReport, Item, ModelError, Source, static_batches
from .encoder import Encoder, key_fields, load_encoder, resolve
from .index import Index, index_key, open_index
from .search import consensus, nearest

log = logging.getLogger("cxrgen")

#: The registry passes this backend the run's whole Config: its index is read from data: and retrieval:.
RUN_SETTINGS = True


class RetrievalBackend:
    """An image encoder and an index behind the pipeline's interface."""

    name = "retrieval"

    def __init__(self, encoder: Encoder, index: Index, settings):
        import torch

        self.encoder, self.index, self.settings = encoder, index, settings
        self.matrix = torch.from_numpy(index.embeddings).to(encoder.device)
        self.leaked = dict.fromkeys(("studies", *LEAKAGE_RULES), 0)

    @property
    def device(self):
        return self.encoder.device

    def describe(self) -> dict[str, Any]:
        info = self.index.info
        return {"backend": self.name, **self.encoder.describe(), "quantization": "none", "adapter": None,
                "index": {"folder": str(self.index.folder), "key": info["key"], "count": info["count"],
                          "dim": info["dim"], "split": self.settings.split, "counts": info["counts"]},
                "k": self.settings.k, "leakage": self.settings.leakage, "chunk_size": self.settings.chunk_size}

    def image_preparer(self):
        return self.encoder.image_preparer()

    def render_prompt(self, prompt) -> str:
        if prompt is not None and (prompt.system or prompt.user):
            log.warning("prompt.system and prompt.user are not used by model.backend retrieval")
        return ""

    def stream(self, items: Iterable[Item], prompt, generation) -> Iterator[Finished]:
        if generation.temperature > 0:
            raise ModelError("generation.temperature must be 0 for model.backend retrieval (nothing is sampled)")
        if generation.batch_invariant:
            raise ModelError("generation.batch_invariant: true is supported by the cxr_llava backend only")
        self.leaked = dict.fromkeys(self.leaked, 0)
        try:
            yield from static_batches(self.retrieve, items, generation.batch_size)
        finally:
            if self.leaked["studies"]:
                log.info("retrieval: %d studies had index rows left out by the leakage rules (same study id: %d, "
                         "same image content: %d, same patient: %d)", self.leaked["studies"],
                         *(self.leaked[r] for r in LEAKAGE_RULES))

    def retrieve(self, batch: list[Item]) -> list[GeneratedReport]:
        """The report of each study's chosen neighbour (module docstring)."""
        queries = self.encoder.embed(np.concatenate([item.inputs["pixel_values"] for item in batch]))
        leaks = [self._leaks(item) for item in batch]
        sims, positions = nearest(queries, self.matrix, self.settings.k, self.settings.chunk_size,
                                  [found for found, _ in leaks])
        reports = []
        for item, (_, rules), row_sims, row_positions in zip(batch, leaks, sims.tolist(), positions.tolist()):
            candidates = [(s, p) for s, p in zip(row_sims, row_positions) if p >= 0]
            if not candidates:
                raise ModelError(f"study {getattr(item.key, 'id', item.key)}: every one of the index's "
                                 f"{len(self.index.entries)} studies is left out by the leakage rules "
                                 f"({', '.join(rules)}); use a larger retrieval.split")
            chosen = consensus([self.index.entries[p]["report"] for _, p in candidates])
            similarity, position = candidates[chosen]
            entry = self.index.entries[position]
            reports.append(GeneratedReport(entry["report"], [], 0, True,
                                           Source(entry["id"], entry["image_path"], float(similarity), rules)))
        return reports

    def _leaks(self, item: Item) -> tuple[list[int], tuple[str, ...]]:
        if self.settings.leakage == "off":
            return [], ()
        study = item.key  # the runner's items carry the Study
        metadata = getattr(study, "metadata", {}) or {}
        found, rules = self.index.leaks(str(metadata.get("study_id", getattr(study, "id", ""))),
                                        item.inputs["digest"], str(metadata.get("subject_id") or ""))
        if rules:
            self.leaked["studies"] += 1
            for rule in rules:
                self.leaked[rule] += 1
        return found, rules


# -- what the registry calls ---------------------------------------------------------------------------------------

def locate(cfg):
    """(local folder, Hub commit or None) of the encoder, without downloading."""
    return resolve(cfg.model, allow_download=False)


def download(cfg):
    return resolve(cfg.model, allow_download=True)


def extra_identity(cfg) -> dict[str, Any]:
    """What decides this backend's reports beyond the model: the index key, k and the leakage rule."""
    key, _ = index_key(cfg, key_fields(cfg))
    return {"model.index": key[:16], "retrieval.k": cfg.retrieval.k, "retrieval.leakage": cfg.retrieval.leakage}


def build_index(cfg, stop=None) -> Index:
    """The index of ``cfg`` (built now unless it is finished); ``stop``: see :func:`.index.open_index`."""
    return open_index(cfg, load_encoder(cfg), stop)


def load(cfg) -> RetrievalBackend:
    encoder = load_encoder(cfg)
    return RetrievalBackend(encoder, open_index(cfg, encoder), cfg.retrieval)
