"""Does the ONNX file compute what the PyTorch model computes? ORT (CPU) against PyTorch.

Errors are measured against the output scale (max |reference|), since logits of different
models differ by orders of magnitude: `max_rel` = max |ort - torch| / max |torch|, and an
output passes when max |output - reference| <= atol + rtol * max |reference|. The presets
depend on the precision: fp32 graphs differ from PyTorch only by summation order, fp16
rounds every layer, int8 quantises weights and activations. The same rule serves the
exporter, `qdeploy verify` and the drift localizer (`runtime/`), which import it from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qdeploy.errors import QDeployError, first_line
from qdeploy.export.validate import load_onnx

SAMPLE_IMAGES = ("chelsea", "astronaut", "coffee")


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


@dataclass
class ParityStats:
    """One input set's comparison; `passed` applies the tolerance to max_abs at the output scale."""

    batch: int
    max_abs: float
    max_rel: float
    output_scale: float
    cosine: float
    top1_agreement: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


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


def compare(reference: np.ndarray, output: np.ndarray, tolerance: Tolerance) -> ParityStats:
    reference, output = reference.astype(np.float64), output.astype(np.float64)
    diff = np.abs(output - reference)
    scale = float(np.abs(reference).max()) or 1.0
    flat_ref, flat_out = reference.reshape(len(reference), -1), output.reshape(len(output), -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_out, axis=1)
    cosine = float(np.min(np.sum(flat_ref * flat_out, axis=1) / np.maximum(norms, 1e-30)))
    top1 = float(np.mean(flat_ref.argmax(axis=1) == flat_out.argmax(axis=1)))
    max_abs = float(diff.max())
    return ParityStats(batch=len(reference), max_abs=max_abs, max_rel=max_abs / scale, output_scale=scale,
                       cosine=cosine, top1_agreement=top1, passed=bool(np.isfinite(max_abs) and max_abs <= tolerance.bound(scale)))


def check_parity(path: str | Path, inputs: dict[str, torch.Tensor], references: dict[str, np.ndarray],
                 tolerance: Tolerance) -> dict[str, ParityStats]:
    """Run the file on every named input set and compare with the PyTorch references."""
    session = ort_session(path)
    input_name = session.get_inputs()[0].name
    return {name: compare(references[name], session.run(None, {input_name: batch.numpy()})[0], tolerance)
            for name, batch in inputs.items()}
