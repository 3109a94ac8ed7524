"""The engine interface on ONNX Runtime CPU: metadata, inference, and its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qdeploy.errors import QDeployError
from qdeploy.runtime import load_engine


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (torch.randn(2, 3, 8, 8),), str(path), input_names=["x"],
                      dynamic_shapes={"input": {0: batch}}, dynamo=True, verbose=False)
    return str(path), model


def test_metadata_and_inference_match_torch(tiny_onnx) -> None:
    path, model = tiny_onnx
    engine = load_engine(path, "ort-cpu")
    assert engine.backend == "ort-cpu"
    assert engine.inputs[0].name == "x" and engine.inputs[0].shape[1:] == (3, 8, 8)
    assert engine.inputs[0].dynamic_axes == (0,)
    engine.warmup()
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        (out,) = engine.infer(x).values()
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_bad_inputs_are_clear_errors(tiny_onnx, tmp_path) -> None:
    path, _ = tiny_onnx
    engine = load_engine(path, "ort-cpu", check_finite=True)
    cases = [
        (np.zeros((2, 3, 8, 9), np.float32), "has shape 2x3x8x9, expected Nx3x8x8"),
        (np.zeros((2, 3, 8, 8), np.float64), "has dtype float64, expected float32"),
        (np.full((1, 3, 8, 8), np.nan, np.float32), "contains NaN or Inf"),
        ({"y": np.zeros((1, 3, 8, 8), np.float32)}, r"unknown \['y'\], missing \['x'\]"),
    ]
    for batch, message in cases:
        with pytest.raises(QDeployError, match=message):
            engine.infer(batch)
    with pytest.raises(QDeployError, match="needs an NVIDIA GPU and driver|is not usable here"):
        load_engine(path, "ort-cuda")
    with pytest.raises(QDeployError, match="unknown backend 'onnx'"):
        load_engine(path, "onnx")
    with pytest.raises(QDeployError, match="does not exist; run `qdeploy export` first"):
        load_engine(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(QDeployError, match="is not a readable ONNX model .*re-export it"):
        load_engine(corrupt, "ort-cpu")


# ---- torch backend, torch tensors, auto's report, TensorRT options and the native TensorRT engine ----

from qdeploy.runtime import Engine, TensorSpec, tensorrt_provider_options  # noqa: E402
from qdeploy.runtime.tensorrt_engine import explain_deserialize_failure  # noqa: E402
from tests.conftest import needs_no_gpu
from tests.runtime_fixtures import INPUT_SIZE


@needs_no_gpu
def test_auto_falls_through_to_the_cpu_without_a_gpu(tiny_export) -> None:
    engine = load_engine(tiny_export.onnx / "fused.onnx", "auto")
    assert engine.backend == "ort-cpu"
    assert "auto; not available: ort-trt:" in engine.describe() and "ort-cuda:" in engine.describe()


def test_torch_backend_and_ort_agree_with_the_model(tiny_export) -> None:
    x = np.random.default_rng(0).standard_normal((3, 3, *INPUT_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = tiny_export.model(torch.from_numpy(x)).numpy()
    torch_engine = load_engine(tiny_export.folder, "auto", input_size=INPUT_SIZE)
    assert torch_engine.backend == "torch" and torch_engine.describe() == "torch"
    assert torch_engine.inputs[0].shape == (None, 3, *INPUT_SIZE)
    np.testing.assert_array_equal(torch_engine.infer(x)["output"], expected)
    for mode in ("decomposed", "fused"):
        engine = load_engine(tiny_export.onnx / f"{mode}.onnx", "ort-cpu")
        assert engine.backend == "ort-cpu"
        out = engine.infer(torch.from_numpy(x))["output"]  # torch in -> torch out
        assert isinstance(out, torch.Tensor)
        np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    with pytest.raises(QDeployError, match="has shape 1x3x8x8, expected Nx3x32x32"):
        torch_engine.infer(torch.zeros(1, 3, 8, 8))
    with pytest.raises(QDeployError, match="has dtype float16, expected float32"):
        torch_engine.infer(torch.zeros(1, 3, *INPUT_SIZE, dtype=torch.float16))
    with pytest.raises(QDeployError, match="bfloat16 has no numpy equivalent"):
        torch_engine.infer(torch.zeros(1, 3, *INPUT_SIZE, dtype=torch.bfloat16))
    checked = load_engine(tiny_export.onnx / "decomposed.onnx", "ort-cpu", check_finite=True)
    with pytest.raises(QDeployError, match="'input' contains NaN or Inf"):
        checked.infer(torch.full((1, 3, *INPUT_SIZE), float("inf")))
    with pytest.raises(QDeployError, match="is a model folder, which ort-cpu cannot run"):
        load_engine(tiny_export.folder, "ort-cpu")


class _Adder(Engine):
    """Two inputs, one output (their sum): the smallest engine with more than one input."""

    backend = "test"

    def __init__(self) -> None:
        super().__init__()
        self.inputs = [TensorSpec(name, (None, 2), np.dtype(np.float32)) for name in ("a", "b")]
        self.outputs = [TensorSpec("sum", (None, 2), np.dtype(np.float32))]

    def _run(self, feeds):
        return {"sum": feeds["a"] + feeds["b"]}


def test_numpy_and_torch_inputs_through_the_base_engine() -> None:
    engine = _Adder()
    a = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(engine.infer({"a": a, "b": 2 * a})["sum"], 3 * a)
    out = engine.infer({"a": torch.from_numpy(a), "b": torch.from_numpy(2 * a)})["sum"]
    assert isinstance(out, torch.Tensor) and torch.equal(out, torch.full((3, 2), 3.0))
    with pytest.raises(QDeployError, match="mix numpy arrays and torch tensors"):
        engine.infer({"a": a, "b": torch.from_numpy(a)})
    with pytest.raises(QDeployError, match="the model has 2 inputs; pass a dict"):
        engine.infer(a)


def test_tensorrt_provider_options(tmp_path) -> None:
    library = tmp_path / "libplugins.so"
    library.write_bytes(b"\x7fELF")
    options = tensorrt_provider_options(fp16=True, cache_dir=tmp_path / "cache", plugin_libs=(library,))
    assert options == {
        "trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path / "cache"),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path / "cache"),
        "trt_extra_plugin_lib_paths": str(library.resolve()),
    }
    assert (tmp_path / "cache").is_dir()
    with pytest.raises(QDeployError, match="plugin library .*missing.so does not exist"):
        tensorrt_provider_options(plugin_libs=(tmp_path / "missing.so",))


def test_backend_option_errors(tiny_onnx) -> None:
    path, _ = tiny_onnx
    with pytest.raises(QDeployError, match=r"option\(s\) fp16 apply to ort-trt only, not ort-cpu"):
        load_engine(path, "ort-cpu", fp16=True)
    with pytest.raises(QDeployError, match="backend ort-cpu does not accept these options"):
        load_engine(path, "ort-cpu", colour="red")


def test_tensorrt_errors_are_one_line(tmp_path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a plan")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(QDeployError, match="TensorRT is not installed"):
            load_engine(plan, "tensorrt")
        with pytest.raises(QDeployError, match="tensorrt: TensorRT is not installed"):
            load_engine(plan)  # auto on a .plan means the native engine
    message = explain_deserialize_failure(plan, ["IPluginRegistry::getCreator: Error Code 4: Cannot find plugin: "
                                                 "AtrousQuadConv, version: 1, namespace:qdeploy"])
    assert "uses a TensorRT plugin that is not loaded" in message and "AtrousQuadConv" in message
    message = explain_deserialize_failure(plan, ["The engine plan file is not compatible with this version of "
                                                 "TensorRT, expecting library version 10.9.0 got 10.3.0"])
    assert "another TensorRT version or on another GPU" in message
    assert "cannot deserialize" in explain_deserialize_failure(plan, [])


def _cuda() -> bool:
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs an NVIDIA GPU with CUDA (IO binding binds device memory)")
def test_ort_cuda_io_binding_keeps_tensors_on_the_gpu(tiny_export) -> None:
    engine = load_engine(tiny_export.onnx / "decomposed.onnx", "ort-cuda")
    x = torch.randn(4, 3, *INPUT_SIZE, device="cuda")
    out = engine.infer(x)["output"]
    assert out.is_cuda
    with torch.no_grad():
        expected = tiny_export.model.cuda()(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3 * float(expected.abs().max()))


def _tensorrt_usable() -> bool:
    from qdeploy.runtime.tensorrt_support import import_tensorrt

    try:
        import_tensorrt()
    except QDeployError:
        return False
    return _cuda()


@pytest.mark.skipif(not _tensorrt_usable(), reason="needs TensorRT and an NVIDIA GPU (TensorRT cannot be installed "
                                                   "on this machine); runs wherever `import tensorrt` works")
def test_native_tensorrt_plan_matches_torch(tiny_export, tmp_path) -> None:
    from qdeploy.runtime.tensorrt_build import BuildOptions, build_engine

    build_engine(BuildOptions(onnx_path=tiny_export.onnx / "decomposed.onnx", out_dir=tmp_path))
    engine = load_engine(tmp_path / "model.plan", "tensorrt")
    x = torch.randn(2, 3, *INPUT_SIZE, device="cuda")
    with torch.no_grad():
        expected = tiny_export.model.cuda()(x)
    torch.testing.assert_close(engine.infer(x)["output"], expected, rtol=0, atol=1e-3 * float(expected.abs().max()))


def test_tensor_spec_batched_means_a_dynamic_first_axis() -> None:
    f32 = np.dtype(np.float32)
    assert TensorSpec("x", ("batch", 3, 8, 8), f32).batched and TensorSpec("x", (None, 10), f32).batched
    assert not TensorSpec("x", (4, 3, 8, 8), f32).batched and not TensorSpec("x", (), f32).batched
    assert not TensorSpec("x", (1, None), f32).batched  # dynamic, but not on the batch axis


def test_torch_engine_sets_threads_once_not_per_inference(monkeypatch) -> None:
    """PyTorch's thread count is process-wide: engines serving from a thread pool must not flip it per call."""
    from qdeploy.runtime.torch_engine import TorchEngine
    from tests.runtime_fixtures import tiny_adapted

    previous = torch.get_num_threads()
    try:
        engine = TorchEngine(tiny_adapted(), threads=1, input_size=INPUT_SIZE)
        assert torch.get_num_threads() == 1
        calls: list[int] = []
        monkeypatch.setattr(torch, "set_num_threads", calls.append)
        engine.infer(np.zeros((2, 3, *INPUT_SIZE), np.float32))
        engine.infer(torch.zeros(2, 3, *INPUT_SIZE))
        assert calls == []
    finally:
        monkeypatch.undo()
        torch.set_num_threads(previous)


def test_a_type_error_inside_an_engine_is_not_blamed_on_options(monkeypatch, tmp_path) -> None:
    import qdeploy.runtime.torch_engine as torch_engine

    def broken(path):
        raise TypeError("unsupported operand type(s) inside the model loader")

    monkeypatch.setattr(torch_engine, "locate", broken)
    with pytest.raises(TypeError, match="inside the model loader"):
        load_engine(tmp_path, "torch")
    with pytest.raises(QDeployError, match=r"backend torch does not accept these options \(colour\); it takes "
                                           r"input_size"):
        load_engine(tmp_path, "torch", colour="red")
