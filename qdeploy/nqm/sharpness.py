"""Sharpness: the top eigenvalue of the tangent kernel, the Gauss-Newton matrix or the loss Hessian.

For squared loss the tangent kernel `K = J J^T / n` at initialisation sets the learning-rate
regimes (`2/lambda0`, `4/lambda0`); during training its top eigenvalue is what a catapult
drives below `2/eta`. The Gauss-Newton matrix `J^T H_loss J` generalises `lambda0` to any
loss (it equals `K`'s top eigenvalue for `half_mse`), and the loss Hessian adds the
curvature of the model itself. Small problems are solved exactly; large ones by Lanczos
on Jacobian- and Hessian-vector products, never forming a matrix in weight space.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vjp, vmap

from qdeploy.nqm.models import TaylorModel
from qdeploy.nqm.params import flat_function
from qdeploy.nqm.two_layer import TwoLayerReLU

LossFn = Callable[[Tensor, Tensor], Tensor]
"""`loss_fn(output, target) -> scalar`, a mean over the batch."""

Batches = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]
"""One `(x, y)` batch, or re-iterable deterministic batches (a list, a non-shuffling DataLoader)."""

KernelMethod = Literal["auto", "exact", "lanczos"]

EXACT_JACOBIAN_ENTRIES = 1 << 22
"""`auto` forms the full Jacobian up to this many entries (32 MiB in float64)."""


def lanczos_top_eigenvalue(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    iters: int = 40,
    rtol: float = 1e-6,
    seed: int = 0,
) -> float:
    """Largest eigenvalue of the symmetric operator `matvec` on R^dim.

    Lanczos with full re-orthogonalisation (iterations are few, so the stability is cheap),
    stopping once the Ritz residual `beta * |s_last|` is below `rtol` times the estimate.
    """
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(dim, generator=generator, dtype=dtype).to(device)
    basis = [start / start.norm()]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    for _ in range(min(iters, dim)):
        w = matvec(basis[-1])
        alphas.append(torch.dot(w, basis[-1]))
        q = torch.stack(basis)
        for _ in range(2):  # Gram-Schmidt twice: "twice is enough"
            w = w - q.T @ (q @ w)
        tridiagonal = torch.diag(torch.stack(alphas))
        if betas:
            off = torch.stack(betas)
            tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(tridiagonal)
        top = values[-1]
        beta = w.norm()
        if beta * vectors[-1, -1].abs() <= rtol * top.abs():
            break
        betas.append(beta)
        basis.append(w / beta)
    return float(top)


def tangent_kernel(model: nn.Module, x: Tensor) -> Tensor:
    """The tangent kernel `J J^T / n` on `x`, shape `(n k, n k)` for `k` outputs.

    Closed form for `TwoLayerReLU` and its Taylor models; otherwise from the full Jacobian
    (one vector-Jacobian product per output, vectorised), so keep `n k * params` small.
    """
    if _has_closed_form_kernel(model):
        with torch.no_grad():
            return _closed_form_kernel(model, x)
    f, theta = flat_function(model)
    output, pullback = vjp(lambda w: f(w, x), theta)
    basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device)
    (jacobian,) = vmap(pullback)(basis.reshape(-1, *output.shape))
    return jacobian @ jacobian.T / x.shape[0]


def top_kernel_eigenvalue(
    model: nn.Module, x: Tensor, *, method: KernelMethod = "auto", iters: int = 40, seed: int = 0
) -> float:
    """Top eigenvalue of `J J^T / n` on the batch `x`: `lambda0` when taken at initialisation.

    `auto` is exact (closed form, or a full Jacobian of at most `EXACT_JACOBIAN_ENTRIES`
    entries) and otherwise runs Lanczos in output space, one VJP and one JVP per iteration.
    """
    if method == "auto":
        small = _has_closed_form_kernel(model) or _jacobian_entries(model, x) <= EXACT_JACOBIAN_ENTRIES
        method = "exact" if small else "lanczos"
    if method == "exact":
        return float(torch.linalg.eigvalsh(tangent_kernel(model, x))[-1])
    if method != "lanczos":
        raise ValueError(f"unknown kernel method {method!r}: use auto, exact or lanczos")
    f, theta = flat_function(model)
    output, pullback = vjp(lambda w: f(w, x), theta)

    def kernel_times(v: Tensor) -> Tensor:
        (weights,) = pullback(v.view_as(output))
        return jvp(lambda w: f(w, x), (theta,), (weights,))[1].reshape(-1) / x.shape[0]

    return lanczos_top_eigenvalue(
        kernel_times, output.numel(), dtype=theta.dtype, device=theta.device, iters=iters, seed=seed
    )


def top_gauss_newton_eigenvalue(
    model: nn.Module, loss_fn: LossFn, data: Batches, *, iters: int = 40, seed: int = 0
) -> float:
    """Top eigenvalue of the Gauss-Newton matrix `J^T H_loss J` (averaged over `data`).

    This is `lambda0` for any loss: the linearized model trained by gradient descent is
    stable exactly when `eta < 2 / lambda0`. For `half_mse` it equals `top_kernel_eigenvalue`.
    """
    f, theta = flat_function(model)

    def gauss_newton_times(u: Tensor, x: Tensor, y: Tensor) -> Tensor:
        output, ju = jvp(lambda w: f(w, x), (theta,), (u,))
        _, hju = jvp(grad(lambda o: loss_fn(o, y)), (output,), (ju,))
        # The pullback is rebuilt per product on purpose: keeping one per batch across the
        # Lanczos loop saves a forward each time but holds every batch's graph at once.
        _, pullback = vjp(lambda w: f(w, x), theta)
        return pullback(hju)[0]

    return _top_eigenvalue_over_batches(gauss_newton_times, data, theta, iters, seed)


def top_hessian_eigenvalue(
    model: nn.Module, loss_fn: LossFn, data: Batches, *, iters: int = 40, seed: int = 0
) -> float:
    """Top eigenvalue of the loss Hessian in weight space, by Hessian-vector products.

    Forward-over-reverse (`jvp` of `grad`) costs about two backward passes per product.
    """
    f, theta = flat_function(model)

    def hessian_times(u: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return jvp(grad(lambda w: loss_fn(f(w, x), y)), (theta,), (u,))[1]

    return _top_eigenvalue_over_batches(hessian_times, data, theta, iters, seed)


def _top_eigenvalue_over_batches(
    batch_matvec: Callable[[Tensor, Tensor, Tensor], Tensor],
    data: Batches,
    theta: Tensor,
    iters: int,
    seed: int,
) -> float:
    """Lanczos on the batch-size-weighted mean of `batch_matvec`: the operator of a mean loss."""
    batches = [data] if _is_one_batch(data) else data
    total = sum(x.shape[0] for x, _ in batches)

    def matvec(u: Tensor) -> Tensor:
        return sum(batch_matvec(u, x, y) * (x.shape[0] / total) for x, y in batches)

    return lanczos_top_eigenvalue(
        matvec, theta.numel(), dtype=theta.dtype, device=theta.device, iters=iters, seed=seed
    )


def _is_one_batch(data: Batches) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor)


def _jacobian_entries(model: nn.Module, x: Tensor) -> int:
    f, theta = flat_function(model)
    with torch.no_grad():
        return f(theta, x).numel() * theta.numel()


def _has_closed_form_kernel(model: nn.Module) -> bool:
    """`TwoLayerReLU` knows its kernel, and so do its Taylor models when evaluated in closed form."""
    if isinstance(model, TaylorModel):
        return model.closed_form and isinstance(model.base, TwoLayerReLU)
    return isinstance(model, TwoLayerReLU)


def _closed_form_kernel(model: nn.Module, x: Tensor) -> Tensor:
    if isinstance(model, TaylorModel):
        return model.base.tangent_kernel(x, model.displacements(), model.order)
    return model.tangent_kernel(x)
