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


def live_taps(size: int, pad_before: int, pad_after: int, kernel: int, stride: int, dilation: int) -> range:
    """The kernel taps (along one axis) that read at least one input pixel rather than padding.

    On small feature maps most taps of a wide atrous kernel only ever see zero padding (a 3x3
    kernel with dilation 3 on a 2x2 map reads real pixels with its centre tap alone). Dropping
    those taps is exact, and it matters: CPU dilated depthwise kernels are tens of times slower
    than the 1x1 convolution that remains. Interior taps are kept even if a stride skips them,
    so the result is one contiguous range (empty only when no tap reads the input).
    """
    outputs = (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1
    live = []
    for tap in range(kernel):
        offset = tap * dilation - pad_before  # input row read by output 0
        first = 0 if offset >= 0 else (-offset + stride - 1) // stride  # first output inside the input
        if first < outputs and first * stride + offset < size:
            live.append(tap)
    return range(live[0], live[-1] + 1) if live else range(0)


class AtrousConv2d(nn.Conv2d):
    """A dilated conv that pads itself (symmetric, asymmetric or TF 'same') to a target grid.

    Symmetric pads go into the convolution itself so exported graphs stay a single Conv.
    Taps that can only read padding for the input's size are skipped (`live_taps`).
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
        """The (top, bottom, left, right) zero padding for an input of this size, wherever it is applied
        (inside the convolution when symmetric, by F.pad otherwise)."""
        if self.pads != "same":
            return self.pads  # type: ignore[return-value]
        out: list[int] = []
        for size, k, s, d in zip((height, width), self.kernel_size, self.stride, self.dilation):
            total = max((-(size // -s) - 1) * s + (k - 1) * d + 1 - size, 0)
            out += [total // 2, total - total // 2]
        return tuple(out)  # type: ignore[return-value]

    def cropped(self, height: int, width: int) -> tuple[torch.Tensor, Pads] | None:
        """The weight reduced to its live taps and the padding that goes with it, for this input size.

        None when every tap is live (or none is): the layer then runs as built. The new pads
        can be negative (F.pad then crops rows that only dead taps would have read).
        """
        pads = self.explicit_pads(height, width)
        rows, cols = (live_taps(size, pads[2 * axis], pads[2 * axis + 1], self.kernel_size[axis],
                                self.stride[axis], self.dilation[axis])
                      for axis, size in enumerate((height, width)))
        full = [range(k) for k in self.kernel_size]
        if [rows, cols] == full or not rows or not cols:
            return None
        d_h, d_w = self.dilation
        k_h, k_w = self.kernel_size
        new_pads = (pads[0] - rows.start * d_h, pads[1] - (k_h - rows.stop) * d_h,
                    pads[2] - cols.start * d_w, pads[3] - (k_w - cols.stop) * d_w)
        return self.weight[:, :, rows.start:rows.stop, cols.start:cols.stop], new_pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        crop = self.cropped(height, width)
        if crop is not None:
            weight, (top, bottom, left, right) = crop
            x = F.pad(x, (left, right, top, bottom))
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        if not self.pad_inside:
            top, bottom, left, right = self.explicit_pads(height, width)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)
