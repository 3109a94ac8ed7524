"""Does the ONNX file compute what the PyTorch model computes? ORT (CPU) against PyTorch.

The inputs (random, real photos) and the ONNX Runtime session are the exporter's; the
judgement is `qdeploy.compare`'s, the same rule `qdeploy verify` and the drift localizer use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from qdeploy.compare import Comparison, Tolerance, compare_all
from qdeploy.errors import QDeployError, first_line
from qdeploy.export.validate import load_onnx

SAMPLE_IMAGES = ("chelsea", "astronaut", "coffee")


def ort_session(path: str | Path):
    """A CPU InferenceSession for `path`, or one clear error when the file cannot be loaded."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        load_onnx(path)  # a missing, truncated or corrupt file gets its own message; parsed only on failure
        raise QDeployError(f"ONNX Runtime cannot load {path} ({first_line(exc)}); re-export it with `qdeploy export`") from exc


def sample_batch(model: nn.Module, input_size: tuple[int, int, int], count: int) -> torch.Tensor:
    """`count` real photos (scikit-image's chelsea, astronaut, coffee, cycled) at `input_size`.

    Preprocessed with the model's own timm eval transform, resized to the export size.
    """
    from PIL import Image
    from skimage import data
    from timm.data import create_transform, resolve_model_data_config

    config = resolve_model_data_config(model, args={"input_size": tuple(input_size)})
    transform = create_transform(**config)
    images = [transform(Image.fromarray(getattr(data, name)()).convert("RGB")) for name in SAMPLE_IMAGES]
    return torch.stack([images[i % len(images)] for i in range(count)])


def random_batch(input_size: tuple[int, int, int], batch: int, seed: int) -> torch.Tensor:
    """Standard-normal inputs (the scale of normalised images), reproducible by seed."""
    return torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))


def check_parity(path: str | Path, inputs: dict[str, torch.Tensor], references: dict[str, list[np.ndarray]],
                 tolerance: Tolerance) -> dict[str, Comparison]:
    """Run the file on every named input set and compare every output with the PyTorch references
    (in graph output order); keyed by set name, or "set/output" when the graph has several outputs."""
    session = ort_session(path)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    results: dict[str, Comparison] = {}
    for name, batch in inputs.items():
        outputs = dict(zip(output_names, session.run(None, {input_name: batch.numpy()})))
        expected = dict(zip(output_names, references[name]))
        for stats in compare_all(name, expected, outputs, tolerance):
            results[name if len(output_names) == 1 else f"{name}/{stats.output}"] = stats
    return results
