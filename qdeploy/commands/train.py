"""`qdeploy train`: adapt, scratch or finetune runs; the CLI face of qdeploy.training.train.

Every option maps onto a TrainConfig field of the same name. With --resume the saved run's
config is the base and only the options typed on this command line change it (budget and
stability knobs; anything else is refused by TrainConfig.resumed_with).
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from qdeploy.errors import QDeployError
from qdeploy.training.config import AMP_MODES, AUTO_LR, BUILTIN_DATA, DEVICES, MODES, OPTIMIZERS, SCHEDULERS, TrainConfig
from qdeploy.commands.tables import print_table
from qdeploy.workflows.latency_plan import PLAN_SCORINGS


def _learning_rate(ctx: click.Context, param: click.Parameter, value: str) -> float | str:
    if value == AUTO_LR:
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number (e.g. 2e-3) nor 'auto'") from None


def _explicit(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The options typed on the command line (not click defaults)."""
    return {name: value for name, value in options.items()
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}


# Every default is TrainConfig's, so the CLI and the Python API cannot disagree.
DEFAULT = TrainConfig()


@click.command("train")
@click.option("--model", default=DEFAULT.model, show_default=True,
              help="Built-in name, timm name (with --checkpoint for local weights), or a model/ folder "
                   "written by qdeploy train.")
@click.option("--checkpoint", default=DEFAULT.checkpoint, help="Local .safetensors/.pth weights for the timm --model.")
@click.option("--data", default=DEFAULT.data, show_default=True,
              help=f"'{BUILTIN_DATA}' (scikit-learn digits under a nonlinear shift, offline), 'fashion-mnist' "
                   "(the IDX files of apt's dataset-fashion-mnist; 'fashion-mnist:DIR' for another folder) or an "
                   "ImageFolder directory (class sub-folders, or train/ and val/ of them).")
@click.option("--out", default=DEFAULT.out, help="Run folder [default: runs/<mode>-<model>-<data>].")
@click.option("--mode", type=click.Choice(MODES), default=DEFAULT.mode, show_default=True,
              help="adapt: pretrained + zero-started quadratic terms; scratch: the same quadratic "
                   "architecture from random weights; finetune: the plain pretrained model; lora: HF PEFT "
                   "LoRA on the frozen pretrained model, rank matched to the quadratic adapter's parameters.")
@click.option("--train-primary", is_flag=True, help="adapt: train the pretrained weights too (frozen by default).")
@click.option("--targets", multiple=True,
              help="Module-name glob (fnmatch) of a layer to make quadratic, repeatable; any Conv2d or Linear "
                   "(e.g. 'blocks.5.*.conv_dw'). [default: the family's defaults] With --latency-budget: the "
                   "candidates the plan chooses from.")
@click.option("--latency-budget", type=float, default=None,
              help="Adapt only the layers a latency plan chooses so the ONNX Runtime CPU model stays within this "
                   "adapted/base latency ratio (e.g. 1.10), measured at batch 1 and 32 (`qdeploy plan`; "
                   "plan.json goes into the run folder).")
@click.option("--plan-trials", type=click.IntRange(0), default=None,
              help="With --latency-budget: the plan trains its N best proposed layer sets briefly on held-out "
                   "training images and keeps the best that fits (`qdeploy plan --trials`). [default: the plan's]")
@click.option("--plan-scoring", type=click.Choice(PLAN_SCORINGS), default=None,
              help="With --latency-budget: how the plan scores layers (`qdeploy plan --scoring`). [default: the plan's]")
@click.option("--rank", type=click.IntRange(1), default=DEFAULT.rank, show_default=True, help="Quadratic rank of dense layers.")
@click.option("--depthwise-rank", type=click.IntRange(1), default=DEFAULT.depthwise_rank, show_default=True,
              help="Per-channel quadratic rank of depthwise layers.")
@click.option("--dilation", type=click.IntRange(1), default=DEFAULT.dilation, show_default=True,
              help="Dilation of the atrous factor convs.")
