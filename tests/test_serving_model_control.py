"""Model control: versions, polling, explicit load/unload and contained failures, on both servers.

The scenarios run against the embedded server and the real `tritonserver` with the same
tritonclient code, and their answers (status codes, index states) are compared. Each
version of a test model adds its own shift to the input, so an answer names its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from qdeploy.errors import QDeployError
from qdeploy.runtime.engine import Engine, TensorSpec
from qdeploy.serving import BackgroundServer, ServeOptions, create_app, parse_config, serve_engines, write_triton_model
from qdeploy.serving.loadgen import run_load
from qdeploy.serving.model_control import ControlOptions, ModelControl, select_versions
from qdeploy.serving.protocol import InferRequest, RequestError
from qdeploy.serving.triton_install import install_triton
from qdeploy.serving.triton_server import TritonServer
from tests.serving_helpers import make_shift_onnx

ROOT = Path(__file__).resolve().parents[1]
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def add_version(repo: Path, name: str, version: int, shift: float, tmp: Path, **config) -> None:
    """Version `version` of `name` on Triton's Python backend (ORT CPU): answers input + shift."""
    model = make_shift_onnx(tmp / f"{name}-{version}.onnx", shift)
    write_triton_model(repo, name, model, version=version, backend="python", engine_backend="ort-cpu", threads=1,
                       max_queue_delay_us=1000, **config)


def infer(address: str, name: str, version: str = "") -> tuple[str, np.ndarray]:
    with httpclient.InferenceServerClient(address) as client:
        tensor = httpclient.InferInput("input", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer(name, [tensor], model_version=version)
        return result.get_response()["model_version"], result.as_numpy("output")


def index(address: str) -> list[dict]:
    with httpclient.InferenceServerClient(address) as client:
        return client.get_model_repository_index()


def embedded_control(repo: Path, control: ControlOptions) -> ModelControl:
    models = ModelControl(repo, ServeOptions(threads=1), control)
    models.load_at_start()
    return models


@contextlib.contextmanager
def serving(kind: str, repo: Path, control: ControlOptions):
    """The embedded server (in this process) or tritonserver on `repo`; yields host:port."""
    if kind == "embedded":
        with BackgroundServer(create_app(embedded_control(repo, control))) as server:
            yield urlsplit(server.url).netloc
    else:
        try:
            install = install_triton()
        except QDeployError as exc:
            pytest.skip(f"Triton Inference Server cannot be installed here: {exc}")
        with TritonServer(repo, install=install, control=control, exit_timeout_s=10) as server:
            yield server.http_address


# ---- versions ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy, wanted", [
    ("", [5]),
    ("version_policy { latest { num_versions: 2 } }", [5, 3]),
    ("version_policy { all { } }", [5, 3, 1]),
    ("version_policy { specific { versions: [1, 3, 9] } }", [3, 1]),
])
def test_version_policy_selects_like_triton(policy: str, wanted: list[int]) -> None:
    assert select_versions(parse_config(policy), [1, 3, 5]) == wanted
    assert select_versions(None, [1, 3, 5]) == [5]  # no config.pbtxt: Triton's default, latest 1


