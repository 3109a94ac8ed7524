"""Runtime: one engine interface over PyTorch, ONNX Runtime and TensorRT."""

from qdeploy.runtime.engine import Engine, TensorSpec
from qdeploy.runtime.loader import BACKENDS, load_engine
from qdeploy.runtime.onnxruntime_engine import OrtEngine, tensorrt_provider_options

__all__ = ["BACKENDS", "Engine", "OrtEngine", "TensorSpec", "load_engine", "tensorrt_provider_options"]
