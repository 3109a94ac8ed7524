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
layer's added parameters (also as shares).
"""

from __future__ import annotations

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


def gradient_scores(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], loss_fn: LossFn) -> dict[str, float]:
    """Per quadratic layer of the zero-started `model`: ||dL/d zero factor||_1 of the mean loss over
    `batches`, as shares. The model runs in eval mode (BatchNorm running statistics: the
    pretrained function the terms start from); nothing is updated."""
    layers = quadratic_layers(model)
    if not layers:
        raise QDeployError("the model has no quadratic layers to score; adapt() it with the candidate layers first")
    params = {name: zero_factor(layer) for name, layer in layers.items()}
    flat = [p for group in params.values() for p in group]
    was_training = model.training
    model.eval()
    sums = [torch.zeros_like(p) for p in flat]
    count = 0
    try:
        with torch.enable_grad():
            for images, labels in batches:
                loss = loss_fn(model(images), labels)
                for total, grad in zip(sums, torch.autograd.grad(loss, flat, allow_unused=True)):
                    if grad is not None:
                        total += grad
                count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise QDeployError("no batch to score the layers on; pass data with at least one batch of images")
    raw, index = {}, 0
    for name, group in params.items():
        raw[name] = float(sum((sums[index + i] / count).abs().sum() for i in range(len(group))))
        index += len(group)
    return shares(raw)


def param_scores(model: nn.Module) -> dict[str, float]:
    """The no-data fallback: each quadratic layer's added parameters, as shares."""
    return shares({name: float(sum(p.numel() for p in layer.quad.parameters()))
                   for name, layer in quadratic_layers(model).items()})
