"""`qdeploy serve` as users run it: a subprocess on loopback, stopped by SIGTERM mid-request."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from qdeploy.errors import QDeployError
from qdeploy.serving import bind_socket, write_triton_model
from tests.serving_helpers import make_onnx


def _post(url: str, x: np.ndarray, results: list) -> None:
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        results.append((response.status, json.loads(response.read())))


def _wait_ready(base: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/v2/health/ready", timeout=5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server never became ready")


def test_serve_subprocess_binds_loopback_and_drains_on_sigterm(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    # A 0.5 s batching delay keeps the request in flight when SIGTERM arrives.
    write_triton_model(repo, "tiny", make_onnx(tmp_path / "tiny.onnx"), max_queue_delay_us=500_000)
    process = subprocess.Popen([sys.executable, "-c", "from qdeploy.cli import main; main()", "serve",
                                "--repo", str(repo), "--port", "0", "--backend", "ort-cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("model tiny v1: ort-cpu, max batch 8"), lines
        assert lines[1].startswith("serving on http://127.0.0.1:"), lines  # loopback unless told otherwise
        base = lines[1].split()[2]
        _wait_ready(base, time.monotonic() + 60)

        x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
        results: list = []
        sender = threading.Thread(target=_post, args=(base + "/v2/models/tiny/infer", x, results))
        started = time.monotonic()
        sender.start()
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        sender.join(30)
        assert time.monotonic() - started >= 0.45  # it waited out its batch delay, not cut short
        status, payload = results[0]
        outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in payload["outputs"]}
        expected = np.maximum(x + np.linspace(0, 1, 48, dtype=np.float32).reshape(3, 4, 4), 0)
        assert status == 200
        np.testing.assert_allclose(outputs["probs"], expected, atol=1e-6)
        np.testing.assert_allclose(outputs["mean"], expected.mean(axis=(1, 2, 3)), atol=1e-6)
        assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(base + "/v2/health/live", timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_taken_port_is_a_one_line_error() -> None:
    taken = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(QDeployError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
