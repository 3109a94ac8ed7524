"""ONNX export of adapted models: a decomposed graph for any runtime, a fused one for TensorRT plugins."""

from qdeploy.export.onnx_export import ExportOptions, export_model
from qdeploy.export.parity import ort_session
from qdeploy.export.report import read_report
from qdeploy.export.validate import check_onnx_file, load_onnx

__all__ = ["ExportOptions", "check_onnx_file", "export_model", "load_onnx", "ort_session", "read_report"]
