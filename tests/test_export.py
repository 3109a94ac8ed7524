"""ONNX export on four timm families: both modes, plugin-node counts, ORT parity, dynamic batch, Polygraphy."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qdeploy import __version__
from qdeploy.adaptation import quadratic_layers
from qdeploy.export import ExportOptions, check_onnx_file, export_model
from qdeploy.store import read_report
from qdeploy.export.report import weights_sha256
from qdeploy.export.translations import PLUGIN_DOMAIN, PLUGIN_NAMESPACE, plugin_nodes
from qdeploy.models.sources import load_base_model
from tests.conftest import FAMILIES, family_model
from tests.export_helpers import FP32_TOLERANCE, adapted, assert_parity


def assert_node_contract(node: onnx.NodeProto, weights: dict[str, tuple[int, ...]]) -> None:
    """The fused node as plugins/README.md ("Fused node contract") specifies it."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes.pop("plugin_version") == b"1" and attributes.pop("plugin_namespace") == PLUGIN_NAMESPACE.encode()
    w_a, b_a, w_b, b_b, *u = (weights[name] for name in node.input[1:])
    rank = attributes.pop("rank")
    assert w_a == w_b and b_a == b_b == (rank,) == (w_a[0],)
    if node.op_type == "QuadLinear":
        assert attributes == {} and len(u) == 2 and u[0][1] == rank and u[1] == (u[0][0],)
        return
    group = attributes["group"]
    assert sorted(attributes) == ["dilations", "group", "kernel_shape", "pads", "strides"]
    assert attributes["kernel_shape"] == list(w_a[2:]) and len(attributes["pads"]) == 4 and rank % group == 0
    if node.op_type == "AtrousQuadConv":
        assert len(u) == 2 and u[0][1:] == (rank // group, 1, 1) and u[1] == (u[0][0],)
    else:
        assert node.op_type == "AtrousQuadProduct" and u == []


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tmp_path_factory) -> tuple[str, torch.nn.Module, tuple[int, int, int], Path, dict]:
    """Each family adapted, with random quadratic weights, exported once in both modes."""
    if request.param == "vit":  # ViT-Tiny's blocks, 4 of its 12: a third of the export time
        name, kwargs, size = FAMILIES["vit"]
        model = load_base_model(name, pretrained=False, depth=4, **kwargs)
    else:
        model, size = family_model(request.param)
    model = adapted(model)
    out = tmp_path_factory.mktemp(request.param) / "onnx"
    report = export_model(model, out, ExportOptions(input_size=size[1:]))
    return request.param, model, size, out, report


def test_both_modes_have_the_right_nodes_and_functions(exported) -> None:
    _, model, _, out, report = exported
    layers = len(quadratic_layers(model))
    fused = check_onnx_file(out / "fused.onnx")
    decomposed = check_onnx_file(out / "decomposed.onnx")
    assert len(plugin_nodes(fused)) == layers == report.files["fused"].plugin_nodes
    assert {f.domain for f in fused.functions} == {PLUGIN_DOMAIN}
    weights = {init.name: tuple(init.dims) for init in fused.graph.initializer}
    for node in plugin_nodes(fused):
        assert_node_contract(node, weights)
        assert node.name in quadratic_layers(model)  # named after its layer
    assert plugin_nodes(decomposed) == [] and list(decomposed.functions) == []
    assert {node.domain for node in decomposed.graph.node} <= {""}
    assert report.files["decomposed"].plugin_nodes == 0


def test_decomposed_fuses_a_and_b_without_duplicating_weights(exported) -> None:
    _, model, _, out, _ = exported
    fused, decomposed = (onnx.load(out / f"{mode}.onnx") for mode in ("fused", "decomposed"))
    names = {init.name for init in decomposed.graph.initializer}
    ops = Counter(node.op_type for node in fused.graph.node)
    # Layers with U: A and B folded into one Conv/MatMul, then Split. Depthwise layers without U
    # (AtrousQuadProduct) keep two depthwise Convs, the fast path of CPU runtimes.
    separate = {node.name for node in fused.graph.node if node.op_type == "AtrousQuadProduct"}
    assert sum(name.endswith(".quad.a.weight") for name in names) == ops["AtrousQuadProduct"]
    assert Counter(n.op_type for n in decomposed.graph.node)["Split"] >= len(quadratic_layers(model)) - len(separate)
    weight_bytes = [sum(numpy_helper.to_array(i).nbytes for i in m.graph.initializer) for m in (fused, decomposed)]
    assert abs(weight_bytes[0] - weight_bytes[1]) < 1024  # same weights, only shape constants differ


@pytest.mark.parametrize("mode", ["decomposed", "fused"])
def test_ort_matches_pytorch_at_batch_1_and_7(exported, mode: str) -> None:
    _, model, size, out, report = exported
    for batch in (1, 7):
        assert_parity(out / f"{mode}.onnx", model, torch.randn(batch, *size), FP32_TOLERANCE)
    parity = report.files[mode].parity
    assert set(parity) == {"random_b1", "random_b8", "samples"}
    assert all(s["passed"] and s["max_rel"] <= FP32_TOLERANCE and s["top1_agreement"] == 1.0 for s in parity.values())


def test_quadratic_terms_matter_so_parity_means_something(exported) -> None:
    _, model, size, _, _ = exported
    without_terms = copy.deepcopy(model)
    x = torch.randn(2, *size)
    with torch.no_grad():
        for layer in quadratic_layers(without_terms).values():
            for param in layer.quad.parameters():
                param.zero_()
        change = (model(x) - without_terms(x)).abs().max()
        assert change > 100 * FP32_TOLERANCE * model(x).abs().max()


def test_metadata_and_report(exported) -> None:
    _, model, size, out, report = exported
    assert report == read_report(out)
    assert report.input["shape"] == ["batch", *size]
    for mode in ("decomposed", "fused"):
        proto = onnx.load(out / f"{mode}.onnx")
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["qdeploy.version"] == __version__
        assert meta["qdeploy.weights_sha256"] == weights_sha256(model) == report.weights_sha256
        assert json.loads(meta["qdeploy.adapter"])["targets"] == list(quadratic_layers(model))
        assert json.loads(meta["qdeploy.export"])["mode"] == mode
        for value in (proto.graph.input[0], proto.graph.output[0]):
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        info = report.files[mode]
        assert info.file_bytes == (out / info.file).stat().st_size and not info.external_data
        assert info.nodes_total == len(proto.graph.node) == sum(info.nodes.values())


def test_polygraphy_python_api_runs_both_files(exported) -> None:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import Comparator, DataLoader

    _, _, size, out, _ = exported
    loader = DataLoader(input_metadata=TensorMetadata().add("input", np.float32, (2, *size)))
    runners = [OnnxrtRunner(SessionFromOnnx(str(out / f"{mode}.onnx")), name=mode) for mode in ("decomposed", "fused")]
    results = Comparator.run(runners, data_loader=loader)
    assert bool(Comparator.compare_accuracy(results))  # the two files agree with each other
