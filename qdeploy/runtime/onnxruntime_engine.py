"""ONNX Runtime engine: CPU, CUDA and TensorRT execution providers behind Engine.

ONNX Runtime silently falls back to the CPU when a requested provider cannot start; this
engine checks the providers the session actually got and refuses a silent fallback.
On the GPU providers, torch CUDA tensors are bound in place (IO binding): inputs are read
and outputs written in device memory, with no copy through the host.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from qdeploy.errors import QDeployError
from qdeploy.onnx_io import ort_session
from qdeploy.runtime.engine import Engine, TensorSpec, numpy_dtype

_ORT_TYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(bool)": np.dtype(np.bool_),
}


# qdeploy backend name -> ONNX Runtime providers in priority order (later ones run what the
# first cannot, e.g. ops TensorRT does not support).
PROVIDER_CHAINS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def tensorrt_provider_options(fp16: bool = False, cache_dir: str | Path | None = None,
                              plugin_libs: tuple[str | Path, ...] = ()) -> dict[str, Any]:
    """TensorRT execution-provider options: precision, engine/timing caches, plugin libraries.

    Building a TensorRT engine takes seconds to minutes; with `cache_dir` the built engine
    and the kernel timing cache are kept there and the next session loads them instead.
    `plugin_libs` are the shared libraries that implement the fused file's plugin nodes.
    """
    options: dict[str, Any] = {"trt_fp16_enable": fp16}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir))
    missing = [str(lib) for lib in plugin_libs if not Path(lib).is_file()]
    if missing:
        raise QDeployError(f"plugin library {missing[0]} does not exist; build the plugins (plugins/cuda) or fix the path")
    if plugin_libs:
        options["trt_extra_plugin_lib_paths"] = ";".join(str(Path(lib).resolve()) for lib in plugin_libs)
    return options


def _require_cuda_driver(provider: str) -> None:
    """Fail fast, and quietly, where no NVIDIA driver exists: ORT would log pages and fall back."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise QDeployError(f"{provider} needs an NVIDIA GPU and driver (libcuda.so.1 not found); use ort-cpu") from exc


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _ORT_TYPES:
        raise QDeployError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    return TensorSpec(arg.name, tuple(d if isinstance(d, int) else (d or None) for d in arg.shape), _ORT_TYPES[arg.type])


class OrtEngine(Engine):
    """An onnxruntime.InferenceSession with explicit threads, optimisation level and providers.

    backend: a key of PROVIDER_CHAINS; its first provider must be the one the session really
    runs on. provider_options: options for that first provider (e.g. trt_fp16_enable).
    spin_after_run: False for sessions timed in alternation with others (onnx_io.ort_session).
    """

    def __init__(self, path: str | Path, backend: str = "ort-cpu", provider_options: dict[str, Any] | None = None,
                 intra_op_threads: int = 0, inter_op_threads: int = 0,
                 optimization_level: str = "all", optimized_model_path: str | Path | None = None,
                 check_finite: bool = False, spin_after_run: bool = True) -> None:
        import onnxruntime as ort

        super().__init__(check_finite)
        path = Path(path)
        if not path.is_file():
            raise QDeployError(f"ONNX file {path} does not exist; run `qdeploy export` first")
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization_level not in levels:
            raise QDeployError(f"unknown optimization level {optimization_level!r}; choose from {sorted(levels)}")
        if backend not in PROVIDER_CHAINS:
            raise QDeployError(f"unknown ONNX Runtime backend {backend!r}; choose from {sorted(PROVIDER_CHAINS)}")
        wanted, *fallbacks = PROVIDER_CHAINS[backend]
        providers: list[Any] = [(wanted, provider_options or {}), *fallbacks]
        if wanted in _GPU_PROVIDERS:
            _require_cuda_driver(wanted)
        settings = {"optimized_model_filepath": str(optimized_model_path)} if optimized_model_path is not None else {}
        self.session = ort_session(path, intra_op_threads, providers, spin_after_run,
                                   inter_op_num_threads=inter_op_threads,
                                   graph_optimization_level=levels[optimization_level], **settings)
        got = self.session.get_providers()
        if got[0] != wanted:
            raise QDeployError(
                f"{wanted} is not usable here (ONNX Runtime fell back to {got[0]}); install its "
                "GPU libraries or pick another backend"
            )
        self.backend = backend
        self.path = path
        self.inputs = [_spec(arg) for arg in self.session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self.session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]
        self.on_gpu = wanted in _GPU_PROVIDERS

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(self._output_names, feeds)))

    def _run_torch(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """CUDA tensors on a GPU provider: IO binding, no host copy; otherwise through numpy."""
        first = next(iter(feeds.values()))
        if not (self.on_gpu and first.is_cuda):
            return super()._run_torch(feeds)
        import torch

        device_id = first.device.index or 0
        binding = self.session.io_binding()
        for name, tensor in feeds.items():
            binding.bind_input(name, "cuda", device_id, numpy_dtype(tensor), tuple(tensor.shape), tensor.data_ptr())
        batch = first.shape[0]
        outputs: dict[str, torch.Tensor] = {}
        for spec in self.outputs:
            if all(isinstance(d, int) for d in spec.shape[1:]):  # only the batch is dynamic: preallocate
                shape = (batch, *spec.shape[1:]) if spec.batched else spec.shape
                tensor = torch.empty(shape, dtype=_torch_type(spec.dtype), device=first.device)
                binding.bind_output(spec.name, "cuda", device_id, spec.dtype, tuple(shape), tensor.data_ptr())
                outputs[spec.name] = tensor
            else:
                binding.bind_output(spec.name, "cuda", device_id)
        torch.cuda.current_stream(first.device).synchronize()  # inputs written by torch kernels are ready
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if len(outputs) < len(self.outputs):  # shapes known only after the run: ORT allocated them
            for spec, value in zip(self.outputs, binding.get_outputs()):
                if spec.name not in outputs:
                    outputs[spec.name] = torch.from_numpy(value.numpy()).to(first.device)
        return outputs


def _torch_type(dtype: np.dtype) -> Any:
    import torch

    return torch.from_numpy(np.empty(0, dtype)).dtype
