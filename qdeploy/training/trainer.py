"""The training loop: setup, steps, evaluation, stopping rules, checkpoints and run outputs.

One code path serves a laptop CPU and a torchrun job: a single process is a world of one.
Rank 0 alone writes files and draws the progress bar; every rank runs the same steps and
makes the same stop decision (stop signals travel in the per-step all-reduce).

Per-step hooks (`StepHook`) run on every rank after each optimizer step, with the step,
loss and learning rate (and the model and optimizer, whose gradients are still in place):
the attachment point for learning-rate probes, catapult detectors or custom logging. A
hook may return a dict, which rank 0 appends to metrics.jsonl with the step and epoch; the
built-in `CatapultHook` (probing.py) logs catapults that way in every run.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from qdeploy import atomic
from qdeploy.adaptation import AdaptReport
from qdeploy.errors import QDeployError
from qdeploy.store import CHECKPOINT_DIR, RUN_MODEL_DIR, SUMMARY_FILE, TrainingRecord, save
from qdeploy.training.checkpointing import Checkpoint, read_checkpoint, read_checkpoint_state, save_checkpoint
from qdeploy.training.config import AUTO_LR, TrainConfig
from qdeploy.training.data import build_data, steps_per_epoch, train_loader, val_loader
from qdeploy.training.device import autocast, memory_format, resolve_device, resolve_precision
from qdeploy.training.distributed import (
    DistContext,
    all_gather_equal,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from qdeploy.training.metrics import MetricsLog, plot_curves
from qdeploy.training.lora import LoraPlan
from qdeploy.training.model_setup import load_source, prepare_model, set_trainable
from qdeploy.training.optim import build_optimizer, clip_gradients, lr_factor, set_lr
from qdeploy.training.probing import CatapultHook, auto_learning_rate, probe_batch, training_loss
from qdeploy.training.progress import ProgressBar

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


@dataclass
class StepInfo:
    """What a per-step hook sees, right after the optimizer step."""

    step: int  # optimizer steps done, this one included
    epoch: int
    loss: float  # mean over the global batch, before this step's update
    lr: float  # the learning rate this step used
    batch_size: int  # global
    model: nn.Module  # unwrapped (no DDP); its .grad fields hold this step's gradients
    optimizer: torch.optim.Optimizer
    is_main: bool


StepHook = Callable[[StepInfo], "dict[str, Any] | None"]


@dataclass
class TrainResult:
    out: Path
    model_dir: Path
    summary: dict[str, Any]
    is_main: bool = True  # rank 0 under torchrun: the process that wrote the files and reports


def resolve_out(config: TrainConfig, resume: bool) -> Path:
    """The run folder: --out, or runs/<mode>-<model>-<data> with -2, -3... if that is taken."""
    if config.out is None:
        if resume:
            raise QDeployError("--resume needs --out: the folder of the run to continue")
        base = Path("runs") / config.run_name
        out, suffix = base, 2
        while out.exists():
            out, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
        return out
    out = Path(config.out)
    if not resume and ((out / METRICS_FILE).exists() or (out / CHECKPOINT_DIR).exists()):
        raise QDeployError(f"{out} already holds a run; pass --resume to continue it, or another --out to start over")
    return out


def saved_config(out: str | Path) -> TrainConfig:
    """The config a run folder's checkpoint was written with (the base of a resumed run)."""
    return TrainConfig.from_dict(read_checkpoint_state(Path(out) / CHECKPOINT_DIR)["config"])


def train(config: TrainConfig, resume: bool = False, hooks: Sequence[StepHook] = (),
          console: Console | None = None) -> TrainResult:
    """Run (or with `resume`, continue) one training run; returns its folder and summary.

    Under torchrun every process calls this; they join one process group and each gets
    batch_size / world_size images per step.
    """
    context = init_distributed(resolve_device(config.device, 0).type == "cuda")
    try:
        return Trainer(config, context, resume, hooks, console).run()
    finally:
        shutdown_distributed(context)


