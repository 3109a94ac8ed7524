"""The built-in ImageNet EfficientNet-Lite0 (TF-"same" padding) exports in both modes with parity.

Slow (about a minute on two loaded cores): the default run covers the same paths on smaller
models (TF-"same" pads on timm's test EfficientNet, the Polygraphy CLI on the CLI's export).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qdeploy.adaptation import quadratic_layers
from qdeploy.export import ExportOptions, export_model
from qdeploy.export.translations import PLUGIN_DOMAIN, PRODUCT_OP
from qdeploy.models.sources import load_base_model
from tests.export_helpers import FP32_TOLERANCE, adapted, assert_parity, asymmetric_same_pads, polygraphy_cli_runs

SIZE = (3, 64, 64)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def builtin(tmp_path_factory) -> tuple[torch.nn.Module, Path, dict]:
    model = adapted(load_base_model("efficientnet_lite0"))
    out = tmp_path_factory.mktemp("builtin") / "onnx"
    return model, out, export_model(model, out, ExportOptions(input_size=SIZE[1:]))


def test_both_modes_pass_parity_on_random_and_real_images(builtin) -> None:
    model, out, report = builtin
    assert report.base["name"] == "efficientnet_lite0" and report.quadratic_layers == 16
    for mode in ("decomposed", "fused"):
        parity = report.files[mode].parity
        assert all(s["passed"] and s["max_rel"] <= FP32_TOLERANCE for s in parity.values())
        assert parity["samples"]["top1_agreement"] == 1.0
        assert_parity(out / f"{mode}.onnx", model, torch.randn(5, *SIZE), FP32_TOLERANCE)
    assert report.files["fused"].nodes[f"{PLUGIN_DOMAIN}::{PRODUCT_OP}"] == 16


def test_tf_same_pads_are_the_static_pads_of_the_export_size(builtin) -> None:
    model, out, _ = builtin
    assert asymmetric_same_pads(model, out / "fused.onnx", SIZE) > 0
    assert sum(layer.quad.a.pads == "same" for layer in quadratic_layers(model).values()) == 4


def test_polygraphy_cli_runs_both_files(builtin) -> None:
    _, out, _ = builtin
    polygraphy_cli_runs([out / "decomposed.onnx", out / "fused.onnx"], (2, *SIZE))
