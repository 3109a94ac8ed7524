"""Run records: `metrics.jsonl` (one JSON object per step or evaluation) and its PNG plot.

Rows are appended and flushed as they happen, so a crashed run keeps its history; a
resumed run first drops the rows logged after its checkpoint, so each step appears once.
    train rows: step, epoch, loss, lr, samples_per_s, wall_s, train_s
    eval rows:  step, epoch, val_acc, val_loss, wall_s, train_s
    catapults:  step, epoch, event="catapult", start/peak/end_step, loss_before/peak_loss/loss_after,
                sharpness_before/after (qdeploy.nqm.CatapultEvent; probing.CatapultHook)
    sharpness:  step, epoch, sharpness (with --sharpness-every)
`wall_s` counts everything since the run started (all sessions); `train_s` only the time
spent in training steps (no evaluation, no checkpoint writes): the time-to-accuracy clock.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, TextIO

from qdeploy import atomic


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_reaching(path: str | Path, accuracy: float) -> dict[str, Any] | None:
    """The first evaluation row with val accuracy >= `accuracy` (None: never reached).

    Time to accuracy, the figure adapt-vs-scratch comparisons are about: its `train_s` and
    `step` say how much training the run needed to get there.
    """
    return next((row for row in read_metrics(path) if row.get("val_acc", -1.0) >= accuracy), None)


def time_to_target(path: str | Path, accuracy: float, reference: dict[str, Any] | None) -> dict[str, Any]:
    """Train seconds and steps a run needed to first reach `accuracy`, and their fractions of
    `reference`'s (the scratch run's `first_reaching` row): the adapt-vs-scratch figures.

    None where the run never got there, or where the reference was there from step 0.
    """
    reached = first_reaching(path, accuracy)
    seconds = None if reached is None else reached["train_s"]
    steps = None if reached is None else reached["step"]

    def fraction(value: float | None, key: str) -> float | None:
        return None if value is None or not reference or not reference[key] else value / reference[key]

    return {"seconds_to_scratch_best": seconds, "fraction_of_scratch_time": fraction(seconds, "train_s"),
            "steps_to_scratch_best": steps, "fraction_of_scratch_steps": fraction(steps, "step")}


class MetricsLog:
    """Append-only JSONL writer; `keep_until_step` trims rows a resumed run will redo."""

    def __init__(self, path: Path, keep_until_step: int | None = None):
        self.path = path
        if keep_until_step is not None:
            kept = [row for row in read_metrics(path) if row["step"] <= keep_until_step]
            atomic.write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a" if keep_until_step is not None else "w")

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot_curves(metrics_path: Path, png_path: Path, title: str) -> Path | None:
    """Loss (train and val, catapults shaded) and val accuracy against step; None (with a
    warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed; skipping the loss/accuracy plot (pip install matplotlib)",
                      stacklevel=2)
        return None
    rows = read_metrics(metrics_path)
    train = [row for row in rows if "loss" in row]
    evals = [row for row in rows if "val_acc" in row]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.7, label="train loss")
    loss_ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss")
    for index, event in enumerate(row for row in rows if row.get("event") == "catapult"):
        loss_ax.axvspan(event["start_step"], event["end_step"], color="tab:red", alpha=0.15,
                        label="catapult" if index == 0 else None)
    loss_ax.set(xlabel="step", ylabel="cross-entropy", title="loss")
    loss_ax.legend()
    acc_ax.plot([r["step"] for r in evals], [100 * r["val_acc"] for r in evals], "o-", color="tab:green")
    acc_ax.set(xlabel="step", ylabel="val accuracy (%)", title="validation accuracy", ylim=(0, 100))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return atomic.save_figure(fig, png_path)
