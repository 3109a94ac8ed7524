"""Pick a learning rate from the regimes of Lewkowycz et al. (2020) and Zhu et al. (2022).

`lambda0`, the top eigenvalue of the Gauss-Newton matrix at the current weights (for squared
loss: of the tangent kernel `J J^T / n`), predicts the regimes of full-batch gradient descent:
monotone below `2/lambda0`, catapult up to `4/lambda0` for the NQM (about `12/lambda0` for
deep ReLU networks), divergence beyond. Theory gives the boundaries; a short empirical scan
checks which side each rate really falls on for this model and batch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from qdeploy.errors import QDeployError
from qdeploy.nqm.catapult import Regime, classify_losses
from qdeploy.nqm.defaults import SCAN_MULTIPLES, SCAN_STEPS
from qdeploy.nqm.sharpness import LossFn, top_gauss_newton_eigenvalue
from qdeploy.nqm.training import gradient_descent, half_mse

TARGET = 3.0
"""The recommendation aims at `3/lambda0`, the middle of the NQM's catapult window: large
enough to catapult into a flatter region, far enough from divergence to tolerate noise."""


@dataclass(frozen=True)
class ScanPoint:
    """A few steps of full-batch gradient descent at one learning rate."""

    lr: float
    lr_times_lambda0: float
    regime: Regime
    initial_loss: float
    peak_loss: float
    final_loss: float

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "regime": self.regime.value}


@dataclass(frozen=True)
class LrProbe:
    """`lambda0` on the probed batch, the scan, and the recommended point of the scan."""

    lambda0: float
    scan: tuple[ScanPoint, ...]
    recommended: ScanPoint

    @property
    def critical_lr(self) -> float:
        """`2/lambda0`: the largest rate at which the linearized model still converges."""
        return 2 / self.lambda0

    @property
    def nqm_limit_lr(self) -> float:
        """`4/lambda0`: the largest rate at which the NQM still converges."""
        return 4 / self.lambda0

    def to_dict(self) -> dict[str, object]:
        return {
            "lambda0": self.lambda0,
            "critical_lr": self.critical_lr,
            "nqm_limit_lr": self.nqm_limit_lr,
            "scan": [point.to_dict() for point in self.scan],
            "recommended_lr": self.recommended.lr,
        }


def probe_learning_rates(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn = half_mse,
    *,
    multiples: Sequence[float] = SCAN_MULTIPLES,
    steps: int = SCAN_STEPS,
) -> LrProbe:
    """Measure `lambda0` on the batch `(x, y)`, scan `multiples / lambda0` and recommend one.

    Each rate trains its own copy of `model` for `steps` full-batch steps; `model` itself is
    not changed. Give the scan enough steps for a catapult to come back down (it peaks
    after roughly log(width) steps), or it is reported as diverged.
    """
    if steps < 1 or not multiples or min(multiples) <= 0:
        raise QDeployError("the scan needs steps >= 1 and positive learning-rate multiples")
    lambda0 = top_gauss_newton_eigenvalue(model, loss_fn, (x, y))
    scan = []
    for multiple in sorted(multiples):
        losses = gradient_descent(copy.deepcopy(model), x, y, multiple / lambda0, steps, loss_fn=loss_fn)
        regime = classify_losses(losses)
        scan.append(ScanPoint(multiple / lambda0, multiple, regime, losses[0], max(losses), losses[-1]))
    return LrProbe(lambda0, tuple(scan), _recommend(scan))


def _recommend(scan: Sequence[ScanPoint]) -> ScanPoint:
    """The catapulting rate nearest `TARGET / lambda0`, else the largest monotone one."""
    catapults = [p for p in scan if p.regime is Regime.CATAPULT]
    if catapults:
        return min(catapults, key=lambda p: (abs(p.lr_times_lambda0 - TARGET), p.lr))
    monotone = [p for p in scan if p.regime is Regime.MONOTONE]
    if monotone:
        return max(monotone, key=lambda p: p.lr)
    raise QDeployError(
        "every scanned learning rate diverged: scan smaller multiples of 1/lambda0 or give the scan more steps"
    )
