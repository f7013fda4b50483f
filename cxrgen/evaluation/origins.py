"""Where each evaluated system's reports came from: the ``run.json`` of the generation run a results file belongs to.

A comparison is only as good as what it compares, so every summary names, per system, the model (backend,
checkpoint revision or digest, adapter, quantization, dtype), the rendered prompt, the decoding settings, the data
(format, split, reference section, views, selection size) and the project's commit, when the results file sits in a
run folder (``reports.csv`` beside ``run.json``, or shard parts under ``<run>/parts/``). Results files from
elsewhere have no origin (``None``). Runs that differ in a setting that changes the task itself (the data format,
split, reference section, views, study limit) are named in one line (:func:`task_differences`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

#: Settings under which two runs answer different questions (compared as ``data.<key>`` and ``limit``).
TASK_SETTINGS = ("format", "split", "reference", "views")
DECODING = ("max_new_tokens", "temperature", "top_p", "seed", "batch_size", "batch_invariant", "cuda_graphs")


def run_json_of(path: Path) -> Path | None:
    """The ``run.json`` of the run folder a results file belongs to, if there is one."""
    from cxrgen.evaluation.inputs import run_folder

    folder = run_folder(Path(path))
    candidates = ([folder / "run.json"] if folder is not None else []) + [Path(path).parent / "run.json"]
    return next((c for c in candidates if c.is_file()), None)


def origin_of(path: Path) -> dict[str, Any] | None:
    """What the run that wrote ``path`` was made with (module docstring), or None without a readable run.json."""
    run_json = run_json_of(path)
    if run_json is None:
        return None
    try:
        run = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(run, Mapping) or not isinstance(run.get("config"), Mapping):
        return None
    config = run["config"]
    model_cfg, data_cfg = config.get("model") or {}, config.get("data") or {}
    model = dict(run.get("model") or {})
    adapter = model.get("adapter")
    counts = run.get("counts") or {}
    return {
        "run_json": str(run_json),
        "model": {
            "name": model_cfg.get("name_or_path"),
            "backend": model.get("backend") or model_cfg.get("backend"),
            "revision": model.get("revision"),
            "digest": model.get("digest"),
            "dtype": model.get("dtype") or model_cfg.get("dtype"),
            "device": model.get("device"),
            "adapter": (adapter.get("path") if isinstance(adapter, Mapping) else adapter) or None,
            "adapter_sha256": adapter.get("sha256") if isinstance(adapter, Mapping) else None,
            "quantization": model.get("quantization") or model_cfg.get("quantization"),
            "random_weights": bool(model.get("random_weights")) or bool(model_cfg.get("build_tiny_if_missing")),
        },
        "prompt": run.get("prompt"),
        "decoding": {k: (config.get("generation") or {}).get(k) for k in DECODING},
        "data": {**{k: data_cfg.get(k) for k in TASK_SETTINGS},
                 # a manifest's reference is its column, whatever data.reference says
                 **({"reference": "the manifest's column"} if data_cfg.get("format") == "manifest" else {}),
                 "where": data_cfg.get("manifest") or data_cfg.get("root"),
                 "selected": counts.get("selected"), "limit": run.get("limit")},
        "project": run.get("project"),
    }


def model_name(origin: Mapping | None) -> str | None:
    """A short name for a system from its origin: the checkpoint's last path component, ``+adapter`` when one was
    merged."""
    if not origin:
        return None
    model = origin.get("model") or {}
    name = str(model.get("name") or "").rstrip("/").split("/")[-1]
    if not name:
        return None
    adapter = str(model.get("adapter") or "").rstrip("/").split("/")[-1]
    return f"{name}+{adapter}" if adapter else name


def task_differences(origins: Mapping[str, Mapping | None]) -> list[str]:
    """One line per task-changing setting on which the systems' runs differ (systems without a run.json aside)."""
    known = {n: o for n, o in origins.items() if o}
    if len(known) < 2:
        return []
    lines = []
    for key in TASK_SETTINGS + ("limit",):
        values = {n: (o.get("data") or {}).get(key) for n, o in known.items()}
        if len(set(map(json.dumps, values.values()))) > 1:
            shown = ", ".join(f"{n}: {v}" for n, v in values.items())
            setting = "--limit" if key == "limit" else f"data.{key}"
            lines.append(f"the runs were made with different {setting} ({shown}): they answer different questions")
    return lines
