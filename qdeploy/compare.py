"""The comparator: is an output close enough to its reference? One rule for every stage.

The exporter's parity check, `qdeploy verify` and the drift localizer all judge with this
module, so a file that passed at export passes (or fails) verify the same way. Errors are
measured against the output scale (max |reference|), since logits of different models
differ by orders of magnitude: an output passes when max |output - reference| <= atol +
rtol * max |reference|. The presets depend on the precision: fp32 graphs differ from
PyTorch only by summation order, fp16 rounds every layer, int8 quantises weights and
activations. Besides the maximum, the error distribution is summarised as Polygraphy does
(mean, median and a high quantile), which tells one outlier from a general drift.

numpy only (no torch): the server and the runtime readers import it cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np

from qdeploy.errors import QDeployError

ERROR_QUANTILE = 0.99  # the quantile of |output - reference| reported beside max, mean and median


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float  # of the output scale, max |reference|

    def bound(self, scale: float) -> float:
        return self.atol + self.rtol * scale


PRESETS = {
    "fp32": Tolerance(atol=1e-5, rtol=1e-4),
    "fp16": Tolerance(atol=1e-3, rtol=2e-2),
    "int8": Tolerance(atol=1e-2, rtol=1e-1),
}


def resolve_tolerance(preset: str = "fp32", atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """A preset, with --atol / --rtol overriding its parts."""
    if preset not in PRESETS:
        raise QDeployError(f"unknown tolerance preset {preset!r}; choose from {', '.join(PRESETS)}")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not value >= 0:
            raise QDeployError(f"--{name} must be >= 0, got {value}")
    base = PRESETS[preset]
    return Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol)


@dataclass
class Comparison:
    """One output of one input set against its reference.

    Error statistics are of |output - reference| (max, mean, median, the ERROR_QUANTILE
    quantile) and max_rel = max_abs / output_scale; agreement is per sample (rows); the
    accuracies are filled in when labels are given. `passed` applies the tolerance to max_abs.
    """

    name: str
    output: str
    images: int
    max_abs: float
    mean_abs: float
    median_abs: float
    quantile_abs: float
    max_rel: float
    output_scale: float
    cosine: float  # the lowest per-sample cosine similarity
    top1_agreement: float
    top5_agreement: float  # same top-5 classes (as a set)
    reference_accuracy: float | None
    backend_accuracy: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _top_k(rows: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argsort(-rows, axis=1)[:, :k], axis=1)


def compare(reference: np.ndarray, output: np.ndarray, tolerance: Tolerance, name: str = "",
            labels: np.ndarray | None = None, output_name: str = "output") -> Comparison:
    """Statistics of `output` against `reference` (first axis: samples); accuracies when labels are given."""
    if reference.shape != output.shape:
        raise QDeployError(f"{name or output_name}: output shape {output.shape} differs from the reference's "
                           f"{reference.shape}")
    reference, output = reference.astype(np.float64), output.astype(np.float64)
    diff = np.abs(output - reference)
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    scale = scale or 1.0
    flat_ref, flat_out = reference.reshape(len(reference), -1), output.reshape(len(output), -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_out, axis=1)
    cosine = float(np.min(np.sum(flat_ref * flat_out, axis=1) / np.maximum(norms, 1e-30)))
    k = min(5, flat_ref.shape[1])
    top5 = float(np.mean(np.all(_top_k(flat_ref, k) == _top_k(flat_out, k), axis=1)))
    top1 = float(np.mean(flat_ref.argmax(axis=1) == flat_out.argmax(axis=1)))
    accuracy = (lambda rows: float(np.mean(rows.argmax(axis=1) == labels))) if labels is not None else None
    max_abs = float(diff.max())
    return Comparison(
        name=name, output=output_name, images=len(reference), max_abs=max_abs, mean_abs=float(diff.mean()),
        median_abs=float(np.median(diff)), quantile_abs=float(np.quantile(diff, ERROR_QUANTILE)),
        max_rel=max_abs / scale, output_scale=scale, cosine=cosine, top1_agreement=top1, top5_agreement=top5,
        reference_accuracy=accuracy(flat_ref) if accuracy else None,
        backend_accuracy=accuracy(flat_out) if accuracy else None,
        passed=bool(np.isfinite(max_abs) and max_abs <= tolerance.bound(scale)))


def compare_sets(sets: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
                 reference: Callable[[np.ndarray], Mapping[str, np.ndarray]],
                 backend: Callable[[np.ndarray], Mapping[str, np.ndarray]], tolerance: Tolerance | Mapping[str, Tolerance],
                 cache: dict[str, Mapping[str, np.ndarray]] | None = None) -> list[Comparison]:
    """Run both sides on every named input set ((images, labels or None)) and compare every output:
    the one path export parity and `qdeploy verify` share. `cache`: reference outputs by set name,
    filled on first use (several backends, one reference run)."""
    cache = {} if cache is None else cache
    comparisons: list[Comparison] = []
    for name, (images, labels) in sets.items():
        if name not in cache:
            cache[name] = reference(images)
        comparisons += compare_all(name, cache[name], backend(images), tolerance, labels)
    return comparisons


def compare_all(name: str, references: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                tolerance: Tolerance | Mapping[str, Tolerance], labels: np.ndarray | None = None) -> list[Comparison]:
    """Every output of one input set, each with its own tolerance (a mapping by output name,
    or one for all); an output missing on either side is an error, not a silent pass."""
    if set(references) != set(outputs):
        raise QDeployError(f"{name}: the outputs differ: reference {sorted(references)}, backend {sorted(outputs)}")
    tolerances = tolerance if isinstance(tolerance, Mapping) else dict.fromkeys(references, tolerance)
    missing = sorted(set(references) - set(tolerances))
    if missing:
        raise QDeployError(f"{name}: no tolerance for output(s) {', '.join(missing)}")
    first = next(iter(references), None)  # the logits: the only output labels score
    return [compare(references[out], outputs[out], tolerances[out], name, labels if out == first else None, out)
            for out in references]