def test_every_served_version_answers_on_its_own_url(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for version in (1, 2, 3):
        add_version(repo, "m", version, float(version), tmp_path)
    config = repo / "m" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { latest { num_versions: 2 } }\n")
    with BackgroundServer(create_app(embedded_control(repo, ControlOptions()))) as server:
        address = urlsplit(server.url).netloc
        for version in ("2", "3"):
            answered, output = infer(address, "m", version)
            assert answered == version
            np.testing.assert_array_equal(output, X + int(version))
        assert infer(address, "m")[0] == "3"  # no version: the newest READY one
        with httpclient.InferenceServerClient(address) as client:
            assert client.get_model_metadata("m")["versions"] == ["3", "2"]
            assert client.is_model_ready("m", "2") and not client.is_model_ready("m", "1")
        with pytest.raises(InferenceServerException, match=r"has no READY version '1'; READY versions: \[2, 3\]"):
            infer(address, "m", "1")
    assert [(e["version"], e["state"]) for e in index_of(repo)] == [("2", "READY"), ("3", "READY")]


def index_of(repo: Path) -> list[dict]:
    return embedded_control(repo, ControlOptions()).index()


# ---- both servers: poll under load, explicit unload/load --------------------------------


def test_poll_swap_under_load_on_both_servers(tmp_path: Path) -> None:
    """benchmarks/serve_load.py --swap --quick: v2 then a corrupt v3 under load, on both servers."""
    servers = "embedded,triton"
    try:
        install_triton()
    except QDeployError:
        servers = "embedded"
    out = tmp_path / "swap.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--swap", "--quick",
                             "--servers", servers, "--out", str(out), "--wait-s", "150"],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    for kind, row in rows.items():
        assert row["failures"] == 0 and row["mismatches"] == 0, (kind, row["first_failures"])
        assert row["steady"]["requests"] == 80 and row["swap"]["requests"] > 200, kind
        # v2 answers once it has loaded: the poll interval (1 s) plus its load and warm-up
        assert row["v2_first_answer_s"] is not None and row["v2_first_answer_s"] < 150, (kind, row)
        assert row["v3_entry"]["state"] == "UNAVAILABLE", (kind, row["v3_entry"])
        assert "is not a readable ONNX model" in row["v3_entry"]["reason"], (kind, row["v3_entry"])
        assert set(row["answers_after_refusal"]) == {"2"}, (kind, row)  # still v2 after v3 was refused
        states = {e["version"]: (e["state"], e.get("reason")) for e in row["final_index"]}
        assert states["1"] == ("UNAVAILABLE", "unloaded") and states["2"] == ("READY", None), (kind, states)
    assert "embedded" in result.stdout and "v3 in the index" in result.stdout
    if "triton" not in rows:
        pytest.skip("tritonserver is not installable here: the embedded server ran alone, nothing compared")
    assert rows["embedded"]["answers_after_refusal"].keys() == rows["triton"]["answers_after_refusal"].keys()


def test_a_request_whose_body_arrives_across_a_swap_goes_to_the_new_version(tmp_path: Path) -> None:
    """The version is picked once the body is in: a request begun on v1 is not handed to v1's closed batcher."""
    import http.client

    repo = tmp_path / "repo"
    add_version(repo, "m", 1, 1.0, tmp_path)
    body = json.dumps({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                                   "data": X.reshape(-1).tolist()}]}).encode()
    with BackgroundServer(create_app(embedded_control(repo, ControlOptions(mode="poll", poll_secs=1)))) as server:
        address = urlsplit(server.url).netloc

        def slow_body():
            yield body[:10]
            add_version(repo, "m", 2, 2.0, tmp_path)  # meanwhile v2 arrives and v1 is drained and closed
            deadline = time.monotonic() + 60
            while {e["version"]: e["state"] for e in index(address)}.get("1") != "UNAVAILABLE":
                assert time.monotonic() < deadline, "v2 never replaced v1"
                time.sleep(0.1)
            yield body[10:]

        connection = http.client.HTTPConnection(*address.split(":"), timeout=60)
        connection.request("POST", "/v2/models/m/infer", body=slow_body(), encode_chunked=True)
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
    assert response.status == 200 and answer["model_version"] == "2", answer
    np.testing.assert_array_equal(np.array(answer["outputs"][0]["data"]).reshape(2, 4), X + 2)


def _explicit_cycle(kind: str, repo: Path) -> dict:
    """Under a steady load on 'other': unload 'quad', use it, load it again; what each step answered."""
    control = ControlOptions(mode="explicit", load_models=("quad", "other"))
    seen: dict = {}
    with serving(kind, repo, control) as address:
        stop, loads = threading.Event(), []
        batches = [np.full((1, 4), i, np.float32) for i in range(4)]
        load = threading.Thread(target=lambda: loads.append(run_load(
            address, "other", "input", "output", batches, {"1": [b + 5 for b in batches]}, clients=4,
            requests_per_client=100_000, time_limit_s=300, stop=stop)))
        load.start()
        try:
            seen["before"] = infer(address, "quad")[0]
            time.sleep(1.0)  # the load on 'other' is under way
            with httpclient.InferenceServerClient(address) as client:
                unloading = time.perf_counter()
                client.unload_model("quad")
                seen["ready after unload"] = client.is_model_ready("quad")
                client.unload_model("quad")  # unloading an unloaded model: 200 and nothing changes
                with pytest.raises(InferenceServerException) as refused:
                    infer(address, "quad")
                seen["infer after unload"] = refused.value.status()
                seen["message"] = refused.value.message()
                entries = [e for e in index(address) if e["name"] == "quad"]
                seen["index after unload"] = [(e["version"], e["state"] if e["state"] != "UNLOADING" else
                                               "UNAVAILABLE") for e in entries]
                client.load_model("quad")
                seen["ready after load"] = client.is_model_ready("quad")
                seen["after load"] = infer(address, "quad")[0]
                np.testing.assert_array_equal(infer(address, "quad")[1], X + 1)
                seen["index after load"] = [(e["version"], e["state"]) for e in index(address) if e["name"] == "quad"]
                loaded = time.perf_counter()
            time.sleep(0.5)
        finally:
            stop.set()
            load.join(120)
    report = loads[0]
    spans_the_cycle = min(t for t, _ in report.answers) < unloading and max(t for t, _ in report.answers) > loaded
    seen["other"] = (len(report.failures), report.mismatches, spans_the_cycle)
    return seen


