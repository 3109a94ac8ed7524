"""`qdeploy build` / `qdeploy plugins` and the TensorRT support modules, without TensorRT.

Argument checking, ONNX inspection, the TensorRT 10 vs 11 precision rules, engine.json and
plan compatibility, plugin library paths and errors all run here; what needs `tensorrt`
itself (building, loading plugins) is at the end and skips with the reason where it is absent.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from qdeploy.cli import main
from qdeploy.errors import QDeployError
from qdeploy.export import translations
from qdeploy.plugin_contract import PLUGIN_OPS
from qdeploy.runtime import plugin_library, tensorrt_support
from qdeploy.runtime.plan_info import check_plan_compatible, read_engine_info
from tests.conftest import engine_info
from qdeploy.runtime.tensorrt_build import BuildOptions, plan_precision, profile_shapes, summarize_onnx

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def write_model(path: Path, batch: int | str = "N", kind: str = "fp32") -> Path:
    """A one-node ONNX model: Relu (fp32), Cast to fp16 (fp16), Q/DQ (int8) or a plugin node."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if kind == "fp16":
        nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                 helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
        inits = []
    elif kind == "int8":
        nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])]
    elif kind == "plugin":
        nodes = [helper.make_node("AtrousQuadProduct", ["x", "x", "x", "x", "x"], ["y"], domain="trt.plugins")]
        inits = []
    else:
        nodes, inits = [helper.make_node("Relu", ["x"], ["y"])], []
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("trt.plugins", 1)] if kind == "plugin" else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


# --- ONNX inspection, profiles, options -------------------------------------------------------

@pytest.mark.parametrize("kind, precision", [("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8")])
def test_graph_precision_is_read_from_the_onnx_file(tmp_path: Path, kind: str, precision: str) -> None:
    assert summarize_onnx(write_model(tmp_path / "m.onnx", kind=kind)).precision == precision


def test_summary_lists_inputs_plugin_nodes_and_hash(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.onnx", kind="plugin")
    summary = summarize_onnx(path)
    assert summary.inputs == {"x": (None, 3, 8, 8)}
    assert summary.plugin_ops == ("AtrousQuadProduct",)
    import hashlib
    assert summary.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_profile_varies_only_the_batch() -> None:
    assert profile_shapes({"x": (None, 3, 8, 8)}, 1, 4, 16) == {
        "x": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [16, 3, 8, 8]}}
    with pytest.raises(QDeployError, match="fixed batch of 2.*--batch dynamic"):
        profile_shapes({"x": (2, 3, 8, 8)}, 1, 4, 16)
    with pytest.raises(QDeployError, match="dynamic dimensions.*--input-size"):
        profile_shapes({"x": (None, 3, None, 8)}, 1, 1, 1)


