"""Export rewrites: the BN fold is exact, the blocked form leaves ORT no reorders, the tuner measures and caches.

One export of a quadratic MobileNetV2 (ReLU6 after every depthwise layer, as in
EfficientNet-Lite0) without rewrites; each test rewrites a copy of that graph.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from qdeploy.adaptation import quadratic_layers
from qdeploy.export import ExportOptions, export_model
from qdeploy.onnx_io import ort_session
from qdeploy.export.forms import FORMS, TuneSettings
from qdeploy.export.graph_rewrites import rewrite_graph
from qdeploy.onnx_io import layer_of, part_of
from qdeploy.export.norm_fold import fold_norms
from qdeploy.models.sources import load_base_model
from tests.export_helpers import adapted

SIZE = (3, 64, 64)


def trained_like_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Random BN statistics and affine parameters: at their init (mean 0, var 1, 1, 0) a fold that drops the
    shift or the scale would go unnoticed."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.5)
    return model


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = adapted(trained_like_norms(load_base_model("mobilenetv2_035", pretrained=False)))
    out = tmp_path_factory.mktemp("plain")
    export_model(model, out / "onnx", ExportOptions(input_size=SIZE[1:], modes=("decomposed",), rewrites=False))
    return model, out / "onnx" / "decomposed.onnx"


def ort_optimized_ops(path: Path, tmp: Path) -> Counter:
    """Op types of the graph ONNX Runtime's CPU optimizer makes of `path` (all levels, NCHWc included)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(tmp / "optimized.onnx")).graph.node)


def rewritten(plain_file: Path, model: torch.nn.Module, out: Path, tune: TuneSettings | None = None) -> tuple[Path, dict]:
    graph = ir.load(plain_file)
    report, _ = rewrite_graph(graph, list(quadratic_layers(model)), tune)
    ir.save(graph, out)
    return out, report


def outputs(path: Path, batch: np.ndarray) -> np.ndarray:
    return ort_session(path).run(None, {"input": batch})[0]


def test_fold_removes_the_norm_after_every_quadratic_layer_exactly(plain, tmp_path) -> None:
    model, plain_file = plain
    path, report = rewritten(plain_file, model, tmp_path / "rewritten.onnx")
    layers = quadratic_layers(model)
    assert report["folded_norms"] == len(layers) == 17
    assert set(report["layers"]) == set(layers)
    assert all(info["activation"] == "Clip" and info["form"] == "blocked" for info in report["layers"].values())
    before = Counter(n.op_type for n in onnx.load(str(plain_file)).graph.node)
    after = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert before["BatchNormalization"] == 17 and after["BatchNormalization"] == 0
    assert after["Conv"] == before["Conv"] + 17  # one identity conv per layer (blocked form)
    batch = torch.randn(4, *SIZE)
    with torch.no_grad():
        reference = model(batch).numpy()
    got = outputs(path, batch.numpy())
    assert np.abs(got - reference).max() <= 1e-5 + 1e-4 * np.abs(reference).max()  # the fp32 preset


def test_blocked_form_leaves_no_reorder_per_layer_where_the_plain_graph_had_two(plain, tmp_path) -> None:
    model, plain_file = plain
    path, _ = rewritten(plain_file, model, tmp_path / "rewritten.onnx")
    before, after = ort_optimized_ops(plain_file, tmp_path), ort_optimized_ops(path, tmp_path)
    if not before["ReorderInput"]:
        pytest.skip("ONNX Runtime's NCHWc layout is not used on this CPU")
    assert before["ReorderInput"] >= 17 and before["Clip"] == 17  # a round trip per layer
    assert after["ReorderInput"] == 0 and after["Clip"] == 0  # every Clip fused into a blocked conv
    assert after["ReorderOutput"] <= before["ReorderOutput"] - 17


def test_fold_leaves_a_norm_it_cannot_fold_exactly(plain) -> None:
    model, plain_file = plain
    model_ir = ir.load(plain_file)
    graph = model_ir.graph
    norm = next(n for n in graph if n.op_type == "BatchNormalization")
    add = norm.inputs[0].producer()
    primary = next(v.producer() for v in add.inputs if v.producer().op_type == "Conv")
    graph.outputs.append(primary.outputs[0])  # the primary's output is used twice now: no longer single-use
    folds = fold_norms(model_ir)
    assert len(folds) == 16 and norm in list(graph)


def test_tuner_times_both_forms_keeps_the_faster_and_caches_it(plain, tmp_path) -> None:
    model, plain_file = plain
    cache = tmp_path / "forms.json"
    settings = TuneSettings(batch=2, threads=1, repeats=3, cache=cache)
    graph = ir.load(plain_file)
    layers = list(quadratic_layers(model))
    _, first = rewrite_graph(graph, layers, settings)
    measured = {layer: info for layer, info in first.items() if not info["cached"]}
    assert set(first) == set(layers) and measured
    for info in measured.values():
        assert set(info["ms"]) == set(FORMS) and info["form"] == min(info["ms"], key=info["ms"].get)
    stored = json.loads(cache.read_text())
    assert set(stored["forms"].values()) <= set(FORMS) and len(stored["forms"]) == len(measured)
    _, second = rewrite_graph(ir.load(plain_file), layers, settings)
    assert all(info["cached"] and "ms" not in info for info in second.values())
    assert {layer: info["form"] for layer, info in second.items()} == {layer: info["form"] for layer, info in first.items()}


def test_export_records_rewrites_and_no_tune_is_reproducible(plain, tmp_path) -> None:
    model, _ = plain
    options = ExportOptions(input_size=SIZE[1:], modes=("decomposed",), tune=False)
    report = export_model(model, tmp_path / "a", options)
    export_model(model, tmp_path / "b", options)
    rewrites = report.files["decomposed"].rewrites
    assert rewrites["enabled"] and rewrites["folded_norms"] == 17
    assert all(info == {**info, "form": "blocked", "tuned": False} for info in rewrites["layers"].values())
    assert (tmp_path / "a" / "decomposed.onnx").read_bytes() == (tmp_path / "b" / "decomposed.onnx").read_bytes()
    nodes = onnx.load(str(tmp_path / "a" / "decomposed.onnx")).graph.node
    named = {layer_of(node.name) for node in nodes} - {None}
    assert named == set(quadratic_layers(model))  # every layer's nodes carry its name (for --profile)
    parts = Counter(part_of(node.name) for node in nodes if layer_of(node.name))
    assert parts == {"primary": 17, "quad": 3 * 17, "sum": 17, "blocked": 2 * 17}  # P; A, B, Mul; Add; conv + Clip
