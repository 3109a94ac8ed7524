"""Does the ONNX file compute what the PyTorch model computes? ORT (CPU) against PyTorch.

The inputs are the exporter's (random sets as `qdeploy verify` draws them, and real photos); the
session is qdeploy.onnx_io's and the comparison `qdeploy.compare.compare_sets`, the path verify takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from qdeploy.compare import Comparison, Tolerance, compare_sets
from qdeploy.onnx_io import ort_session

SAMPLE_IMAGES = ("chelsea", "astronaut", "coffee")


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


def check_parity(path: str | Path, inputs: dict[str, np.ndarray], references: dict[str, list[np.ndarray]],
                 tolerance: Tolerance) -> dict[str, Comparison]:
    """Run the file on every named input set and compare every output with the PyTorch references
    (in graph output order); keyed by set name, or "set/output" when the graph has several outputs."""
    session = ort_session(path)
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    known = {name: dict(zip(names, outputs)) for name, outputs in references.items()}
    comparisons = compare_sets({name: (images, None) for name, images in inputs.items()}, known.__getitem__,
                               lambda images: dict(zip(names, session.run(None, {input_name: images}))), tolerance,
                               known)
    return {c.name if len(names) == 1 else f"{c.name}/{c.output}": c for c in comparisons}
