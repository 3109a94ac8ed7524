"""Learning-rate regimes inside `qdeploy train`: `--lr auto` and catapult logging.

Both come from qdeploy.nqm (Zhu et al. 2022, Lewkowycz et al. 2020). `--lr auto` measures
`lambda0`, the top Gauss-Newton eigenvalue of the training loss over the trainable weights
on one seeded batch, scans a few multiples of `1/lambda0` with full-batch gradient descent
and takes the recommended rate in the catapult regime. `CatapultHook` feeds every step's
loss (and, when asked, the sharpness) to a `CatapultDetector` and returns each catapult as
a metrics.jsonl row.

The probes run on a copy of the model whose BatchNorm layers use batch statistics without
updating running ones and whose dropout is off: the function being probed is then the
training-mode network, deterministic, and torch.func may differentiate it (in-place
running-stat updates are not allowed inside its transforms).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import replace_all_batch_norm_modules_
from torch.utils.data import DataLoader, Dataset

from qdeploy.data.image_folder import collate_skipping_bad
from qdeploy.errors import QDeployError
from qdeploy.nqm.catapult import CatapultDetector
from qdeploy.nqm.lr_probe import LrProbe, probe_learning_rates
from qdeploy.nqm.sharpness import LossFn, top_gauss_newton_eigenvalue
from qdeploy.training.config import TrainConfig

SHARPNESS_ITERS = 20
"""Lanczos iterations for sharpness logged during training: enough for the top eigenvalue's
leading digits, a tenth of the cost of a converged estimate on a large model."""


def probe_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` that computes its training-mode function without side effects."""
    clone = copy.deepcopy(model)
    replace_all_batch_norm_modules_(clone)  # batch statistics, no running-stat updates
    return clone.eval()  # dropout and drop-path off; BatchNorm keeps batch statistics


def probe_batch(dataset: Dataset, batch_size: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """One seeded batch of `batch_size` training images (undecodable ones left out)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_skipping_bad,
                        generator=torch.Generator().manual_seed(seed))
    images, labels, _ = next(iter(loader))
    if images is None:
        raise QDeployError("no image of the learning-rate probe batch could be decoded; check the data folder")
    return images.to(device), labels.to(device)


def training_loss(label_smoothing: float) -> LossFn:
    """The loss the trainer minimises (mean cross-entropy with label smoothing)."""

    def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)

    return loss_fn


def sgd_stability_factor(config: TrainConfig) -> float:
    """How far momentum moves the stability edge `2/lambda` of plain gradient descent.

    On a quadratic with curvature lambda, heavy-ball momentum beta is stable up to
    `2(1+beta)/lambda` and Nesterov momentum (what the trainer's SGD uses) up to
    `2(1+beta)/((1+2 beta) lambda)` (Cohen et al. 2021, arXiv 2103.00065, appendix). Scaling
    the gradient-descent rate by this ratio keeps it at the same place relative to the edge.
    """
    beta = config.momentum
    return (1 + beta) / (1 + 2 * beta)


def auto_learning_rate(model: nn.Module, batch: tuple[Tensor, Tensor], config: TrainConfig) -> tuple[float, LrProbe]:
    """The SGD learning rate for `--lr auto`, and the probe it came from."""
    x, y = batch
    probe = probe_learning_rates(probe_copy(model), x, y, training_loss(config.label_smoothing),
                                 steps=config.lr_probe_steps)
    return probe.recommended.lr * sgd_stability_factor(config), probe


class CatapultHook:
    """A trainer StepHook: logs each catapult (loss spike, then recovery) as a metrics row.

    With `sharpness_every`, it also measures the top Gauss-Newton eigenvalue on a fixed
    batch every that many steps (on the main process), logs it, and hands it to the
    detector so each event carries the sharpness before and after the spike.
    """

    def __init__(self, detector: CatapultDetector | None = None, loss_fn: LossFn | None = None,
                 batch: tuple[Tensor, Tensor] | None = None, sharpness_every: int | None = None):
        if sharpness_every and (batch is None or loss_fn is None):
            raise ValueError("measuring sharpness needs a batch and a loss function")
        self.detector = detector or CatapultDetector()
        self.loss_fn, self.batch, self.sharpness_every = loss_fn, batch, sharpness_every

    def __call__(self, info: Any) -> dict[str, Any] | None:
        sharpness = None
        if self.sharpness_every and info.is_main and info.step % self.sharpness_every == 0:
            sharpness = top_gauss_newton_eigenvalue(probe_copy(info.model), self.loss_fn, self.batch,
                                                    iters=SHARPNESS_ITERS)
        event = self.detector.update(info.step, info.loss, sharpness)
        row: dict[str, Any] = {} if sharpness is None else {"sharpness": sharpness}
        if event is not None:
            row.update(event.to_dict())
        return row or None
