"""ONNX export of adapted models: a decomposed graph for any runtime, a fused one for TensorRT plugins.

The names below load on first use: the exporter needs torch, but readers of ONNX files
downstream (serving, the TensorRT builder) only need `export.validate`, and importing it
must not pull torch into `qdeploy serve`.
"""

from __future__ import annotations

from qdeploy.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ExportOptions": "onnx_export",
    "export_model": "onnx_export",
    "ort_session": "parity",
    "check_onnx_file": "validate",
    "load_onnx": "validate",
})
