"""The real Triton Inference Server on repositories qdeploy wrote.

tritonserver comes from PyPI's nvidia-pytriton wheel, unpacked by `install_triton` into
~/.cache/qdeploy/triton (or $QDEPLOY_TRITON_HOME) once and reused across runs; the tests
skip, with the reason, only where that cannot happen (not Linux x86_64, no registry, no stub
for this Python). Every server listens on free 127.0.0.1 ports and is stopped at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import torch
import tritonclient.http as httpclient

from qdeploy.adaptation import adapt, randomize_quadratic_terms
from qdeploy.store import save
from qdeploy.errors import QDeployError
from qdeploy.models.sources import load_base_model
from qdeploy.runtime import load_engine
from qdeploy.serving import ServeOptions, load_models, write_triton_model
from qdeploy.serving.model_control import ControlOptions
from qdeploy.serving.triton_install import install_triton
from qdeploy.serving.triton_server import TritonServer
from tests.serving_helpers import images, torch_logits

START = "from qdeploy.cli import main; main()"


@pytest.fixture(scope="session")
def triton():
    try:
        return install_triton()
    except QDeployError as exc:
        pytest.skip(f"Triton Inference Server cannot be installed here: {exc}")


@pytest.fixture(scope="module")
def python_repo(quad_repo, tmp_path_factory):  # noqa: F811 - the imported fixture
    """One ONNX model (ONNX Runtime CPU) and one model folder (PyTorch), both on Triton's Python backend."""
    _, onnx_path, model = quad_repo
    folder = tmp_path_factory.mktemp("triton")
    torch.manual_seed(0)
    timm_model, _ = adapt(load_base_model("mobilenetv3_small_050", pretrained=False, num_classes=5).eval(),
                          input_size=(3, 32, 32))
    randomize_quadratic_terms(timm_model)
    save(timm_model, folder / "adapted")
    repo = folder / "repo"
    write_triton_model(repo, "quad", onnx_path, backend="python", engine_backend="ort-cpu", threads=1,
                       max_batch=8, max_queue_delay_us=50_000)
    write_triton_model(repo, "quad-torch", folder / "adapted", backend="python", engine_backend="torch",
                       max_batch=8, max_queue_delay_us=0)
    return repo, onnx_path, timm_model


@pytest.fixture(scope="module")
def triton_server(triton, python_repo):
    repo, _, _ = python_repo
    with TritonServer(repo, install=triton, exit_timeout_s=10) as server:
        yield server


def test_python_backend_answers_http_and_grpc_like_local_onnxruntime(triton_server, python_repo) -> None:
    _, onnx_path, timm_model = python_repo
    x = images(3, seed=11)
    reference = load_engine(onnx_path, "ort-cpu", threads=1).infer(x)["logits"]
    with httpclient.InferenceServerClient(triton_server.http_address) as client:
        assert client.is_server_ready() and client.is_model_ready("quad") and client.is_model_ready("quad-torch")
        assert client.get_model_metadata("quad")["platform"] == "python"
        for binary in (True, False):
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            result = client.infer("quad", [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary)])
            np.testing.assert_array_equal(result.as_numpy("logits"), reference)
        photos = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
        tensor = httpclient.InferInput("input", list(photos.shape), "FP32")
        tensor.set_data_from_numpy(photos)
        np.testing.assert_allclose(client.infer("quad-torch", [tensor]).as_numpy("output"),
                                   torch_logits(timm_model, photos), rtol=1e-4, atol=1e-5)
    client = grpcclient.InferenceServerClient(triton_server.grpc_address)
    try:
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("quad", [tensor]).as_numpy("logits"), reference)
    finally:
        client.close()


