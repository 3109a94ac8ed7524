"""What the stages hand each other, typed: each record one dataclass with one to_json / from_json.

train -> TrainingRecord (inside the model folder's JSON), export -> ExportReport
(export_report.json), verify -> VerifyReport (verify_<backend>.json), triton-repo ->
PythonBackendParameters (a Python-backend config.pbtxt's `parameters`). Every file carries
its `format` ("qdeploy-<kind>/<version>"), so a file from an older qdeploy or another tool
is one clear error, not a KeyError three modules later.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

from qdeploy import atomic
from qdeploy.errors import QDeployError

A = TypeVar("A", bound="Artifact")


def read_json(path: Path, writer: str = "the qdeploy command that wrote it") -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QDeployError(f"{path} is not readable JSON ({exc}); re-create it with {writer}") from exc
    if not isinstance(data, dict):
        raise QDeployError(f"{path} holds a {type(data).__name__}, not a JSON object; re-create it with {writer}")
    return data


class Artifact:
    """A versioned JSON record: FORMAT names kind and version, WRITER the command that re-creates it."""

    FORMAT: ClassVar[str | int]
    WRITER: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"format": self.FORMAT, **asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[A], data: Mapping[str, Any], where: str) -> A:
        """The record in `data`; an older, newer or foreign document is one QDeployError naming the fix."""
        if data.get("format") != cls.FORMAT:
            raise QDeployError(f"{where} has format {data.get('format')!r}, expected {cls.FORMAT!r} (an older qdeploy or "
                               f"another tool wrote it); re-create it with {cls.WRITER}")
        try:
            return cls._from_fields({f.name: data[f.name] for f in fields(cls) if f.name in data})  # type: ignore
        except (TypeError, ValueError, KeyError) as exc:
            raise QDeployError(f"{where} is not a qdeploy {cls.__name__} ({exc}); re-create it with {cls.WRITER}") from exc

    @classmethod
    def _from_fields(cls: type[A], values: dict[str, Any]) -> A:
        return cls(**values)

    def write(self, path: Path) -> Path:
        atomic.write_json(path, self.to_json())
        return path

    @classmethod
    def read(cls: type[A], path: Path) -> A:
        return cls.from_json(read_json(path, cls.WRITER), str(path))


@dataclass(frozen=True)
class TrainingRecord(Artifact):
    """How `qdeploy train` made a model: enough to export it at its size and score its held-out split."""

    FORMAT: ClassVar[str] = "qdeploy-training-record/1"
    WRITER: ClassVar[str] = "`qdeploy train` (or save the model without a record)"

    data: str
    image_size: int
    seed: int = 0
    val_fraction: float = 0.2
    mode: str | None = None
    classes: tuple[str, ...] = ()
    steps: int | None = None
    final_val_acc: float | None = None
    targets: tuple[str, ...] | None = None  # the --targets globs the run adapted (None: the defaults)

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> "TrainingRecord":
        targets = values.get("targets")
        return cls(**{**values, "classes": tuple(values.get("classes", ())),
                      "targets": tuple(targets) if targets is not None else None})

    def split_for(self, spec: str | None) -> dict[str, Any]:
        """load_eval_set's split keywords for `spec`: this run's seed and fraction when it trained on `spec`."""
        return {"seed": self.seed, "val_fraction": self.val_fraction} if spec == self.data else {}


@dataclass(frozen=True)
class ExportedFile:
    """One ONNX file of an export: size, nodes, the exact rewrites and its parity per input set."""

    file: str
    external_data: bool
    file_bytes: int
    export_s: float
    nodes: dict[str, int]
    nodes_total: int
    plugin_nodes: int
    rewrites: dict[str, Any]
    parity: dict[str, dict[str, Any]]  # input set -> compare.Comparison fields
    passed: bool
    int8: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExportReport(Artifact):
    """export_report.json: what `qdeploy export` wrote, from which model, checked how."""

    FORMAT: ClassVar[str] = "qdeploy-export-report/3"  # 3: written from this dataclass
    WRITER: ClassVar[str] = "`qdeploy export`"

    qdeploy_version: str
    source: str | None
    base: dict[str, Any]
    quadratic_layers: int
    weights_sha256: str
    precision: str
    opset: int
    batch: int | str
    input: dict[str, Any]  # name, shape (batch axis first), dtype
    tolerance: dict[str, float]
    torch_to_onnx_s: float
    total_s: float
    files: dict[str, ExportedFile]

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> "ExportReport":
        return cls(**{**values, "files": {mode: ExportedFile(**info) for mode, info in values["files"].items()}})

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.input["shape"][2:])  # type: ignore[return-value]


@dataclass
class VerifyReport(Artifact):
    """verify_<backend>.json: every input set's comparison of a backend with the PyTorch reference."""

    FORMAT: ClassVar[str] = "qdeploy-verify-report/1"
    WRITER: ClassVar[str] = "`qdeploy verify`"

    backend: str
    backend_detail: str
    model: str
    reference: str
    tolerance: dict[str, Any]  # {atol, rtol}, or one per output name
    sets: list[dict[str, Any]]  # compare.Comparison fields per (set, output)
    passed: bool
    drift: dict[str, Any] | None = None  # runtime.drift's localisation, when it ran
    int8_vs_fp32: dict[str, Any] | None = None  # an int8 file against the fp32 file it shipped beside

    def labelled(self) -> dict[str, Any]:
        """The labelled set's comparison (the random sets have no accuracy)."""
        return next(s for s in self.sets if s["reference_accuracy"] is not None)


@dataclass(frozen=True)
class PythonBackendParameters:
    """A Python-backend config.pbtxt's `parameters` (string values): what model.py and `qdeploy serve` load."""

    model_file: str
    engine_backend: str = "auto"
    threads: int = 0
    plugin_libs: tuple[str, ...] = field(default_factory=tuple)

    def to_config(self) -> dict[str, str]:
        values = {"model_file": self.model_file, "engine_backend": self.engine_backend, "threads": str(self.threads)}
        return {**values, **({"plugin_libs": ":".join(self.plugin_libs)} if self.plugin_libs else {})}

    @classmethod
    def from_config(cls, parameters: Mapping[str, str], where: str) -> "PythonBackendParameters":
        """From the string values (protobuf `parameters[k].string_value`, or model.py's JSON config)."""
        if "model_file" not in parameters:
            raise QDeployError(f"{where}: a Python-backend model needs a 'model_file' parameter naming what model.py "
                               "loads; write it with `qdeploy triton-repo --backend python`")
        try:
            return cls(parameters["model_file"], parameters.get("engine_backend", "auto"),
                       int(parameters.get("threads", "0")), tuple(filter(None, parameters.get("plugin_libs", "").split(":"))))
        except ValueError as exc:
            raise QDeployError(f"{where}: parameter 'threads' is not an integer ({exc}); rewrite it with "
                               "`qdeploy triton-repo --backend python`") from exc

    def engine_options(self) -> dict[str, Any]:
        """load_engine keywords beyond backend and threads."""
        return {"plugin_libs": list(self.plugin_libs)} if self.plugin_libs else {}
