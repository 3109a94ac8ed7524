"""Swap every quadratic term of an export copy for a module that calls one custom op.

The custom-op modules keep the term's own factor modules, so the ONNX initializers carry the
checkpoint's tensor names (`<layer>.quad.a.weight`, ...) and nothing is copied or repacked
in PyTorch: fusing A and B happens in the graph (translations.py). The primary layers stay
as they are, so the graph keeps them as ordinary Conv/MatMul nodes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qdeploy.adaptation import quadratic_layers
from qdeploy.errors import QDeployError
from qdeploy.export.ops import atrous_quad_conv, quad_linear
from qdeploy.layers import AtrousConv2d, ProductTerm, RBFTerm


def _ensure_bias(module: nn.Module) -> None:
    """Give a bias-free factor a zero bias: the node contract always carries biases (fixed arity)."""
    if module.bias is None:
        channels = module.weight.shape[0]
        module.bias = nn.Parameter(module.weight.new_zeros(channels), requires_grad=False)


class ConvTermOp(nn.Module):
    """U(A(x) * B(x)) of a conv layer as one `qdeploy::atrous_quad_conv` call.

    Padding is resolved per input size with the factors' own rule (TF "same" included), so a
    fixed export size gives static pads.
    """

    def __init__(self, term: ProductTerm):
        super().__init__()
        self.a, self.b, self.proj = term.a, term.b, term.proj
        for module in (self.a, self.b, self.proj):
            if module is not None:
                _ensure_bias(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, proj = self.a, self.b, self.proj
        pads = list(a.explicit_pads(x.shape[-2], x.shape[-1]))
        return atrous_quad_conv(x, a.weight, a.bias, b.weight, b.bias, None if proj is None else proj.weight,
                                None if proj is None else proj.bias, list(a.stride), list(a.dilation), pads,
                                a.groups)


class LinearTermOp(nn.Module):
    """U((A x) * (B x)) of a linear layer as one `qdeploy::quad_linear` call."""

    def __init__(self, term: ProductTerm):
        super().__init__()
        self.a, self.b, self.proj = term.a, term.b, term.proj
        for module in (self.a, self.b, self.proj):
            _ensure_bias(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, proj = self.a, self.b, self.proj
        return quad_linear(x, a.weight, a.bias, b.weight, b.bias, proj.weight, proj.bias)


def _term_op(name: str, term: nn.Module, fused: bool) -> nn.Module:
    """The export form of one quadratic term, or a one-line error naming the layer."""
    if isinstance(term, RBFTerm):
        if fused:
            raise QDeployError(
                f"quadratic layer {name!r} uses the RBF term, which has no fused node; "
                "export it with --mode decomposed"
            )
        return term  # exported op by op: GELU, BatchNorm and Exp are standard ONNX
    if isinstance(term, ProductTerm):
        if isinstance(term.a, AtrousConv2d):
            return ConvTermOp(term)
        if isinstance(term.a, nn.Linear) and term.proj is not None:
            return LinearTermOp(term)
    raise QDeployError(
        f"quadratic layer {name!r} has an unsupported term ({type(term).__name__} with "
        f"{type(getattr(term, 'a', None)).__name__} factors); re-adapt it with qdeploy.adaptation.adapt"
    )


def export_copy(model: nn.Module, fused: bool) -> nn.Module:
    """A copy of `model` in eval mode whose quadratic terms call custom ops (`model` is untouched)."""
    layers = quadratic_layers(model)
    if not layers:
        raise QDeployError("the model has no quadratic layers; adapt() it before exporting")
    for name, layer in layers.items():
        _term_op(name, layer.quad, fused)  # refuse before copying any weights
    clone = copy.deepcopy(model).eval()
    for name, layer in quadratic_layers(clone).items():
        layer.quad = _term_op(name, layer.quad, fused)
    return clone
