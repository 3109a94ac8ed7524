"""Quadratic adaptation against the first-order baselines, at equal wall-time budgets.

The questions a user asks before adapting with quadratic terms: does it beat what I use
already (fine-tuning, LoRA), and how much cheaper is it than training the high-order network
from scratch (QuadraNet V2, arXiv 2405.03192: 90-98.4% fewer GPU hours)? This trains, one
after another on one machine, for the same wall-time budget each (`--minutes`, evaluations
included), on each dataset:

    scratch        the quadratic EfficientNet-Lite0 from random weights (the paper's baseline)
    finetune       the plain pretrained EfficientNet-Lite0, every weight trains
    lora           HF PEFT LoRA on the frozen pretrained model, rank matched to the
                   quadratic adapter's trainable parameter count (`qdeploy train --mode lora`)
    adapt-frozen   pretrained primary frozen, zero-started quadratic terms + head train
    adapt          the same with the primary trained too (`--train-primary`)

and reports per mode the best and final val accuracy, the trainable parameters, the steps,
and the training time (`train_s`, optimizer steps only) it needed to first reach the scratch
run's best accuracy, as a share of the time scratch needed for it (the paper's figure; the
issue's bar is <= 10% on Fashion-MNIST, aim 2%). One plot per dataset shows val accuracy
against wall time; results go to JSON.

Settings (per-dataset presets; options override them):

    CPU (default; about 25 minutes on 2 shared cores): 32 px images, batch 16, AdamW lr 2e-3
    (constant after a 20-step warmup) for every mode, 1 intra-op thread (steadier timings on shared cores), 2 minutes per run,
    evaluation every 25 steps. digits-shift: all 1,437 train / 360 val images. Fashion-MNIST:
    seeded subsets of 2,000 of the 60,000 train and 2,000 of the 10,000 test images
    (`--samples`), evaluation every 50 steps. Two minutes is far from any run's convergence:
    the figures compare the modes at a small budget, not their final accuracies.
    CUDA (`--device cuda`): the full sets (60,000 / 10,000 for Fashion-MNIST), 64 px, batch
    128, all intra-op threads, 10 minutes per run, evaluation every 100 steps.

    python benchmarks/adapter_comparison.py                         # both datasets, CPU preset
    python benchmarks/adapter_comparison.py --device cuda           # the GPU preset
    python benchmarks/adapter_comparison.py --runs R --report-only  # tables and plots again from R
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_report  # noqa: E402
from qdeploy.commands import tables  # noqa: E402
from qdeploy import atomic  # noqa: E402
from qdeploy.data import BUILTIN_DATA  # noqa: E402
from qdeploy.data.fashion_mnist import SPEC as FASHION_MNIST  # noqa: E402
from qdeploy.errors import exit_on_user_error  # noqa: E402
from qdeploy.training import TrainConfig, train  # noqa: E402
from qdeploy.training.metrics import first_reaching, read_metrics, time_to_target  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "adapter_comparison.json"
MODES = ("scratch", "finetune", "lora", "adapt-frozen", "adapt")  # scratch first: its best is the target


@dataclass(frozen=True)
class Preset:
    image_size: int
    batch_size: int
    minutes: float
    eval_every: int
    threads: int  # 0: PyTorch's default
    samples: int | None  # at most this many train and val images each (None: the whole sets)


PRESETS = {
    ("cpu", BUILTIN_DATA): Preset(32, 16, 2.0, 25, 1, None),
    ("cpu", FASHION_MNIST): Preset(32, 16, 2.0, 50, 1, 2000),
    ("cuda", BUILTIN_DATA): Preset(64, 128, 10.0, 100, 0, None),
    ("cuda", FASHION_MNIST): Preset(64, 128, 10.0, 100, 0, None),
}


def preset_for(data: str, args: argparse.Namespace) -> Preset:
    kind = "cuda" if args.device == "cuda" else "cpu"
    preset = PRESETS[(kind, FASHION_MNIST if data.startswith(FASHION_MNIST) else BUILTIN_DATA)]
    overrides = {name: getattr(args, name) for name in ("image_size", "batch_size", "minutes", "eval_every",
                                                       "threads", "samples")
                 if getattr(args, name) is not None}
    return replace(preset, **overrides)


def run_mode(mode: str, data: str, preset: Preset, folder: Path, args: argparse.Namespace,
             targets: tuple[str, ...] | None = None, steps: int | None = None) -> dict:
    """One run at the preset's wall-time budget, or of exactly `steps` steps; `targets`: the adapted
    layers (None: the defaults)."""
    trainer_mode = "adapt" if mode.startswith("adapt") else mode
    # The budget is wall time, so the step count is unknown up front: a constant rate after a
    # fixed warmup (a cosine or a 5%-of-planned-steps warmup would follow the 10,000 epochs).
    config = TrainConfig(mode=trainer_mode, train_primary=mode == "adapt", data=data, out=str(folder),
                         epochs=10_000, max_minutes=None if steps else preset.minutes, max_steps=steps,
                         image_size=preset.image_size,
                         batch_size=preset.batch_size, lr=args.lr, scheduler="constant",
                         warmup_steps=args.warmup_steps, eval_every=preset.eval_every,
                         max_samples=preset.samples, device=args.device, seed=args.seed, progress=args.progress,
                         targets=targets)
    return train(config).summary


def compare(data: str, runs: Path, summaries: dict[str, dict]) -> dict:
    """Per-mode rows and the scratch target for one dataset."""
    target = summaries["scratch"]["best_val_acc"]
    scratch_at = first_reaching(runs / "scratch" / "metrics.jsonl", target)
    rows = []
    for mode, summary in summaries.items():
        rows.append({
            "mode": mode, "best_val_acc": summary["best_val_acc"], "final_val_acc": summary["final_val_acc"],
            "trainable_params": summary["trainable_params"], "steps": summary["steps"],
            "train_seconds": summary["train_seconds"], "wall_seconds": summary["wall_seconds"],
            "train_images": summary["train_images"], "val_images": summary["val_images"],
            "image_size": summary["image_size"], "lora": summary.get("lora"),
            **time_to_target(runs / mode / "metrics.jsonl", target, scratch_at),
            "curve": [(row["wall_s"], row["val_acc"]) for row in read_metrics(runs / mode / "metrics.jsonl")
                      if "val_acc" in row],
        })
    return {"data": data, "scratch_best_val_acc": target, "scratch_seconds_to_best": scratch_at["train_s"],
            "scratch_steps_to_best": scratch_at["step"], "rows": rows}


def print_table(result: dict, console: Console) -> None:
    first = result["rows"][0]
    table = Table(title=f"{result['data']}: {first['train_images']} train / {first['val_images']} val, "
                        f"{first['image_size']} px; scratch best {100 * result['scratch_best_val_acc']:.1f}% "
                        f"after {result['scratch_seconds_to_best']:.0f} s / {result['scratch_steps_to_best']} steps: the target "
                        "(%: of scratch's time / steps to it)")
    table.add_column("mode", no_wrap=True)
    for column in ("best", "trainable", "steps", "s to target", "% time", "% steps"):
        table.add_column(column, justify="right", overflow="fold")
    percent = lambda value: "-" if value is None else f"{100 * value:.1f}%"  # noqa: E731
    for row in result["rows"]:
        seconds = row["seconds_to_scratch_best"]
        table.add_row(row["mode"], f"{100 * row['best_val_acc']:.1f}%", f"{row['trainable_params']:,}",
                      str(row["steps"]), "not reached" if seconds is None else f"{seconds:.1f}",
                      percent(row["fraction_of_scratch_time"]), percent(row["fraction_of_scratch_steps"]))
    tables.print_table(console, table)  # whole numbers in a log too


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in result["rows"]:
        seconds, accuracy = zip(*row["curve"])
        ax.plot(seconds, [100 * a for a in accuracy], "o-", ms=3, label=f"{row['mode']} ({row['trainable_params']:,})")
    ax.axhline(100 * result["scratch_best_val_acc"], color="grey", lw=0.8, ls="--", label="scratch best")
    ax.set(xlabel="wall time (s)", ylabel="val accuracy (%)", ylim=(0, 100),
           title=f"{result['data']}: val accuracy at equal wall-time budgets (trainable params)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic.save_figure(fig, png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=[BUILTIN_DATA, FASHION_MNIST],
                        help="datasets: digits-shift, fashion-mnist[:DIR] or ImageFolder directories")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="also picks the preset")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time budget per run [preset]")
    parser.add_argument("--image-size", type=int, default=None, help="[preset]")
    parser.add_argument("--batch-size", type=int, default=None, help="[preset]")
    parser.add_argument("--eval-every", type=int, default=None, help="[preset]")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads, 0: PyTorch's default [preset]")
    parser.add_argument("--samples", type=int, default=None, help="train and val subset sizes [preset]")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate, every mode")
    parser.add_argument("--warmup-steps", type=int, default=20, help="linear warmup, then constant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--runs", type=Path, default=Path("runs") / f"adapter-comparison-{int(time.time())}")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="re-read the runs in --runs, train nothing")
    args = parser.parse_args()
    if "scratch" not in args.modes:
        parser.error("--modes must include scratch: its best accuracy is the target the others are timed to")
    modes = [mode for mode in MODES if mode in args.modes]

    console = Console()
    results = []
    for data in args.data:
        preset = preset_for(data, args)
        if preset.threads:
            torch.set_num_threads(preset.threads)
        folder = args.runs / Path(data.replace(":", "_")).name
        summaries = {}
        for mode in modes:
            if args.report_only:
                summaries[mode] = json.loads((folder / mode / "summary.json").read_text())
            else:
                console.rule(f"{data}: {mode} ({preset.minutes:g} min)")
                summaries[mode] = run_mode(mode, data, preset, folder / mode, args)
        result = {**compare(data, folder, summaries), "preset": asdict(preset)}
        print_table(result, console)
        png = args.json.with_name(f"adapter_comparison_{folder.name}.png")
        plot(result, png)
        result["plot"] = str(png)
        results.append(result)

    write_report(args.json, args, console, {"device": args.device, "cpus": torch.get_num_threads()},
                 benchmark="adapter_comparison", model="efficientnet_lite0", results=results)


if __name__ == "__main__":
    exit_on_user_error(main)
