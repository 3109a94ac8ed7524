"""KServe v2 codec against the reference client's own encoder and decoder (no server needed)."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient

from qdeploy.serving.protocol import RequestError, decode_infer_request, decompress_body, encode_infer_response


def client_request(inputs: list[tuple[str, np.ndarray, str, bool]], **kwargs) -> tuple[bytes, str | None]:
    """The exact body and header tritonclient.http would send."""
    tensors = []
    for name, array, datatype, binary in inputs:
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(tensors, **kwargs)
    return body, None if json_size is None else str(json_size)


def test_decodes_what_tritonclient_sends() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "image": ("FP32", True, rng.standard_normal((2, 3, 4, 4)).astype(np.float32)),
        "ids": ("INT64", False, np.arange(6, dtype=np.int64).reshape(2, 3)),
        "half": ("FP16", True, rng.standard_normal((2, 5)).astype(np.float16)),
        "mask": ("BOOL", False, np.array([[True, False]])),
        "scale": ("FP64", False, np.array([0.5, -1.25])),
    }
    outputs = [httpclient.InferRequestedOutput("a", binary_data=True),
               httpclient.InferRequestedOutput("b", binary_data=False)]
    body, header = client_request([(n, a, d, b) for n, (d, b, a) in arrays.items()], outputs=outputs,
                                  request_id="r-1", timeout=2500)
    request = decode_infer_request(body, header)
    for name, (_, _, array) in arrays.items():
        assert request.inputs[name].dtype == array.dtype
        np.testing.assert_array_equal(request.inputs[name], array)
    assert request.requested == {"a": True, "b": False}
    assert request.request_id == "r-1" and request.timeout_us == 2500
    assert request.selected_outputs(["a", "b", "c"]) == {"a": True, "b": False}


def test_without_listed_outputs_binary_data_output_applies_to_all() -> None:
    body, header = client_request([("x", np.zeros((1, 2), np.float32), "FP32", False)])
    request = decode_infer_request(body, header)
    assert header is None and request.selected_outputs(["y", "z"]) == {"y": True, "z": True}


def test_nested_json_data_is_row_major() -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                   "data": [[1, 2], [3, 4.5]]}]}).encode()
    request = decode_infer_request(body, None)
    np.testing.assert_array_equal(request.inputs["x"], np.array([[1, 2], [3, 4.5]], np.float32))
    assert request.selected_outputs(["y"]) == {"y": False}


def test_tritonclient_reads_the_response() -> None:
    request = decode_infer_request(*client_request([("x", np.zeros((1, 2), np.float32), "FP32", True)],
                                                   outputs=[httpclient.InferRequestedOutput("prob", binary_data=True),
                                                            httpclient.InferRequestedOutput("label", binary_data=False)],
                                                   request_id="42"))
    outputs = {"prob": np.array([[0.25, 0.75]], np.float32), "label": np.array([[1]], np.int64)}
    body, headers = encode_infer_response("m", "3", request, outputs, request.selected_outputs(["prob", "label"]))
    result = httpclient.InferenceServerClient.parse_response_body(
        body, header_length=int(headers["Inference-Header-Content-Length"]))
    np.testing.assert_array_equal(result.as_numpy("prob"), outputs["prob"])
    np.testing.assert_array_equal(result.as_numpy("label"), outputs["label"])
    response = result.get_response()
    assert response["model_name"] == "m" and response["model_version"] == "3" and response["id"] == "42"
    assert headers["content-type"] == "application/octet-stream"
    json_body, json_headers = encode_infer_response("m", "3", request, outputs, {"label": False})
    assert "Inference-Header-Content-Length" not in json_headers
    assert json.loads(json_body)["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [1, 1], "data": [1]}]


def _json(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


X = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}
BIN = {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}


def _binary(head: dict, tail: bytes) -> tuple[bytes, str]:
    encoded = json.dumps(head).encode()
    return encoded + tail, str(len(encoded))


BAD_REQUESTS = [
    ((b"{not json", None), "request JSON is malformed"),
    ((b"[1, 2]", None), "must be an object"),
    ((_json([]), None), "'inputs' must be a non-empty list"),
    ((_json([X, X]), None), "unique string 'name'"),
    ((_json([{**X, "shape": [1, -2]}]), None), "non-negative integers"),
    ((_json([{**X, "shape": "1x2"}]), None), "non-negative integers"),
    ((_json([{**X, "datatype": "BYTES"}]), None), "datatype 'BYTES' is not supported"),
    ((_json([{**X, "datatype": 7}]), None), "'datatype' must be a string"),
    ((_json([{**X, "data": [1.0, 2.0, 3.0]}]), None), "has 3 values but shape \\[1, 2\\] needs 2"),
    ((_json([{**X, "data": [[1.0], [2.0, 3.0]]}]), None), "not a rectangular list"),
    ((_json([{**X, "data": ["a", "b"]}]), None), "do not fit FP32"),
    ((_json([{**X, "datatype": "INT32", "data": [1.5, 2.0]}]), None), "do not fit INT32"),
    ((_json([{**X, "datatype": "INT8", "data": [1, 10**30]}]), None), "rectangular|out of range|do not fit"),
    ((_json([{key: v for key, v in X.items() if key != "data"}]), None), "neither 'data' nor a binary_data_size"),
    ((_json([{**X, "parameters": {"binary_data_size": 8}}]), None), "both 'data' and binary_data_size"),
    (_binary({"inputs": [{**BIN, "parameters": {"binary_data_size": 12}}]}, bytes(12)),
     "binary_data_size is 12 bytes but shape \\[1, 2\\] of FP32 needs 8"),
    (_binary({"inputs": [BIN]}, bytes(4)), "binary data ends at byte 8 but the body carries 4"),
    (_binary({"inputs": [BIN]}, bytes(12)), "carries 12 bytes of binary data but the inputs' binary_data_size add up to 8"),
    ((_json([X]), "many"), "must be an integer"),
    ((_json([X]), "100000"), "must be an integer of at most the body size"),
    ((_json([X], outputs=[{"name": "y", "parameters": {"class_count": 3}}]), None), "class_count"),
    ((_json([X], outputs=[{"name": 5}]), None), "list of objects with a 'name'"),
    ((_json([X], parameters={"timeout": -1}), None), "'timeout' must be a positive"),
    ((_json([X], parameters={"binary_data_output": "yes"}), None), "'binary_data_output' must be true or false"),
    ((_json([X], id=7), None), "'id' must be a string"),
]


@pytest.mark.parametrize(("request_parts", "message"), BAD_REQUESTS)
def test_bad_requests_are_400_with_a_reason(request_parts: tuple[bytes, str | None], message: str) -> None:
    with pytest.raises(RequestError, match=message) as error:
        decode_infer_request(*request_parts)
    assert error.value.status == 400


def test_unknown_requested_outputs_are_400() -> None:
    request = decode_infer_request(_json([X], outputs=[{"name": "nope"}]), None)
    with pytest.raises(RequestError, match=r"requested outputs \['nope'\] do not exist"):
        request.selected_outputs(["y"])


def test_compressed_bodies_are_bounded() -> None:
    payload = _json([X])
    assert decompress_body(gzip.compress(payload), "gzip", 1000) == payload
    assert decompress_body(zlib.compress(payload), "deflate", 1000) == payload
    assert decompress_body(payload, None, 10) == payload  # the size limit itself is the app's job
    cases = [(gzip.compress(bytes(10**6)), "gzip", 413, "exceeds the 1000-byte limit"),
             (payload, "br", 415, "'br' is not supported"),
             (b"garbage", "gzip", 400, "not valid gzip"),
             (gzip.compress(payload)[:-12], "gzip", 400, "truncated")]
    for body, encoding, status, message in cases:
        with pytest.raises(RequestError, match=message) as error:
            decompress_body(body, encoding, 1000)
        assert error.value.status == status
