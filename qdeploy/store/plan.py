"""engine.json, the record `qdeploy build` writes beside a TensorRT plan: one reader, one writer.

It lives in the store (JSON only, no TensorRT, no torch) because the store resolves a plan to the
ONNX file and model it came from; runtime/plan_info.py checks a plan against this machine with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from qdeploy.errors import QDeployError
from qdeploy.store.artifacts import Artifact
from qdeploy.store.layout import PLAN_INFO_FILE as INFO_FILE, PLAN_SUFFIXES

PLAN_FILE = "model.plan"
FORMAT = 1


@dataclass(frozen=True)
class EngineInfo(Artifact):
    """The facts recorded next to model.plan (engine.json)."""

    FORMAT: ClassVar[int] = FORMAT
    WRITER: ClassVar[str] = "`qdeploy build` (rebuild the plan)"

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

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> "EngineInfo":
        return cls(**{**values, "builder_flags": tuple(values["builder_flags"]), "notes": tuple(values.get("notes", ()))})

    def write(self, folder: str | Path) -> Path:  # type: ignore[override]
        return super().write(Path(folder) / INFO_FILE)


def read_engine_info(folder_or_plan: str | Path) -> EngineInfo:
    """engine.json of a plan folder (or of the folder holding a .plan / .engine file)."""
    path = Path(folder_or_plan)
    info = (path.parent if path.suffix in PLAN_SUFFIXES else path) / INFO_FILE
    if not info.is_file():
        raise QDeployError(f"{info} is missing: a plan needs the engine.json that `qdeploy build` writes beside it "
                           "(rebuild with `qdeploy build MODEL.onnx`)")
    return EngineInfo.read(info)
