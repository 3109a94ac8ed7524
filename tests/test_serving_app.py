"""`qdeploy serve` over loopback HTTP with the unmodified tritonclient.http client.

The served model is a small CNN whose convs and head are quadratic layers (qdeploy.adapt,
non-zero quadratic terms), exported with the dynamo exporter and a dynamic batch.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import threading
import time
import urllib.request
from urllib.parse import urlsplit

import gevent
import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from qdeploy.serving import BackgroundServer, ServeOptions, create_app, load_models, serve_engines
from qdeploy.serving.loadgen import batch_size_histogram, run_load
from tests.serving_helpers import SHAPE, SlowDoubler, images, torch_logits

MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def server(quad_repo):
    repo, _, model = quad_repo
    models = load_models(repo, ServeOptions(backend="ort-cpu", threads=1, check_finite=True))
    with BackgroundServer(create_app(models, max_body_bytes=MAX_BODY)) as running:
        yield running, model


def address(server: BackgroundServer) -> str:
    return urlsplit(server.url).netloc


def raw(server: BackgroundServer, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, dict]:
    """One plain HTTP/1.1 request; returns the status and the JSON body."""
    url = urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request(method, path, body=iter([body]) if chunked else body, headers=headers or {},
                           encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def json_infer(x: np.ndarray | list, shape: list[int] | None = None, datatype: str = "FP32", name: str = "input",
               **extra) -> bytes:
    data = x.reshape(-1).tolist() if isinstance(x, np.ndarray) else x
    shape = shape if shape is not None else list(np.shape(x))
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}],
                       **extra}).encode()


def test_tritonclient_works_unmodified(server, quad_repo) -> None:
    running, model = server
    _, onnx_path, _ = quad_repo
    client = httpclient.InferenceServerClient(address(running))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("quad")
    assert client.is_model_ready("quad", "1") and not client.is_model_ready("nope")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("quad")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, *SHAPE]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]}]
    config = client.get_model_config("quad")
    graph = onnx.load(str(onnx_path)).graph
    assert [t["name"] for t in config["input"]] == [v.name for v in graph.input]
    assert [t["name"] for t in config["output"]] == [v.name for v in graph.output]
    assert config["input"][0]["dims"] == list(SHAPE)  # numbers, as Triton returns them
    assert config["max_batch_size"] == 8 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert client.get_model_repository_index() == [{"name": "quad", "version": "1", "state": "READY"}]
    assert "model_repository" in client.get_server_metadata()["extensions"]

    x = images(3)
    expected = torch_logits(model, x)
    for binary, compression, version in ((True, None, ""), (False, None, "1"), (True, "gzip", ""),
                                         (False, "deflate", "")):
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        result = client.infer("quad", [tensor], model_version=version, outputs=outputs, request_id="req-7",
                              request_compression_algorithm=compression)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
        assert result.get_response()["id"] == "req-7"
    client.close()


BIN_HEAD = json.dumps({"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 3 * 16 * 16 * 4}}]}).encode()
NAN = images(1)
NAN[0, 0, 0, 0] = np.nan

BAD = [  # (method, path, body, headers, chunked, status, message)
    ("GET", "/v2/models/nope", None, {}, False, 404, r"unknown model 'nope'; this server has \['quad'\]"),
    ("POST", "/v2/models/nope/infer", json_infer(images(1)), {}, False, 404, "unknown model 'nope'"),
    ("GET", "/v2/models/..", None, {}, False, 400, "invalid model name '..'"),
    ("POST", "/v2/models/..%2F..%2Fetc/infer", json_infer(images(1)), {}, False, 404, "Not Found"),
    ("POST", "/v2/models/quad/../../etc/infer", json_infer(images(1)), {}, False, 404, "Not Found"),
    ("GET", "/v2/models/quad/versions/2", None, {}, False, 404, "has no READY version '2'; READY versions: \\[1\\]"),
    ("GET", "/v2/models/quad/infer", None, {}, False, 405, "Method Not Allowed"),
    ("POST", "/v2/models/quad/infer", b'{"inputs": [', {}, False, 400, "request JSON is malformed"),
    ("POST", "/v2/models/quad/infer", json_infer(np.zeros((1, 3, 16, 15), np.float32)), {}, False, 400,
     "has shape 1x3x16x15, expected Nx3x16x16"),
    ("POST", "/v2/models/quad/infer", json_infer(images(1), datatype="FP64"), {}, False, 400,
     "has dtype float64, expected float32"),
    ("POST", "/v2/models/quad/infer", json_infer(images(1), name="pixels"), {}, False, 400,
     r"unknown \['pixels'\], missing \['input'\]"),
    ("POST", "/v2/models/quad/infer", json_infer(images(9)), {}, False, 400, r"batch of 9 is outside 1..8"),
    ("POST", "/v2/models/quad/infer", json_infer(NAN.reshape(-1).tolist(), [1, *SHAPE]), {}, False, 400,
     "contains NaN or Inf"),
    ("POST", "/v2/models/quad/infer", json_infer(images(1), outputs=[{"name": "probs"}]), {}, False, 400,
     r"requested outputs \['probs'\] do not exist"),
    ("POST", "/v2/models/quad/infer", BIN_HEAD + bytes(100), {"Inference-Header-Content-Length": str(len(BIN_HEAD))},
     False, 400, "binary data ends at byte 3072 but the body carries 100"),
    ("POST", "/v2/models/quad/infer", bytes(MAX_BODY + 1), {}, False, 413, "exceeds the 262144-byte limit"),
    ("POST", "/v2/models/quad/infer", bytes(MAX_BODY + 1), {}, True, 413, "exceeds the 262144-byte limit"),
    ("POST", "/v2/models/quad/infer", json_infer(images(1)), {"Content-Encoding": "br"}, False, 415,
     "'br' is not supported"),
    ("POST", "/v2/models/quad/infer", b"[" * 100_000, {}, False, 400, "request JSON nests too deeply"),
    ("POST", "/v2/models/quad/infer", gzip.compress(bytes(MAX_BODY + 1)), {"Content-Encoding": "gzip"}, False, 413,
     "decompressed request body exceeds the 262144-byte limit"),
    ("POST", "/v2/repository/index", b'{"ready": 1}', {}, False, 400, "must be a JSON object like"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "chunked", "status", "message"), BAD,
                         ids=[f"{b[5]}-{b[6][:30]}" for b in BAD])
def test_bad_requests_get_json_errors(server, method, path, body, headers, chunked, status, message) -> None:
    running, _ = server
    got, payload = raw(running, method, path, body, headers, chunked)
    assert got == status and set(payload) == {"error"}, payload
    assert re.search(message, payload["error"]), payload["error"]


def test_bad_requests_never_disturb_good_ones(server) -> None:
    """Bad requests interleaved with good ones from concurrent clients: the good ones all succeed."""
    running, model = server
    x = images(2, seed=5)
    expected = torch_logits(model, x)
    statuses: list[int] = []

    def good() -> None:
        with httpclient.InferenceServerClient(address(running)) as client:
            for _ in range(5):
                tensor = httpclient.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                np.testing.assert_allclose(client.infer("quad", [tensor]).as_numpy("logits"), expected, atol=1e-5)
                statuses.append(200)

    def bad(kind: int) -> None:
        with httpclient.InferenceServerClient(address(running)) as client:
            for _ in range(5):
                values = NAN if kind else np.zeros((1, 3, 8, 8), np.float32)
                tensor = httpclient.InferInput("input", list(values.shape), "FP32")
                tensor.set_data_from_numpy(values)
                with pytest.raises(Exception, match="NaN|has shape") as error:
                    client.infer("quad", [tensor])
                statuses.append(int(error.value.status()))

    greenlets = [gevent.spawn(good) for _ in range(4)] + [gevent.spawn(bad, i % 2) for i in range(4)]
    gevent.joinall(greenlets, timeout=60, raise_error=True)
    assert sorted(set(statuses)) == [200, 400] and len(statuses) == 40


def test_load_many_clients_zero_failures_and_real_batches(server, quad_repo) -> None:
    running, model = server
    batches = [images(1, seed=i) for i in range(16)]
    expected = [torch_logits(model, b) for b in batches]
    before = batch_size_histogram(urllib.request.urlopen(running.url + "/metrics").read().decode(), "quad")
    report = run_load(address(running), "quad", "input", "logits", batches, expected,
                      clients=16, requests_per_client=20, atol=1e-5, time_limit_s=90)
    metrics = urllib.request.urlopen(running.url + "/metrics").read().decode()
    after = batch_size_histogram(metrics, "quad")
    formed = {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}
    print(f"\nload: {report.summary()} batch sizes {formed}")
    assert report.failures == [] and report.mismatches == 0 and len(report.latencies_s) == 320
    assert any(size != "1" for size in formed), formed  # dynamic batching formed batches > 1

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    ok = [s.value for s in families["qdeploy_requests"].samples
          if s.name == "qdeploy_requests_total" and s.labels == {"model": "quad", "code": "200"}]
    assert ok and ok[0] >= 320
    assert any(s.labels.get("model") == "quad" for s in families["qdeploy_queue_depth"].samples)
    assert "qdeploy_request_duration_seconds" in families and "qdeploy_inference_duration_seconds" in families


def _served_slow_model(delay_s: float, **options) -> BackgroundServer:
    model = serve_engines("slow", "1", "onnxruntime_onnx", [SlowDoubler(delay_s=delay_s)], None,
                          ServeOptions(max_batch=4, max_queue_delay_us=0, **options))
    return BackgroundServer(create_app([model]))


def _slow_request(server: BackgroundServer, results: list, timeout_us: int | None = None) -> None:
    extra = {"parameters": {"timeout": timeout_us}} if timeout_us else {}
    results.append(raw(server, "POST", "/v2/models/slow/infer", json_infer(np.ones((1, 4), np.float32),
                                                                             name="x", **extra)))


def test_overload_is_503_and_slow_answers_are_504() -> None:
    with _served_slow_model(0.4, max_queue=1) as running:
        results: list = []
        threads = [threading.Thread(target=_slow_request, args=(running, results)) for _ in range(2)]
        for thread in threads:  # one runs, one waits
            thread.start()
            time.sleep(0.1)
        status, payload = raw(running, "POST", "/v2/models/slow/infer", json_infer(np.ones((1, 4), np.float32), name="x"))
        assert status == 503 and "queue is full" in payload["error"]
        for thread in threads:
            thread.join(10)
        assert sorted(status for status, _ in results) == [200, 200]
        late: list = []
        thread = threading.Thread(target=_slow_request, args=(running, results))
        thread.start()
        time.sleep(0.1)  # the engine is busy: the next request waits in the queue past its 50 ms
        _slow_request(running, late, timeout_us=50_000)
        thread.join(10)
        assert late[0][0] == 504 and "not started within the request timeout of 0.05 s" in late[0][1]["error"]
        alone: list = []
        _slow_request(running, alone, timeout_us=50_000)  # started at once: it runs to the end (0.4 s)
        assert alone[0][0] == 200


def test_graceful_shutdown_finishes_in_flight_requests() -> None:
    running = _served_slow_model(0.5)
    results: list = []
    with running:
        threads = [threading.Thread(target=_slow_request, args=(running, results)) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)  # all three are queued or running
        running.stop()
    for thread in threads:
        thread.join(10)
    assert [status for status, _ in results] == [200, 200, 200]
    assert all(payload["outputs"][0]["data"] == [2.0] * 4 for _, payload in results)
    with pytest.raises(OSError):
        raw(running, "GET", "/v2/health/live")


def _request_in_thread(server: BackgroundServer, results: dict, key: str, value: float = 1.0) -> threading.Thread:
    def send() -> None:
        results[key] = raw(server, "POST", "/v2/models/slow/infer",
                           json_infer(np.full((1, 4), value, np.float32), name="x", id=key))

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def _metric_counts(server: BackgroundServer, model: str) -> dict[str, float]:
    metrics = urllib.request.urlopen(server.url + "/metrics").read().decode()
    family = next(f for f in text_string_to_metric_families(metrics) if f.name == "qdeploy_requests")
    return {s.labels["code"]: s.value for s in family.samples
            if s.name == "qdeploy_requests_total" and s.labels["model"] == model}


def test_an_engine_failure_is_500_for_its_batch_only_and_counted(caplog) -> None:
    engine = SlowDoubler(delay_s=0.4)
    engine.fail_next = True  # the first batch fails
    model = serve_engines("slow", "1", "onnxruntime_onnx", [engine], None, ServeOptions(max_batch=4, max_queue_delay_us=0))
    with BackgroundServer(create_app([model])) as running:
        results: dict = {}
        threads = [_request_in_thread(running, results, "first")]
        time.sleep(0.15)  # the first batch is running; the next two queue and run together after it
        threads += [_request_in_thread(running, results, key, 3.0) for key in ("second", "third")]
        for thread in threads:
            thread.join(10)
        assert results["first"] == (500, {"error": "inference failed: device lost"})
        for key in ("second", "third"):
            assert results[key][0] == 200 and results[key][1]["outputs"][0]["data"] == [6.0] * 4
        assert engine.batches == [1, 2]
        assert _metric_counts(running, "slow") == {"500": 1.0, "200": 2.0}
    failure = next(r for r in caplog.records if r.name == "qdeploy.serving.app")  # logged with its id and trace
    assert failure.getMessage() == "model 'slow' request first failed: inference failed: device lost"
    assert 'raise RuntimeError("device lost")' in caplog.text


def test_config_queue_policy_and_timeout_apply_and_every_status_is_counted() -> None:
    """config.pbtxt's default_queue_policy (max_queue_size 1, timeout 300 ms) wins over the server defaults."""
    from qdeploy.serving import build_config

    engine = SlowDoubler(delay_s=0.7)
    config = build_config("slow", "onnxruntime_onnx", engine.inputs, engine.outputs, max_batch=4, max_queue_delay_us=0)
    config.dynamic_batching.default_queue_policy.max_queue_size = 1
    config.dynamic_batching.default_queue_policy.default_timeout_microseconds = 300_000
    model = serve_engines("slow", "1", "onnxruntime_onnx", [engine], config, ServeOptions(max_queue=64, timeout_s=30))
    with BackgroundServer(create_app([model])) as running:
        results: dict = {}
        threads = [_request_in_thread(running, results, "running")]
        time.sleep(0.15)
        threads.append(_request_in_thread(running, results, "queued"))
        time.sleep(0.1)
        status, payload = raw(running, "POST", "/v2/models/slow/infer", json_infer(np.ones((1, 4), np.float32), name="x"))
        assert status == 503 and payload["error"] == "the queue is full (1 waiting requests); retry later"
        for thread in threads:
            thread.join(10)
        assert results["running"][0] == 200
        assert results["queued"] == (504, {"error": "not started within the request timeout of 0.3 s (queue wait)"})
        assert raw(running, "POST", "/v2/models/slow/infer", b"{")[0] == 400
        assert _metric_counts(running, "slow") == {"200": 1.0, "503": 1.0, "504": 1.0, "400": 1.0}


