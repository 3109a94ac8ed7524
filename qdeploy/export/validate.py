"""Structural checks of a written ONNX file: readable, valid, and shape-inferable end to end.

Checks go through the file path, not an in-memory proto, so they see exactly what a runtime
will load — external data included — and work past protobuf's 2 GB message limit.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from qdeploy.errors import QDeployError, first_line

_REEXPORT = "re-export it with `qdeploy export`"


def load_onnx(path: str | Path, load_external_data: bool = False) -> onnx.ModelProto:
    """The model at `path`, or one clear error when it is missing, truncated or not ONNX at all."""
    path = Path(path)
    if not path.is_file():
        raise QDeployError(f"{path} does not exist; pass the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise QDeployError(f"{path} is not a readable ONNX model (truncated or corrupt: {exc}); {_REEXPORT}") from exc
    if not model.graph.node or not model.opset_import:
        raise QDeployError(f"{path} holds no ONNX graph (empty, truncated or not an ONNX file); {_REEXPORT}")
    return model


def check_onnx_file(path: str | Path) -> onnx.ModelProto:
    """Run onnx.checker and strict shape inference, and make sure shapes reach every output.

    The file is parsed once more by the checker (it must see external data through the
    path); shape inference runs once, on the parsed graph (checker's full_check would run
    it a second time). Returns the model without external data, for inspection.
    """
    model = load_onnx(path)
    try:
        onnx.checker.check_model(str(path))
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise QDeployError(f"{path} fails the ONNX checker ({first_line(exc)}); {_REEXPORT}") from exc
    for output in inferred.graph.output:
        if not output.type.tensor_type.HasField("shape"):
            raise QDeployError(f"{path}: shape inference does not reach output {output.name!r}; {_REEXPORT}")
    return model
