"""Quadratic neurons y = P(x) + Q(x) built around a pretrained layer P (factory functions).

`quadratic_conv2d` and `quadratic_linear` keep the pretrained module untouched as the
primary term and add a low-rank quadratic term (see terms.py) that starts at exactly zero,
so an adapted network equals its pretrained network bit for bit at step 0.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from qdeploy.errors import QDeployError
from qdeploy.layers.atrous_conv import AtrousConv2d, matching_padding
from qdeploy.layers.config import QuadConfig
from qdeploy.layers.terms import ChannelsLastBatchNorm, ProductTerm, RBFTerm


class QuadraticLayer(nn.Module):
    """y = primary(x) + quad(x). `primary` holds the pretrained weights under their own names."""

    def __init__(self, primary: nn.Module, quad: nn.Module, config: QuadConfig):
        super().__init__()
        self.primary = primary
        self.quad = quad
        self.config = config

    @property
    def rank(self) -> int:
        """Channels of A(x) and B(x) (after rounding to the primary's groups)."""
        return self.quad.a.out_features if isinstance(self.quad.a, nn.Linear) else self.quad.a.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.primary(x) + self.quad(x)

    def extra_repr(self) -> str:
        return f"term={self.config.term}, rank={self.rank}"


def _build_term(config: QuadConfig, make_factor: Callable[[], nn.Module], proj: nn.Module | None,
                norm: Callable[[], nn.Module], out_channels: int, channel_dim: int) -> nn.Module:
    a, b = make_factor(), make_factor()
    if config.term == "rbf":
        return RBFTerm(a, b, norm(), proj, out_channels, channel_dim)
    return ProductTerm(a, b, proj, memory_efficient=config.memory_efficient)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _like(module: nn.Module, primary: nn.Module) -> nn.Module:
    weight = primary.weight
    return module.to(device=weight.device, dtype=weight.dtype)


def quadratic_conv2d(primary: nn.Conv2d, config: QuadConfig = QuadConfig()) -> QuadraticLayer:
    """Wrap a (regular, grouped or depthwise) Conv2d as a quadratic neuron.

    Q(x) = U(A(x) * B(x)) with A, B atrous convs at the primary's stride and groups, padded so
    Q(x) has the primary's output shape for every input size. Depthwise primaries get
    depthwise factors with `channels * depthwise_rank` outputs; U is a grouped 1x1 projection
    to the primary's channels, omitted when each output channel has a single product channel
    (U would be a per-channel scale that A's weights already express).
    """
    if not isinstance(primary, nn.Conv2d):
        raise QDeployError(f"quadratic_conv2d needs an nn.Conv2d, got {type(primary).__name__}")
    cin, cout, groups = primary.in_channels, primary.out_channels, primary.groups
    depthwise = groups == cin and groups > 1
    rank = cin * config.depthwise_rank if depthwise else _round_up(config.rank, groups)
    pads = matching_padding(primary, config.kernel_size, config.dilation)

    def make_factor() -> nn.Module:
        return _like(AtrousConv2d(cin, rank, config.kernel_size, primary.stride, config.dilation,
                                  groups, pads, config.bias), primary)

    needs_proj = not (depthwise and rank == cout and config.depthwise_rank == 1)
    proj = _like(nn.Conv2d(rank, cout, 1, groups=groups, bias=config.bias), primary) if needs_proj else None
    norm = lambda: _like(nn.BatchNorm2d(rank), primary)  # noqa: E731
    return QuadraticLayer(primary, _build_term(config, make_factor, proj, norm, cout, 1), config)


def quadratic_linear(primary: nn.Linear, config: QuadConfig = QuadConfig()) -> QuadraticLayer:
    """Wrap a Linear (any leading dims, as in ViT MLPs) as Q(x) = U((A x) * (B x)) of rank r."""
    if not isinstance(primary, nn.Linear):
        raise QDeployError(f"quadratic_linear needs an nn.Linear, got {type(primary).__name__}")
    rank = config.rank

    def make_factor() -> nn.Module:
        return _like(nn.Linear(primary.in_features, rank, bias=config.bias), primary)

    proj = _like(nn.Linear(rank, primary.out_features, bias=config.bias), primary)
    norm = lambda: _like(ChannelsLastBatchNorm(rank), primary)  # noqa: E731
    return QuadraticLayer(primary, _build_term(config, make_factor, proj, norm, primary.out_features, -1), config)


def quadratic_layer(primary: nn.Module, config: QuadConfig = QuadConfig()) -> QuadraticLayer:
    """Dispatch on the primary's type: the one entry point adaptation uses."""
    if isinstance(primary, nn.Conv2d):
        return quadratic_conv2d(primary, config)
    if isinstance(primary, nn.Linear):
        return quadratic_linear(primary, config)
    raise QDeployError(
        f"cannot make {type(primary).__name__} quadratic: only nn.Conv2d and nn.Linear are supported"
    )
