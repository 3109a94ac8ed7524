"""Where things are on disk and what a path holds: the store's JSON side (no torch import).

`qdeploy serve` and the TensorRT builder resolve paths and read records through here
without paying for torch; building a model is `qdeploy.store.models`'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdeploy.errors import QDeployError
from qdeploy.store.artifacts import ExportReport, TrainingRecord, read_json

WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "adapter.json"
ADAPTER_FORMAT = "qdeploy-adapted/1"
BASE_FILE = "base.json"
BASE_FORMAT = "qdeploy-base/1"
MODEL_CONFIGS = {ADAPTER_FILE: ADAPTER_FORMAT, BASE_FILE: BASE_FORMAT}
RUN_MODEL_DIR = "model"  # a train run's deliverable, inside the run folder
CHECKPOINT_DIR, SUMMARY_FILE = "checkpoint", "summary.json"  # a train run's resumable state and its summary
REPORT_FILE = "export_report.json"
EXPORT_MODES = ("decomposed", "fused")  # <mode>.onnx in an export folder
PLAN_SUFFIXES = (".plan", ".engine")  # serialized TensorRT engines, as `qdeploy build` and trtexec name them
PLAN_INFO_FILE = "engine.json"  # beside a plan: what it was built from (store/plan.py)
TRAINING_KEY = "training"

EXPECTED = ("a train run folder, its model/ folder, an export folder, or an ONNX or plan file beside "
            f"its {REPORT_FILE}")


@dataclass
class Stored:
    """What `load` found at a path.

    kind: "model" (a model folder or a weights file in one), "export" (an export folder),
    "onnx" or "plan" (a deployable file). model_folder: the PyTorch model behind it (None when
    an export report does not name an existing one). files: the deployable files (ONNX, plan).
    """

    kind: str
    path: Path
    model_folder: Path | None
    report: ExportReport | None = None
    files: tuple[Path, ...] = ()
    weights: Path | None = None  # a weights file other than the folder's own model.safetensors
    model: Any = field(default=None, repr=False)

    @property
    def record(self) -> TrainingRecord | None:
        """The training record of the model behind this path (None when it was not trained here)."""
        return read_record(self.model_folder) if self.model_folder is not None else None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) its files take, else the size it was trained at; None: the architecture's own."""
        if self.report is not None:
            return self.report.image_size
        return (self.record.image_size,) * 2 if self.record else None  # type: ignore[return-value]

    @property
    def eval_data(self) -> str | None:
        """Its natural eval (and int8 calibration) set: the data it was trained on, scored on the held-out split."""
        return self.record.data if self.record else None

    def build(self, map_location: Any = "cpu") -> Any:
        """The PyTorch model behind this path, built once and kept."""
        if self.model is None:
            if self.model_folder is None:
                raise QDeployError(f"{self.path}: no PyTorch model is known for it (its {REPORT_FILE} names no "
                                   "existing model folder); pass the model folder")
            from qdeploy.store.models import build_model

            self.model = build_model(self.model_folder, self.weights, map_location)
        return self.model


def model_config(folder: str | Path) -> dict[str, Any]:
    """The model folder's JSON (adapter.json or base.json), its format checked."""
    folder = Path(folder)
    for name, expected in MODEL_CONFIGS.items():
        path = folder / name
        if path.is_file():
            config = read_json(path)
            if config.get("format") != expected:
                raise QDeployError(f"{path} has format {config.get('format')!r}, expected {expected!r}; re-save the model")
            return config
    raise QDeployError(f"{folder} is not a model folder (no {ADAPTER_FILE} or {BASE_FILE}); pass {EXPECTED}")


def read_record(folder: str | Path) -> TrainingRecord | None:
    """What `qdeploy train` recorded in a model folder (data, image size, split, ...), or None."""
    record = model_config(folder).get(TRAINING_KEY)
    return None if record is None else TrainingRecord.from_json(record, f"{folder}'s {TRAINING_KEY} record")


def is_model_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in MODEL_CONFIGS)


def write_report(folder: Path, report: ExportReport) -> Path:
    return report.write(folder / REPORT_FILE)


def read_report(folder: str | Path) -> ExportReport:
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        raise QDeployError(f"{folder} has no {REPORT_FILE}; pass a folder `qdeploy export` wrote")
    return ExportReport.read(path)


def _report_source(report: ExportReport, report_folder: Path) -> Path | None:
    """The model folder an export report names, if it still exists (relative: to the cwd, then the report)."""
    source = report.source
    if not source:
        return None
    for candidate in (Path(source), report_folder / source):
        folder = candidate if candidate.is_dir() else candidate.parent
        if candidate.exists() and is_model_folder(folder):
            return _model_folder_of(candidate)
    return None


def _model_folder_of(path: Path) -> Path:
    """A run folder's model/, or the folder itself."""
    if path.is_dir() and not is_model_folder(path) and is_model_folder(path / RUN_MODEL_DIR):
        return path / RUN_MODEL_DIR
    return path if path.is_dir() else path.parent


def _plan_onnx(plan: Path) -> Path | None:
    """The ONNX file a plan was built from, as its engine.json records it (None without one)."""
    from qdeploy.store.plan import read_engine_info

    return Path(read_engine_info(plan).onnx_path) if (plan.parent / PLAN_INFO_FILE).is_file() else None


def locate(path: str | Path) -> Stored:
    """What `path` is, without building any model (see the module docstring for the layouts)."""
    path = Path(path)
    if not path.exists():
        raise QDeployError(f"{path} does not exist; pass {EXPECTED}")
    if path.is_dir():
        if is_model_folder(path):
            return Stored("model", path, path)
        if is_model_folder(path / RUN_MODEL_DIR):
            return Stored("model", path, path / RUN_MODEL_DIR)
        if (path / REPORT_FILE).is_file():
            report = read_report(path)
            files = tuple(path / f"{mode}.onnx" for mode in EXPORT_MODES if (path / f"{mode}.onnx").is_file())
            return Stored("export", path, _report_source(report, path), report, files)
        if (path / CHECKPOINT_DIR).is_dir() or (path / SUMMARY_FILE).is_file():
            raise QDeployError(f"{path} is a train run without {RUN_MODEL_DIR}/{ADAPTER_FILE} or "
                               f"{RUN_MODEL_DIR}/{BASE_FILE}: the run did not finish; resume it (qdeploy train --resume)")
        raise QDeployError(f"{path} holds no qdeploy model (no {ADAPTER_FILE}, {BASE_FILE}, {RUN_MODEL_DIR}/ "
                           f"or {REPORT_FILE}); pass {EXPECTED}")
    if path.suffix == ".onnx" or path.suffix in PLAN_SUFFIXES:
        kind = "onnx" if path.suffix == ".onnx" else "plan"
        onnx = path if kind == "onnx" else _plan_onnx(path)
        report_folder = onnx.parent if onnx is not None else path.parent
        report = read_report(report_folder) if (report_folder / REPORT_FILE).is_file() else None
        source = _report_source(report, report_folder) if report else None
        return Stored(kind, path, source, report, (path,))
    if is_model_folder(path.parent):
        return Stored("model", path, path.parent, weights=None if path.name == WEIGHTS_FILE else path)
    raise QDeployError(f"{path} is a file that is neither ONNX, a plan, nor weights in a model folder "
                       f"(no {ADAPTER_FILE} or {BASE_FILE} beside it); pass {EXPECTED}")
