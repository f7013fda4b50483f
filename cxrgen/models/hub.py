"""Finding a checkpoint or an adapter on disk: one lookup for every backend and for LoRA adapters.

A path that exists is used as it is. Anything else must be a Hugging Face Hub id (``owner/name``), looked up in the
local cache (``HF_HOME``, ``HF_HUB_CACHE``) at the revision asked for; it is fetched only when downloads are allowed
(``model.allow_download``) and ``HF_HUB_OFFLINE`` is not set, and then only the files asked for. A repository
missing from the cache is a :class:`~cxrgen.models.base.NotInCacheError` naming the setting that holds it, which the
command line turns into the command that fetches it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .base import ModelError, NotInCacheError, hub_offline


@dataclass(frozen=True)
class Lookup:
    """What to find: ``name`` (a folder or a Hub id) from the setting ``setting`` at ``revision``; ``files``, the
    file patterns always needed; ``weights``, alternative sets of weight-file patterns tried in order until one
    matches a file (e.g. safetensors, then .bin); ``what`` names the thing in messages."""

    setting: str
    name: str
    revision: str | None = None
    files: tuple[str, ...] = ()
    weights: tuple[tuple[str, ...], ...] = ((),)
    what: str = "checkpoint"
    allow_download: bool = False


def find(lookup: Lookup) -> tuple[Path, str | None]:
    """The local folder of ``lookup`` and the Hub commit it is (None for a plain local folder)."""
    path = Path(lookup.name).expanduser()
    where = f"{lookup.setting} {lookup.name}"
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{where}: a {lookup.what} must be a folder (with {', '.join(lookup.files)})")
        return path, None
    if lookup.name.startswith((".", "/", "~")) or lookup.name.count("/") != 1:
        raise ModelError(f"{where}: no such {lookup.what} folder (and not a Hub id of the form owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    local_only = hub_offline() or not lookup.allow_download
    try:
        for weights in lookup.weights:
            folder = Path(snapshot_download(lookup.name, revision=lookup.revision, local_files_only=local_only,
                                            allow_patterns=[*lookup.files, *weights]))
            if not weights or any(next(folder.glob(pattern), None) for pattern in weights):
                break
    except LocalEntryNotFoundError:
        raise NotInCacheError(lookup.setting, lookup.name, lookup.revision, lookup.allow_download) from None
    except (HfHubHTTPError, OSError, ValueError) as e:  # unknown or gated repository, unknown revision, ...
        first = str(e).splitlines()[0] if str(e) else ""
        revision = f"@{lookup.revision}" if lookup.revision else ""
        raise ModelError(f"{where}{revision}: {type(e).__name__}: {first}") from None
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
    return folder, commit


__all__ = ["Lookup", "find"]
