"""The two quadratic terms a layer can carry; both are exactly zero at initialization.

Zero start that still learns: exactly one factor (weights and bias) is zero and the others
are random, so Q(x) == 0 bit for bit while the loss gradient still reaches the zero factor
(the same idea as LoRA's zero B). Zeroing two factors would leave both gradients zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qdeploy.layers.recompute import recomputed_product

# exp(-z/2) overflows float32 past z ~ -177; clamping keeps gamma * exp(...) finite (and so
# exactly zero while gamma is zero) whatever the normalised distances are.
_MIN_NORMALISED_DISTANCE = -60.0


def _zero_(module: nn.Module) -> None:
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ProductTerm(nn.Module):
    """Q(x) = U(A(x) * B(x)); U (or B where U is omitted) starts at zero."""

    def __init__(self, a: nn.Module, b: nn.Module, proj: nn.Module | None, memory_efficient: bool = False):
        super().__init__()
        self.a, self.b, self.proj = a, b, proj
        self.memory_efficient = memory_efficient
        _zero_(proj if proj is not None else b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled():
            return recomputed_product(x, self.a, self.b, self.proj)
        product = self.a(x) * self.b(x)
        return product if self.proj is None else self.proj(product)


class ChannelsLastBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last dimension of (..., C) tensors, as linear layers produce."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class RBFTerm(nn.Module):
    """The kernel-method term gamma * U(exp(-BN((GELU(A x) - GELU(B x))^2) / 2)).

    The Gaussian kernel is never zero by itself, so a zero-initialised per-channel gate
    `gamma` provides the exact zero start; A, B and U stay random.
    """

    def __init__(self, a: nn.Module, b: nn.Module, norm: nn.Module, proj: nn.Module | None,
                 out_channels: int, channel_dim: int):
        super().__init__()
        self.a, self.b, self.norm, self.proj = a, b, norm, proj
        self.gamma = nn.Parameter(torch.zeros(out_channels, device=a.weight.device, dtype=a.weight.dtype))
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = (F.gelu(self.a(x)) - F.gelu(self.b(x))).square()
        kernel = torch.exp(self.norm(distance).clamp(min=_MIN_NORMALISED_DISTANCE) * -0.5)
        out = kernel if self.proj is None else self.proj(kernel)
        shape = [1] * out.dim()
        shape[self.channel_dim] = -1
        return out * self.gamma.view(shape)
