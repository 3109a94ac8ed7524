"""Triton model repositories: config.pbtxt parsed with Triton's own protos, layout, errors."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from onnx import TensorProto

from qdeploy.cli import main
from qdeploy.errors import QDeployError
from qdeploy.serving import ServeOptions, load_models, read_config, scan_repository, write_triton_model
from qdeploy.serving.repository import model_config_pb2
from tests.serving_helpers import make_onnx


def test_config_names_the_same_tensors_as_the_onnx_file(tmp_path: Path) -> None:
    source = make_onnx(tmp_path / "exported.onnx", external=True)
    folder = write_triton_model(tmp_path / "repo", "tiny", source, max_batch=16, instances=2, max_queue_delay_us=500)
    text = (folder / "config.pbtxt").read_text()
    pb2 = model_config_pb2()
    config = text_format.Parse(text, pb2.ModelConfig())  # Triton's own message type, strict parser
    assert (config.name, config.platform, config.max_batch_size) == ("tiny", "onnxruntime_onnx", 16)
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, pb2.ModelInstanceGroup.KIND_AUTO)]

    copied = onnx.load(str(folder / "1" / "model.onnx"))  # loads the copied external weights too
    assert onnx.numpy_helper.to_array(copied.graph.initializer[0]).shape == (3, 4, 4)
    for entries, values in ((config.input, copied.graph.input), (config.output, copied.graph.output)):
        assert [e.name for e in entries] == [v.name for v in values]
        for entry, value in zip(entries, values):
            onnx_dims = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]  # batch axis left out
            assert list(entry.dims) == onnx_dims
            assert entry.data_type == pb2.TYPE_FP32 and value.type.tensor_type.elem_type == TensorProto.FLOAT
    assert text.startswith("# Written by qdeploy")


def test_plans_take_their_signature_from_onnx_and_note_the_plugin(tmp_path: Path) -> None:
    source = make_onnx(tmp_path / "model.onnx")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine")
    with pytest.raises(QDeployError, match="cannot read the tensors of .*--signature-from"):
        write_triton_model(tmp_path / "repo", "fast", plan)
    folder = write_triton_model(tmp_path / "repo", "fast", plan, signature_from=source,
                                plugin_lib="/opt/qdeploy/lib/libqdeploy_plugins.so")
    config = read_config(folder / "config.pbtxt")
    pb2 = model_config_pb2()
    assert config.platform == "tensorrt_plan" and config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert [i.name for i in config.input] == ["input"] and [o.name for o in config.output] == ["probs", "mean"]
    assert (folder / "1" / "model.plan").read_bytes() == b"serialized engine"
    text = (folder / "config.pbtxt").read_text()
    assert 'LD_PRELOAD=/opt/qdeploy/lib/libqdeploy_plugins.so tritonserver' in text
    assert '--backend-config=tensorrt,plugins="/opt/qdeploy/lib/libqdeploy_plugins.so"' in text


def test_fixed_batch_models_need_max_batch_zero(tmp_path: Path) -> None:
    source = make_onnx(tmp_path / "fixed.onnx", batch=1)
    with pytest.raises(QDeployError, match="no dynamic batch axis .* use max batch 0"):
        write_triton_model(tmp_path / "repo", "fixed", source)
    config = read_config(write_triton_model(tmp_path / "repo", "fixed", source, max_batch=0) / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 3, 4, 4]
    assert not config.HasField("dynamic_batching")


def test_plugin_only_nodes_are_refused_but_onnx_functions_are_fine(tmp_path: Path) -> None:
    plugin = make_onnx(tmp_path / "fused.onnx", node_domain="trt.plugins")
    with pytest.raises(QDeployError, match=r"only a TensorRT plugin runs \(trt.plugins::QuadTerm\)"):
        write_triton_model(tmp_path / "repo", "fused", plugin)
    function = make_onnx(tmp_path / "function.onnx", node_domain="qdeploy", local_function=True)
    assert (write_triton_model(tmp_path / "repo", "fused", function) / "1" / "model.onnx").is_file()


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "a..b", "sp ace", "x" * 129])
def test_model_names_with_path_characters_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(QDeployError, match="invalid model name"):
        write_triton_model(tmp_path / "repo", name, make_onnx(tmp_path / "m.onnx"))
    assert not (tmp_path / "escape").exists()


def test_bad_model_files_are_clear_errors(tmp_path: Path) -> None:
    other = tmp_path / "weights.pt"
    other.write_bytes(b"")
    cases = [(tmp_path / "missing.onnx", "does not exist"), (other, "Triton serves .onnx .* or .plan")]
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    cases.append((corrupt, r"corrupt.onnx (is not a readable ONNX model|holds no ONNX graph).*re-export"))
    for path, message in cases:
        with pytest.raises(QDeployError, match=message):
            write_triton_model(tmp_path / "repo", "m", path)


def test_scan_serves_the_newest_version_and_keeps_older_ones(tmp_path: Path) -> None:
    source = make_onnx(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    write_triton_model(repo, "m", source, version=1)
    write_triton_model(repo, "m", source, version=3)
    bare = repo / "bare" / "2"
    bare.mkdir(parents=True)
    (bare / "model.onnx").write_bytes(source.read_bytes())
    found = {model.name: model for model in scan_repository(repo)}
    assert (repo / "m" / "1" / "model.onnx").is_file()
    assert found["m"].version == 3 and found["m"].config.name == "m"
    assert found["bare"].version == 2 and found["bare"].config is None and found["bare"].platform == "onnxruntime_onnx"


def test_broken_repositories_are_clear_errors(tmp_path: Path) -> None:
    source = make_onnx(tmp_path / "m.onnx")
    with pytest.raises(QDeployError, match="is not a folder"):
        scan_repository(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QDeployError, match="holds no models"):
        scan_repository(tmp_path / "empty")
    cases = [
        ("bogus_field: 1\n", "has no field named \"bogus_field\""),
        ('name: "other"\n', "names the model 'other', but its folder is 'm'"),
        ('platform: "pytorch_libtorch"\n', "platform 'pytorch_libtorch' is not served"),
    ]
    for text, message in cases:
        repo = tmp_path / f"repo{len(text)}"
        write_triton_model(repo, "m", source)
        (repo / "m" / "config.pbtxt").write_text(text)
        with pytest.raises(QDeployError, match=message):
            scan_repository(repo)
    (tmp_path / "noversion" / "m").mkdir(parents=True)
    with pytest.raises(QDeployError, match="has no <version>/model.onnx or model.plan"):
        scan_repository(tmp_path / "noversion")


def test_serving_refuses_a_config_that_contradicts_the_model(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    folder = write_triton_model(repo, "m", make_onnx(tmp_path / "m.onnx"))
    config_path = folder / "config.pbtxt"
    config_path.write_text(config_path.read_text().replace("dims: 4\n  dims: 4", "dims: 4\n  dims: 5", 1))
    with pytest.raises(QDeployError, match=r"model 'm': m/config.pbtxt: input 'input' is TYPE_FP32 \[3, 4, 5\]"):
        load_models(repo, ServeOptions(backend="ort-cpu"))
    config_path.write_text(config_path.read_text().replace('name: "input"', 'name: "pixels"'))
    with pytest.raises(QDeployError, match=r"lists inputs \['pixels'\] but the model has \['input'\]"):
        load_models(repo, ServeOptions(backend="ort-cpu"))


def test_triton_repo_command(tmp_path: Path) -> None:
    source = make_onnx(tmp_path / "m.onnx")
    runner = CliRunner()
    result = runner.invoke(main, ["triton-repo", str(source), "--repo", str(tmp_path / "repo"), "--name", "tiny",
                                  "--max-batch", "4", "--instances", "2"])
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "repo" / "tiny" / "config.pbtxt")
    assert config.max_batch_size == 4 and config.instance_group[0].count == 2
    bad = runner.invoke(main, ["triton-repo", str(source), "--repo", str(tmp_path / "repo"), "--name", "../x"])
    assert bad.exit_code == 2 and "error: invalid model name '../x'" in bad.output
