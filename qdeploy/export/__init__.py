"""ONNX export of adapted models: a decomposed graph for any runtime, a fused one for TensorRT plugins.

The names below load on first use: the exporter needs torch, but readers of ONNX files
downstream (serving, the TensorRT builder) read them through `qdeploy.onnx_io`, which pulls no
torch into `qdeploy serve`.
"""

from __future__ import annotations

from qdeploy.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ExportOptions": "onnx_export",
    "export_model": "onnx_export",
    "check_onnx_file": "validate",
    "load_onnx": "validate",
})
