"""Accuracy-controlled int8: the control loop returns measured-harmful nodes to float until the rule holds.

The graph is built by hand so that plain int8 must fail: one quadratic layer `q` whose factor
A has an outlier channel (x1000, balanced by B's /1000, so the float product is ordinary).
Per-tensor activation quantization of A(x) then rounds A's other channels to nothing, and the
logits (the pooled products) lose their answers. Returning `q/quad` (factor convs + product)
to float restores them; the ranking must find it by measurement.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdeploy.errors import QDeployError
from qdeploy.export.int8_accuracy_control import (ACTIVATION_SUFFIX, TIMING_ROUNDS, AccuracyControl, EvalSplit,
                                                  activation_groups, check_calibration_images, layer_groups, logit_error,
                                                  quantize_with_accuracy_control, quantized_groups, returnable, run_logits,
                                                  with_float_nodes)
from qdeploy.export.int8 import narrowed_ranges, quantize_qdq

CLASSES, SIZE = 4, 8
FAST = AccuracyControl(timing_batches=(1,), timing_seconds=0.05, threads=1)


def save_graph(path: Path, name: str, nodes: list, weights: dict[str, np.ndarray]) -> Path:
    """A one-input (batch, CLASSES, SIZE, SIZE) -> one-output (batch, CLASSES) opset-18 model of `nodes`."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["batch", CLASSES, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", CLASSES])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def outlier_graph(path: Path, outlier: float = 1000.0) -> Path:
    """input -> q: primary conv + (A(x) * B(x)) -> pooled -> logits = the pooled products' channels."""
    rng = np.random.default_rng(0)
    eye = np.eye(CLASSES, dtype=np.float32).reshape(CLASSES, CLASSES, 1, 1)
    a, b = eye.copy(), eye.copy()
    a[0] *= outlier
    b[0] /= outlier
    weights = {"wp": 0.01 * rng.standard_normal((CLASSES, CLASSES, 1, 1)).astype(np.float32), "wa": a, "wb": b,
               "head_w": np.eye(CLASSES, dtype=np.float32), "head_b": np.zeros(CLASSES, np.float32),
               "shape": np.array([-1, CLASSES], np.int64)}
    nodes = [
        # tensors named after their producers, as the exporter's rewrites name them
        helper.make_node("Conv", ["input", "wp"], ["q/primary.p"], name="q/primary.Conv_0"),
        helper.make_node("Conv", ["input", "wa"], ["q/quad.a"], name="q/quad.Conv_1"),
        helper.make_node("Conv", ["input", "wb"], ["q/quad.b"], name="q/quad.Conv_2"),
        helper.make_node("Mul", ["q/quad.a", "q/quad.b"], ["q/quad.m"], name="q/quad.Mul_3"),
        helper.make_node("Add", ["q/primary.p", "q/quad.m"], ["y"], name="q/sum.Add_4"),
        helper.make_node("GlobalAveragePool", ["y"], ["pooled"], name="pool"),
        helper.make_node("Reshape", ["pooled", "shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "head_w", "head_b"], ["output"], name="head"),
    ]
    return save_graph(path, "outlier", nodes, weights)


def confident_images(path: Path, count: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Images whose fp32 answer wins by a clear margin (int8 noise alone cannot flip it), labelled with it."""
    rng = np.random.default_rng(1)
    images = rng.standard_normal((8 * count, CLASSES, SIZE, SIZE)).astype(np.float32)
    logits = run_logits(path, images, threads=1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > 0.15
    return images[keep][:count], logits[keep][:count].argmax(axis=1)


def test_emulated_float_groups_equal_requantizing_with_nodes_to_exclude(tmp_path) -> None:
    fp32 = outlier_graph(tmp_path / "fp32.onnx")
    images, _ = confident_images(fp32)
    quantize_qdq(fp32, tmp_path / "q.onnx", images, "ort-cpu")
    qdq = onnx.load(str(tmp_path / "q.onnx"))
    groups = quantized_groups(qdq)
    assert set(groups["q/quad"]) == {"q/quad.Conv_1", "q/quad.Conv_2", "q/quad.Mul_3"} and "head" in groups
    reverted = with_float_nodes(qdq, onnx.load(str(fp32)), set(groups["q/quad"]))
    conv = next(n for n in reverted.graph.node if n.name == "q/quad.Conv_1")
    weight = next(t for t in reverted.graph.initializer if t.name == conv.input[1])  # float again, not int8
    assert weight.data_type == TensorProto.FLOAT and numpy_helper.to_array(weight)[0, 0, 0, 0] == 1000.0
    emulated = run_logits(reverted, images, 1)
    assert not np.allclose(emulated, run_logits(tmp_path / "q.onnx", images, 1), atol=1e-3)  # it did revert
    activations = activation_groups(qdq, onnx.load(str(fp32)))
    assert activations["q/quad.a (activation)"] == ["q/quad.Conv_1", "q/quad.Mul_3"]
    assert activations["input (activation)"] == ["q/primary.Conv_0", "q/quad.Conv_1", "q/quad.Conv_2"]
    layers = layer_groups(onnx.load(str(fp32)))
    assert layers == {"q (whole layer)": ["q/primary.Conv_0", "q/quad.Conv_1", "q/quad.Conv_2", "q/quad.Mul_3",
                                          "q/sum.Add_4"]}
    # every reader of the graph input in float (it stays float then), a node mid-graph, the head,
    # one activation kept float (its producer and reader), the whole layer
    for nodes in (groups["q/quad"], groups["q/quad"] + groups["q/primary"], groups["q/sum"], groups["head"],
                  activations["q/quad.a (activation)"], layers["q (whole layer)"]):
        quantize_qdq(fp32, tmp_path / "x.onnx", images, "ort-cpu", nodes_to_exclude=nodes)
        emulated = run_logits(with_float_nodes(qdq, onnx.load(str(fp32)), set(nodes)), images, 1)
        np.testing.assert_allclose(emulated, run_logits(tmp_path / "x.onnx", images, 1), rtol=0, atol=1e-5)


def test_plain_int8_misses_the_rule_and_the_loop_fixes_it_with_the_measured_worst_group(tmp_path) -> None:
    fp32 = outlier_graph(tmp_path / "fp32.onnx")
    images, labels = confident_images(fp32)
    report = quantize_with_accuracy_control(fp32, tmp_path / "int8.onnx", images, labels, "ort-cpu", FAST)
    first, last = report["steps"][0], report["steps"][-1]
    assert not first["passed"] and first["top1_agreement"] < 0.9  # plain int8 loses the answers
    ranked = {entry["group"]: entry for entry in report["ranking"]}
    # the whole layer first (it holds the factors), then its quad part, far above its other parts; the
    # quad part removes nearly all the whole layer does, so the whole layer is not returned
    assert report["ranking"][0]["group"] == "q (whole layer)" and ranked["q (whole layer)"]["nodes"] == 5
    assert report["ranking"][1]["group"] == "q/quad" and ranked["q/quad"]["sensitivity"] > 0
    assert ranked["q/quad"]["returnable"] and not ranked["q (whole layer)"]["returnable"]
    assert ranked["q/quad"]["sensitivity"] > 10 * max(ranked["q/primary"]["sensitivity"], ranked["q/sum"]["sensitivity"])
    parts = report["sensitivity_by_part"]
    assert parts["quad"] == {"groups": 1, "harmful_groups": 1, "error_removed": ranked["q/quad"]["sensitivity"]}
    assert parts["whole layers"]["groups"] == 1
    # the activations A(x) and B(x) carry the error: each one kept float removes part of it
    activations = {entry["group"]: entry for entry in report["ranking"] if entry["group"].endswith(ACTIVATION_SUFFIX)}
    assert activations["q/quad.a (activation)"]["nodes"] == 2  # its producer and its reader, the product
    assert all(activations[f"q/quad.{t} (activation)"]["sensitivity"] > 0.1 for t in "ab")
    assert parts["quad activations"]["harmful_groups"] >= 2
    assert set(list(parts)[:3]) == {"whole layers", "quad", "quad activations"}  # where the error is, by measurement
    assert last["passed"] and last["float_groups"] == ["q/quad"] and last["top1_agreement"] >= 0.99
    # judged on the images that neither calibrated nor ranked
    assert report["images"] == len(labels) - report["ranking_images"] and report["ranking_images"] == len(labels) // 2
    for step in report["steps"]:  # every step timed in rounds; the median of them is its ratio
        timed = step["latency"]["batches"]["1"]
        assert timed["fp32_ms"] > 0 and len(timed["rounds"]) == TIMING_ROUNDS
        assert timed["ratio"] == pytest.approx(statistics.median(timed["rounds"]))
    shipped = onnx.load(str(tmp_path / "int8.onnx"))
    ops = {n.op_type for n in shipped.graph.node}
    if report["shipped"] == "int8":  # the file and its report agree: q/quad's nodes read float tensors
        assert "QuantizeLinear" in ops and report["passed"] and report["top1_agreement"] >= 0.99
        assert set(report["float_nodes"]) == {"q/quad.Conv_1", "q/quad.Conv_2", "q/quad.Mul_3"}
        mul = next(n for n in shipped.graph.node if n.name == "q/quad.Mul_3")
        assert list(mul.input) == ["q/quad.a", "q/quad.b"]
    else:  # slower than fp32 on this machine: the fp32 file ships, and the report says so
        assert "QuantizeLinear" not in ops and "fp32 file" in report["reason"]


def test_the_ship_decision_times_the_file_as_it_would_ship_not_the_step_graph(tmp_path, monkeypatch) -> None:
    import qdeploy.export.int8_accuracy_control as control

    fp32 = outlier_graph(tmp_path / "fp32.onnx")
    images, labels = confident_images(fp32)
    timed: list[str] = []

    def step_graphs_at(step_ratio: float, file_ratio: float):
        def time_against_fp32(path, *args):  # a step's graph at one ratio, the file as it would ship at another
            timed.append(path.name)
            ratio = step_ratio if path.name.startswith(("step", "all_int8")) else file_ratio
            return {"batches": {"1": {"fp32_ms": 1.0, "int8_ms": ratio, "ratio": ratio}}, "threads": 1,
                    "ratio_vs_fp32": ratio}
        monkeypatch.setattr(control, "time_against_fp32", time_against_fp32)

    step_graphs_at(1.2, 0.5)  # slower as a step, faster as shipped: ships, on the shipped file's timing
    report = quantize_with_accuracy_control(fp32, tmp_path / "int8.onnx", images, labels, "ort-cpu", FAST)
    chosen = report["steps"][report["chosen_step"]]
    assert report["shipped"] == "int8" and chosen["float_nodes"] and chosen["latency"]["ratio_vs_fp32"] == 1.2
    assert report["latency"]["ratio_vs_fp32"] == 0.5 and "at 0.50x the fp32 file's latency" in report["reason"]
    assert timed[-1] == "candidate.onnx" and report["passed"]
    step_graphs_at(0.5, 1.2)  # the other way round: the fp32 file ships
    report = quantize_with_accuracy_control(fp32, tmp_path / "int8.onnx", images, labels, "ort-cpu", FAST)
    assert report["shipped"] == "fp32" and "runs at 1.20x the fp32 file; shipping the fp32 file" in report["reason"]


def clipped_sum_graph(path: Path) -> Path:
    """input -> sum of two convs spanning +-50 -> identity depthwise 1x1 conv -> Clip(0, 6) -> pooled logits:
    the `blocked` form of a quadratic layer's sum and its ReLU6."""
    rng = np.random.default_rng(2)
    weights = {"w1": 25 * rng.standard_normal((CLASSES, CLASSES, 1, 1)).astype(np.float32),
               "w2": rng.standard_normal((CLASSES, CLASSES, 1, 1)).astype(np.float32),
               "ones": np.ones((CLASSES, 1, 1, 1), np.float32), "zeros": np.zeros(CLASSES, np.float32),
               "lo": np.array(0, np.float32), "hi": np.array(6, np.float32), "shape": np.array([-1, CLASSES], np.int64)}
    nodes = [helper.make_node("Conv", ["input", "w1"], ["p"], name="q/primary.Conv_0"),
             helper.make_node("Conv", ["input", "w2"], ["m"], name="q/quad.Conv_1"),
             helper.make_node("Add", ["p", "m"], ["sum"], name="q/sum.Add_4"),
             helper.make_node("Conv", ["sum", "ones", "zeros"], ["id"], name="q/blocked.Conv_0", group=CLASSES),
             helper.make_node("Clip", ["id", "lo", "hi"], ["act"], name="q/blocked.Clip_1"),
             helper.make_node("GlobalAveragePool", ["act"], ["pooled"], name="pool"),
             helper.make_node("Reshape", ["pooled", "shape"], ["output"], name="flatten")]
    return save_graph(path, "clipped", nodes, weights)


def test_around_a_clipped_sum_ranges_narrow_exactly_and_the_error_falls(tmp_path, monkeypatch) -> None:
    from onnxruntime.quantization.calibrate import load_tensors_data

    fp32 = clipped_sum_graph(tmp_path / "fp32.onnx")
    images = np.random.default_rng(3).standard_normal((64, CLASSES, SIZE, SIZE)).astype(np.float32)
    reference = run_logits(fp32, images, 1)
    cache = tmp_path / "calibration.json"
    narrowed = quantize_qdq(fp32, tmp_path / "narrowed.onnx", images, "ort-cpu", calibration_cache=cache)
    calibrated = {name: tuple(float(v) for v in load_tensors_data(cache)[name].range_value) for name in ("p", "m")}
    q_lo, q_hi = min(calibrated["m"][0], 0), max(calibrated["m"][1], 0)
    step = (q_hi - q_lo) / 255
    # the sum takes the Clip's range through the identity conv; P(x), the wider summand, the window
    # in which it can still move the clipped sum
    assert narrowed["sum"] == [0.0, 6.0] and set(narrowed) == {"sum", "p"}
    assert narrowed["p"] == pytest.approx([max(calibrated["p"][0], -q_hi - step), min(calibrated["p"][1], 6 - q_lo + step)])
    assert narrowed["p"][1] - narrowed["p"][0] < 0.5 * (calibrated["p"][1] - calibrated["p"][0])
    assert narrowed_ranges(fp32, cache) == narrowed
    scale = next(numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "narrowed.onnx")).graph.initializer
                 if t.name == "sum_scale")
    assert scale == pytest.approx(6 / 255)
    # exact: with Q(x) in its quantized range, P(x) clamped to the window gives the same clipped sum
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(fp32)).graph.initializer}
    p = np.einsum("oi,nihw->nohw", weights["w1"][:, :, 0, 0], images)
    q = np.clip(np.einsum("oi,nihw->nohw", weights["w2"][:, :, 0, 0], images), q_lo, q_hi)
    assert (p < narrowed["p"][0]).any() and (p > narrowed["p"][1]).any()  # the window does cut
    np.testing.assert_allclose(np.clip(np.clip(p, *narrowed["p"]) + q, 0, 6), np.clip(p + q, 0, 6), atol=1e-5)
    monkeypatch.setattr("qdeploy.export.int8.narrowed_ranges", lambda *args, **kwargs: {})  # the calibrated ranges
    quantize_qdq(fp32, tmp_path / "calibrated.onnx", images, "ort-cpu")
    errors = {name: logit_error(reference, run_logits(tmp_path / f"{name}.onnx", images, 1))
              for name in ("narrowed", "calibrated")}
    assert errors["narrowed"] < 0.5 * errors["calibrated"]


