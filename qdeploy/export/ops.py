"""The quadratic branches as `torch.library` custom ops, with the fused A/B arithmetic as reference.

torch.export keeps a custom op as one opaque node, so each quadratic layer reaches the ONNX
translation (translations.py) as a single call with its weights and geometry instead of a
scatter of aten ops. The eager implementations compute the branch the way the exported
graphs do — A and B as *one* convolution (or matmul) over their concatenated filters — so
they are the PyTorch reference for that arrangement (tests compare them with the layers).

Why interleave: a grouped convolution gives group g the contiguous output-channel block
g; with A and B concatenated as [A; B], group g would receive filters meant for other
groups as soon as groups > 1. Interleaving per group — layout (groups, 2, rank/groups, ...)
on dim 0 — keeps each group's A and B filters in that group's block; the product side then
splits on the "2" axis after a reshape.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def interleave_factors(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """A's and B's output-channel blocks stacked per group: (groups, 2, rank/groups, ...) on dim 0."""
    rank = a.shape[0]
    stacked = torch.stack([a.reshape(groups, rank // groups, *a.shape[1:]),
                           b.reshape(groups, rank // groups, *b.shape[1:])], dim=1)
    return stacked.reshape(2 * rank, *a.shape[1:])


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad_total: int) -> int:
    """Output length of a convolution along one axis."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.custom_op("qdeploy::atrous_quad_conv", mutates_args=())
def atrous_quad_conv(x: torch.Tensor, w_a: torch.Tensor, b_a: torch.Tensor, w_b: torch.Tensor,
                     b_b: torch.Tensor, w_u: Optional[torch.Tensor], b_u: Optional[torch.Tensor],
                     stride: Sequence[int], dilation: Sequence[int], pads: Sequence[int],
                     groups: int) -> torch.Tensor:
    """U(A(x) * B(x)) of a conv layer (A(x) * B(x) when `w_u` is None), A and B in one conv.

    pads: (top, bottom, left, right) zero padding of x, as AtrousConv2d.explicit_pads gives it.
    """
    top, bottom, left, right = pads
    ab = F.conv2d(F.pad(x, (left, right, top, bottom)), interleave_factors(w_a, w_b, groups),
                  interleave_factors(b_a, b_b, groups), stride, 0, dilation, groups)
    batch, channels, height, width = ab.shape
    by_group = ab.view(batch, groups, 2, channels // (2 * groups), height, width)
    product = (by_group[:, :, 0] * by_group[:, :, 1]).reshape(batch, channels // 2, height, width)
    return product if w_u is None else F.conv2d(product, w_u, b_u, groups=groups)


@atrous_quad_conv.register_fake
def _atrous_quad_conv_fake(x, w_a, b_a, w_b, b_b, w_u, b_u, stride, dilation, pads, groups):
    kernel = w_a.shape[-2:]
    height, width = (conv_output_size(x.shape[2 + axis], kernel[axis], stride[axis], dilation[axis],
                                      pads[2 * axis] + pads[2 * axis + 1]) for axis in range(2))
    channels = w_a.shape[0] if w_u is None else w_u.shape[0]
    return x.new_empty(x.shape[0], channels, height, width)


@torch.library.custom_op("qdeploy::quad_linear", mutates_args=())
def quad_linear(x: torch.Tensor, w_a: torch.Tensor, b_a: torch.Tensor, w_b: torch.Tensor, b_b: torch.Tensor,
                w_u: torch.Tensor, b_u: torch.Tensor) -> torch.Tensor:
    """U((A x) * (B x)) over the last dim, A and B in one matmul; weights in nn.Linear layout."""
    a, b = F.linear(x, torch.cat([w_a, w_b]), torch.cat([b_a, b_b])).chunk(2, dim=-1)
    return F.linear(a * b, w_u, b_u)


@quad_linear.register_fake
def _quad_linear_fake(x, w_a, b_a, w_b, b_b, w_u, b_u):
    return x.new_empty(*x.shape[:-1], w_u.shape[0])
