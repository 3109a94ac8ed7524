"""How much each layer's quadratic term can lower the loss first: the benefit score of a plan.

Every quadratic term starts at exactly zero (one factor is zero, layers/terms.py), so the
gradient of the loss with respect to that zero factor, on a few batches of the target data,
says how fast the term can start to help (a Fisher-style, first-order score). The raw squared
gradient is useless as a ranking: it depends on each layer's scale and resolution (on
EfficientNet-Lite0 after a head-only probe, `blocks.1.0` alone took 90% of it).

The score here is the loss decrease the *first optimizer step* would give through each
layer's term: qdeploy trains with AdamW, whose first step moves every parameter by the same
size (lr * sign(g)), so to first order the loss falls by lr * ||g||_1 summed over the layer's
zero factor. That is additive over layers (what a knapsack needs), comparable between layers
of any scale, and grows with the parameters a layer adds only as far as they have gradient.
Scores are reported as shares (they sum to 1). Without data the score falls back to each
layer's added parameters (also as shares). The same norm over the other trainable weights is the
primary's gain: what a trained primary lowers in that step, against which a term must pay when
both share a fixed training time (knapsack.choose_rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from qdeploy.adaptation.inject import quadratic_layers
from qdeploy.errors import QDeployError
from qdeploy.layers import QuadraticLayer, RBFTerm

LossFn = Callable[[Tensor, Tensor], Tensor]


def zero_factor(layer: QuadraticLayer) -> list[nn.Parameter]:
    """The parameters that start at zero: the projection U, B where there is no U, or the RBF gate."""
    quad = layer.quad
    if isinstance(quad, RBFTerm):
        return [quad.gamma]
    return list((quad.proj if quad.proj is not None else quad.b).parameters())


def shares(values: dict[str, float]) -> dict[str, float]:
    """`values` scaled to sum to 1 (all equal when they sum to 0)."""
    total = sum(values.values())
    if total <= 0:
        return {name: 1.0 / len(values) for name in values} if values else {}
    return {name: value / total for name, value in values.items()}


@dataclass(frozen=True)
class FirstStepGains:
    """The loss decrease (divided by the learning rate) the first AdamW step would give, to first order.

    `layers`: through each quadratic layer's zero factor; `primary`: through every other
    trainable parameter together (the pretrained weights and the head), what a trained primary
    buys in the same step. Both are ||dL/dparameter||_1, so they add and compare.
    """

    layers: dict[str, float]
    primary: float

    def shares(self) -> dict[str, float]:
        return shares(self.layers)


def first_step_gains(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], loss_fn: LossFn) -> FirstStepGains:
    """||dL/d zero factor||_1 per quadratic layer of the zero-started `model`, and the same norm over
    its other parameters, for the mean loss over `batches`. The model runs in eval mode (BatchNorm
    running statistics: the pretrained function the terms start from); nothing is updated."""
    layers = quadratic_layers(model)
    if not layers:
        raise QDeployError("the model has no quadratic layers to score; adapt() it with the candidate layers first")
    params = {name: zero_factor(layer) for name, layer in layers.items()}
    zero = {id(p) for group in params.values() for p in group}
    primary = [p for p in model.parameters() if id(p) not in zero and p.dtype.is_floating_point]
    flat = [p for group in params.values() for p in group] + primary
    was_training = model.training
    wanted = [(p, p.requires_grad) for p in flat]
    model.eval()
    sums = [torch.zeros_like(p) for p in flat]
    count = 0
    try:
        for p in flat:
            p.requires_grad_(True)
        with torch.enable_grad():
            for images, labels in batches:
                loss = loss_fn(model(images), labels)
                for total, grad in zip(sums, torch.autograd.grad(loss, flat, allow_unused=True)):
                    if grad is not None:
                        total += grad
                count += 1
    finally:
        model.train(was_training)
        for p, requires in wanted:
            p.requires_grad_(requires)
    if count == 0:
        raise QDeployError("no batch to score the layers on; pass data with at least one batch of images")
    norms = [float((total / count).abs().sum()) for total in sums]
    raw, index = {}, 0
    for name, group in params.items():
        raw[name] = sum(norms[index:index + len(group)])
        index += len(group)
    return FirstStepGains(raw, sum(norms[index:]))


def gradient_scores(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], loss_fn: LossFn) -> dict[str, float]:
    """Per quadratic layer of the zero-started `model`: its first-step gain (first_step_gains), as shares."""
    return first_step_gains(model, batches, loss_fn).shares()


def param_scores(model: nn.Module) -> dict[str, float]:
    """The no-data fallback: each quadratic layer's added parameters, as shares."""
    return shares({name: float(sum(p.numel() for p in layer.quad.parameters()))
                   for name, layer in quadratic_layers(model).items()})