def test_a_group_is_returned_unless_a_subset_of_it_nearly_matches_it() -> None:
    ranking = [{"group": "layer", "nodes": ["a", "b", "c"], "sensitivity": 1.0},
               {"group": "a", "nodes": ["a"], "sensitivity": 0.85},
               {"group": "other", "nodes": ["d", "e"], "sensitivity": 0.5},
               {"group": "d", "nodes": ["d"], "sensitivity": 0.3},
               {"group": "useless", "nodes": ["f"], "sensitivity": -0.1}]
    assert returnable(ranking) == ["a", "other", "d"]  # 0.85 >= 0.8 x 1.0; 0.3 < 0.8 x 0.5; harmless kept out


def test_the_images_that_judge_are_apart_from_those_that_calibrate_and_rank() -> None:
    for count, calibration, ranking in ((2000, 256, 512), (359, 179, 179), (32, 16, 16)):
        split = EvalSplit.of(count)
        assert (len(split.calibration), len(split.ranking), len(split.judged)) == (calibration, ranking, count - ranking)
        assert set(split.calibration) <= set(split.ranking) and not set(split.ranking) & set(split.judged)
        assert sorted({*split.ranking, *split.judged}) == list(range(count))
    labels = np.repeat([0, 1], 16)  # a val split class by class: both halves see both classes
    split = EvalSplit.of(32)
    assert set(labels[split.ranking]) == set(labels[split.judged]) == {0, 1}


