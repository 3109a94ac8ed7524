"""Quadratic layers: output shapes, exact zero start, gradients, recomputed backward, RBF term."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

from qdeploy.errors import QDeployError
from qdeploy.layers.atrous_conv import live_taps
from qdeploy.layers import AtrousConv2d, QuadConfig, quadratic_conv2d, quadratic_layer, quadratic_linear

CONVS = {
    "3x3-stride2": lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1),
    "depthwise": lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16),
    "depthwise-x2-stride2": lambda: nn.Conv2d(16, 32, 5, stride=2, padding=2, groups=16),
    "grouped": lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=4),
    "pointwise": lambda: nn.Conv2d(16, 32, 1),
    "patchify-4x4-stride4": lambda: nn.Conv2d(16, 32, 4, stride=4),
    "dilated-primary": lambda: nn.Conv2d(16, 16, 3, padding=2, dilation=2),
    "tf-same-stride2": lambda: Conv2dSame(16, 16, 5, stride=2, groups=16),
    "padding-same-string": lambda: nn.Conv2d(16, 16, 5, padding="same"),
}
SIZES = [(17, 23), (32, 32), (9, 8)]


@pytest.mark.parametrize("term", ["product", "rbf"])
@pytest.mark.parametrize("conv", CONVS, ids=list(CONVS))
def test_conv_output_shape_and_exact_zero_start(conv: str, term: str) -> None:
    primary = CONVS[conv]()
    layer = quadratic_conv2d(primary, QuadConfig(term=term, rank=6))
    for height, width in SIZES:
        x = torch.randn(2, 16, height, width)
        expected = primary(x)
        assert layer.quad(x).shape == expected.shape
        assert torch.equal(layer(x), expected)  # bit for bit, not allclose


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (3, 2), (5, 3), (1, 1)])
def test_factor_kernel_and_dilation_options_keep_shape(kernel_size: int, dilation: int) -> None:
    primary = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
    layer = quadratic_conv2d(primary, QuadConfig(kernel_size=kernel_size, dilation=dilation, depthwise_rank=2))
    assert layer.quad.a.kernel_size == (kernel_size, kernel_size)
    assert layer.quad.a.dilation == (dilation, dilation)
    x = torch.randn(1, 8, 15, 12)
    assert layer.quad(x).shape == primary(x).shape


def test_depthwise_factors_are_depthwise_with_rank_multiplier() -> None:
    layer = quadratic_conv2d(nn.Conv2d(16, 16, 3, padding=1, groups=16), QuadConfig(depthwise_rank=3))
    assert (layer.quad.a.in_channels, layer.quad.a.out_channels, layer.quad.a.groups) == (16, 48, 16)
    assert layer.quad.proj.groups == 16 and layer.quad.proj.out_channels == 16
    identity_case = quadratic_conv2d(nn.Conv2d(16, 16, 3, padding=1, groups=16), QuadConfig(depthwise_rank=1))
    assert identity_case.quad.proj is None  # U would only rescale channels A already scales


def test_receptive_field_too_small_is_a_clear_error() -> None:
    with pytest.raises(QDeployError, match="receptive field"):
        quadratic_conv2d(nn.Conv2d(4, 4, 11), QuadConfig(kernel_size=3, dilation=1))


def test_linear_any_leading_dims() -> None:
    primary = nn.Linear(12, 20)
    layer = quadratic_linear(primary, QuadConfig(rank=4))
    x = torch.randn(2, 5, 7, 12)
    assert torch.equal(layer(x), primary(x))


@pytest.mark.parametrize("primary", [nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 3, padding=1), nn.Linear(8, 16)],
                         ids=["depthwise-no-proj", "dense", "linear"])
@pytest.mark.parametrize("term", ["product", "rbf"])
def test_zero_factor_gets_gradient_and_one_step_changes_output(primary: nn.Module, term: str) -> None:
    layer = quadratic_layer(primary, QuadConfig(rank=4, term=term))
    x = torch.randn(4, 8, 10, 10) if isinstance(primary, nn.Conv2d) else torch.randn(4, 3, 8)
    before = layer(x).detach()
    quad = layer.quad
    zero_factor = quad.gamma if term == "rbf" else (quad.b if quad.proj is None else quad.proj).weight
    assert not zero_factor.any()
    (layer(x) * torch.randn_like(before)).sum().backward()
    assert zero_factor.grad is not None and zero_factor.grad.abs().sum() > 0
    torch.optim.SGD(layer.quad.parameters(), lr=0.1).step()
    assert not torch.equal(layer(x), before)


def test_only_one_factor_is_zero() -> None:
    layer = quadratic_conv2d(nn.Conv2d(8, 16, 3, padding=1), QuadConfig(rank=4))
    assert layer.quad.a.weight.abs().sum() > 0 and layer.quad.b.weight.abs().sum() > 0
    assert not layer.quad.proj.weight.any() and not layer.quad.proj.bias.any()


@pytest.mark.parametrize("primary", [
    nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
    Conv2dSame(8, 8, 3, stride=2, groups=8), nn.Linear(8, 16),
], ids=["dense-stride2", "depthwise", "tf-same", "linear"])
def test_memory_efficient_backward_matches_autograd(primary: nn.Module) -> None:
    reference = quadratic_layer(primary, QuadConfig(rank=4, depthwise_rank=2))
    with torch.no_grad():
        for param in reference.quad.parameters():
            param.normal_()
    efficient = copy.deepcopy(reference)
    efficient.quad.memory_efficient = True
    shape = (3, 8, 11, 13) if isinstance(primary, nn.Conv2d) else (3, 5, 8)
    x1 = torch.randn(shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    out1, out2 = reference(x1), efficient(x2)
    assert torch.equal(out1, out2)
    grad = torch.randn_like(out1)
    (out1 * grad).sum().backward()
    (out2 * grad).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    for (name, p1), p2 in zip(reference.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-5, rtol=1e-5, msg=name)


def _saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward (parameters excluded: they are alive anyway)."""
    params = {p.data_ptr() for p in layer.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer.quad(x).sum()
    return total


def test_memory_efficient_backward_saves_less() -> None:
    layer = quadratic_conv2d(nn.Conv2d(32, 32, 3, padding=1, groups=32), QuadConfig(depthwise_rank=4))
    x = torch.randn(2, 32, 28, 28, requires_grad=True)
    plain = _saved_bytes(layer, x)
    layer.quad.memory_efficient = True
    efficient = _saved_bytes(layer, x)
    assert efficient == x.numel() * x.element_size()  # only the input
    assert efficient * 4 < plain  # A(x), B(x), their product (4x the channels each) are not kept


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(QDeployError, match="rank must be >= 1"):
        QuadConfig(rank=0)
    with pytest.raises(QDeployError, match="unknown quadratic term"):
        QuadConfig(term="cubic")
    with pytest.raises(QDeployError, match="only nn.Conv2d and nn.Linear"):
        quadratic_layer(nn.BatchNorm2d(3))
    with pytest.raises(QDeployError, match="unknown quadratic-layer settings"):
        QuadConfig.from_dict({"rank": 4, "rnak": 2})


def test_live_taps_are_exactly_the_taps_that_read_the_input() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        size, kernel, stride, dilation = rng.randint(1, 12), rng.randint(1, 5), rng.randint(1, 3), rng.randint(1, 4)
        before, after = rng.randint(0, 8), rng.randint(0, 8)
        outputs = (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
        if outputs < 1:
            continue
        reading = [tap for tap in range(kernel)
                   if any(0 <= o * stride - before + tap * dilation < size for o in range(outputs))]
        expected = range(reading[0], reading[-1] + 1) if reading else range(0)
        assert live_taps(size, before, after, kernel, stride, dilation) == expected


@pytest.mark.parametrize("size", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("pads", ["same", (3, 3, 3, 3), (1, 5, 4, 2)])
def test_cropped_atrous_conv_equals_the_full_kernel_on_small_maps(size: int, pads) -> None:
    torch.manual_seed(size)
    conv = AtrousConv2d(8, 8, 3, (2, 1), 3, 8, pads, True).double()
    x = torch.randn(2, 8, size, size + 1, dtype=torch.float64, requires_grad=True)
    top, bottom, left, right = conv.explicit_pads(size, size + 1)
    reference = F.conv2d(F.pad(x, (left, right, top, bottom)), conv.weight, conv.bias, conv.stride, 0,
                         conv.dilation, conv.groups)
    if size <= 3 and pads != (1, 5, 4, 2):  # there, a 1-row map is read by no tap at all
        assert conv.cropped(size, size + 1) is not None  # the fast path is really taken
    output = conv(x)
    torch.testing.assert_close(output, reference, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(output.square().sum(), (x, conv.weight))
    expected = torch.autograd.grad(reference.square().sum(), (x, conv.weight))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
