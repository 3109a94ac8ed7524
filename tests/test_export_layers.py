"""The fused A/B arithmetic is exact, layer by layer, in a grouped-conv model (rank > groups) and with TF-"same" pads."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qdeploy.adaptation import quadratic_layers
from qdeploy.export import ExportOptions, check_onnx_file, export_model
from qdeploy.export.ops import interleave_factors
from qdeploy.export.rewrite import ConvTermOp, LinearTermOp
from qdeploy.layers import QuadConfig, quadratic_conv2d, quadratic_linear
from qdeploy.models.sources import load_base_model
from tests.export_helpers import FP32_TOLERANCE, adapted, assert_parity, asymmetric_same_pads

CONV_CASES = {
    "grouped, rank > groups": (nn.Conv2d(8, 16, 3, padding=1, groups=4), QuadConfig(rank=8)),
    "depthwise, stride 2": (nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), QuadConfig()),
    "depthwise rank 2 (with U)": (nn.Conv2d(8, 8, 5, padding=2, groups=8), QuadConfig(depthwise_rank=2)),
    "dense, no bias": (nn.Conv2d(8, 12, 3, padding=1), QuadConfig(rank=5, bias=False)),
}


def _randomized(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        for param in layer.quad.parameters():
            param.normal_()
    return layer.eval()


@pytest.mark.parametrize("case", CONV_CASES)
def test_one_conv_over_interleaved_factors_equals_the_layer(case: str) -> None:
    primary, config = CONV_CASES[case]
    layer = _randomized(quadratic_conv2d(copy.deepcopy(primary), config))
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        expected = layer.quad(x)
        fused = ConvTermOp(copy.deepcopy(layer.quad))(x)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def _split_products(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, factor: nn.Conv2d) -> torch.Tensor:
    """One conv with `weight`, split per group into (A, B) halves, multiplied: the graph's arithmetic."""
    ab = F.conv2d(x, weight, bias, padding=factor.padding, dilation=factor.dilation, groups=factor.groups)
    batch, channels, height, width = ab.shape
    by_group = ab.view(batch, factor.groups, 2, channels // (2 * factor.groups), height, width)
    return (by_group[:, :, 0] * by_group[:, :, 1]).reshape(batch, channels // 2, height, width)


def test_plain_concatenation_would_be_wrong_for_groups() -> None:
    """Why the layout matters: [A; B] hands group g filters of other groups once groups > 1."""
    layer = _randomized(quadratic_conv2d(nn.Conv2d(8, 16, 3, padding=1, groups=4), QuadConfig(rank=8)))
    a, b = layer.quad.a, layer.quad.b
    assert a.out_channels // a.groups == 2  # rank 8 over 4 groups: two A and two B filters per group
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        expected = a(x) * b(x)
        interleaved = _split_products(x, interleave_factors(a.weight, b.weight, 4),
                                      interleave_factors(a.bias, b.bias, 4), a)
        concatenated = _split_products(x, torch.cat([a.weight, b.weight]), torch.cat([a.bias, b.bias]), a)
    torch.testing.assert_close(interleaved, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert not torch.allclose(concatenated, expected, rtol=1e-2, atol=1e-2)


def test_one_matmul_over_concatenated_factors_equals_the_linear_layer() -> None:
    layer = _randomized(quadratic_linear(nn.Linear(10, 12), QuadConfig(rank=4)))
    x = torch.randn(2, 5, 10)
    with torch.no_grad():
        torch.testing.assert_close(LinearTermOp(copy.deepcopy(layer.quad))(x), layer.quad(x), rtol=1e-5, atol=1e-5)


def test_fake_kernels_give_the_eager_shapes() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    for primary, config in CONV_CASES.values():
        op = ConvTermOp(quadratic_conv2d(copy.deepcopy(primary), config).quad)
        x = torch.randn(2, 8, 13, 11)
        expected = op(x).shape
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            assert op(mode.from_tensor(x)).shape == expected


@pytest.fixture(scope="module")
def grouped_export(tmp_path_factory):
    """timm's test NFNet with its grouped 3x3 convs (2, 3 and 4 groups) made quadratic at rank 8."""
    model = adapted(load_base_model("test_nfnet", pretrained=False), targets=["stages.*.conv2"],
                    config=QuadConfig(rank=8))
    out = tmp_path_factory.mktemp("grouped") / "onnx"
    return model, out, export_model(model, out, ExportOptions(input_size=(32, 32)))


@pytest.mark.slow  # the default run covers rank > groups on depthwise layers (same_pads_export)
def test_grouped_layers_with_rank_above_groups_export_exactly(grouped_export) -> None:
    model, out, report = grouped_export
    groups = {layer.primary.groups: layer.rank for layer in quadratic_layers(model).values()}
    assert {g for g, rank in groups.items() if rank > g} >= {2, 3, 4}
    for mode in ("decomposed", "fused"):
        assert all(s["passed"] for s in report.files[mode].parity.values())
        assert_parity(out / f"{mode}.onnx", model, torch.randn(3, 3, 32, 32), FP32_TOLERANCE)


@pytest.fixture(scope="module")
def same_pads_export(tmp_path_factory):
    """timm's test EfficientNet with TF-"same" convs, depthwise layers at depthwise rank 2.

    Rank 2 per group makes each layer an AtrousQuadConv whose A/B filters must interleave
    per group; weights go to external data (threshold 0) to cover the over-2-GB layout.
    """
    model = adapted(load_base_model("test_efficientnet", pretrained=False, pad_type="same"),
                    config=QuadConfig(depthwise_rank=2))
    out = tmp_path_factory.mktemp("same") / "onnx"
    report = export_model(model, out, ExportOptions(input_size=(32, 32), external_data_threshold=0))
    return model, out, report


def test_tf_same_pads_become_the_static_pads_of_the_export_size(same_pads_export) -> None:
    """timm's TF-"same" convs pad by input size; stride 2 at even sizes pads one more at the end."""
    model, out, _ = same_pads_export
    assert {layer.quad.a.pads for layer in quadratic_layers(model).values()} == {"same"}
    assert asymmetric_same_pads(model, out / "fused.onnx", (3, 32, 32)) == len(quadratic_layers(model)) == 2


def test_depthwise_layers_with_two_products_per_group_export_exactly(same_pads_export) -> None:
    model, out, report = same_pads_export
    for layer in quadratic_layers(model).values():
        assert layer.primary.groups > 1 and layer.rank == 2 * layer.primary.groups
    assert report.files["fused"].nodes["trt.plugins::AtrousQuadConv"] == 2
    for mode in ("decomposed", "fused"):
        assert all(s["passed"] for s in report.files[mode].parity.values())
        assert_parity(out / f"{mode}.onnx", model, torch.randn(3, 3, 32, 32), FP32_TOLERANCE)


def test_external_data_sits_beside_the_model(same_pads_export) -> None:
    _, out, report = same_pads_export
    for mode in ("decomposed", "fused"):
        info = report.files[mode]
        data = out / f"{mode}.onnx.data"
        assert info.external_data and data.stat().st_size > 0
        assert info.file_bytes == (out / info.file).stat().st_size + data.stat().st_size
        check_onnx_file(out / info.file)
        assert onnx.load(out / info.file, load_external_data=False).ByteSize() < data.stat().st_size