@click.option("--epochs", type=click.IntRange(1), default=DEFAULT.epochs, show_default=True)
@click.option("--max-steps", type=click.IntRange(1), default=DEFAULT.max_steps, help="Stop after this many optimizer steps.")
@click.option("--max-minutes", type=float, default=DEFAULT.max_minutes, help="Stop after this much wall time (checkpoint kept).")
@click.option("--target-acc", type=float, default=DEFAULT.target_acc, help="Stop once val accuracy reaches this fraction (0.9).")
@click.option("--batch-size", type=click.IntRange(1), default=DEFAULT.batch_size, show_default=True,
              help="Global batch (split over torchrun processes).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=DEFAULT.optimizer, show_default=True)
@click.option("--lr", default=str(DEFAULT.lr), show_default=True, callback=_learning_rate,
              help="Peak learning rate, or 'auto': measured from the loss sharpness (lambda0 and a short "
                   "scan, qdeploy.nqm.lr_probe), for SGD (implied unless --optimizer is given).")
@click.option("--lr-probe-steps", type=click.IntRange(1), default=DEFAULT.lr_probe_steps, show_default=True,
              help="--lr auto: full-batch steps per scanned learning rate.")
@click.option("--weight-decay", type=float, default=DEFAULT.weight_decay, show_default=True)
@click.option("--momentum", type=float, default=DEFAULT.momentum, show_default=True, help="SGD (Nesterov) momentum.")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=DEFAULT.scheduler, show_default=True,
              help="After the linear warmup.")
@click.option("--warmup-steps", type=click.IntRange(0), default=DEFAULT.warmup_steps, help="[default: 5% of the steps]")
@click.option("--label-smoothing", type=float, default=DEFAULT.label_smoothing, show_default=True)
@click.option("--max-grad-norm", type=float, default=DEFAULT.max_grad_norm, show_default=True, help="Gradient clipping (0: off).")
@click.option("--seed", type=int, default=DEFAULT.seed, show_default=True)
@click.option("--val-fraction", type=float, default=DEFAULT.val_fraction, show_default=True,
              help="Held-out share when the data has no val/ folder.")
@click.option("--image-size", type=click.IntRange(8), default=DEFAULT.image_size,
              help=f"[default: 64 for {BUILTIN_DATA}, 32 for fashion-mnist, the model's input size for an "
                   "ImageFolder]")
@click.option("--max-samples", type=click.IntRange(1), default=DEFAULT.max_samples, help="Use at most N train and N val images.")
@click.option("--eval-every", type=click.IntRange(1), default=DEFAULT.eval_every, help="Also evaluate every N steps.")
@click.option("--save-every", type=click.IntRange(1), default=DEFAULT.save_every, help="Also checkpoint every N steps.")
@click.option("--sharpness-every", type=click.IntRange(1), default=DEFAULT.sharpness_every,
              help="Log the top Gauss-Newton eigenvalue every N steps (catapult events then carry it).")
@click.option("--workers", type=click.IntRange(0), default=DEFAULT.workers, show_default=True, help="Image-decoding processes.")
@click.option("--device", type=click.Choice(DEVICES), default=DEFAULT.device, show_default=True)
@click.option("--amp", type=click.Choice(AMP_MODES), default=DEFAULT.amp, show_default=True,
              help="CUDA mixed precision (auto: bf16 where supported, else fp16 with loss scaling).")
