"""engine.json: what a TensorRT plan was built from and for, and the checks before loading one.

A TensorRT plan only deserialises in the TensorRT version that built it and only runs well
(or at all) on the GPU architecture it was tuned for. TensorRT's own failure is a terse log
line; checking the recorded build facts first turns it into a message that says what to rebuild.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qdeploy.atomic import write_json
from qdeploy.errors import QDeployError
from qdeploy.runtime.tensorrt_support import Version, format_version, parse_version
from qdeploy.store import PLAN_INFO_FILE as INFO_FILE, PLAN_SUFFIXES

PLAN_FILE = "model.plan"
FORMAT = 1


@dataclass(frozen=True)
class EngineInfo:
    """The facts recorded next to model.plan (engine.json)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    profile: dict[str, dict[str, list[int]]]
    onnx_path: str
    onnx_sha256: str
    plugins: str
    plugin_library: str | None
    workspace_bytes: int
    build_seconds: float
    built_at: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / INFO_FILE
        write_json(path, self.to_json())
        return path


def read_engine_info(folder_or_plan: str | Path) -> EngineInfo:
    """engine.json of a plan folder (or of the folder holding a .plan / .engine file)."""
    path = Path(folder_or_plan)
    folder = path.parent if path.suffix in PLAN_SUFFIXES else path
    info = folder / INFO_FILE
    if not info.is_file():
        raise QDeployError(f"{info} is missing: a plan needs the engine.json that `qdeploy build` writes beside it "
                           "(rebuild with `qdeploy build MODEL.onnx`)")
    try:
        payload = json.loads(info.read_text())
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {FORMAT}")
        payload["builder_flags"] = tuple(payload["builder_flags"])
        payload["notes"] = tuple(payload.get("notes", ()))
        return EngineInfo(**payload)
    except (ValueError, TypeError, KeyError) as exc:
        raise QDeployError(f"{info} is not a qdeploy engine.json ({exc}); rebuild with `qdeploy build`") from exc


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