def test_a_generous_accuracy_drop_does_not_lower_the_agreement_rule(tmp_path) -> None:
    fp32 = outlier_graph(tmp_path / "fp32.onnx")
    images, labels = confident_images(fp32)
    control = AccuracyControl(max_accuracy_drop=1.0, timing_batches=(1,), timing_seconds=0.05, threads=1, max_steps=0)
    report = quantize_with_accuracy_control(fp32, tmp_path / "int8.onnx", images, labels, "ort-cpu", control)
    assert len(report["steps"]) == 1 and not report["steps"][0]["passed"]  # agreement still < 99%
    assert report["shipped"] == "fp32" and "no int8 file met the rule within 0 float group(s)" in report["reason"]
    assert onnx.load(str(tmp_path / "int8.onnx")).graph == onnx.load(str(fp32)).graph


def test_calibration_sets_too_small_or_of_another_shape_are_refused() -> None:
    images = np.zeros((40, 3, 32, 32), np.float32)
    check_calibration_images(images, (3, 32, 32), "folder")
    with pytest.raises(QDeployError, match=r"calibration set folder has 31 held-out images; int8 needs at least 32"):
        check_calibration_images(images[:31], (3, 32, 32), "folder")
    with pytest.raises(QDeployError, match=r"are 1x32x32 but the model takes 3x32x32"):
        check_calibration_images(images[:, :1], (3, 32, 32), "folder")
    with pytest.raises(QDeployError, match=r"are 3x28x28 but the model takes 3x32x32"):
        check_calibration_images(images[:, :, :28, :28], (3, 32, 32), "folder")
    with pytest.raises(QDeployError, match="--max-accuracy-drop must be between 0 and 100 points"):
        AccuracyControl(max_accuracy_drop=-0.01)
