"""Full-batch gradient descent, the setting in which the learning-rate regimes are exact for squared loss."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from qdeploy.nqm.sharpness import LossFn


def half_mse(output: Tensor, target: Tensor) -> Tensor:
    """`1/(2n) sum_i ||f(x_i) - y_i||^2`, whose Gauss-Newton matrix is `J^T J / n`.

    With this normalisation the critical learning rate is `2 / lambda_max(J J^T / n)`.
    """
    return 0.5 * (output - target).pow(2).sum() / output.shape[0]


def gradient_descent(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    *,
    loss_fn: LossFn = half_mse,
    on_step: Callable[[int, float], None] | None = None,
    blow_up: float = 1e8,
) -> list[float]:
    """Train `model` in place with full-batch GD and return `L(w_0), ..., L(w_steps)`.

    `on_step(t, L(w_t))` runs at every iterate, before the update, so callers can measure
    the model at `w_t`. The run stops early once the loss is non-finite or `blow_up` times its
    start: by then it has diverged, and more steps would only overflow.
    """
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses: list[float] = []
    for step in range(steps + 1):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        if step == steps or not math.isfinite(losses[-1]) or losses[-1] > blow_up * losses[0]:
            break
        loss.backward()
        optimizer.step()
    return losses