class Trainer:
    """One run's state. Build with the config; `run()` trains and writes the outputs."""

    def __init__(self, config: TrainConfig, context: DistContext, resume: bool,
                 hooks: Sequence[StepHook] = (), console: Console | None = None):
        self.context, self.hooks, self.console = context, list(hooks), console or Console()
        self.device = resolve_device(config.device, context.local_rank)
        self.precision = resolve_precision(self.device, config.amp)
        self.memory_format = memory_format(self.device)
        self.out = resolve_out(config, resume)
        barrier(context)  # every rank resolved the folder before rank 0 creates it
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        checkpoint = read_checkpoint(self.out / CHECKPOINT_DIR) if resume else None
        if checkpoint is not None:
            config = TrainConfig.from_dict(checkpoint.state["config"]).resumed_with(config.to_dict())
            model = checkpoint.load_model()
        else:
            model = load_source(config)
        self.config = config = replace(config, out=str(self.out))
        self.data = build_data(config, model)
        if checkpoint is not None:
            self._check_classes(checkpoint)
            set_trainable(model, config)
            self.adapt_report = None  # what the model got at its start: an AdaptReport or a LoraPlan
        else:
            model, self.adapt_report = prepare_model(model, config, len(self.data.classes), self.data.image_size)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.ddp = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if context.active else model
        self._setup_batches()
        self.lr_probe = checkpoint.state.get("lr_probe") if checkpoint is not None else None
        if config.lr == AUTO_LR:
            self.config = config = self._probe_learning_rate()
        self.loss_fn = training_loss(config.label_smoothing)  # the one loss the probes measure too
        self.catapults = self._catapult_hook()
        self.hooks.insert(0, self.catapults)
        self.optimizer = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.scaled else None
        self.step, self.best_acc, self.best_step, self.initial_acc, self.last_acc = 0, -1.0, 0, None, None
        self.last_eval_step, self.last_checkpoint_step, self.skipped, self.val_skipped = -1, None, 0, 0
        self.wall_offset = self.train_seconds = 0.0
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            torch.manual_seed(config.seed + context.rank)  # independent dropout/augmentation per rank

    def _check_classes(self, checkpoint: Checkpoint) -> None:
        saved = tuple(checkpoint.state["classes"])
        if saved != self.data.classes:
            raise QDeployError(
                f"class mismatch: the checkpoint was trained on {len(saved)} classes, {self.config.data} has "
                f"{len(self.data.classes)} ({', '.join(self.data.classes[:5])}...); resume with the same data"
            )

    def _setup_batches(self) -> None:
        config, world = self.config, self.context.world_size
        if config.batch_size % world:
            raise QDeployError(f"--batch-size {config.batch_size} (global) must divide evenly over {world} processes")
        self.batch_per_rank = config.batch_size // world
        self.steps_per_epoch = steps_per_epoch(self.data, self.context, self.batch_per_rank)
        if self.steps_per_epoch == 0:
            raise QDeployError(
                f"the train set has {len(self.data.train)} images, fewer than one global batch of "
                f"{config.batch_size}; lower --batch-size"
            )
        planned = config.epochs * self.steps_per_epoch
        self.total_steps = min(planned, config.max_steps) if config.max_steps else planned
        pin = self.device.type == "cuda"
        self.val_loader = val_loader(self.data, self.context, self.batch_per_rank, config, pin)

    @functools.cached_property
    def _probe_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed batch the LR probe and the sharpness share (built once)."""
        return probe_batch(self.data.train, self.config.batch_size, self.config.seed, self.device)

    def _probe_learning_rate(self) -> TrainConfig:
        """`--lr auto`: rank 0 probes the model on one global batch, every rank gets its rate."""
        lr = torch.zeros(1, dtype=torch.float64, device=self.device)
        if self.context.is_main:
            self.console.print(f"--lr auto: measuring lambda0 and scanning learning rates "
                               f"({self.config.lr_probe_steps} full-batch steps each)...")
            value, probe = auto_learning_rate(self.model, self._probe_batch, self.config)
            self.lr_probe = {**probe.to_dict(), "sgd_lr": value}
            self.console.print(f"--lr auto: lambda0 {probe.lambda0:.4g}, 2/lambda0 {probe.critical_lr:.4g}, "
                               f"recommended {probe.recommended.lr:.4g} ({probe.recommended.regime.value}); "
                               f"SGD with momentum {self.config.momentum}: lr {value:.4g}")
            lr[0] = value
        return replace(self.config, lr=float(all_reduce_sum(lr, self.context).item()))

    def _catapult_hook(self) -> CatapultHook:
        """Catapults from the loss alone, or with the sharpness every `sharpness_every` steps."""
        every = self.config.sharpness_every
        if not every:
            return CatapultHook()
        return CatapultHook(loss_fn=self.loss_fn, batch=self._probe_batch,
                            sharpness_every=every)

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = self.last_eval_step = self.last_checkpoint_step = state["step"]
        self.best_acc, self.best_step = state["best_acc"], state["best_step"]
        self.initial_acc, self.last_acc = state["initial_acc"], state["last_acc"]
        self.wall_offset, self.train_seconds, self.skipped = state["wall_s"], state["train_s"], state["skipped_images"]
        rank = self.context.rank
        if state["world_size"] == self.context.world_size:
            torch.set_rng_state(checkpoint.rng_states[f"{rank}.cpu"])
            if self.device.type == "cuda" and f"{rank}.cuda" in checkpoint.rng_states:
                torch.cuda.set_rng_state(checkpoint.rng_states[f"{rank}.cuda"], self.device)
        else:  # other world size: same data order, but dropout/augmentation draws differ
            torch.manual_seed(self.config.seed + rank + self.step)

    # ---- the run -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self.started = time.perf_counter()
        main = self.context.is_main
        self.metrics = MetricsLog(self.out / METRICS_FILE, self.step if self.step else None) if main else None
        try:
            with ProgressBar(self.total_steps, self.step, main and self.config.progress, self.console) as bar:
                self.bar = bar
                if self.initial_acc is None:
                    self.initial_acc = self._evaluate(epoch=0)
                reason = self._train_epochs()
                if self.last_eval_step != self.step:
                    self._evaluate(self._epoch())
                if self.last_checkpoint_step != self.step:
                    self._checkpoint()
        finally:
            if self.metrics is not None:
                self.metrics.close()
        return self._finish(reason)

    def _epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def _wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started

    def _train_epochs(self) -> str:
        config = self.config
        pin = self.device.type == "cuda"
        while self.step < self.total_steps:
            epoch, done = self._epoch(), self.step % self.steps_per_epoch
            loader = train_loader(self.data, self.context, self.batch_per_rank, epoch, done, config, pin)
            tick = time.perf_counter()
            for images, labels, skipped in loader:
                over_time = config.max_minutes is not None and time.perf_counter() - self.started > 60 * config.max_minutes
                stop = self._train_step(images, labels, skipped, epoch, over_time, tick)
                if stop:
                    return "max_minutes"
                end_of_epoch = self.step % self.steps_per_epoch == 0
                if end_of_epoch or (config.eval_every and self.step % config.eval_every == 0):
                    accuracy = self._evaluate(self._epoch())
                    if config.target_acc is not None and accuracy >= config.target_acc:
                        self._checkpoint()
                        return "target_acc"
                if end_of_epoch or (config.save_every and self.step % config.save_every == 0):
                    self._checkpoint()
                if self.step >= self.total_steps:
                    break
                tick = time.perf_counter()
        return "max_steps" if config.max_steps and self.total_steps == config.max_steps else "epochs"

    def _train_step(self, images: torch.Tensor | None, labels: torch.Tensor | None, skipped: int,
                    epoch: int, over_time: bool, tick: float) -> bool:
        """One optimizer step on this rank's batch; True when the run must stop (time budget)."""
        config, device = self.config, self.device
        self.ddp.train()
        loss = None
        stats = torch.zeros(5, device=device)  # loss sum, images, empty batches, skipped, over time
        if images is not None:
            images = images.to(device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, self.precision):
                logits = self.ddp(images)
            loss = self.loss_fn(logits, labels)
            stats[0], stats[1] = loss.detach() * len(labels), len(labels)
        stats[2], stats[3], stats[4] = float(images is None), skipped, float(over_time)
        totals = all_reduce_sum(stats, self.context).tolist()
        self.skipped += int(totals[3])
        if totals[2]:
            raise QDeployError(
                f"every image of a batch at step {self.step + 1} failed to decode; the data folder looks "
                "damaged: check the files named in the warnings above"
            )
        if totals[4]:
            return True
        mean_loss = totals[0] / totals[1]
        if not math.isfinite(mean_loss):
            self._diverged(f"the loss is {mean_loss} at step {self.step + 1}", "stopped before updating the weights")
        lr = config.lr * lr_factor(self.step, config, self.total_steps)
        set_lr(self.optimizer, lr)
        self._backward_and_update(loss)
        self.step += 1
        seconds = time.perf_counter() - tick
        self.train_seconds += seconds
        samples_per_s = totals[1] / seconds
        if self.metrics is not None:
            self.metrics.write({"step": self.step, "epoch": epoch, "loss": mean_loss, "lr": lr,
                                "samples_per_s": samples_per_s, "wall_s": self._wall(), "train_s": self.train_seconds})
        self.bar.step(self.step, epoch, mean_loss, lr, samples_per_s)
        info = StepInfo(self.step, epoch, mean_loss, lr, int(totals[1]), self.model, self.optimizer, self.context.is_main)
        for hook in self.hooks:
            row = hook(info)
            if row and self.metrics is not None:
                self.metrics.write({"step": self.step, "epoch": epoch, **row})
        return False

    def _backward_and_update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        clip_gradients(self.optimizer, self.config.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    @torch.no_grad()
    def _evaluate(self, epoch: int) -> float:
        """Val accuracy over every val image (all ranks together); logs it and tracks the best."""
        self.model.eval()
        totals = torch.zeros(4, device=self.device, dtype=torch.float64)  # correct, loss sum, images, skipped
        for images, labels, skipped in self.val_loader:
            totals[3] += skipped
            if images is None:
                continue
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(self.device, non_blocking=True)
            with autocast(self.device, self.precision):
                logits = self.model(images).float()
            totals[0] += (logits.argmax(-1) == labels).sum()
            totals[1] += F.cross_entropy(logits, labels, reduction="sum")
            totals[2] += len(labels)
        correct, loss_sum, count, skipped = all_reduce_sum(totals, self.context).tolist()
        if count == 0:
            raise QDeployError("no val image could be decoded; check the val images named in the warnings above")
        accuracy = correct / count
        self.val_skipped = int(skipped)  # the same files fail at every evaluation: count them once
        self.last_eval_step, self.last_acc = self.step, accuracy
        if accuracy > self.best_acc:
            self.best_acc, self.best_step = accuracy, self.step
        if self.metrics is not None:
            self.metrics.write({"step": self.step, "epoch": epoch, "val_acc": accuracy, "val_loss": loss_sum / count,
                                "wall_s": self._wall(), "train_s": self.train_seconds})
        self.bar.evaluated(accuracy)
        return accuracy

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """Every rank's RNG states (collective), so a resumed run draws what the original would."""
        local = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            local["cuda"] = torch.cuda.get_rng_state(self.device)
        comm_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        return {f"{rank}.{name}": part.cpu()
                for name, tensor in local.items()
                for rank, part in enumerate(all_gather_equal(tensor.to(comm_device), self.context))}

    def _diverged(self, what: str, action: str) -> None:
        """Stop a run whose numbers left the finite range, naming the checkpoint that is still good."""
        kept = (f"the last good checkpoint (step {self.last_checkpoint_step}) is intact in "
                f"{self.out / CHECKPOINT_DIR}" if self.last_checkpoint_step is not None else "no checkpoint was written yet")
        raise QDeployError(f"{what} (lr {self.optimizer.param_groups[0]['lr']:.2e}); {action}; {kept}: "
                           "lower --lr or set --max-grad-norm, and --resume")

    def _checkpoint(self) -> None:
        # A finite loss can still be followed by an update to Inf weights: never save those.
        for name, param in self.model.named_parameters():
            if not bool(torch.isfinite(param).all()):
                self._diverged(f"the weights hold NaN/Inf after step {self.step} ({name})", "not saved")
        rng = self._rng_states()
        if self.context.is_main:
            save_checkpoint(self.out / CHECKPOINT_DIR, self.model, self.optimizer, rng, {
                "config": self.config.to_dict(), "step": self.step, "classes": list(self.data.classes),
                "best_acc": self.best_acc, "best_step": self.best_step, "initial_acc": self.initial_acc,
                "last_acc": self.last_acc, "wall_s": self._wall(), "train_s": self.train_seconds,
                "skipped_images": self.skipped, "world_size": self.context.world_size,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "lr_probe": self.lr_probe,
            })
        self.last_checkpoint_step = self.step

    # ---- outputs -----------------------------------------------------------------------------

    def _finish(self, reason: str) -> TrainResult:
        model_dir = self.out / RUN_MODEL_DIR
        summary = self._summary(reason)
        if self.context.is_main:
            # The split (seed, val fraction) too: verify must score the held-out images only.
            save(self.model, model_dir, record=TrainingRecord(
                summary["data"], summary["image_size"], self.config.seed, self.config.val_fraction, summary["mode"],
                tuple(summary["classes"]), summary["steps"], summary["final_val_acc"],
                tuple(self.config.targets) if self.config.targets else None))
            plot_curves(self.out / METRICS_FILE, self.out / PLOT_FILE,
                        f"{self.config.mode}: {self.config.model} on {self.config.data}")
            atomic.write_json(self.out / SUMMARY_FILE, summary)
        barrier(self.context)
        return TrainResult(self.out, model_dir, summary, self.context.is_main)

    def _summary(self, reason: str) -> dict[str, Any]:
        config, wall = self.config, self._wall()
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        params = list(self.model.parameters())
        return {
            "mode": config.mode, "model": config.model, "data": config.data, "out": str(self.out),
            "classes": list(self.data.classes), "train_images": len(self.data.train),
            "val_images": len(self.data.val), "image_size": self.data.image_size,
            "device": device, "world_size": self.context.world_size, "precision": self.precision.name,
            "steps": self.step, "epochs": round(self.step / self.steps_per_epoch, 3), "stop_reason": reason,
            "initial_val_acc": self.initial_acc, "final_val_acc": self.last_acc,
            "best_val_acc": self.best_acc, "best_step": self.best_step,
            "wall_seconds": wall, "train_seconds": self.train_seconds,
            "device_hours": wall * self.context.world_size / 3600,
            "samples_per_s": self.step * config.batch_size / max(self.train_seconds, 1e-9),
            "total_params": sum(p.numel() for p in params),
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "skipped_images": self.skipped + self.val_skipped,
            "adapt_report": self.adapt_report.to_dict() if isinstance(self.adapt_report, AdaptReport) else None,
            "lora": self.adapt_report.to_dict() if isinstance(self.adapt_report, LoraPlan) else None,
            "lr_probe": self.lr_probe,
            "catapult_events": len(self.catapults.detector.events),
            "config": config.to_dict(),
        }
