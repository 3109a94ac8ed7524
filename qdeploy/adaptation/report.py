"""What an adaptation added: wrapped layers, parameters and FLOPs, as numbers and percent."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from qdeploy.errors import QDeployError


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass at batch 1 (PyTorch's operator-level counter)."""
    param = next(model.parameters())
    x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    except RuntimeError as exc:
        raise QDeployError(f"cannot run the model at input size {input_size} ({exc}); pass input_size=(C, H, W)") from exc
    return counter.get_total_flops()


@dataclass
class AdaptReport:
    layers: list[str]
    base_params: int
    added_params: int
    trainable_params: int
    input_size: tuple[int, int, int] | None = None
    base_flops: int | None = None
    added_flops: int | None = None
    plan: dict[str, Any] | None = None  # the latency plan that chose the layers (qdeploy.adapt(latency_budget=...))

    @property
    def added_params_pct(self) -> float:
        return 100.0 * self.added_params / self.base_params

    @property
    def added_flops_pct(self) -> float | None:
        return None if self.base_flops is None else 100.0 * self.added_flops / self.base_flops

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "added_params_pct": self.added_params_pct, "added_flops_pct": self.added_flops_pct}

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a two-column table."""
        rows = [
            ("quadratic layers", str(len(self.layers))),
            ("base parameters", f"{self.base_params:,}"),
            ("added parameters", f"{self.added_params:,} ({self.added_params_pct:.2f}%)"),
            ("trainable parameters", f"{self.trainable_params:,}"),
        ]
        if self.base_flops is not None:
            rows += [
                (f"base GFLOPs @ {self.input_size}", f"{self.base_flops / 1e9:.3f}"),
                ("added GFLOPs", f"{self.added_flops / 1e9:.4f} ({self.added_flops_pct:.2f}%)"),
            ]
        return rows
