"""`--precision int8`: a QDQ file calibrated on labelled images, judged on answers; refusals leave nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from qdeploy.store import save
from qdeploy.cli import main
from qdeploy.errors import QDeployError
from qdeploy.export import ExportOptions, export_model
from qdeploy.export.base_model import export_plain_onnx
from qdeploy.onnx_io import ort_session
from qdeploy.compare import PRESETS, Tolerance
from qdeploy.export import int8, int8_accuracy_control
from qdeploy.export.int8_accuracy_control import AccuracyControl, EvalSplit
from qdeploy.data.eval_set import load_eval_set
from tests.export_helpers import tiny_model

SIZE = (32, 32)


def image_folder(root: Path, per_class: int = 80, corrupt: bool = False) -> Path:
    """Two classes of random RGB images (or of files that are not images); 80 per class hold out 32."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            path = root / label / f"{i}.png"
            if corrupt:
                path.write_bytes(b"not a png")
            else:
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return root


def options(calibration: str | None, max_accuracy_drop: float = 0.005, source: str | None = None) -> ExportOptions:
    control = AccuracyControl(max_accuracy_drop, timing_batches=(1,), timing_seconds=0.05, max_steps=2)
    return ExportOptions(input_size=SIZE, modes=("decomposed",), precision="int8", calibration=calibration,
                         tune=False, int8_control=control, source=source)


def faster_than_fp32(monkeypatch, ratio: float) -> None:
    """Timing is the benchmarks' business: here every int8 file runs at `ratio` x fp32."""
    monkeypatch.setattr(int8_accuracy_control, "time_against_fp32",
                        lambda *args: {"batches": {"1": {"fp32_ms": 1.0, "int8_ms": ratio, "ratio": ratio}},
                                       "threads": 1, "ratio_vs_fp32": ratio})


def test_int8_file_is_qdq_and_its_report_is_the_truth(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(int8, "INT8_MIN_TOP1", 0.0)  # random weights on random images: answers are near ties
    faster_than_fp32(monkeypatch, 0.5)
    torch.manual_seed(0)
    model = tiny_model()
    data = image_folder(tmp_path / "calib")
    report = export_model(model, tmp_path / "out", options(str(data), max_accuracy_drop=1.0,
                                                           source=str(save(model, tmp_path / "model"))))
    info = report.files["decomposed"]
    path = tmp_path / "out" / "decomposed.onnx"
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "BatchNormalization" not in ops
    assert info.nodes["QuantizeLinear"] == sum(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert '"precision": "int8"' in meta["qdeploy.export"] and "qdeploy.weights_sha256" in meta
    eval_set = load_eval_set(str(data), model, SIZE)
    fp32 = tmp_path / "out" / info.int8["fp32_file"]  # kept beside it: what it was judged against
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(fp32)).graph.node}
    output = ort_session(path).run(None, {"input": eval_set.images})[0]
    reference = ort_session(fp32).run(None, {"input": eval_set.images})[0]
    judged = EvalSplit.of(len(eval_set.labels)).judged  # the images that neither calibrated nor ranked
    expected = int8.int8_parity(reference[judged], output[judged], eval_set.labels[judged])
    got = info.int8
    assert got["shipped"] == "int8" and got["chosen_step"] == 0 and got["float_nodes"] == []
    assert len(eval_set.labels) == 32 and got["images"] == 16 and got["calibration_images"] == 16  # val split of 160
    assert got["top1_agreement"] == pytest.approx(expected["top1_agreement"])
    assert got["int8_accuracy"] == pytest.approx(expected["int8_accuracy"]) and got["target"] == "ort-cpu"
    assert got["steps"][0]["latency"]["ratio_vs_fp32"] == 0.5 and "0.50x" in got["reason"]
    assert info.parity["random_b1"]["passed"]  # the fp32 graph it came from met the fp32 preset

    verified = CliRunner().invoke(main, ["verify", str(path), "--precision", "int8", "--data", str(data),
                                         "--random-batches", "1", "--out", str(tmp_path / "verify.json")])
    written = json.loads((tmp_path / "verify.json").read_text())["int8_vs_fp32"]
    everything = int8.int8_parity(reference, output, eval_set.labels)  # verify judges every image
    assert written["file"] == fp32.name and written["images"] == 32
    assert written["top1_agreement"] == pytest.approx(everything["top1_agreement"])
    assert f"int8 vs its fp32 file {fp32.name}: top-1 agreement {everything['top1_agreement']:.1%}" in verified.output


