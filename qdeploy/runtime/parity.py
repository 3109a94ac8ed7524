"""Does a backend give the PyTorch answers? The verify run over random and labelled inputs.

The pass rule and its per-precision presets are the exporter's (`export.parity`: error
against the output scale, max |backend - reference| <= atol + rtol * max |reference|), so
an exported file that passed its export check is judged the same way here. Answers matter
more than digits, so every set also reports top-1/top-5 agreement and, on labelled images,
the accuracy of each side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qdeploy.errors import QDeployError
from qdeploy.export.parity import PRESETS, Tolerance, compare, random_batch
from qdeploy.runtime.engine import Engine
from qdeploy.runtime.eval_set import EvalSet

__all__ = ["PRESETS", "Comparison", "Tolerance", "compare_outputs", "resolve_tolerance", "run_all", "verify"]


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
    """One input set: backend outputs against reference outputs."""

    name: str
    images: int
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float  # the lowest per-sample cosine similarity
    top1_agreement: float
    top5_agreement: float  # same top-5 classes (as a set)
    reference_accuracy: float | None
    backend_accuracy: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argsort(-logits, axis=1)[:, :k], axis=1)


def compare_outputs(name: str, reference: np.ndarray, output: np.ndarray, tolerance: Tolerance,
                    labels: np.ndarray | None = None) -> Comparison:
    """Statistics of `output` against `reference` (N, classes); accuracies when labels are given."""
    if reference.shape != output.shape:
        raise QDeployError(f"{name}: backend output shape {output.shape} differs from the reference's {reference.shape}")
    stats = compare(reference, output, tolerance)
    flat_ref, flat_out = reference.reshape(len(reference), -1), output.reshape(len(output), -1)
    k = min(5, flat_ref.shape[1])
    top5 = float(np.mean(np.all(_top_k(flat_ref, k) == _top_k(flat_out, k), axis=1)))
    accuracy = (lambda logits: float(np.mean(logits.argmax(axis=1) == labels))) if labels is not None else None
    mean_abs = float(np.abs(output.astype(np.float64) - reference).mean())
    return Comparison(name, len(reference), stats.max_abs, stats.max_rel, mean_abs, stats.cosine,
                      stats.top1_agreement, top5, accuracy(flat_ref) if accuracy else None,
                      accuracy(flat_out) if accuracy else None, stats.passed)


def run_all(engine: Engine, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The engine's first output over `images`, in batches of at most `batch_size`."""
    static = engine.inputs[0].shape[0]
    step = static if isinstance(static, int) else batch_size
    if isinstance(static, int) and len(images) % static:
        raise QDeployError(f"{engine.describe()} takes batches of exactly {static}; use an image count divisible by it")
    name = engine.outputs[0].name
    return np.concatenate([engine.infer(images[i:i + step])[name] for i in range(0, len(images), step)])


def verify(engine: Engine, reference: Engine, tolerance: Tolerance, eval_set: EvalSet | None = None,
           random_batches: tuple[int, ...] = (1, 8), batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Compare `engine` with `reference` on random inputs and the labelled `eval_set`; the report dict."""
    shape = tuple(d for d in engine.inputs[0].shape[1:])
    if not all(isinstance(d, int) for d in shape):
        raise QDeployError(f"{engine.describe()} has a dynamic image size {shape}; export with a fixed --input-size")
    sets: list[tuple[str, np.ndarray, np.ndarray | None]] = [
        (f"random_b{batch}", random_batch(shape, batch, seed=seed + batch).numpy(), None) for batch in random_batches
    ]
    if eval_set is not None:
        sets.append((eval_set.name, eval_set.images, eval_set.labels))
    comparisons = [
        compare_outputs(name, run_all(reference, images, batch_size), run_all(engine, images, batch_size),
                        tolerance, labels)
        for name, images, labels in sets
    ]
    return {
        "backend": engine.backend,
        "backend_detail": engine.describe(),
        "model": str(getattr(engine, "path", "")),
        "reference": reference.describe(),
        "tolerance": asdict(tolerance),
        "sets": [c.to_dict() for c in comparisons],
        "passed": all(c.passed for c in comparisons),
    }