def test_explicit_unload_and_load_under_load_answer_alike_on_both_servers(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "quad", 1, 1.0, tmp_path)
    add_version(repo, "other", 1, 5.0, tmp_path)
    embedded = _explicit_cycle("embedded", repo)
    assert embedded["message"].startswith("model 'quad' has no READY version (version 1 is UNAVAILABLE: unloaded); "
                                          "load it with POST /v2/repository/models/quad/load")
    assert embedded["other"] == (0, 0, True)  # the steady load on the other model never failed
    triton = _explicit_cycle("triton", repo)
    comparable = {key: value for key, value in embedded.items() if key != "message"}
    assert comparable == {key: value for key, value in triton.items() if key != "message"}
    assert comparable["infer after unload"] == "404" and comparable["index after load"] == [("1", "READY")]


# ---- bad input and failures (embedded server) --------------------------------------------


def _post(address: str, path: str, body: dict | str) -> tuple[int, str]:
    import http.client

    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", path, body=body if isinstance(body, str) else json.dumps(body))
        response = connection.getresponse()
        payload = response.read()
        return response.status, json.loads(payload)["error"] if payload else ""
    finally:
        connection.close()


def test_bad_load_requests_are_one_line_4xx_and_change_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "quad", 1, 1.0, tmp_path)
    good_config = json.dumps({"backend": "python", "max_batch_size": 8,
                              "parameters": {"model_file": {"string_value": "model.onnx"}}})
    moved = json.dumps({"backend": "python", "parameters": {"model_file": {"string_value": "../../etc/passwd"}}})
    cases = [
        ("/v2/repository/models/nope/load", {}, 404, r"^no model 'nope' in the repository .*; it has \['quad'\]$"),
        ("/v2/repository/models/nope/unload", {}, 404, r"^no model 'nope' in the repository"),
        ("/v2/repository/models/a..b/load", {}, 400, r"^invalid model name 'a\.\.b'"),
        ("/v2/repository/models/a%5Cb/load", {}, 400, r"^invalid model name 'a\\\\b'"),
        ("/v2/repository/models/quad/load", {"parameters": {"config": "{not json"}}, 400,
         r"^the 'config' parameter is not valid JSON: "),
        ("/v2/repository/models/quad/load", {"parameters": {"config": json.dumps({"bogus": 1})}}, 400,
         r"^config override refused: .*has no field named \"bogus\""),
        ("/v2/repository/models/quad/load", {"parameters": {"config": moved}}, 400,
         r"^config override refused: parameter 'model_file' names a file"),
        ("/v2/repository/models/quad/load", {"parameters": {"config": good_config, "file:1/model.onnx": "AAAA"}},
         400, r"^load request carries file content \('file:1/model.onnx'\)"),
        ("/v2/repository/models/quad/load", "[1", 400, r"^load request JSON is malformed"),
        ("/v2/repository/models/quad/load", {}, 400,
         r"^load failed for model 'quad': version 2 is at UNAVAILABLE state: model 'quad' version 2 has no "
         r"model.onnx; write one with `qdeploy triton-repo`$"),
    ]
    control = ControlOptions(mode="explicit", load_models=("quad",))
    models = embedded_control(repo, control)
    (repo / "quad" / "2").mkdir()  # once v1 serves: a version folder without a model file
    with BackgroundServer(create_app(models)) as server:
        address = urlsplit(server.url).netloc
        for path, body, status, message in cases:
            got, error = _post(address, path, body)
            assert got == status and "\n" not in error, (path, got, error)
            assert re.search(message, error), (path, error)
            assert sorted(models.models["quad"].ready) == [1] and infer(address, "quad")[0] == "1", path
        assert {e["version"]: e["state"] for e in index(address)} == {"1": "READY", "2": "UNAVAILABLE"}
        assert set(models.models) == {"quad"}  # nothing else was loaded


