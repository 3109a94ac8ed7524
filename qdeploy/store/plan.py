"""engine.json, the record `qdeploy build` writes beside a TensorRT plan: one reader, one writer.

It lives in the store (JSON only, no TensorRT, no torch) because the store resolves a plan to the
ONNX file and model it came from; runtime/plan_info.py checks a plan against this machine with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qdeploy.atomic import write_json
from qdeploy.errors import QDeployError
from qdeploy.store.layout import PLAN_INFO_FILE as INFO_FILE, PLAN_SUFFIXES

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
