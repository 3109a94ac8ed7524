"""A module's trainable parameters as one flat vector.

The NQM machinery (Taylor models, Jacobian-vector products, Lanczos) works on a single
displacement vector in weight space; this keeps every transform a function of one tensor
instead of a dictionary keyed by parameter names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from qdeploy.errors import QDeployError


class ParamLayout:
    """Names and shapes of the parameters of `module` that require grad, in a fixed order.

    Frozen parameters are left out on purpose: they are not trained, so they are not part
    of the weight space the tangent kernel or the Hessian is taken over.
    """

    def __init__(self, module: nn.Module) -> None:
        trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self.numels = [p.numel() for _, p in trainable]
        self.size = sum(self.numels)

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        """Concatenate `tensors` (one per parameter name) into a vector."""
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Split `vector` into views shaped like the parameters, keyed by name."""
        pieces = torch.split(vector, self.numels)
        return {name: piece.view(shape) for name, piece, shape in zip(self.names, pieces, self.shapes)}


def flat_function(module: nn.Module) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor]:
    """Return `(f, theta)` with `f(theta, x) == module(x)` and `theta` the current flat weights.

    `f` is a pure function of the weights, so it composes with `torch.func` transforms.
    """
    layout = ParamLayout(module)
    if layout.size == 0:
        raise QDeployError(
            "the model has no trainable parameters: set requires_grad=True on the weights to probe"
        )
    theta = layout.flatten(dict(module.named_parameters())).detach()

    def f(weights: Tensor, x: Tensor) -> Tensor:
        return functional_call(module, layout.unflatten(weights), (x,))

    return f, theta