def test_requests_arriving_while_draining_get_503_and_in_flight_ones_finish() -> None:
    model = serve_engines("slow", "1", "onnxruntime_onnx", [SlowDoubler(delay_s=1.0)], None,
                          ServeOptions(max_batch=4, max_queue_delay_us=0))
    running = BackgroundServer(create_app([model]))
    results: dict = {}
    with running:
        in_flight = _request_in_thread(running, results, "in-flight")
        url = urlsplit(running.url)
        late = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        body = json_infer(np.ones((1, 4), np.float32), name="x")
        late.putrequest("POST", "/v2/models/slow/infer")
        late.putheader("Content-Length", str(len(body)))
        late.endheaders()  # headers sent: this request is open when the shutdown begins
        time.sleep(0.2)
        stopper = threading.Thread(target=running.stop)
        stopper.start()
        time.sleep(0.3)
        assert running.app.state.api.draining
        late.send(body)
        response = late.getresponse()
        assert response.status == 503 and json.loads(response.read()) == {
            "error": "the server is shutting down; retry on another replica"}
        in_flight.join(10)
        stopper.join(10)
    assert results["in-flight"][0] == 200 and results["in-flight"][1]["outputs"][0]["data"] == [2.0] * 4


def test_an_idle_connection_outlives_a_pause_between_requests(server) -> None:
    """A client pausing 6 s reuses its connection (uvicorn's 5 s default closed it: 'connection closed')."""
    running, _ = server
    url = urlsplit(running.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        for pause in (0.0, 6.0):
            time.sleep(pause)
            connection.request("POST", "/v2/models/quad/infer", body=json_infer(images(1)))
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("connection") != "close"
            response.read()
    finally:
        connection.close()
