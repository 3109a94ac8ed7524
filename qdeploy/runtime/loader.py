"""load_engine(): one entry point that picks and builds a backend for a model file or folder.

What a path is decides which backends can run it: an ONNX file runs on ONNX Runtime
(TensorRT, CUDA or CPU provider), a `.plan` on native TensorRT, a model folder (or a
checkpoint in one) on PyTorch. `auto` tries that kind's backends fastest first and records
on the engine what it passed over and why (`engine.describe()`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from qdeploy.errors import QDeployError
from qdeploy.runtime.engine import Engine
from qdeploy.runtime.onnxruntime_engine import PROVIDER_CHAINS, OrtEngine, tensorrt_provider_options
from qdeploy.store import PLAN_SUFFIXES

# Fastest first: `auto` takes the first that starts on this machine.
AUTO_ORDER = ("ort-trt", "ort-cuda", "ort-cpu")
BACKENDS = ("auto", "torch", *PROVIDER_CHAINS, "tensorrt")
# ORT-TensorRT conveniences turned into provider options (see tensorrt_provider_options).
_TRT_EP_OPTIONS = ("fp16", "cache_dir", "plugin_libs")


def _auto_order(path: Path) -> tuple[str, ...]:
    if path.suffix in PLAN_SUFFIXES:
        return ("tensorrt",)
    if path.suffix == ".onnx":
        return AUTO_ORDER
    return ("torch",)


def _engine_class(backend: str) -> type[Engine]:
    if backend == "torch":
        from qdeploy.runtime.torch_engine import TorchEngine

        return TorchEngine
    if backend == "tensorrt":
        from qdeploy.runtime.tensorrt_engine import TensorRTEngine

        return TensorRTEngine
    return OrtEngine


# Constructor arguments load_engine fills in itself; the rest are the backend's options.
_LOADER_ARGUMENTS = {"self", "path", "source", "backend", "device", "threads", "intra_op_threads", "check_finite"}


def _check_options(backend: str, engine_class: type[Engine], options: dict[str, Any]) -> None:
    """Refuse options the backend's engine does not take, before building it.

    Checked against the constructor's signature, so that a TypeError raised while an engine
    loads is its own error, not mistaken for a bad option.
    """
    accepted = set(inspect.signature(engine_class.__init__).parameters) - _LOADER_ARGUMENTS
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise QDeployError(f"backend {backend} does not accept these options ({', '.join(unknown)}); "
                           f"it takes {', '.join(sorted(accepted)) or 'none'}")


def _build(path: Path, backend: str, threads: int, check_finite: bool, device: str | None,
           options: dict[str, Any]) -> Engine:
    if backend not in ("torch", "tensorrt") and (path.is_dir() or path.suffix in PLAN_SUFFIXES):
        kind = "a model folder" if path.is_dir() else "a TensorRT plan"
        raise QDeployError(f"{path} is {kind}, which {backend} cannot run; use "
                           f"--backend {'torch' if path.is_dir() else 'tensorrt'} or pass the ONNX file")
    trt_options = {key: options.pop(key) for key in _TRT_EP_OPTIONS if key in options}
    if trt_options:
        if backend != "ort-trt":
            raise QDeployError(f"option(s) {', '.join(sorted(trt_options))} apply to ort-trt only, not {backend}")
        options["provider_options"] = {**tensorrt_provider_options(**trt_options), **options.get("provider_options", {})}
    engine_class = _engine_class(backend)
    _check_options(backend, engine_class, options)
    if backend == "torch":
        return engine_class(path, device=device or "cpu", threads=threads, check_finite=check_finite, **options)
    if backend == "tensorrt":
        index = int(device.partition(":")[2] or 0) if device else 0
        return engine_class(path, device=index, check_finite=check_finite, **options)
    return engine_class(path, backend, intra_op_threads=threads, check_finite=check_finite, **options)


def load_engine(path: str | Path, backend: str = "auto", threads: int = 0,
                check_finite: bool = False, device: str | None = None, **options: Any) -> Engine:
    """Load `path` on `backend` ("auto" picks the fastest that works; `engine.describe()` says which).

    threads: intra-op threads (0 = the runtime's default). device: "cpu" or "cuda[:N]" for
    the torch and tensorrt backends. options: backend-specific keywords, e.g. fp16 /
    cache_dir / plugin_libs for ort-trt, optimization_level for ONNX Runtime, plugins for
    tensorrt, input_size for torch.
    """
    if backend not in BACKENDS:
        raise QDeployError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    path = Path(path)
    if not path.exists():
        raise QDeployError(f"{path} does not exist; run `qdeploy export` first (or pass a model folder)")
    if backend != "auto":
        return _build(path, backend, threads, check_finite, device, dict(options))
    skipped: dict[str, str] = {}
    for candidate in _auto_order(path):
        try:
            engine = load_engine(path, candidate, threads, check_finite, device, **options)
        except QDeployError as exc:
            skipped[candidate] = str(exc)
            continue
        engine.auto_skipped = skipped
        return engine
    raise QDeployError("no backend could load the model: " + " | ".join(f"{k}: {v}" for k, v in skipped.items()))