def test_build_options_are_checked(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.onnx")
    with pytest.raises(QDeployError, match="does not exist"):
        BuildOptions(tmp_path / "missing.onnx", tmp_path / "out").check()
    with pytest.raises(QDeployError, match="min-batch <= --opt-batch"):
        BuildOptions(model, tmp_path / "out", min_batch=8, opt_batch=4, max_batch=16).check()
    with pytest.raises(QDeployError, match="--workspace 0"):
        BuildOptions(model, tmp_path / "out", workspace_mib=0).check()
    with pytest.raises(QDeployError, match="--timing-cache .* is a folder"):
        BuildOptions(model, tmp_path / "out", timing_cache=tmp_path).check()
    bad = tmp_path / "m.txt"
    bad.write_text("x")
    with pytest.raises(QDeployError, match="not an .onnx file"):
        BuildOptions(bad, tmp_path / "out").check()


# --- TensorRT 10 vs 11 ------------------------------------------------------------------------

def test_precision_rules_for_tensorrt_10_and_11() -> None:
    trt10, trt11 = (10, 13, 0), (11, 0, 0)
    assert plan_precision(trt10, "fp32", "fp16").builder_flags == ("FP16",)
    assert plan_precision(trt10, "fp16", "auto").builder_flags == ("FP16",)
    assert plan_precision(trt10, "int8", "auto").builder_flags == ("INT8", "FP16")
    plan = plan_precision(trt11, "fp16", "auto")
    assert (plan.strongly_typed, plan.builder_flags, plan.precision) == (True, (), "fp16")
    with pytest.raises(QDeployError, match="strongly typed.*qdeploy export --precision fp16"):
        plan_precision(trt11, "fp32", "fp16")
    with pytest.raises(QDeployError, match="Q/DQ"):
        plan_precision(trt10, "fp32", "int8")
    with pytest.raises(QDeployError, match="computes in fp16"):
        plan_precision(trt10, "fp16", "fp32")


def test_version_checks() -> None:
    assert tensorrt_support.parse_version("10.9.0.34") == (10, 9, 0)
    assert tensorrt_support.check_supported((11, 0, 0)) == (11, 0, 0)
    with pytest.raises(QDeployError, match="TensorRT 8.6.1 is not supported"):
        tensorrt_support.check_supported((8, 6, 1))
    with pytest.raises(QDeployError, match="too old: 10.7.0"):
        tensorrt_support.check_supported((10, 5, 0))
    assert not tensorrt_support.supports_python_aot_plugins((10, 8, 0))
    assert tensorrt_support.supports_python_aot_plugins((11, 0, 0))


def test_onnxruntime_tensorrt_provider_version_note() -> None:
    assert tensorrt_support.ort_tensorrt_major("1.31.1") == 10
    note = tensorrt_support.ort_compatibility_note((11, 0, 0), "1.31.1")
    assert "links TensorRT 10 (libnvinfer.so.10), not 11" in note
    assert tensorrt_support.ort_compatibility_note((10, 13, 0), "1.31.1") is None


def test_missing_tensorrt_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(QDeployError, match="TensorRT is not installed.*pip install tensorrt"):
        tensorrt_support.import_tensorrt()


# --- engine.json and plan compatibility ------------------------------------------------------



def test_engine_json_round_trip_and_compatibility(tmp_path: Path) -> None:
    info = engine_info()
    info.write(tmp_path)
    assert read_engine_info(tmp_path / "model.plan") == info
    assert read_engine_info(tmp_path / "model.engine") == info == read_engine_info(tmp_path)  # trtexec's name too
    check_plan_compatible(info, (10, 13, 0), "9.0")
    with pytest.raises(QDeployError, match="built with TensorRT 10.13.0 but this process has TensorRT 11.0.0"):
        check_plan_compatible(info, (11, 0, 0), "9.0")
    with pytest.raises(QDeployError, match="compute capability 9.0.*has compute capability 8.0.*qdeploy build"):
        check_plan_compatible(info, (10, 13, 0), "8.0")


def test_engine_json_missing_or_damaged(tmp_path: Path) -> None:
    with pytest.raises(QDeployError, match="engine.json is missing"):
        read_engine_info(tmp_path)
    (tmp_path / "engine.json").write_text('{"format": 1, "gpu_name": "x"}')
    with pytest.raises(QDeployError, match="not a qdeploy EngineInfo .*re-create it with `qdeploy build`"):
        read_engine_info(tmp_path)


# --- plugin library ---------------------------------------------------------------------------

def test_plugin_library_path_and_missing_library(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("QDEPLOY_PLUGIN_LIBRARY", str(tmp_path / "lib.so"))
    assert plugin_library.plugin_library_path() == tmp_path / "lib.so"
    with pytest.raises(QDeployError, match="lib.so does not exist; build it with `qdeploy plugins build"):
        plugin_library.load_plugins("cpp", trt=object())
    assert plugin_library.load_plugins("none").kind == "none"
    with pytest.raises(QDeployError, match="unknown plugin kind 'fast'"):
        plugin_library.load_plugins("fast")


def test_plugin_build_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TensorRT_ROOT", raising=False)
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)
    with pytest.raises(QDeployError, match="no TensorRT install given"):
        plugin_library.find_tensorrt_root()
    with pytest.raises(QDeployError, match="has no include/NvInferRuntime.h"):
        plugin_library.find_tensorrt_root(tmp_path)
    monkeypatch.setattr(plugin_library.shutil, "which", lambda name: None)
    with pytest.raises(QDeployError, match="`cmake` is not on PATH"):
        plugin_library.build_plugin_library(tmp_path)


# --- the plugins implement the exporter's node contract ----------------------------------------

def exporter_attributes(op: str) -> list[str]:
    signature = translations.plugin_functions(translations.MIN_OPSET)[op].op_signature
    skip = {"plugin_version", "plugin_namespace"}
    return [a.name for a in signature.attributes if a.name not in skip], [p.name for p in signature.inputs]


def test_cpp_plugin_matches_the_node_contract() -> None:
    source = (PLUGINS / "cpp" / "atrous_quad_plugin.cpp").read_text()
    fields = re.findall(r'\{"(\w+)", \d, \[\]', source)
    assert fields == exporter_attributes(translations.CONV_OP)[0] == exporter_attributes(translations.PRODUCT_OP)[0]
    assert exporter_attributes(translations.LINEAR_OP)[0] == [fields[-1]] == ["rank"]
    assert sorted(PLUGIN_OPS) == sorted((translations.CONV_OP, translations.PRODUCT_OP, translations.LINEAR_OP))
    for op in PLUGIN_OPS:
        assert f'return "{op}";' in source
    assert f'kNamespace = "{translations.PLUGIN_NAMESPACE}"' in source
    assert f'kVersion = "{translations.PLUGIN_VERSION}"' in source


def test_python_plugin_matches_the_node_contract() -> None:
    tree = ast.parse((PLUGINS / "triton" / "atrous_quad_trt.py").read_text())
    registered = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "register":
                    op = decorator.args[0].values[-1].value.removeprefix("::")
                    registered[op] = [a.arg for a in node.args.args]
    assert sorted(registered) == sorted(PLUGIN_OPS)
    for op, params in registered.items():
        attributes, inputs = exporter_attributes(op)
        assert params == inputs + attributes, op


# --- CLI --------------------------------------------------------------------------------------

def test_cli_build_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["build", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2 and "does not exist; export one with `qdeploy export`" in result.output
    model = write_model(tmp_path / "m.onnx")
    result = runner.invoke(main, ["build", str(model), "--min-batch", "8", "--max-batch", "4"])
    assert result.exit_code == 2 and "1 <= --min-batch <= --opt-batch <= --max-batch" in result.output


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is importable here: the missing-TensorRT path cannot be reached")
def test_cli_build_without_tensorrt(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build", str(write_model(tmp_path / "m.onnx"))])
    assert result.exit_code == 2 and "TensorRT is not installed" in result.output
    assert not (tmp_path / "m-engine").exists()


def test_cli_plugins_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("QDEPLOY_PLUGIN_LIBRARY", str(tmp_path / "lib.so"))
    result = CliRunner().invoke(main, ["plugins", "path"])
    assert result.exit_code == 0 and result.output.strip() == str(tmp_path / "lib.so")
    result = CliRunner().invoke(main, ["plugins", "path", "--check"])
    assert result.exit_code == 1 and "has not been built" in result.output


# --- with TensorRT ----------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not installed (NVIDIA's wheels need a GPU machine)")
def test_build_an_engine_with_tensorrt(tmp_path: Path) -> None:
    from qdeploy.runtime.tensorrt_build import build_engine

    model = write_model(tmp_path / "m.onnx")
    info = build_engine(BuildOptions(model, tmp_path / "engine", 1, 2, 4, 256, tmp_path / "timing.cache", "none"))
    assert (tmp_path / "engine" / "model.plan").stat().st_size > 0
    assert read_engine_info(tmp_path / "engine") == info and info.profile["x"]["max"] == [4, 3, 8, 8]
    assert (tmp_path / "timing.cache").stat().st_size > 0


@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not installed (NVIDIA's wheels need a GPU machine)")
def test_python_plugins_register_with_tensorrt() -> None:
    import tensorrt as trt

    loaded = plugin_library.load_plugins("python")
    assert loaded.ops == translations.PLUGIN_OPS
    registry = trt.get_plugin_registry()
    for op in translations.PLUGIN_OPS:
        assert registry.get_creator(op, "1", "qdeploy") is not None
