"""ONNX export of adapted models: a decomposed graph for any runtime, a fused one for TensorRT plugins.

The names below are imported on first use (PEP 562): the exporter needs torch, but readers
of ONNX files downstream (serving, the TensorRT builder) only need `export.validate`, and
importing it must not pull torch into `qdeploy serve`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExportOptions": "qdeploy.export.onnx_export",
    "export_model": "qdeploy.export.onnx_export",
    "ort_session": "qdeploy.export.parity",
    "read_report": "qdeploy.export.report",
    "check_onnx_file": "qdeploy.export.validate",
    "load_onnx": "qdeploy.export.validate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