def test_poll_mode_refuses_load_requests_as_triton_does(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "quad", 1, 1.0, tmp_path)
    with BackgroundServer(create_app(embedded_control(repo, ControlOptions(mode="poll")))) as server:
        status, error = _post(urlsplit(server.url).netloc, "/v2/repository/models/quad/load", {})
    assert status == 503 and error.startswith("explicit model load is not allowed in model control mode 'poll'")


def failing_onnx(path: Path) -> Path:
    """Loads (valid graph), fails on every run: a Reshape of [batch, 4] into rows of 3."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    graph = helper.make_graph([helper.make_node("Reshape", ["input", "shape"], ["output"])], "bad",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_refused_versions_leave_the_served_one_serving(tmp_path: Path) -> None:
    """Poll: a failing warm-up, then an invalid config.pbtxt; version 1 answers throughout, the index says why."""
    repo = tmp_path / "repo"
    add_version(repo, "quad", 1, 1.0, tmp_path)
    models = embedded_control(repo, ControlOptions(mode="poll"))

    async def scenario() -> list:
        await models.start()
        try:
            write_triton_model(repo, "quad", failing_onnx(tmp_path / "bad.onnx"), version=2, backend="python",
                               engine_backend="ort-cpu", threads=1)
            await models.poll()
            after_warmup = (models.resolve("quad").version, models.index())
            (repo / "quad" / "config.pbtxt").write_text("max_batch_size: banana\n")
            await models.poll()
            after_config = (models.resolve("quad").version, models.index())
            shutil.rmtree(repo / "quad" / "2")
            add_version(repo, "quad", 3, 3.0, tmp_path)  # also rewrites a valid config.pbtxt
            await models.poll()
            return [after_warmup, after_config, (models.resolve("quad").version, models.index())]
        finally:
            await models.close()

    after_warmup, after_config, recovered = asyncio.run(scenario())
    version, entries = after_warmup
    assert version == "1" and entries[0] == {"name": "quad", "version": "1", "state": "READY"}
    assert entries[1]["state"] == "UNAVAILABLE" and entries[1]["reason"].startswith(
        "model 'quad' version 2 failed its warm-up: ")
    version, entries = after_config
    assert version == "1" and {"name": "quad", "version": "1", "state": "READY"} in entries
    assert {"name": "quad", "state": "UNAVAILABLE",
            "reason": f"{repo / 'quad' / 'config.pbtxt'}: 1:17 : 'max_batch_size: banana': Couldn't parse integer: "
                      "banana"} in entries
    version, entries = recovered
    assert version == "3" and [(e["version"], e["state"]) for e in entries] == [("1", "UNAVAILABLE"), ("3", "READY")]


class Broken(Engine):
    """An engine whose every run raises (a device lost for good)."""

    backend = "test"

    def __init__(self) -> None:
        super().__init__()
        self.inputs = [TensorSpec("input", ("batch", 4), np.dtype(np.float32))]
        self.outputs = [TensorSpec("output", ("batch", 4), np.dtype(np.float32))]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("device lost")


def test_a_raising_engine_answers_500_for_its_model_only(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "good", 1, 1.0, tmp_path)
    good = embedded_control(repo, ControlOptions())
    broken = serve_engines("broken", "1", "test", [Broken()], None, ServeOptions())
    with BackgroundServer(create_app([good.models["good"].ready[1], broken])) as server:
        address = urlsplit(server.url).netloc
        for _ in range(3):
            with pytest.raises(InferenceServerException, match="inference failed: device lost") as failed:
                infer(address, "broken")
            assert failed.value.status() == "500"
            assert infer(address, "good")[0] == "1"


def test_a_model_failing_at_start_leaves_the_others_serving_unless_exit_on_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "good", 1, 1.0, tmp_path)
    add_version(repo, "bad", 1, 1.0, tmp_path)
    (repo / "bad" / "1" / "model.onnx").write_bytes(b"corrupt")
    models = ModelControl(repo, ServeOptions(threads=1), ControlOptions())
    failures = models.load_at_start()
    assert len(failures) == 1 and failures[0].startswith("version 1 is at UNAVAILABLE state: model 'bad': ")
    assert "is not a readable ONNX model" in failures[0]
    assert sorted(models.models["good"].ready) == [1] and not models.models["bad"].ready
    with pytest.raises(QDeployError, match=r"^version 1 is at UNAVAILABLE state: model 'bad': .* is not a "
                                           r"readable ONNX model .*\(--exit-on-error stops the start; leave it off"):
        ModelControl(repo, ServeOptions(threads=1), ControlOptions(exit_on_error=True)).load_at_start()


@pytest.mark.parametrize("options, message", [
    ({"mode": "poll", "load_models": ("m",)}, "--load-model takes effect only with --model-control-mode explicit"),
    ({"mode": "explicit", "load_models": ("*", "m")}, "--load-model '*' loads every model; give it alone"),
    ({"mode": "explicit", "load_models": ("../m",)}, "invalid model name '../m'"),
    ({"mode": "sometimes"}, "unknown model control mode 'sometimes'; use one of none, poll, explicit"),
])
def test_control_options_refuse_contradictions(options: dict, message: str) -> None:
    with pytest.raises(QDeployError, match=f"^{re.escape(message)}"):
        ControlOptions(**options)


def test_serve_command_takes_the_control_flags(tmp_path: Path) -> None:
    """`qdeploy serve` in explicit mode: only --load-model at start; a bad --load-model is one line."""
    repo = tmp_path / "repo"
    add_version(repo, "quad", 1, 1.0, tmp_path)
    add_version(repo, "other", 1, 2.0, tmp_path)
    command = [sys.executable, "-c", "from qdeploy.cli import main; main()", "serve", "--repo", str(repo),
               "--port", "0", "--model-control-mode", "explicit"]
    bad = subprocess.run([*command, "--load-model", "missing"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        f"error: --load-model 'missing': no such model folder in {repo} (it has ['other', 'quad'])")
    process = subprocess.Popen([*command, "--load-model", "quad"], stdout=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("model quad v1: ort-cpu") and lines[1].startswith("serving on http://127.0.0.1:")
        address = lines[1].split()[2].removeprefix("http://")
        assert index(address) == [{"name": "other"}, {"name": "quad", "version": "1", "state": "READY"}]
    finally:
        process.terminate()
        process.wait(60)


def test_a_removed_version_finishes_its_requests_then_is_unloaded(tmp_path: Path) -> None:
    """Policy all, v1 and v2 served; v1's folder goes while a request runs on it: it answers, then v1 is gone."""
    repo = tmp_path / "repo"
    for version in (1, 2):
        add_version(repo, "m", version, float(version), tmp_path)
    config = repo / "m" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    models = embedded_control(repo, ControlOptions(mode="poll"))
    v1 = models.models["m"].ready[1]
    started, release = threading.Event(), threading.Event()
    run = v1.engine._run

    def slow_run(feeds):
        started.set()
        release.wait(30)
        return run(feeds)

    v1.engine._run = slow_run  # the batcher runs this very engine (one instance)

    async def scenario() -> tuple:
        await models.start()
        try:
            request = InferRequest({"input": X}, None, False)
            in_flight = asyncio.ensure_future(models.resolve("m", "1").infer(request))
            await asyncio.to_thread(started.wait, 30)
            shutil.rmtree(repo / "m" / "1")
            await models.poll()
            with pytest.raises(RequestError) as gone:
                models.resolve("m", "1")
            served_meanwhile = models.resolve("m").version
            release.set()
            answer = await in_flight
            await asyncio.gather(*models._draining)
            return answer, gone.value, served_meanwhile, models.index()
        finally:
            release.set()
            await models.close()

    answer, gone, served_meanwhile, entries = asyncio.run(scenario())
    np.testing.assert_array_equal(answer["output"], X + 1)  # finished on v1, after v1 left the table
    assert str(gone) == "model 'm' has no READY version '1' (version 1 is UNAVAILABLE: unloaded); READY versions: [2]"
    assert served_meanwhile == "2"
    assert [(e["version"], e["state"], e.get("reason")) for e in entries] == [
        ("1", "UNAVAILABLE", "unloaded"), ("2", "READY", None)]
    assert v1.batcher._closing and not v1.batcher._running  # drained, then freed
