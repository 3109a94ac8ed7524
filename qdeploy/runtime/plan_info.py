"""The checks before loading a TensorRT plan, against what its engine.json (store/plan.py) records.

A TensorRT plan only deserialises in the TensorRT version that built it and only runs well
(or at all) on the GPU architecture it was tuned for. TensorRT's own failure is a terse log
line; checking the recorded build facts first turns it into a message that says what to rebuild.
"""

from __future__ import annotations

from qdeploy.errors import QDeployError
from qdeploy.runtime.tensorrt_support import Version, format_version, parse_version
from qdeploy.store.plan import FORMAT, INFO_FILE, PLAN_FILE, EngineInfo, read_engine_info

__all__ = ["FORMAT", "INFO_FILE", "PLAN_FILE", "EngineInfo", "check_plan_compatible", "read_engine_info"]


def check_plan_compatible(info: EngineInfo, version: Version, compute_capability: str | None) -> None:
    """Refuse a plan built by another TensorRT or for another GPU architecture, saying what to do."""
    built = parse_version(info.tensorrt_version)
    if built != version:
        raise QDeployError(f"the plan was built with TensorRT {format_version(built)} but this process has "
                           f"TensorRT {format_version(version)}; plans only load in the TensorRT that built them: "
                           f"rebuild it here with `qdeploy build {info.onnx_path}`")
    if compute_capability is not None and compute_capability != info.compute_capability:
        raise QDeployError(f"the plan was built for a {info.gpu_name} (compute capability {info.compute_capability}) "
                           f"but this GPU has compute capability {compute_capability}; rebuild it on this GPU "
                           f"with `qdeploy build {info.onnx_path}`")

