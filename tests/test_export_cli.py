"""`qdeploy export` through click: fp16 files with fp32 I/O that Polygraphy runs, a true report, a Triton model."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict

import numpy as np
import onnx
import torch
from click.testing import CliRunner
from onnx import TensorProto

from qdeploy.cli import main
from qdeploy.store import read_report, save
from qdeploy.compare import PRESETS
from qdeploy.export.translations import PLUGIN_DOMAIN
from qdeploy.serving.repository import read_config
from tests.export_helpers import polygraphy_cli_runs, run_onnx, tiny_model


def test_cli_fp16_export_from_a_checkpoint_writes_files_and_a_true_report(tmp_path) -> None:
    model = tiny_model()
    save(model, tmp_path / "model")
    checkpoint = tmp_path / "model" / "step-100.safetensors"  # a checkpoint beside adapter.json
    shutil.copy(tmp_path / "model" / "model.safetensors", checkpoint)
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--out", str(out), "--mode", "both",
                                       "--precision", "fp16", "--opset", "20", "--input-size", "32x32",
                                       "--triton-repo", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["decomposed.onnx", "export_report.json", "fused.onnx"]

    # --triton-repo: the decomposed file, byte for byte, with a config naming its tensors.
    served = tmp_path / "repo" / "onnx" / "1" / "model.onnx"
    assert served.read_bytes() == (out / "decomposed.onnx").read_bytes()
    config = read_config(tmp_path / "repo" / "onnx" / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == ("onnx", "onnxruntime_onnx", 8)
    assert [(t.name, list(t.dims)) for t in config.input] == [("input", [3, 32, 32])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("output", [1000])]

    report = read_report(out)
    assert report.precision == "fp16" and report.opset == 20 and report.source == str(checkpoint)
    assert report.tolerance == asdict(PRESETS["fp16"])
    assert PRESETS["fp16"].rtol > PRESETS["fp32"].rtol
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    for mode, info in report.files.items():
        path = out / info.file
        proto = onnx.load(path)
        # The report's numbers describe the file on disk.
        assert info.file_bytes == path.stat().st_size
        assert info.nodes == dict(sorted(Counter(
            n.op_type if n.domain == "" else f"{n.domain}::{n.op_type}" for n in proto.graph.node).items()))
        assert info.plugin_nodes == (4 if mode == "fused" else 0) == info.nodes.get(f"{PLUGIN_DOMAIN}::AtrousQuadConv", 0)
        assert info.export_s > 0 and report.total_s >= info.export_s
        for stats in info.parity.values():
            assert stats["passed"] and 0 <= stats["max_abs"] <= PRESETS["fp16"].bound(stats["output_scale"])
            assert stats["max_rel"] == stats["max_abs"] / stats["output_scale"]
            assert stats["cosine"] > 0.999 and stats["top1_agreement"] == 1.0
        # fp16 compute, fp32 interface, opset 20 everywhere (functions included).
        assert [i.type.tensor_type.elem_type for i in (*proto.graph.input, *proto.graph.output)] == [TensorProto.FLOAT] * 2
        assert {i.data_type for i in proto.graph.initializer if len(i.dims) == 4} == {TensorProto.FLOAT16}
        assert info.nodes["Cast"] == 2
        assert {o.version for o in proto.opset_import if o.domain == ""} == {20}
        assert all({o.version for o in f.opset_import if o.domain == ""} == {20} for f in proto.functions)
        output = run_onnx(path, x)
        assert output.dtype == np.float32
        assert np.abs(output - expected).max() <= PRESETS["fp16"].bound(np.abs(expected).max())
    assert "parity passed" in result.output
    polygraphy_cli_runs([out / "decomposed.onnx", out / "fused.onnx"], (2, 3, 32, 32))
