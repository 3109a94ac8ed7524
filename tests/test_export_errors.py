"""Export failures: one clear error naming the module or file, and nothing left at --out."""

from __future__ import annotations

import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from torch import nn

from qdeploy.adaptation import quadratic_layers
from qdeploy.store import save
from qdeploy.cli import main
from qdeploy.errors import QDeployError
from qdeploy.export import ExportOptions, check_onnx_file, export_model
from qdeploy.onnx_io import ort_session
from qdeploy.compare import PRESETS, Tolerance
from qdeploy.layers import QuadConfig
from tests.conftest import family_model
from tests.export_helpers import adapted, assert_parity, tiny_model


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_failed_export_leaves_out_as_it_was(tmp_path, monkeypatch) -> None:
    save(tiny_model(), tmp_path / "model")
    (tmp_path / "previous").mkdir()
    (tmp_path / "previous" / "keep.txt").write_text("old artifact")
    monkeypatch.setitem(PRESETS, "fp32", Tolerance(atol=-1.0, rtol=0.0))  # parity fails after the file was written and checked
    result = CliRunner().invoke(main, ["export", str(tmp_path / "model"), "--out", str(tmp_path / "previous"),
                                       "--input-size", "32x32", "--mode", "decomposed", "--batch", "1",
                                       "--triton-repo", str(tmp_path / "repo")])
    assert "decomposed ONNX output differs from PyTorch" in _one_line_error(result)
    assert [p.name for p in (tmp_path / "previous").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "previous"]  # no staging leftovers, no repo


def test_rbf_layers_export_decomposed_only(tmp_path) -> None:
    model = tiny_model(config=QuadConfig(term="rbf"))
    with torch.no_grad():
        for layer in quadratic_layers(model).values():
            layer.quad.gamma.normal_()
    with pytest.raises(QDeployError, match=r"quadratic layer 'layer1.0.conv2' uses the RBF term.*--mode decomposed"):
        export_model(model, tmp_path / "fused", ExportOptions(modes=("fused",), input_size=(32, 32)))
    assert not (tmp_path / "fused").exists()
    report = export_model(model, tmp_path / "dec", ExportOptions(modes=("decomposed",), input_size=(32, 32), batch=2))
    assert report.input["shape"] == [2, 3, 32, 32] and set(report.files) == {"decomposed"}
    assert_parity(tmp_path / "dec" / "decomposed.onnx", model, torch.randn(2, 3, 32, 32), 1e-4)


def test_unsupported_term_names_the_module(tmp_path) -> None:
    model = tiny_model()
    quadratic_layers(model)["layer2.0.conv2"].quad = nn.Identity()
    with pytest.raises(QDeployError, match=r"quadratic layer 'layer2.0.conv2' has an unsupported term \(Identity"):
        export_model(model, tmp_path / "out", ExportOptions(input_size=(32, 32)))


@torch.library.custom_op("qdeploy_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_mystery.register_fake
def _(x):
    return torch.empty_like(x)


class _Mystery(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mystery(x)


def test_op_without_onnx_translation_names_the_module(tmp_path) -> None:
    model = tiny_model()
    model.layer1.add_module("mystery", _Mystery())
    with pytest.raises(QDeployError, match=r"module 'layer1.mystery' calls op qdeploy_test::mystery, which has no ONNX"):
        export_model(model, tmp_path / "out", ExportOptions(input_size=(32, 32)))
    assert not (tmp_path / "out").exists()


def test_missing_or_wrong_input_size_is_named(tmp_path) -> None:
    model = tiny_model()
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k != "input_size"}
    with pytest.raises(QDeployError, match=r"ResNet has no default input size.*--input-size HxW"):
        export_model(model, tmp_path / "out", ExportOptions())
    vit, _ = family_model("vit")  # patch grid fixed at 32x32
    with pytest.raises(QDeployError, match=r"module 'patch_embed' fails at input size \(3, 64, 64\).*--input-size"):
        export_model(adapted(vit), tmp_path / "out", ExportOptions(input_size=(64, 64)))


def test_a_model_that_fails_at_any_size_is_not_blamed_on_the_input_size(tmp_path) -> None:
    model = tiny_model()
    block = model.layer1[0]
    block.forward = lambda x: x.view(-1)[:3]  # broken whatever the input size
    for size in ((32, 32), (64, 64)):  # a custom size and the model's own (224)
        with pytest.raises(QDeployError, match=r"module 'layer2.0.conv1' fails in forward \(.*\), at the model's own "
                                               r"input size too: the model is broken, not the input size"):
            export_model(model, tmp_path / "out", ExportOptions(input_size=size, modes=("decomposed",)))


def test_cli_option_errors_are_one_line(tmp_path) -> None:
    save(tiny_model(), tmp_path / "model")
    for args, message in (
        (["--input-size", "64by64"], "--input-size '64by64' is not HxW"),
        (["--batch", "zero"], "--batch 'zero' is neither 'dynamic' nor a positive integer"),
        (["--opset", "13"], "opset 13 is not supported; use 18..23"),
        (["--triton-repo", str(tmp_path / "repo"), "--triton-name", "../up"], "invalid model name '../up'"),
    ):
        result = CliRunner().invoke(main, ["export", str(tmp_path / "model"), "--out", str(tmp_path / "x"), *args])
        assert message in _one_line_error(result)
    result = CliRunner().invoke(main, ["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert "nowhere does not exist" in _one_line_error(result)
    assert not (tmp_path / "x").exists()


@pytest.fixture
def valid_onnx(tmp_path):
    node = helper.make_node("Relu", ["input"], ["output"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_onnx_file_gives_a_clear_error(valid_onnx, damage: str) -> None:
    check_onnx_file(valid_onnx)
    ort_session(valid_onnx)
    data = valid_onnx.read_bytes()
    valid_onnx.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x8f not onnx \x01" * 20, "empty": b""}[damage])
    for check in (check_onnx_file, ort_session):
        with pytest.raises(QDeployError, match=r"model.onnx (is not a readable ONNX model|holds no ONNX graph).*re-export"):
            check(valid_onnx)
