"""Atrous (dilated) factor convolutions whose output grid matches a primary convolution.

A quadratic term `U(A(x) * B(x))` is added to the primary's output, so `A` and `B` must
produce exactly the primary's output shape for *every* input size, not just one. With a
different kernel/dilation than the primary, that holds when the padded extent minus the
receptive field is the same for both convolutions; `matching_padding` solves for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qdeploy.errors import QDeployError

Pads = tuple[int, int, int, int]  # (top, bottom, left, right), the order F.pad does not use


def _is_dynamic_same(primary: nn.Conv2d) -> bool:
    """timm's TF-style 'same' convs (Conv2dSame) pad per input size at run time."""
    from timm.layers import Conv2dSame

    return isinstance(primary, Conv2dSame)


def matching_padding(primary: nn.Conv2d, kernel_size: int, dilation: int) -> Pads | str:
    """Padding for a (kernel_size, dilation) conv with the primary's stride so both outputs match.

    Returns "same" for TF-style dynamic padding, else explicit (top, bottom, left, right) pads.
    Output size is floor((H + pad_total - span) / s) + 1 with span = d * (k - 1); keeping
    `pad_total - span` equal to the primary's makes the sizes equal for every H.
    """
    if _is_dynamic_same(primary):
        return "same"
    if primary.padding_mode != "zeros":
        raise QDeployError(
            f"primary conv uses padding_mode={primary.padding_mode!r}; quadratic adapters support "
            "zero padding only: exclude this layer from the targets"
        )
    span = dilation * (kernel_size - 1)
    pads: list[int] = []
    for axis in range(2):
        primary_span = primary.dilation[axis] * (primary.kernel_size[axis] - 1)
        if isinstance(primary.padding, str):  # 'same' (stride 1) or 'valid'
            primary_total = primary_span if primary.padding == "same" else 0
        else:
            primary_total = 2 * primary.padding[axis]
        total = primary_total + span - primary_span
        if total < 0:
            raise QDeployError(
                f"the quadratic term's receptive field ({span + 1}) is smaller than the primary "
                f"conv's ({primary_span + 1}) minus its padding; raise --dilation or --kernel-size"
            )
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # type: ignore[return-value]


class AtrousConv2d(nn.Conv2d):
    """A dilated conv that pads itself (symmetric, asymmetric or TF 'same') to a target grid.

    Symmetric pads go into the convolution itself so exported graphs stay a single Conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: tuple[int, int],
        dilation: int,
        groups: int,
        pads: Pads | str,
        bias: bool,
    ) -> None:
        symmetric = pads != "same" and pads[0] == pads[1] and pads[2] == pads[3]
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(pads[0], pads[2]) if symmetric else 0,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.pads = pads
        self.pad_inside = symmetric

    def explicit_pads(self, height: int, width: int) -> Pads:
        """The (top, bottom, left, right) zero padding applied for an input of this size."""
        if self.pads != "same":
            return self.pads  # type: ignore[return-value]
        out: list[int] = []
        for size, k, s, d in zip((height, width), self.kernel_size, self.stride, self.dilation):
            total = max((-(size // -s) - 1) * s + (k - 1) * d + 1 - size, 0)
            out += [total // 2, total - total // 2]
        return tuple(out)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pad_inside:
            top, bottom, left, right = self.explicit_pads(x.shape[-2], x.shape[-1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)
