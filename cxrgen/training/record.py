"""What a fine-tuning run leaves besides its adapters: train.json and the loss curve (loss.svg).

train.json: the configuration; the base model (backend, source, Hub commit or folder digest, dtype, device) and the
run's identity; the data files that decided the selection (sha256, lines); per split its counts (selected, left
out and why) and studies; the schedule (steps, epochs, global batch); per step the training loss, learning rate
and gradient norm; the validation losses; the best step; the adapters written; each start (host, command, steps
before and after, seconds, tokens); the wall time and tokens per second; package versions; the project's commit.
"""

from __future__ import annotations

import math
from typing import Any

from ..report.plots import Axes, Svg, ticks


def steps_and_validations(log_history: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per-step training records (step, loss, learning rate, gradient norm) and validation losses from the
    Trainer's log history (which checkpoints keep, so a resumed run has every step once)."""
    steps, validations = {}, {}
    for entry in log_history:
        if "loss" in entry:
            steps[entry["step"]] = {"step": entry["step"], "loss": finite(entry["loss"]),
                                    "learning_rate": entry.get("learning_rate"),
                                    "grad_norm": finite(entry.get("grad_norm"))}
        if "eval_loss" in entry:
            validations[entry["step"]] = {"step": entry["step"], "loss": finite(entry["eval_loss"])}
    return [steps[k] for k in sorted(steps)], [validations[k] for k in sorted(validations)]


def throughput(history: list[dict]) -> dict[str, Any]:
    """Wall time and tokens per second over the starts that ended (a killed start leaves no end)."""
    ended = [h for h in history if h.get("finished") and h.get("seconds") is not None]
    seconds = sum(h["seconds"] for h in ended)
    tokens = sum(h.get("tokens", 0) for h in ended)
    return {"wall_seconds": round(seconds, 3), "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None}


def loss_curve(steps: list[dict], validations: list[dict], best: dict | None) -> str:
    """The training loss per step and the validation losses, as an SVG document (non-finite losses left out)."""
    steps = [s for s in steps if s["loss"] is not None]
    validations = [v for v in validations if v["loss"] is not None]
    svg = Svg(640, 320)
    values = [s["loss"] for s in steps] + [v["loss"] for v in validations]
    last = max([s["step"] for s in steps] + [v["step"] for v in validations] + [1])
    top = max(values + [1e-9]) * 1.05
    ax = Axes(svg, 56, 20, 560, 250, 0, last, 0, top)
    ax.frame(ticks(0, last, 6), ticks(0, top, 5))
    svg.text(56 + 280, 306, "optimizer step", size=11, anchor="middle")
    svg.text(14, 145, "loss (per token)", size=11, anchor="middle", transform="rotate(-90 14 145)")
    if steps:
        points = " ".join(f"{ax.x(s['step']):.1f},{ax.y(s['loss']):.1f}" for s in steps)
        svg.add("polyline", title=f"training loss: {steps[0]['loss']:.4f} at step {steps[0]['step']}, "
                f"{steps[-1]['loss']:.4f} at step {steps[-1]['step']}", fill="none", stroke="#1f77b4",
                stroke_width=1.5, points=points)
    if validations:
        svg.add("polyline", fill="none", stroke="#ff7f0e", stroke_width=1.5,
                points=" ".join(f"{ax.x(v['step']):.1f},{ax.y(v['loss']):.1f}" for v in validations))
        for v in validations:
            svg.add("circle", title=f"validation loss {v['loss']:.4f} at step {v['step']}", cx=f"{ax.x(v['step']):.1f}",
                    cy=f"{ax.y(v['loss']):.1f}", r=3, fill="#ff7f0e")
    if best:
        svg.add("circle", title=f"best validation loss {best['loss']:.4f} at step {best['step']}",
                cx=f"{ax.x(best['step']):.1f}", cy=f"{ax.y(best['loss']):.1f}", r=6, fill="none", stroke="#d62728",
                stroke_width=2)
    for i, (label, color) in enumerate((("training", "#1f77b4"), ("validation", "#ff7f0e"))):
        svg.add("rect", x=470, y=28 + 16 * i, width=10, height=10, fill=color)
        svg.text(484, 37 + 16 * i, label, size=10)
    return svg.document()


def finite(value: float | None) -> float | None:
    """JSON has no NaN: a non-finite loss (or gradient norm) is recorded as null."""
    return value if value is not None and math.isfinite(value) else None
