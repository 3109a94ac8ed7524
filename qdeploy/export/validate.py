"""Structural checks of a written ONNX file: readable, valid, and shape-inferable end to end.

Checks go through the file path, not an in-memory proto, so they see exactly what a runtime
will load — external data included — and work past protobuf's 2 GB message limit.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from qdeploy.errors import QDeployError, first_line
from qdeploy.onnx_io import REEXPORT as _REEXPORT, load_onnx

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
