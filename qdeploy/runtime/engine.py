"""The engine interface every backend implements, with input checking done once, here.

Callers (verify, bench, serve) only see `inputs`/`outputs` metadata, `warmup()` and
`infer()`; each backend implements `_run` on already-validated arrays. Validation errors
are QDeployErrors naming the tensor, what was expected and what came.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from qdeploy.errors import QDeployError

Dim = int | str | None  # str/None: a symbolic (dynamic) dimension such as the batch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.shape) if not isinstance(d, int))

    def example_shape(self, batch: int = 1) -> tuple[int, ...]:
        """A concrete shape: dynamic dims become `batch` (first axis) or 1."""
        return tuple(d if isinstance(d, int) else (batch if i == 0 else 1) for i, d in enumerate(self.shape))

    def check(self, array: np.ndarray) -> None:
        if array.dtype != self.dtype:
            raise QDeployError(f"input {self.name!r} has dtype {array.dtype}, expected {self.dtype}; cast it first")
        if array.ndim != len(self.shape) or any(
            isinstance(want, int) and want != got for want, got in zip(self.shape, array.shape)
        ):
            expected = "x".join(str(d) if isinstance(d, int) else "N" for d in self.shape)
            raise QDeployError(f"input {self.name!r} has shape {'x'.join(map(str, array.shape))}, expected {expected}")

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": [d if isinstance(d, int) else -1 for d in self.shape],
                "dtype": str(self.dtype)}


class Engine(ABC):
    """A loaded model that maps named numpy inputs to named numpy outputs."""

    backend: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def __init__(self, check_finite: bool = False) -> None:
        self.check_finite = check_finite

    def feeds(self, batch: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named, validated inputs; a bare array is accepted for single-input models."""
        if not isinstance(batch, Mapping):
            if len(self.inputs) != 1:
                raise QDeployError(f"the model has {len(self.inputs)} inputs; pass a dict keyed by input name")
            batch = {self.inputs[0].name: batch}
        known = {spec.name: spec for spec in self.inputs}
        unknown = sorted(set(batch) - set(known))
        missing = sorted(set(known) - set(batch))
        if unknown or missing:
            raise QDeployError(f"inputs do not match the model: unknown {unknown}, missing {missing}")
        feeds = {name: np.ascontiguousarray(batch[name]) for name in known}
        for name, array in feeds.items():
            known[name].check(array)
            if self.check_finite and not np.isfinite(array).all():
                raise QDeployError(f"input {name!r} contains NaN or Inf; clean the data or drop --check-finite")
        return feeds

    def infer(self, batch: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self.feeds(batch))

    def warmup(self, iterations: int = 3, batch: int = 1) -> None:
        """Run a few zero batches so lazy initialisation and autotuning are off the clock."""
        zeros = {spec.name: np.zeros(spec.example_shape(batch), spec.dtype) for spec in self.inputs}
        for _ in range(iterations):
            self._run(zeros)

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated inputs; return outputs keyed by output name."""
