"""CXR-LLaVA-v2 (``ECOFRI/CXR-LLAVA-v2``) implemented on current transformers, batched."""

from .checkpoint import DEFAULT_MODEL_ID
from .configuration import CheckpointError, CxrLlavaConfig
from .modeling import CxrLlava, GeneratedReport, resolve_device, resolve_dtype
from .preprocess import preprocess_image
from .prompt import REPORT_SYSTEM_PROMPT, REPORT_USER_PROMPT, LlamaSentencePiece, PromptIds, render_prompt

__all__ = [
    "DEFAULT_MODEL_ID", "CheckpointError", "CxrLlava", "CxrLlavaConfig", "GeneratedReport", "LlamaSentencePiece",
    "PromptIds", "REPORT_SYSTEM_PROMPT", "REPORT_USER_PROMPT", "preprocess_image", "render_prompt",
    "resolve_device", "resolve_dtype",
]
