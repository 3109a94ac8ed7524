"""Every training setting in one dataclass: what the CLI fills, checkpoints record, resume reads.

Keeping the whole run description in one serialisable object is what makes `--resume`
honest: the resumed run rebuilds the model, data split, optimizer and schedule from the
saved config instead of trusting the new command line to repeat them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from qdeploy.data import BUILTIN_DATA
from qdeploy.errors import QDeployError
from qdeploy.models.sources import BUILTIN_DEFAULT

MODES = ("adapt", "scratch", "finetune", "lora")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cuda", "cpu")
AUTO_LR = "auto"

# Budget, run-time and stability knobs a resumed run may change (lower --lr after a NaN);
# everything else defines the run.
RESUMABLE_OVERRIDES = frozenset(
    {"epochs", "max_steps", "max_minutes", "target_acc", "eval_every", "save_every", "workers", "progress",
     "lr", "max_grad_norm", "lr_probe_steps", "sharpness_every"}
)


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    mode: "adapt" (pretrained primary + zero-started quadratic terms; the primary is frozen
        unless `train_primary`, the classifier head always trains), "scratch" (the same
        quadratic architecture from random weights, all trainable: the paper's baseline),
        "finetune" (the plain pretrained model, all trainable, no quadratic term), "lora"
        (the first-order baseline: HF PEFT LoRA on the pretrained model, frozen, with the
        quadratic adapter's trainable parameter count; lora.py).
    data: the built-in "digits-shift", "fashion-mnist[:DIR]" (the IDX files of Debian's
        dataset-fashion-mnist) or an ImageFolder directory (class sub-folders, or `train/` and
        `val/` folders of them).
    batch_size: the global batch; under torchrun each process takes batch_size / world_size,
        so hyper-parameters mean the same thing on 1 or 64 devices.
    lr: a number, or "auto": measured at the start from the loss sharpness (probing.py; SGD
        only), and saved as the number it became.
    lr_probe_steps: full-batch steps per scanned rate of `--lr auto`.
    sharpness_every: measure the top Gauss-Newton eigenvalue every N steps and log it (and
        the sharpness around each catapult) to metrics.jsonl; None logs catapults from the
        loss alone, at no cost.
    warmup_steps: linear warmup length; None means 5% of the planned steps.
    image_size: None picks the data's default (64 for the built-in digits, the model's own
        input size for an ImageFolder).
    eval_every / save_every: extra evaluations / checkpoints every N steps (every epoch end
        always gets both).
    max_samples: cap train and val at N images each (quick trials and tests).
    targets: module-name globs (fnmatch) of the layers that become quadratic (adapt, scratch);
        None takes the family's defaults. `qdeploy train --latency-budget` fills it with the
        layers a latency plan chose (workflows/latency_plan.py).
    out: the run folder; None means `runs/<mode>-<model>-<data>` (see `run_name`).
    """

    model: str = BUILTIN_DEFAULT
    checkpoint: str | None = None
    data: str = BUILTIN_DATA
    out: str | None = None
    mode: str = "adapt"
    train_primary: bool = False
    targets: tuple[str, ...] | None = None
    rank: int = 8
    depthwise_rank: int = 1
    dilation: int = 3
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float | str = 2e-3
    lr_probe_steps: int = 40
    weight_decay: float = 0.05
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_steps: int | None = None
    label_smoothing: float = 0.1
    max_grad_norm: float | None = 1.0
    seed: int = 0
    max_minutes: float | None = None
    target_acc: float | None = None
    val_fraction: float = 0.2
    image_size: int | None = None
    max_samples: int | None = None
    eval_every: int | None = None
    save_every: int | None = None
    workers: int = 2
    device: str = "auto"
    amp: str = "auto"
    sharpness_every: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.targets is not None:  # a JSON list when read back; () (no --targets) means the defaults
            object.__setattr__(self, "targets", tuple(self.targets) or None)
            if self.targets and not self.quadratic:
                raise QDeployError(f"--targets picks the quadratic layers of --mode adapt or scratch; "
                                   f"--mode {self.mode} has none: drop --targets")
        for name, allowed in (("mode", MODES), ("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS),
                              ("amp", AMP_MODES), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise QDeployError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        positive = ("epochs", "batch_size", "max_steps", "eval_every", "save_every", "max_samples", "image_size",
                    "lr_probe_steps", "sharpness_every")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise QDeployError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.lr == AUTO_LR:
            if self.optimizer != "sgd":
                raise QDeployError("--lr auto picks an SGD learning rate from the loss sharpness; add --optimizer sgd")
        elif isinstance(self.lr, str) or self.lr <= 0:
            raise QDeployError(f"--lr must be a number > 0 or 'auto', got {self.lr!r}")
        if self.target_acc is not None and not 0.0 < self.target_acc <= 1.0:
            raise QDeployError(f"--target-acc is a fraction in (0, 1], got {self.target_acc} (0.9 means 90%)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise QDeployError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise QDeployError(f"--max-minutes must be > 0, got {self.max_minutes}")
        if self.mode == "scratch" and self.checkpoint:
            raise QDeployError("--mode scratch starts from random weights; drop --checkpoint")
        if self.mode != "adapt" and self.train_primary:
            raise QDeployError(f"--train-primary applies to --mode adapt; {self.mode} trains every weight already")

    @property
    def quadratic(self) -> bool:
        """Whether the trained model carries quadratic terms."""
        return self.mode in ("adapt", "scratch")

    @property
    def run_name(self) -> str:
        """`<mode>-<model>-<data>` from the last path parts, the default folder name under runs/."""
        model, data = (Path(value.rstrip("/\\")).name for value in (self.model, self.data))
        return f"{self.mode}-{model}-{data}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resumed_with(self, overrides: dict[str, Any]) -> "TrainConfig":
        """This (saved) config with the command line's budget changes; other changes are errors."""
        changed = {k: v for k, v in overrides.items() if getattr(self, k) != v}
        fixed = sorted(set(changed) - RESUMABLE_OVERRIDES)
        if fixed:
            raise QDeployError(
                f"--resume continues the saved run, which fixes {', '.join('--' + k.replace('_', '-') for k in fixed)}; "
                f"drop those options or start a new run with another --out (changeable: "
                f"{', '.join(sorted('--' + k.replace('_', '-') for k in RESUMABLE_OVERRIDES))})"
            )
        return replace(self, **changed)
