"""Report generators behind one interface (:mod:`cxrgen.models.base`), and the registry that picks one.

Backends (``model.backend``):

    cxr_llava      CXR-LLaVA-v2 in its published checkpoint layout (cxrgen.models.cxr_llava)
    transformers   any checkpoint that transformers' AutoProcessor + AutoModelForImageTextToText load
                   (cxrgen.models.transformers)
    auto           cxr_llava when the checkpoint's config.json has ``clip_vision_cfg``, else transformers

Each backend module provides ``load(model_cfg) -> ReportGenerator``, ``locate(model_cfg) -> (folder, commit)``
(without downloading) and ``download(model_cfg) -> (folder, commit)``. Adding a backend is one module with those
three functions and one line in ``BACKENDS``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from . import hub
from .base import (GeneratedReport, Item, ModelError, NotInCacheError, ReportGenerator, checkpoint_digest, placement,
                   read_json_object, static_batches)

__all__ = ["BACKENDS", "GeneratedReport", "Item", "ModelError", "NotInCacheError", "ReportGenerator", "download",
           "identity", "load",
           "resolve_backend", "static_batches"]

BACKENDS = {
    "cxr_llava": "cxrgen.models.cxr_llava.backend",
    "transformers": "cxrgen.models.transformers.backend",
}


def _backend_module(name: str):
    if name not in BACKENDS:
        raise ModelError(f"model.backend must be auto or one of {', '.join(BACKENDS)}; got {name!r}")
    return importlib.import_module(BACKENDS[name])


def _config_json(model_cfg, allow_download: bool) -> dict | None:
    """The checkpoint's config.json (local folder, local Hub cache, or the Hub when allowed); None when absent."""
    folder, _ = hub.find(hub.Lookup("model.name_or_path", model_cfg.name_or_path, model_cfg.revision, ("config.json",),
                                    allow_download=allow_download))
    file = folder / "config.json"
    return read_json_object(file, "") if file.is_file() else None


def resolve_backend(model_cfg, allow_download: bool | None = None) -> str:
    """The backend that runs ``model_cfg``: ``model.backend`` itself, or for ``auto`` the one its config.json names.

    ``auto`` for a missing folder that the demo builds (``build_tiny_if_missing``) is ``cxr_llava``.
    """
    if model_cfg.backend != "auto":
        _backend_module(model_cfg.backend)  # an unknown name is an error naming the key
        return model_cfg.backend
    if model_cfg.build_tiny_if_missing and not Path(model_cfg.name_or_path).exists():
        return "cxr_llava"
    raw = _config_json(model_cfg, model_cfg.allow_download if allow_download is None else allow_download)
    if raw is None:
        raise ModelError(f"model.name_or_path {model_cfg.name_or_path}: no config.json in the checkpoint folder")
    return "cxr_llava" if "clip_vision_cfg" in raw else "transformers"


def identity(model_cfg, backend: str | None = None) -> dict[str, str | None]:
    """What decides the reports beyond the settings themselves, found without loading any weight: the backend that
    runs them (``backend`` when the caller already has one, else resolved), the checkpoint itself (its Hub commit,
    or for a local folder a digest of its config and weight index; None when it cannot be found yet), the content
    digest of the adapter, if any, and the device kind and dtype ``auto`` resolves to here. A resumed run refuses a
    checkpoint or adapter whose files changed, and a machine on which the run would compute in another dtype."""
    backend = backend or resolve_backend(model_cfg)
    checkpoint = None
    if backend in BACKENDS:
        try:
            folder, commit = _backend_module(backend).locate(model_cfg)
        except ModelError:  # not there (yet): loading it will say why
            pass
        else:
            checkpoint = commit or checkpoint_digest(folder)
    digest = None
    if model_cfg.adapter:
        from .adapters import adapter_digest

        digest = adapter_digest(model_cfg)
    return {"model.backend": backend, "model.checkpoint": checkpoint, "model.adapter_sha256": digest,
            **placement(model_cfg)}


def load(model_cfg) -> ReportGenerator:
    """Load the configured model onto its device (nothing is read from the dataset yet)."""
    return _backend_module(resolve_backend(model_cfg)).load(model_cfg)


def download(model_cfg):
    """Fetch the configured checkpoint into the Hugging Face cache; returns (local folder, commit or None)."""
    return _backend_module(resolve_backend(model_cfg, allow_download=True)).download(model_cfg)
