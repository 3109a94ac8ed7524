"""The Taylor models: closed form vs torch.func, and the orders they are exact to."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qdeploy.nqm import LinearizedModel, QuadraticModel, TaylorModel, TwoLayerReLU

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _set_displacement(model: TaylorModel, displacement: torch.Tensor) -> None:
    with torch.no_grad():
        model.displacement.copy_(displacement)


@pytest.fixture
def net() -> TwoLayerReLU:
    return TwoLayerReLU(12, 64, out_features=2, seed=3, dtype=DTYPE)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(9, 12, generator=torch.Generator().manual_seed(4), dtype=DTYPE)


@pytest.fixture
def displacement(net: TwoLayerReLU) -> torch.Tensor:
    """A displacement as large as training produces, so that d^T H d is far from negligible."""
    size = sum(p.numel() for p in net.parameters())
    return 0.5 * torch.randn(size, generator=torch.Generator().manual_seed(5), dtype=DTYPE)


@pytest.mark.parametrize("taylor", [QuadraticModel, LinearizedModel])
def test_closed_form_and_torch_func_agree(
    taylor: type[TaylorModel], net: TwoLayerReLU, x: torch.Tensor, displacement: torch.Tensor
) -> None:
    closed, functorch = taylor(net), taylor(net, closed_form=False)
    assert closed.closed_form and not functorch.closed_form
    for model in (closed, functorch):
        _set_displacement(model, displacement)
        model(x).square().sum().backward()
    torch.testing.assert_close(closed(x), functorch(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(closed.displacement.grad, functorch.displacement.grad, rtol=0, atol=1e-5)


def test_quadratic_term_matters_at_the_tested_displacement(
    net: TwoLayerReLU, x: torch.Tensor, displacement: torch.Tensor
) -> None:
    """Guards the agreement test against a displacement too small to exercise d^T H d."""
    quadratic, linear = QuadraticModel(net), LinearizedModel(net)
    for model in (quadratic, linear):
        _set_displacement(model, displacement)
    assert (quadratic(x) - linear(x)).abs().max() > 1e-2


def test_nqm_is_the_network_while_no_relu_flips(net: TwoLayerReLU, x: torch.Tensor) -> None:
    """With its gates fixed the 2-layer ReLU net is bilinear in (u, v): its NQM is exact and
    the linearization misses exactly the cross term, so its error is quadratic in the step."""
    quadratic, linear = QuadraticModel(net), LinearizedModel(net)
    direction = torch.randn(quadratic.displacement.shape, generator=torch.Generator().manual_seed(6), dtype=DTYPE)
    moved = copy.deepcopy(net)
    errors = []
    for scale in (1e-4, 5e-5):
        for model in (quadratic, linear):
            _set_displacement(model, scale * direction)
        with torch.no_grad():
            for name, delta in quadratic.displacements().items():
                getattr(moved, name).copy_(getattr(net, name) + delta)
            assert torch.equal(x @ moved.u.T >= 0, x @ net.u.T >= 0)
            exact = moved(x)
            torch.testing.assert_close(quadratic(x), exact, rtol=0, atol=1e-12)
            errors.append((linear(x) - exact).abs().max().item())
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=1e-3)


def test_torch_func_taylor_orders_on_a_smooth_module() -> None:
    """For a generic module the NQM error is O(t^3) and the linearized one O(t^2)."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).to(DTYPE)
    x = torch.randn(7, 5, dtype=DTYPE)
    quadratic, linear = QuadraticModel(module), LinearizedModel(module)
    assert not quadratic.closed_form
    direction = torch.randn(quadratic.displacement.shape, dtype=DTYPE)
    origin = torch.nn.utils.parameters_to_vector(module.parameters()).detach()
    moved = copy.deepcopy(module)
    errors: dict[str, list[float]] = {"quadratic": [], "linear": []}
    for scale in (2e-2, 1e-2):
        torch.nn.utils.vector_to_parameters(origin + scale * direction, moved.parameters())
        for name, model in (("quadratic", quadratic), ("linear", linear)):
            _set_displacement(model, scale * direction)
            errors[name].append((model(x) - moved(x)).abs().max().item())
    assert errors["quadratic"][0] / errors["quadratic"][1] == pytest.approx(8.0, rel=0.1)
    assert errors["linear"][0] / errors["linear"][1] == pytest.approx(4.0, rel=0.1)


def test_only_the_displacement_trains_and_the_original_is_untouched(net: TwoLayerReLU, x: torch.Tensor) -> None:
    before = [p.detach().clone() for p in net.parameters()]
    model = QuadraticModel(net)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["displacement"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    assert model.displacement.abs().max() > 0
    for original, parameter in zip(before, net.parameters()):
        assert torch.equal(original, parameter)
    for original, parameter in zip(before, model.base.parameters()):
        assert torch.equal(original, parameter)