def test_dynamic_batching_shows_in_triton_statistics(triton_server, python_repo) -> None:
    """16 concurrent one-image requests within the 50 ms queue delay: Triton runs them as fewer, larger batches."""
    _, onnx_path, _ = python_repo
    engine = load_engine(onnx_path, "ort-cpu", threads=1)
    batches = [images(1, seed=100 + i) for i in range(16)]
    with httpclient.InferenceServerClient(triton_server.http_address) as client:
        before = client.get_inference_statistics("quad")["model_stats"][0]
    errors: list[str] = []

    def one(x: np.ndarray) -> None:
        with httpclient.InferenceServerClient(triton_server.http_address) as client:
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            got = client.infer("quad", [tensor]).as_numpy("logits")
            if not np.allclose(got, engine.infer(x)["logits"], atol=1e-6):
                errors.append("wrong rows")

    threads = [threading.Thread(target=one, args=(x,)) for x in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with httpclient.InferenceServerClient(triton_server.http_address) as client:
        after = client.get_inference_statistics("quad")["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    sizes = {stat["batch_size"] for stat in after["batch_stats"]}
    assert inferences == 16 and executions < 16, (inferences, executions)
    assert max(sizes) > 1, sizes


def test_triton_parses_the_platform_configs_and_misses_only_the_backend(triton, python_repo, tmp_path: Path) -> None:
    """onnxruntime_onnx and tensorrt_plan repositories: Triton reads their config.pbtxt; only the backend is absent."""
    _, onnx_path, _ = python_repo
    repo = tmp_path / "repo"
    write_triton_model(repo, "onnx", onnx_path)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"a plan is never opened without the tensorrt backend")
    write_triton_model(repo, "plan", plan, signature_from=onnx_path)
    write_triton_model(repo, "python", onnx_path, backend="python", engine_backend="ort-cpu", threads=1)
    with TritonServer(repo, install=triton, control=ControlOptions(), exit_timeout_s=5) as server, \
            httpclient.InferenceServerClient(server.http_address) as client:
        index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert index["python"]["state"] == "READY"
    for name, backend in (("onnx", "onnxruntime"), ("plan", "tensorrt")):
        assert index[name]["state"] == "UNAVAILABLE"
        assert index[name]["reason"] == (f"Invalid argument: unable to find backend library for backend "
                                         f"'{backend}', try specifying runtime on the model configuration.")


def test_the_embedded_server_serves_the_python_backend_repository(python_repo) -> None:
    repo, onnx_path, _ = python_repo
    models = {model.name: model for model in load_models(repo, ServeOptions(threads=1))}
    assert models["quad"].engine.backend == "ort-cpu" and models["quad-torch"].engine.backend == "torch"
    assert models["quad"].platform == "python" and models["quad"].batcher.max_batch == 8


def _serve(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", START, "serve", "--server", "triton", "--repo", str(repo), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def test_serve_triton_forwards_sigterm_and_stops_cleanly(triton, python_repo, tmp_path: Path) -> None:
    from qdeploy.serving.triton_server import free_port

    repo = tmp_path / "repo"
    _, onnx_path, _ = python_repo
    write_triton_model(repo, "quad", onnx_path, backend="python", engine_backend="ort-cpu", threads=1)
    process = _serve(repo, "--port", str(free_port()), "--grpc-port", "0", "--metrics-port", "0",
                     "--graceful-timeout", "10")
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("serving on http://127.0.0.1:"):
                break
        assert lines and lines[-1].startswith("serving on"), "".join(lines[-20:])
        address = lines[-1].split()[2].removeprefix("http://")
        with httpclient.InferenceServerClient(address) as client:
            x = images(2)
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("quad", [tensor]).as_numpy("logits"),
                                          load_engine(onnx_path, "ort-cpu", threads=1).infer(x)["logits"])
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1  # tritonserver
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[0]
        assert process.returncode == 0, rest
        assert "Signal (15) received" in rest and time.monotonic() - started < 30
        assert not Path(f"/proc/{children[0]}").exists()  # no orphaned tritonserver
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_triton_errors_are_one_line(tmp_path: Path, python_repo) -> None:
    repo, _, _ = python_repo
    missing = _serve(repo, env={"QDEPLOY_TRITON_HOME": str(tmp_path / "empty")})
    out = missing.communicate(timeout=120)[0]
    assert missing.returncode == 2 and out.strip().splitlines() == [
        f"error: Triton Inference Server is not installed in {tmp_path / 'empty'} for Python "
        f"{sys.version_info.major}.{sys.version_info.minor}; run `qdeploy triton install` (or use --server embedded)"]
    embedded_only = _serve(repo, "--max-queue", "4")
    out = embedded_only.communicate(timeout=120)[0]
    assert embedded_only.returncode == 2 and out.startswith("error: --max-queue is an embedded-server option")


def test_a_model_triton_cannot_load_stops_the_start_with_its_log(triton, tmp_path: Path, python_repo) -> None:
    _, onnx_path, _ = python_repo
    repo = tmp_path / "repo"
    write_triton_model(repo, "quad", onnx_path, backend="python", engine_backend="ort-cpu", threads=1)
    (repo / "quad" / "1" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(QDeployError, match=r"tritonserver exited with status 1 before it was ready: "
                                           r"failed to load 'quad' version 1: .*is not a readable ONNX model .*re-export it"):
        TritonServer(repo, install=triton, exit_timeout_s=5).start()


def test_install_refuses_another_wheel_and_leaves_nothing(tmp_path: Path) -> None:
    other = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("other/__init__.py", "")
    with pytest.raises(QDeployError, match=r"other-1.0-py3-none-any.whl holds no pytriton/tritonserver/bin/"
                                           r"tritonserver; it is not nvidia-pytriton==0.7.0"):
        install_triton(tmp_path / "home", other)
    assert not any((tmp_path / "home").iterdir())  # no staging folder or partial install left



def test_triton_install_command_reports_a_bad_wheel_in_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
    fake.write_bytes(b"PK\x03\x04 truncated")
    result = subprocess.run([sys.executable, "-c", START, "triton", "install", str(tmp_path / "home"), "--wheel",
                             str(fake)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {fake} is not a wheel (File is not a zip file); delete it and retry"]
    assert not (tmp_path / "home" / "nvidia-pytriton-0.7.0").exists()
