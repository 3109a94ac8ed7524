"""The engine interface every backend implements, with input checking done once, here.

Callers (verify, bench, serve) only see `inputs`/`outputs` metadata, `warmup()` and
`infer()`; each backend implements `_run` on already-validated arrays. Validation errors
are QDeployErrors naming the tensor, what was expected and what came.

`infer()` also takes torch tensors and then returns torch tensors on the inputs' device:
GPU backends override `_run_torch` to read and write device memory in place (no host
copy); the default goes through numpy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from qdeploy.errors import QDeployError

if TYPE_CHECKING:
    import torch

Dim = int | str | None  # str/None: a symbolic (dynamic) dimension such as the batch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.shape) if not isinstance(d, int))

    @property
    def batched(self) -> bool:
        """Whether the first axis is a dynamic batch (what batching servers and preallocation need)."""
        return bool(self.shape) and not isinstance(self.shape[0], int)

    def example_shape(self, batch: int = 1) -> tuple[int, ...]:
        """A concrete shape: dynamic dims become `batch` (first axis) or 1."""
        return tuple(d if isinstance(d, int) else (batch if i == 0 else 1) for i, d in enumerate(self.shape))

    def check(self, array: "np.ndarray | torch.Tensor") -> None:
        dtype = numpy_dtype(array)
        if dtype != self.dtype:
            raise QDeployError(f"input {self.name!r} has dtype {dtype}, expected {self.dtype}; cast it first")
        if array.ndim != len(self.shape) or any(
            isinstance(want, int) and want != got for want, got in zip(self.shape, array.shape)
        ):
            expected = "x".join(str(d) if isinstance(d, int) else "N" for d in self.shape)
            raise QDeployError(f"input {self.name!r} has shape {'x'.join(map(str, array.shape))}, expected {expected}")

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": [d if isinstance(d, int) else -1 for d in self.shape],
                "dtype": str(self.dtype)}


def numpy_dtype(array: Any) -> np.dtype:
    """The numpy dtype of a numpy array or a torch tensor (same names: float32, float16, ...)."""
    if isinstance(array, np.ndarray):
        return array.dtype
    import torch

    try:
        return torch.empty(0, dtype=array.dtype).numpy().dtype
    except TypeError:  # bfloat16 and other types numpy lacks
        raise QDeployError(f"tensor dtype {array.dtype} has no numpy equivalent; cast it to float32 first") from None


def is_torch(value: Any) -> bool:
    """True for a torch.Tensor, without importing torch for numpy-only callers."""
    return type(value).__module__.startswith("torch") and hasattr(value, "data_ptr")


class Engine(ABC):
    """A loaded model that maps named numpy inputs to named numpy outputs."""

    backend: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def __init__(self, check_finite: bool = False) -> None:
        self.check_finite = check_finite
        self.auto_skipped: dict[str, str] = {}  # set by load_engine("auto"): backend -> why not

    def feeds(self, batch: Any) -> dict[str, Any]:
        """Named, validated inputs; a bare array (or tensor) is accepted for single-input models."""
        if not isinstance(batch, Mapping):
            if len(self.inputs) != 1:
                raise QDeployError(f"the model has {len(self.inputs)} inputs; pass a dict keyed by input name")
            batch = {self.inputs[0].name: batch}
        known = {spec.name: spec for spec in self.inputs}
        unknown = sorted(set(batch) - set(known))
        missing = sorted(set(known) - set(batch))
        if unknown or missing:
            raise QDeployError(f"inputs do not match the model: unknown {unknown}, missing {missing}")
        feeds = {name: batch[name].contiguous() if is_torch(batch[name]) else np.ascontiguousarray(batch[name])
                 for name in known}
        for name, array in feeds.items():
            known[name].check(array)
            if self.check_finite and not _all_finite(array):
                raise QDeployError(f"input {name!r} contains NaN or Inf; clean the data or drop --check-finite")
        return feeds

    def infer(self, batch: Any) -> dict[str, Any]:
        """Outputs by name: numpy arrays for numpy inputs, torch tensors (inputs' device) for tensors."""
        return self.run_checked(self.feeds(batch))

    def run_checked(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """`infer` for inputs `feeds()` already validated: a server checks each request once, then
        runs their concatenation without scanning every element again."""
        kinds = {is_torch(value) for value in feeds.values()}
        if kinds == {False}:
            return self._run(feeds)
        if kinds != {True}:
            raise QDeployError("inputs mix numpy arrays and torch tensors; pass one kind")
        devices = {value.device for value in feeds.values()}
        if len(devices) != 1:
            raise QDeployError(f"input tensors are on several devices ({sorted(map(str, devices))}); move them to one")
        return self._run_torch(feeds)

    def _run_torch(self, feeds: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        """Torch tensors in and out; this default copies through host memory (GPU backends avoid it)."""
        import torch

        device = next(iter(feeds.values())).device
        outputs = self._run({name: tensor.detach().cpu().numpy() for name, tensor in feeds.items()})
        return {name: torch.from_numpy(array).to(device) for name, array in outputs.items()}

    def warmup(self, iterations: int = 3, batch: int = 1) -> None:
        """Run a few zero batches so lazy initialisation and autotuning are off the clock."""
        zeros = {spec.name: np.zeros(spec.example_shape(batch), spec.dtype) for spec in self.inputs}
        for _ in range(iterations):
            self._run(zeros)

    def describe(self) -> str:
        """One line for logs and reports: backend, and for `auto` what it passed over and why."""
        if not self.auto_skipped:
            return self.backend
        reasons = "; ".join(f"{name}: {why}" for name, why in self.auto_skipped.items())
        return f"{self.backend} (auto; not available: {reasons})"

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated inputs; return outputs keyed by output name."""


def _all_finite(array: Any) -> bool:
    if is_torch(array):
        import torch

        return bool(torch.isfinite(array).all())
    return bool(np.isfinite(array).all())
