"""Report generators behind one interface (:mod:`cxrgen.models.base`), and the registry that picks one.

Backends (``model.backend``):

    cxr_llava      CXR-LLaVA-v2 in its published checkpoint layout (cxrgen.models.cxr_llava)
    transformers   any checkpoint that transformers' AutoProcessor + AutoModelForImageTextToText load
                   (cxrgen.models.transformers)
    retrieval      an image encoder (AutoModel + AutoImageProcessor) and an index of a split's studies: the report
                   of the most similar study (cxrgen.models.retrieval)
    auto           cxr_llava when the checkpoint's config.json has ``clip_vision_cfg``, else transformers

Each backend module provides ``load(model_cfg) -> ReportGenerator``, ``locate(model_cfg) -> (folder, commit)``
(without downloading) and ``download(model_cfg) -> (folder, commit)``. Adding a backend is one module with those
three functions and one line in ``BACKENDS``. A backend whose model depends on more than the ``model:`` section
(the retrieval backend's index is built from ``data:`` and ``retrieval:``) sets ``RUN_SETTINGS = True`` and gets
the run's whole :class:`cxrgen.config.Config` instead; it may add entries to the run's identity with
``extra_identity(cfg) -> dict``. The functions here take either the run's Config or its model section.
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
    "retrieval": "cxrgen.models.retrieval.backend",
}


def _backend_module(name: str):
    if name not in BACKENDS:
        raise ModelError(f"model.backend must be auto or one of {', '.join(BACKENDS)}; got {name!r}")
    return importlib.import_module(BACKENDS[name])


def _model_section(settings):
    """The model section of ``settings`` (the run's Config, or the model section itself)."""
    return getattr(settings, "model", settings)


def _call(name: str, function: str, settings):
    """Backend ``name``'s module-level ``function`` with what it takes: the run's Config for a backend that
    declares ``RUN_SETTINGS``, else the model section."""
    module = _backend_module(name)
    if not getattr(module, "RUN_SETTINGS", False):
        return getattr(module, function)(_model_section(settings))
    if not hasattr(settings, "model"):
        raise ModelError(f"model.backend {name} needs the run's settings, not only its model section "
                         "(its model depends on data: and retrieval: too)")
    return getattr(module, function)(settings)


def _config_json(model_cfg, allow_download: bool) -> dict | None:
    """The checkpoint's config.json (local folder, local Hub cache, or the Hub when allowed); None when absent."""
    folder, _ = hub.find(hub.Lookup("model.name_or_path", model_cfg.name_or_path, model_cfg.revision, ("config.json",),
                                    allow_download=allow_download))
    file = folder / "config.json"
    return read_json_object(file, "") if file.is_file() else None


def resolve_backend(settings, allow_download: bool | None = None) -> str:
    """The backend that runs ``settings``: ``model.backend`` itself, or for ``auto`` the one its config.json names.

    ``auto`` for a missing folder that the demo builds (``build_tiny_if_missing``) is ``cxr_llava``.
    """
    model_cfg = _model_section(settings)
    if model_cfg.backend != "auto":
        _backend_module(model_cfg.backend)  # an unknown name is an error naming the key
        return model_cfg.backend
    if model_cfg.build_tiny_if_missing and not Path(model_cfg.name_or_path).exists():
        return "cxr_llava"
    raw = _config_json(model_cfg, model_cfg.allow_download if allow_download is None else allow_download)
    if raw is None:
        raise ModelError(f"model.name_or_path {model_cfg.name_or_path}: no config.json in the checkpoint folder")
    return "cxr_llava" if "clip_vision_cfg" in raw else "transformers"


def identity(settings, backend: str | None = None) -> dict[str, str | None]:
    """What decides the reports beyond the settings themselves, found without loading any weight: the backend that
    runs them (``backend`` when the caller already has one, else resolved), the checkpoint itself (its Hub commit,
    or for a local folder a digest of its config and weight index; None when it cannot be found yet), the content
    digest of the adapter, if any, the device kind and dtype ``auto`` resolves to here, and what the backend adds
    (``extra_identity``: the retrieval backend's index key). A resumed run refuses a checkpoint, adapter or index
    whose files changed, and a machine on which the run would compute in another dtype."""
    model_cfg = _model_section(settings)
    backend = backend or resolve_backend(model_cfg)
    checkpoint, extra = None, {}
    if backend in BACKENDS:
        try:
            folder, commit = _call(backend, "locate", settings)
        except ModelError:  # not there (yet): loading it will say why
            pass
        else:
            checkpoint = commit or checkpoint_digest(folder)
            if hasattr(_backend_module(backend), "extra_identity"):
                extra = _call(backend, "extra_identity", settings)
    digest = None
    if model_cfg.adapter:
        from .adapters import adapter_digest

        digest = adapter_digest(model_cfg)
    return {"model.backend": backend, "model.checkpoint": checkpoint, "model.adapter_sha256": digest,
            **placement(model_cfg), **extra}


def load(settings) -> ReportGenerator:
    """Load the configured model onto its device (nothing is read from the test studies yet)."""
    return _call(resolve_backend(settings), "load", settings)


def download(settings):
    """Fetch the configured checkpoint into the Hugging Face cache; returns (local folder, commit or None)."""
    return _call(resolve_backend(settings, allow_download=True), "download", settings)
