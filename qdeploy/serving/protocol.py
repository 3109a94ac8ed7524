"""Open Inference Protocol (KServe v2) infer requests and responses, with binary tensors.

A request body is a JSON object, optionally followed by raw tensor bytes: the
`Inference-Header-Content-Length` header says where the JSON ends, and each input with a
`binary_data_size` parameter takes its bytes from the tail in input order (little-endian,
row-major). Outputs come back as JSON `data` or, when asked (`binary_data` per output or
`binary_data_output` for all), as bytes after the JSON. This is what `tritonclient.http`
speaks. Everything the client controls is checked before any allocation it sizes, and
every problem is a RequestError carrying the HTTP status to answer with.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from qdeploy.errors import QDeployError
from qdeploy.serving.datatypes import numpy_dtype, protocol_datatype

HEADER_LENGTH = "Inference-Header-Content-Length"
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# numpy kinds of JSON values that may fill a tensor of a given kind: no silent float->int.
_JSON_KINDS = {"b": "b", "u": "bui", "i": "bui", "f": "buif"}


class RequestError(QDeployError):
    """A request the client must fix (or retry, for 503/504); `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decompress_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding: gzip|deflate` (tritonclient's request compression), capped at `limit`."""
    if encoding in (None, "", "identity"):
        return body
    if encoding not in _WBITS:
        raise RequestError(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none", 415)
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(f"request body is not valid {encoding} data: {exc}") from exc
    if len(data) > limit:
        raise RequestError(f"decompressed request body exceeds the {limit}-byte limit", 413)
    if not inflater.eof:
        raise RequestError(f"request body is truncated {encoding} data")
    return data


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise RequestError(message)


def _shape(item: Mapping[str, Any], name: str) -> tuple[int, ...]:
    shape = item.get("shape")
    _expect(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape),
            f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _dtype(item: Mapping[str, Any], name: str) -> np.dtype:
    datatype = item.get("datatype")
    _expect(isinstance(datatype, str), f"input {name!r}: 'datatype' must be a string such as \"FP32\"")
    try:
        return numpy_dtype(datatype)
    except QDeployError as exc:
        raise RequestError(f"input {name!r}: {exc}") from exc


def _json_tensor(data: Any, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A tensor from JSON `data`, flat or nested, row-major; refuses lossy or ragged data."""
    try:
        values = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise RequestError(f"input {name!r}: 'data' is not a rectangular list of numbers") from exc
    _expect(values.dtype.kind in _JSON_KINDS.get(dtype.kind, "") or (values.size == 0 and values.dtype.kind == "f"),
            f"input {name!r}: 'data' holds {values.dtype.kind!r}-kind values that do not fit {protocol_datatype(dtype)}")
    _expect(values.size == math.prod(shape),
            f"input {name!r}: 'data' has {values.size} values but shape {list(shape)} needs {math.prod(shape)}")
    try:
        return values.astype(dtype).reshape(shape)
    except OverflowError as exc:
        raise RequestError(f"input {name!r}: a value is out of range for {protocol_datatype(dtype)}") from exc


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request; tensors are numpy arrays in the request's own shapes."""

    inputs: dict[str, np.ndarray]
    requested: dict[str, bool] | None  # output name -> as binary; None: every output
    binary_output: bool  # `binary_data_output`: the default for outputs not listed
    request_id: str | None = None
    timeout_us: int | None = None

    def selected_outputs(self, available: list[str]) -> dict[str, bool]:
        """Which outputs to return and whether as binary; unknown names are the client's error."""
        if self.requested is None:
            return {name: self.binary_output for name in available}
        unknown = sorted(set(self.requested) - set(available))
        _expect(not unknown, f"requested outputs {unknown} do not exist; the model has {available}")
        return self.requested


def _requested_outputs(outputs: Any, binary_default: bool) -> dict[str, bool] | None:
    if outputs is None:
        return None
    _expect(isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                              for o in outputs),
            "'outputs' must be a list of objects with a 'name'")
    requested = {}
    for output in outputs:
        params = output.get("parameters") or {}
        _expect(isinstance(params, dict), f"output {output['name']!r}: 'parameters' must be an object")
        _expect(not params.get("class_count"), "the classification extension (class_count) is not supported")
        binary = params.get("binary_data", binary_default)
        _expect(isinstance(binary, bool), f"output {output['name']!r}: 'binary_data' must be true or false")
        requested[output["name"]] = binary
    return requested


def decode_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body; `header_length` is the Inference-Header-Content-Length header."""
    if header_length is None:
        head, tail = body, memoryview(b"")
    else:
        _expect(header_length.isdigit() and int(header_length) <= len(body),
                f"{HEADER_LENGTH} must be an integer of at most the body size ({len(body)}), got {header_length!r}")
        head, tail = body[: int(header_length)], memoryview(body)[int(header_length):]
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request JSON is malformed: {exc}") from exc
    except RecursionError:  # e.g. 100,000 nested '[': the decoder recurses once per level
        raise RequestError("request JSON nests too deeply; send tensors as flat 'data' lists or binary") from None
    _expect(isinstance(doc, dict), "request JSON must be an object with 'inputs'")
    params = doc.get("parameters") or {}
    _expect(isinstance(params, dict), "'parameters' must be an object")
    items = doc.get("inputs")
    _expect(isinstance(items, list) and items and all(isinstance(i, dict) for i in items),
            "'inputs' must be a non-empty list of tensor objects")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        name = item.get("name")
        _expect(isinstance(name, str) and name not in inputs, f"each input needs a unique string 'name', got {name!r}")
        shape, dtype = _shape(item, name), _dtype(item, name)
        item_params = item.get("parameters") or {}
        _expect(isinstance(item_params, dict), f"input {name!r}: 'parameters' must be an object")
        size = item_params.get("binary_data_size")
        if size is None:
            _expect("data" in item, f"input {name!r} has neither 'data' nor a binary_data_size parameter")
            inputs[name] = _json_tensor(item["data"], name, shape, dtype)
            continue
        _expect("data" not in item, f"input {name!r} has both 'data' and binary_data_size")
        needed = math.prod(shape) * dtype.itemsize
        _expect(isinstance(size, int) and size == needed,
                f"input {name!r}: binary_data_size is {size!r} bytes but shape {list(shape)} of "
                f"{protocol_datatype(dtype)} needs {needed}")
        _expect(offset + size <= len(tail),
                f"input {name!r}: binary data ends at byte {offset + size} but the body carries {len(tail)} "
                "bytes after the JSON")
        raw = np.frombuffer(tail[offset: offset + size], dtype)
        inputs[name] = raw.astype(dtype.newbyteorder("="), copy=False).reshape(shape)
        offset += size
    _expect(offset == len(tail), f"the body carries {len(tail)} bytes of binary data but the inputs' "
                                 f"binary_data_size add up to {offset}")

    binary_output = params.get("binary_data_output", False)
    _expect(isinstance(binary_output, bool), "'binary_data_output' must be true or false")
    timeout = params.get("timeout")
    _expect(timeout is None or (isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > 0),
            "'timeout' must be a positive number of microseconds")
    request_id = doc.get("id")
    _expect(request_id is None or isinstance(request_id, str), "'id' must be a string")
    return InferRequest(inputs, _requested_outputs(doc.get("outputs"), binary_output), binary_output,
                        request_id, timeout)


def encode_infer_response(model_name: str, model_version: str, request: InferRequest,
                          outputs: Mapping[str, np.ndarray], selected: Mapping[str, bool]) -> tuple[bytes, dict[str, str]]:
    """Response body and headers; binary outputs follow the JSON, whose length a header gives."""
    entries, chunks = [], []
    for name, binary in selected.items():
        array = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": protocol_datatype(array.dtype), "shape": list(array.shape)}
        if binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request.request_id:
        doc["id"] = request.request_id
    head = json.dumps(doc).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
