"""The engine interface on ONNX Runtime CPU: metadata, inference, and its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qdeploy.errors import QDeployError
from qdeploy.runtime import load_engine


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (torch.randn(2, 3, 8, 8),), str(path), input_names=["x"],
                      dynamic_shapes={"input": {0: batch}}, dynamo=True, verbose=False)
    return str(path), model


def test_metadata_and_inference_match_torch(tiny_onnx) -> None:
    path, model = tiny_onnx
    engine = load_engine(path, "auto")
    assert engine.backend == "ort-cpu"  # no GPU here: auto falls through to the CPU
    assert engine.inputs[0].name == "x" and engine.inputs[0].shape[1:] == (3, 8, 8)
    assert engine.inputs[0].dynamic_axes == (0,)
    engine.warmup()
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        (out,) = engine.infer(x).values()
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_bad_inputs_are_clear_errors(tiny_onnx, tmp_path) -> None:
    path, _ = tiny_onnx
    engine = load_engine(path, "ort-cpu", check_finite=True)
    cases = [
        (np.zeros((2, 3, 8, 9), np.float32), "has shape 2x3x8x9, expected Nx3x8x8"),
        (np.zeros((2, 3, 8, 8), np.float64), "has dtype float64, expected float32"),
        (np.full((1, 3, 8, 8), np.nan, np.float32), "contains NaN or Inf"),
        ({"y": np.zeros((1, 3, 8, 8), np.float32)}, r"unknown \['y'\], missing \['x'\]"),
    ]
    for batch, message in cases:
        with pytest.raises(QDeployError, match=message):
            engine.infer(batch)
    with pytest.raises(QDeployError, match="needs an NVIDIA GPU and driver|is not usable here"):
        load_engine(path, "ort-cuda")
    with pytest.raises(QDeployError, match="unknown backend 'onnx'"):
        load_engine(path, "onnx")
    with pytest.raises(QDeployError, match="does not exist; run `qdeploy export` first"):
        load_engine(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(QDeployError, match="cannot load"):
        load_engine(corrupt, "ort-cpu")
