"""Settings shared by every quadratic layer: one dataclass, serialised into adapter configs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from qdeploy.errors import QDeployError

TermKind = Literal["product", "rbf"]


@dataclass(frozen=True)
class QuadConfig:
    """How the quadratic term of one layer is shaped.

    rank: channels of A(x) and B(x) for dense/grouped convs and linears (low rank keeps the
        added cost to a few percent). depthwise_rank: per-channel multiplier r when the
        primary is depthwise (A, B then have channels * r outputs, as in QuadraNet's DW convs).
    kernel_size, dilation: the atrous factor convs; 3x3 with dilation 3 sees a 7x7 field
        with 9 taps, the receptive field of QuadraNet's 7x7 depthwise quadratic convs.
    term: "product" is U(A(x) * B(x)); "rbf" is the kernel-method term
        gamma * U(exp(-BN((GELU(A x) - GELU(B x))^2) / 2)) with gamma starting at zero.
    memory_efficient: recompute A(x), B(x) in backward instead of saving them.
    """

    rank: int = 8
    depthwise_rank: int = 1
    kernel_size: int = 3
    dilation: int = 3
    bias: bool = True
    term: TermKind = "product"
    memory_efficient: bool = False

    def __post_init__(self) -> None:
        for name in ("rank", "depthwise_rank", "kernel_size", "dilation"):
            if getattr(self, name) < 1:
                raise QDeployError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.term not in ("product", "rbf"):
            raise QDeployError(f"unknown quadratic term {self.term!r}; use 'product' or 'rbf'")
        if self.term == "rbf" and self.memory_efficient:
            raise QDeployError("memory_efficient applies to the 'product' term only; drop one of them")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuadConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QDeployError(f"unknown quadratic-layer settings {unknown}; known: {sorted(known)}")
        return cls(**data)
