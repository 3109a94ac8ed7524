"""The paper's wide two-layer ReLU network, with its Taylor models and kernel in closed form.

`f(u, v; x) = m^-1/2 * sum_i v_i relu(u_i . x / sqrt(d))` (NTK parametrisation, width m,
input dimension d). Its only non-zero Hessian block is
`d2f / du_i dv_i = (m d)^-1/2 1{u_i . x >= 0} x^T`, so the neural quadratic model (NQM)
around `(u0, v0)` collapses to a product of two linear maps:

    f_quad(u0 + du, v0 + dv; x) = m^-1/2 (v0 + dv) . (relu(z0) + 1{z0 >= 0} * dz),
    z0 = u0 x / sqrt(d),  dz = du x / sqrt(d).

These closed forms are exact, cost one forward pass, and serve as the reference the
general `torch.func` construction is tested against.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class TwoLayerReLU(nn.Module):
    """Two-layer ReLU network in the NTK parametrisation, weights drawn N(0, 1) from `seed`.

    The NTK scaling keeps the tangent kernel O(1) as the width grows, which is what makes the
    linear (`eta < 2/lambda0`) and catapult (`2/lambda0 < eta < 4/lambda0`) regimes sharp.
    Outputs have shape `(n, out_features)`.
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        out_features: int = 1,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.u = nn.Parameter(torch.randn(width, in_features, generator=generator, dtype=dtype))
        self.v = nn.Parameter(torch.randn(out_features, width, generator=generator, dtype=dtype))

    @property
    def width(self) -> int:
        return self.u.shape[0]

    def _preactivation(self, u: Tensor, x: Tensor) -> Tensor:
        return x @ u.T / x.shape[1] ** 0.5

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self._preactivation(self.u, x)) @ self.v.T / self.width**0.5

    def taylor_expansion(self, x: Tensor, displacement: Mapping[str, Tensor], order: int) -> Tensor:
        """Order-1 (linearized) or order-2 (NQM) Taylor model at `self` + `displacement`.

        Parameters missing from `displacement` are held at their current value.
        """
        _check_order(order)
        activation, _, moved, outer = self._expansion_terms(x, displacement)
        if order == 2:
            output = (activation + moved) @ outer.T
        else:  # f0 + J d: the bilinear term dv . moved is exactly what the NQM adds
            output = activation @ outer.T + moved @ self.v.T
        return output / self.width**0.5

    def tangent_kernel(
        self,
        x: Tensor,
        displacement: Mapping[str, Tensor] | None = None,
        order: int | None = None,
    ) -> Tensor:
        """Tangent kernel `J J^T / n` (shape `(n k, n k)`), in closed form.

        With `displacement=None` it is the network's kernel at its current weights (over the
        parameters that require grad); otherwise the kernel of the order-`order` Taylor model
        at that displacement, over the parameters named in `displacement`. Dividing by n
        matches the mean loss `1/(2n) sum ||f - y||^2`, so `2 / lambda_max` is the critical
        learning rate.
        """
        if displacement is None:
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        else:
            trainable = set(displacement)
        features, gates, outer = self._jacobian_factors(x, displacement, order)
        n, k = x.shape[0], outer.shape[0]
        kernel = x.new_zeros(n, k, n, k)
        if "v" in trainable:
            eye = torch.eye(k, dtype=x.dtype, device=x.device)
            kernel += (features @ features.T)[:, None, :, None] * eye[None, :, None, :]
        if "u" in trainable:
            gated = gates[:, None, :] * outer[None, :, :]
            inputs = x @ x.T / x.shape[1]
            kernel += torch.einsum("icl,jel->icje", gated, gated) * inputs[:, None, :, None]
        return kernel.reshape(n * k, n * k) / (self.width * n)

    def _jacobian_factors(
        self, x: Tensor, displacement: Mapping[str, Tensor] | None, order: int | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`(features, gates, outer)` such that, up to the factor m^-1/2,
        `df_c/dv_c = features` and `df_c/du_l = outer[c, l] * gates[:, l] * x / sqrt(d)`.

        The network uses its current ReLU pattern; both Taylor models freeze the pattern at
        the expansion point, which is exactly what makes them polynomial in the weights.
        """
        if displacement is None:
            z = self._preactivation(self.u, x)
            return torch.relu(z), (z >= 0).to(x.dtype), self.v
        _check_order(order)
        activation, gates, moved, outer = self._expansion_terms(x, displacement)
        if order == 1:
            return activation, gates, self.v
        return activation + moved, gates, outer

    def _expansion_terms(
        self, x: Tensor, displacement: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`relu(z0)`, the frozen gates `1{z0 >= 0}`, `gates * dz` and `v0 + dv`."""
        z0 = self._preactivation(self.u, x)
        gates = (z0 >= 0).to(x.dtype)
        du, dv = displacement.get("u"), displacement.get("v")
        moved = torch.zeros_like(z0) if du is None else gates * self._preactivation(du, x)
        outer = self.v if dv is None else self.v + dv
        return torch.relu(z0), gates, moved, outer


def _check_order(order: int | None) -> None:
    if order not in (1, 2):
        raise ValueError(f"Taylor order must be 1 (linearized) or 2 (quadratic), got {order}")
