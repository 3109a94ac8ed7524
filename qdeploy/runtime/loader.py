"""load_engine(): one entry point that picks and builds a backend for a model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qdeploy.errors import QDeployError
from qdeploy.runtime.engine import Engine

from qdeploy.runtime.onnxruntime_engine import PROVIDER_CHAINS, OrtEngine

# Fastest first: `auto` takes the first that starts on this machine.
AUTO_ORDER = ("ort-trt", "ort-cuda", "ort-cpu")
BACKENDS = ("auto", *PROVIDER_CHAINS)


def load_engine(path: str | Path, backend: str = "auto", threads: int = 0,
                check_finite: bool = False, **options: Any) -> Engine:
    """Load `path` on `backend` ("auto" picks the fastest that works and says which in .backend)."""
    if backend not in BACKENDS:
        raise QDeployError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        errors = []
        for candidate in AUTO_ORDER:
            try:
                return load_engine(path, candidate, threads, check_finite, **options)
            except QDeployError as exc:
                errors.append(f"{candidate}: {exc}")
                if not Path(path).is_file():
                    raise
        raise QDeployError("no backend could load the model: " + " | ".join(errors))
    return OrtEngine(path, backend, intra_op_threads=threads, check_finite=check_finite, **options)
