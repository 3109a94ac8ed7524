"""Sharpness estimators against exact eigen-decompositions on small problems."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from qdeploy.nqm import (
    QuadraticModel,
    TwoLayerReLU,
    half_mse,
    lanczos_top_eigenvalue,
    tangent_kernel,
    top_gauss_newton_eigenvalue,
    top_hessian_eigenvalue,
    top_kernel_eigenvalue,
)

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 3)).to(DTYPE)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(10, 6, generator=_generator(1), dtype=DTYPE)
    return x, torch.randn(10, 3, generator=_generator(2), dtype=DTYPE)


def _flat_call(module: nn.Module):
    """`f(theta)` over all parameters, built independently of qdeploy's own flattening."""
    names = [name for name, _ in module.named_parameters()]
    shapes = [p.shape for p in module.parameters()]
    theta = torch.nn.utils.parameters_to_vector(module.parameters()).detach()

    def call(vector: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(vector, [s.numel() for s in shapes])
        return functional_call(module, {n: p.view(s) for n, p, s in zip(names, pieces, shapes)}, (x,))

    return call, theta


def _exact_kernel(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    call, theta = _flat_call(module)
    jacobian = torch.autograd.functional.jacobian(lambda w: call(w, x), theta).reshape(-1, theta.numel())
    return jacobian @ jacobian.T / x.shape[0]


def test_lanczos_finds_the_top_of_a_known_spectrum() -> None:
    eigenvalues = torch.linspace(-3.0, 2.0, 200, dtype=DTYPE)
    eigenvalues[17] = 5.0
    basis, _ = torch.linalg.qr(torch.randn(200, 200, generator=_generator(3), dtype=DTYPE))
    matrix = basis @ torch.diag(eigenvalues) @ basis.T
    top = lanczos_top_eigenvalue(lambda v: matrix @ v, 200, dtype=DTYPE, iters=60)
    assert top == pytest.approx(5.0, rel=1e-8)


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_kernel_eigenvalue_of_a_generic_module(method: str, mlp: nn.Module, batch) -> None:
    x, _ = batch
    exact = torch.linalg.eigvalsh(_exact_kernel(mlp, x))[-1].item()
    assert top_kernel_eigenvalue(mlp, x, method=method) == pytest.approx(exact, rel=1e-8)
    torch.testing.assert_close(tangent_kernel(mlp, x), _exact_kernel(mlp, x))


def test_closed_form_kernel_of_the_two_layer_net_and_its_nqm(batch) -> None:
    x, _ = batch
    net = TwoLayerReLU(6, 40, out_features=3, seed=1, dtype=DTYPE)
    torch.testing.assert_close(tangent_kernel(net, x), _exact_kernel(net, x))
    quadratic = QuadraticModel(net)
    with torch.no_grad():
        quadratic.displacement.normal_(generator=_generator(4))
    functorch = QuadraticModel(net, closed_form=False)
    functorch.load_state_dict(quadratic.state_dict())
    torch.testing.assert_close(tangent_kernel(quadratic, x), tangent_kernel(functorch, x))
    # The NQM's kernel moves with the displacement; at zero it is the network's.
    assert (tangent_kernel(quadratic, x) - tangent_kernel(net, x)).abs().max() > 1e-2
    lanczos = top_kernel_eigenvalue(functorch, x, method="lanczos")
    assert lanczos == pytest.approx(top_kernel_eigenvalue(quadratic, x), rel=1e-8)


def test_gauss_newton_of_half_mse_is_the_kernel(mlp: nn.Module, batch) -> None:
    x, y = batch
    kernel = top_kernel_eigenvalue(mlp, x, method="exact")
    assert top_gauss_newton_eigenvalue(mlp, half_mse, (x, y)) == pytest.approx(kernel, rel=1e-7)
    # A mean loss over the batch is the size-weighted mean over its parts.
    halves = [(x[:4], y[:4]), (x[4:], y[4:])]
    assert top_gauss_newton_eigenvalue(mlp, half_mse, halves) == pytest.approx(kernel, rel=1e-7)


def test_gauss_newton_of_cross_entropy(mlp: nn.Module, batch) -> None:
    x, _ = batch
    labels = torch.arange(10) % 3
    call, theta = _flat_call(mlp)
    jacobian = torch.autograd.functional.jacobian(lambda w: call(w, x), theta)  # (n, k, P)
    probabilities = call(theta, x).softmax(1)
    output_hessian = (torch.diag_embed(probabilities) - probabilities[:, :, None] * probabilities[:, None, :]) / 10
    gauss_newton = torch.einsum("nkp,nkl,nlq->pq", jacobian, output_hessian, jacobian)
    exact = torch.linalg.eigvalsh(gauss_newton)[-1].item()
    estimate = top_gauss_newton_eigenvalue(mlp, nn.functional.cross_entropy, (x, labels))
    assert estimate == pytest.approx(exact, rel=1e-7)


def test_hessian_eigenvalue_on_a_batch_and_on_the_training_set(mlp: nn.Module, batch) -> None:
    x, y = batch
    call, theta = _flat_call(mlp)
    hessian = torch.autograd.functional.hessian(lambda w: half_mse(call(w, x), y), theta)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert eigenvalues[0] < 0 < eigenvalues[-1]  # indefinite: the top is not the largest |.|
    exact = eigenvalues[-1].item()
    assert top_hessian_eigenvalue(mlp, half_mse, (x, y)) == pytest.approx(exact, rel=1e-7)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    assert top_hessian_eigenvalue(mlp, half_mse, batches) == pytest.approx(exact, rel=1e-7)