def test_int8_missing_the_rule_or_slower_than_fp32_ships_the_fp32_file_and_says_why(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    data = str(image_folder(tmp_path / "calib"))
    monkeypatch.setattr(int8, "INT8_MIN_TOP1", 1.01)  # a miss whatever the answers
    faster_than_fp32(monkeypatch, 0.5)
    report = export_model(model, tmp_path / "missed", options(data))
    got = report.files["decomposed"].int8
    harmful = [r["group"] for r in got["ranking"] if r["sensitivity"] > 0]  # worst first; float lowers their error
    tried = min(2, len(harmful))
    assert got["shipped"] == "fp32" and len(got["steps"]) == 1 + tried and len(got["ranking"]) > 2
    assert [s["float_groups"] for s in got["steps"][1:]] == [harmful[:1], harmful[:2]][:tried]
    assert f"no int8 file met the rule within {tried} float group(s)" in got["reason"]
    proto = onnx.load(str(tmp_path / "missed" / "decomposed.onnx"))
    assert "QuantizeLinear" not in {n.op_type for n in proto.graph.node}
    assert '"precision": "fp32"' in {p.key: p.value for p in proto.metadata_props}["qdeploy.export"]
    assert not (tmp_path / "missed" / "decomposed.fp32.onnx").exists()
    monkeypatch.setattr(int8, "INT8_MIN_TOP1", 0.0)
    faster_than_fp32(monkeypatch, 1.2)
    got = export_model(model, tmp_path / "slower", options(data, 1.0)).files["decomposed"].int8
    assert got["shipped"] == "fp32" and "runs at 1.20x the fp32 file; shipping the fp32 file" in got["reason"]


def test_int8_parity_rule() -> None:
    reference = np.eye(4)[[0, 1, 2, 3] * 25]  # 100 images, classes 0..3
    labels = np.array([0, 1, 2, 3] * 25)
    same = int8.int8_parity(reference, reference.copy(), labels)
    assert same["passed"] and same["top1_agreement"] == 1.0
    one_flip = reference.copy()
    one_flip[0] = np.eye(4)[1]  # 99% agreement, accuracy 1.0 -> 0.99: a drop of 1 point
    result = int8.int8_parity(reference, one_flip, labels)
    assert result["top1_agreement"] == 0.99 and not result["passed"]
    labels_wrong_there = labels.copy()
    labels_wrong_there[0] = 1  # the flip now fixes an error: accuracy rises, 99% agreement passes
    assert int8.int8_parity(reference, one_flip, labels_wrong_there)["passed"]


def test_int8_refusals_are_one_line_and_write_nothing(tmp_path, monkeypatch) -> None:
    model = tiny_model()
    out = tmp_path / "out"
    with pytest.raises(QDeployError, match="needs calibration images.*--calib DIR"):
        export_model(model, out, options(None))
    with pytest.raises(QDeployError, match="decomposed file only; pass --mode decomposed"):
        ExportOptions(precision="int8", calibration="digits-shift")
    with pytest.raises(QDeployError, match="no image of .* could be decoded"):
        export_model(model, out, options(str(image_folder(tmp_path / "corrupt", per_class=6, corrupt=True))))
    with pytest.raises(QDeployError, match="does not exist"):
        export_model(model, out, options(str(tmp_path / "missing")))
    with pytest.raises(QDeployError, match=r"has 4 held-out images; int8 needs at least 32"):
        export_model(model, out, options(str(image_folder(tmp_path / "few", per_class=10))))
    monkeypatch.setitem(PRESETS, "fp32", Tolerance(atol=0.0, rtol=0.0))  # the fp32 file misses parity
    with pytest.raises(QDeployError, match=r"decomposed ONNX output differs from PyTorch .* nothing was written"):
        export_model(model, out, options(str(image_folder(tmp_path / "calib"))))
    assert not out.exists()


def test_cli_int8_without_training_data_or_calib_is_refused(tmp_path) -> None:
    save(tiny_model(), tmp_path / "model")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                                       "--mode", "decomposed", "--precision", "int8", "--input-size", "32"])
    assert result.exit_code != 0 and "pass --calib DIR" in result.output and not (tmp_path / "out").exists()


def test_ort_cpu_int8_keeps_all_8_bits_only_for_depthwise_weights(tmp_path) -> None:
    """reduce_range (7-bit weights) guards the u8 x s8 GEMM kernels against int16 saturation; depthwise
    convs run a kernel that widens every product, so they keep 8 bits (and parity says it is safe)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 1)).eval()
    fp32, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_plain_onnx(net, fp32, (3, 16, 16))
    depthwise = net[2].weight
    assert list(int8.depthwise_full_range(fp32)) == [t.name for t in onnx.load(str(fp32)).graph.initializer
                                                      if tuple(t.dims) == tuple(depthwise.shape)]
    images = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    int8.quantize_qdq(fp32, out, images, "ort-cpu")  # 40: not whole batches of 16 (the histograms need them)
    quantized = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer
                 if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) == 4}
    peaks = {tuple(q.shape): int(np.abs(q.astype(np.int32)).max()) for q in quantized.values()}
    assert peaks[tuple(depthwise.shape)] == 127  # symmetric per channel: the largest weight maps to 127
    assert peaks[(8, 3, 3, 3)] <= 64 and peaks[(4, 8, 1, 1)] <= 64  # 7 bits
    session = ort_session(out)
    assert np.abs(session.run(None, {"input": images[:4]})[0] - net(torch.from_numpy(images[:4])).detach().numpy()).max() < 0.1
