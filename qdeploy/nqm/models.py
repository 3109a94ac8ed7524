"""Taylor models of a network around its initial weights: linearized and quadratic (NQM).

    f_lin(w)  = f(w0) + J(w0) d
    f_quad(w) = f(w0) + J(w0) d + 1/2 d^T H_f(w0) d,        d = w - w0

Both are ordinary `nn.Module`s whose only trainable parameter is the flat displacement `d`,
so any optimizer and training loop can train them. The linearized model is the
neural-tangent-kernel limit and cannot catapult; the NQM is the lowest-order model that can
(Zhu et al., arXiv 2205.11787).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from qdeploy.nqm.params import ParamLayout


class TaylorModel(nn.Module):
    """Order-`order` Taylor expansion of a frozen copy of `module` at its current weights.

    The copy keeps the expansion point fixed even if the original keeps training. Modules
    that know their own expansion (a `taylor_expansion(x, displacement, order)` method, like
    `TwoLayerReLU`) are evaluated in closed form unless `closed_form=False`; any other module
    goes through `torch.func` (a JVP for `J d`, a JVP of that JVP for `d^T H d`). Buffers such
    as batch-norm statistics are used as they are, so expand models in eval mode.
    """

    order: int

    def __init__(self, module: nn.Module, *, closed_form: bool = True) -> None:
        super().__init__()
        base = copy.deepcopy(module)
        self._layout = ParamLayout(base)
        origin = self._layout.flatten(dict(base.named_parameters())).detach()
        base.requires_grad_(False)
        self.base = base
        self.register_buffer("origin", origin)
        self.displacement = nn.Parameter(torch.zeros_like(origin))
        self.closed_form = closed_form and callable(getattr(base, "taylor_expansion", None))

    def displacements(self) -> dict[str, Tensor]:
        """The displacement split per parameter name of the expanded module."""
        return self._layout.unflatten(self.displacement)

    def forward(self, x: Tensor) -> Tensor:
        if self.closed_form:
            return self.base.taylor_expansion(x, self.displacements(), self.order)
        return self._forward_functorch(x)

    def _forward_functorch(self, x: Tensor) -> Tensor:
        def network(weights: Tensor) -> Tensor:
            return functional_call(self.base, self._layout.unflatten(weights), (x,))

        def network_and_directional(weights: Tensor) -> tuple[Tensor, Tensor]:
            return jvp(network, (weights,), (self.displacement,))

        if self.order == 1:
            output, first = network_and_directional(self.origin)
            return output + first
        # Differentiating (f, J d) once more along d gives (J d, d^T H d).
        (output, first), (_, second) = jvp(network_and_directional, (self.origin,), (self.displacement,))
        return output + first + second / 2


class LinearizedModel(TaylorModel):
    """`f(w0) + J(w0) (w - w0)`: the kernel regime; diverges for every `eta > 2 / lambda0`."""

    order = 1


class QuadraticModel(TaylorModel):
    """The neural quadratic model: the linearized model plus `1/2 d^T H_f(w0) d`."""

    order = 2
