"""Does a backend give the PyTorch answers? The verify run over random and labelled inputs.

The judgement is `qdeploy.compare`'s (the exporter's rule too), on every output, so an
exported file that passed its export check is judged the same way here. Answers matter
more than digits, so every set also reports top-1/top-5 agreement and, on labelled images,
the accuracy of each side.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Mapping

import numpy as np

from qdeploy.compare import Tolerance, compare_sets
from qdeploy.data.eval_set import EvalSet
from qdeploy.errors import QDeployError
from qdeploy.onnx_io import RANDOM_BATCHES, random_sets
from qdeploy.runtime.engine import Engine
from qdeploy.store import VerifyReport


def run_all(engine: Engine, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Every output of the engine over `images`, in batches of at most `batch_size`."""
    static = engine.inputs[0].shape[0]
    step = static if isinstance(static, int) else batch_size
    if isinstance(static, int) and len(images) % static:
        raise QDeployError(f"{engine.describe()} takes batches of exactly {static}; use an image count divisible by it")
    chunks = [engine.infer(images[i:i + step]) for i in range(0, len(images), step)]
    return {out: np.concatenate([chunk[out] for chunk in chunks]) for out in chunks[0]}


def verify(engine: Engine, reference: Engine, tolerance: Tolerance | Mapping[str, Tolerance],
           eval_set: EvalSet | None = None,
           random_batches: tuple[int, ...] = RANDOM_BATCHES, batch_size: int = 32, seed: int = 0,
           cache: dict[str, dict[str, np.ndarray]] | None = None) -> VerifyReport:
    """Compare every output of `engine` with `reference` on random inputs and the labelled
    `eval_set` (tolerance: one, or one per output name); the report. `cache`: the
    reference's outputs by set name, filled on first use (several engines, one reference run)."""
    shape = tuple(d for d in engine.inputs[0].shape[1:])
    if not all(isinstance(d, int) for d in shape):
        raise QDeployError(f"{engine.describe()} has a dynamic image size {shape}; export with a fixed --input-size")
    sets = {name: (images, None) for name, images in random_sets(shape, random_batches, seed).items()}
    if eval_set is not None:
        sets[eval_set.name] = (eval_set.images, eval_set.labels)
    comparisons = compare_sets(sets, lambda images: run_all(reference, images, batch_size),
                               lambda images: run_all(engine, images, batch_size), tolerance, cache)
    return VerifyReport(engine.backend, engine.describe(), str(getattr(engine, "path", "")), reference.describe(),
                        {out: asdict(t) for out, t in tolerance.items()} if isinstance(tolerance, Mapping)
                        else asdict(tolerance), [c.to_dict() for c in comparisons], all(c.passed for c in comparisons))
