"""Optimizer and learning-rate schedule: AdamW or SGD, cosine decay after a linear warmup.

Weight decay skips biases and normalisation scales (every tensor with fewer than two
dimensions): decaying them only shifts activations, it does not regularise (timm and
the ConvNeXt/ViT recipes do the same).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qdeploy.training.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in model order, split into decayed and non-decayed groups."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(step: int, config: TrainConfig, total_steps: int) -> float:
    """LR multiplier at `step`: linear warmup from 1/(warmup+1) to 1, then cosine to 0 at the end.

    A pure function of the step (no scheduler state), so a resumed run lands on the same
    schedule and may even change --lr; `warmup_steps=None` warms up over 5% of the run.
    """
    warmup = config.warmup_steps if config.warmup_steps is not None else round(0.05 * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if config.scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None) -> None:
    """Clip the global gradient norm of every parameter the optimizer updates (no-op for None/0)."""
    if max_norm:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