@click.option("--progress/--no-progress", default=DEFAULT.progress, show_default=True, help="Live progress bar.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
def train(resume: bool, latency_budget: float | None, plan_trials: int | None, plan_scoring: str | None,
          **options: Any) -> None:
    """Train a quadratic network by adaptation (or the scratch / finetune baselines).

    Writes to the run folder: model/ (safetensors + config; `qdeploy.load` reads the run
    or the folder, and `qdeploy export RUN` takes it), checkpoint/ (for --resume), metrics.jsonl, curves.png and
    summary.json. Multi-GPU / multi-node: torchrun --nproc_per_node N --no-python qdeploy train ...
    """
    from qdeploy.training import saved_config
    from qdeploy.training import train as run_training

    ctx = click.get_current_context()
    if options["max_grad_norm"] == 0:
        options["max_grad_norm"] = None
    if latency_budget is not None and resume:
        raise QDeployError("--latency-budget chooses the layers of a new run; --resume keeps the saved run's layers")
    planning = {"trials": plan_trials, "scoring": plan_scoring}  # None: the plan's own default
    for name, value in planning.items():
        if value is not None and latency_budget is None:
            raise QDeployError(f"--plan-{name} is a setting of the latency plan; add --latency-budget (e.g. 1.10)")
    if resume:
        if options["out"] is None:
            raise QDeployError("--resume needs --out: the folder of the run to continue")
        config = saved_config(options["out"]).resumed_with(_explicit(ctx, options))
    else:
        if options["lr"] == AUTO_LR and "optimizer" not in _explicit(ctx, options):
            options["optimizer"] = "sgd"
        config = TrainConfig(**options)
    plan = None
    if latency_budget is not None:
        config, plan = _planned(config, latency_budget, {k: v for k, v in planning.items() if v is not None})
    result = run_training(config, resume=resume)
    if plan is not None and result.is_main:
        plan.write(result.out)
    if result.is_main:
        _print_summary(result.summary)


def _planned(config: TrainConfig, budget: float, settings: dict[str, Any]) -> tuple[TrainConfig, Any]:
    """The config with the layers a latency plan chose as its targets, and the plan (printed)."""
    from dataclasses import replace

    from qdeploy.commands.plan import print_plan
    from qdeploy.workflows.latency_plan import PlanOptions, plan_for_training

    if config.mode != "adapt":
        raise QDeployError(f"--latency-budget plans the quadratic layers of --mode adapt, not {config.mode}")
    plan = plan_for_training(config, PlanOptions(latency_budget=budget, candidates=config.targets, **settings))
    print_plan(plan, Console())
    return replace(config, targets=tuple(plan.chosen)), plan


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"qdeploy train: {summary['mode']} {summary['model']} on {summary['data']}")
    table.add_column("")
    table.add_column("value")
    initial = summary["initial_val_acc"]
    rows = [
        ("stopped by", summary["stop_reason"]),
        ("steps (epochs)", f"{summary['steps']} ({summary['epochs']:g})"),
        ("val accuracy: start -> final (best)",
         f"{100 * initial:.2f}% -> {100 * summary['final_val_acc']:.2f}% ({100 * summary['best_val_acc']:.2f}%)"),
        ("trainable / total params", f"{summary['trainable_params']:,} / {summary['total_params']:,}"),
        ("device, precision", f"{summary['device']} x{summary['world_size']}, {summary['precision']}"),
        ("wall time, device hours", f"{summary['wall_seconds']:.1f} s, {summary['device_hours']:.4f} h"),
        ("throughput", f"{summary['samples_per_s']:.1f} images/s"),
        ("catapult events", str(summary["catapult_events"])),
        ("skipped images", str(summary["skipped_images"])),
        ("run folder", summary["out"]),
    ]
    if summary["lora"]:
        lora = summary["lora"]
        rows.insert(4, ("LoRA (HF PEFT)", f"rank {lora['rank']} on {len(lora['targets'])} layers: "
                                          f"{lora['lora_params']:,} params vs quadratic {lora['quadratic_params']:,}"))
        if lora["substituted"]:
            rows.insert(5, ("LoRA targets", lora["note"]))
    if summary["lr_probe"]:
        rows.insert(1, ("--lr auto", f"{summary['config']['lr']:.4g} (lambda0 {summary['lr_probe']['lambda0']:.4g})"))
    for label, value in rows:
        table.add_row(label, value)
    print_table(Console(), table)
