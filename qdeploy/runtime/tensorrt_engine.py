"""The `tensorrt` backend: a serialized TensorRT plan run natively on a CUDA stream.

A plan is tied to the TensorRT version and the GPU it was built on, and to the plugin
libraries its layers name. When `qdeploy build` wrote an engine.json beside the plan, its
recorded version and GPU are checked first (plan_info); otherwise, and for plugins,
deserialization failures come back from TensorRT as log lines, which this engine collects
and turns into one error saying which of those it was and what to do. Inputs and outputs live in torch CUDA tensors: shapes are set per call (dynamic
batch), tensor addresses bound, and the plan enqueued on torch's current stream, so torch
callers get their outputs without a copy or a synchronisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qdeploy.errors import QDeployError
from qdeploy.runtime.engine import Engine, TensorSpec

# Substrings of TensorRT's deserialization log lines -> what to tell the user.
_PLUGIN_HINTS = ("plugin", "creator")
_VERSION_HINTS = ("version", "magic", "serialization", "incompatible device", "compute capability", "platform")


def _collecting_logger(trt: Any) -> Any:
    """A trt.ILogger that keeps error and warning messages, so failures can be explained."""

    class Collecting(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append(msg)

    return Collecting()


def explain_deserialize_failure(path: Path, messages: list[str]) -> str:
    """The one-line reason a plan did not load, from TensorRT's log."""
    text = " | ".join(messages[-3:]) or "no message from TensorRT"
    lowered = text.lower()
    if any(hint in lowered for hint in _PLUGIN_HINTS):
        return (f"{path} uses a TensorRT plugin that is not loaded ({text}); load the qdeploy plugins "
                "(--plugins cpp or python) or rebuild the plan from the decomposed ONNX file")
    if any(hint in lowered for hint in _VERSION_HINTS):
        return (f"{path} was built with another TensorRT version or on another GPU ({text}); rebuild it "
                "on this machine from the ONNX file")
    return f"TensorRT cannot deserialize {path} ({text}); rebuild it from the ONNX file"


def _check_recorded_build(path: Path, trt: Any, capability: tuple[int, int]) -> None:
    """Refuse a plan whose engine.json records another TensorRT version or GPU (no engine.json: no check)."""
    from qdeploy.runtime.plan_info import INFO_FILE, check_plan_compatible, read_engine_info
    from qdeploy.runtime.tensorrt_support import tensorrt_version

    if (path.parent / INFO_FILE).is_file():
        check_plan_compatible(read_engine_info(path.parent), tensorrt_version(trt), "{}.{}".format(*capability))


class TensorRTEngine(Engine):
    """A deserialized plan with one execution context; `plugins` as plugin_library.load_plugins takes it."""

    def __init__(self, path: str | Path, plugins: str = "auto", device: int = 0, check_finite: bool = False) -> None:
        super().__init__(check_finite)
        path = Path(path)
        if not path.is_file():
            raise QDeployError(f"TensorRT plan {path} does not exist; build one from the ONNX file first")
        from qdeploy.runtime.plugin_library import load_plugins
        from qdeploy.runtime.tensorrt_support import import_tensorrt

        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise QDeployError("the tensorrt backend needs a CUDA GPU, and none is visible; use ort-cpu")
        self.device = torch.device("cuda", device)
        _check_recorded_build(path, trt, torch.cuda.get_device_capability(self.device))
        load_plugins(plugins)
        self.logger = _collecting_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            self.plan = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.plan is None:
                raise QDeployError(explain_deserialize_failure(path, self.logger.messages))
            self.context = self.plan.create_execution_context()
        self.backend = "tensorrt"
        self.path = path
        self.trt = trt
        names = [self.plan.get_tensor_name(i) for i in range(self.plan.num_io_tensors)]
        specs = {name: self._spec(name) for name in names}
        is_input = {name: self.plan.get_tensor_mode(name) == trt.TensorIOMode.INPUT for name in names}
        self.inputs = [specs[n] for n in names if is_input[n]]
        self.outputs = [specs[n] for n in names if not is_input[n]]

    def _spec(self, name: str) -> TensorSpec:
        dtype = np.dtype(self.trt.nptype(self.plan.get_tensor_dtype(name)))
        shape = tuple(d if d >= 0 else None for d in self.plan.get_tensor_shape(name))
        return TensorSpec(name, shape, dtype)

    def _run_torch(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import torch

        stream = torch.cuda.current_stream(self.device)
        caller_device = next(iter(feeds.values())).device
        feeds = {name: tensor.to(self.device) for name, tensor in feeds.items()}
        for name, tensor in feeds.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise QDeployError(f"input {name!r} shape {tuple(tensor.shape)} is outside the plan's optimization "
                                   "profile; rebuild the plan with a larger --max-batch")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, spec.dtype)).dtype, device=self.device)
            self.context.set_tensor_address(spec.name, tensor.data_ptr())
            outputs[spec.name] = tensor
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise QDeployError(f"TensorRT failed to run {self.path}: " + " | ".join(self.logger.messages[-2:]))
        if caller_device != self.device:
            return {name: tensor.to(caller_device) for name, tensor in outputs.items()}
        return outputs

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        outputs = self._run_torch({name: torch.from_numpy(array) for name, array in feeds.items()})
        return {name: tensor.numpy() for name, tensor in outputs.items()}
