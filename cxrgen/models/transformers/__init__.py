"""Any checkpoint that transformers' AutoProcessor + AutoModelForImageTextToText load, as a report generator.

``backend.load(model_cfg)`` / ``backend.download(model_cfg)`` are what the registry (:mod:`cxrgen.models`) calls;
``tiny`` builds tiny random LLaVA-HF and Gemma-3 checkpoints for tests.
"""

from .backend import PrepareImage, TransformersBackend, download, load

__all__ = ["PrepareImage", "TransformersBackend", "download", "load"]
