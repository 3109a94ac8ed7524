"""`qdeploy verify` as a function: does a deployed model still give the PyTorch answers?"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qdeploy.compare import PRESETS, Tolerance, resolve_tolerance
from qdeploy.data.eval_set import EvalSet, load_eval_set
from qdeploy.errors import QDeployError
from qdeploy.onnx_io import RANDOM_BATCHES, random_batch
from qdeploy.runtime import BACKENDS, Engine, load_engine
from qdeploy.runtime.drift import localize_drift
from qdeploy.runtime.parity import verify
from qdeploy.runtime.torch_engine import TorchEngine
from qdeploy.store import REPORT_FILE, VerifyReport, locate


@dataclass(frozen=True)
class VerifyOptions:
    """Every setting of a verify run (the CLI's options are generated from these fields)."""

    reference: Path | None = field(default=None, metadata={
        "help": "PyTorch model folder to compare with. [default: the source named in export_report.json]"})
    backend: str = field(default="auto", metadata={"choices": BACKENDS, "help": "Engine backend of the checked model."})
    data: str | None = field(default=None, metadata={
        "help": "Labelled eval set: 'digits-shift', an ImageFolder path, or 'none'. [default: the data the model was "
                "trained on]"})
    limit: int | None = field(default=None, metadata={"help": "Use at most N eval images."})
    precision: str = field(default="fp32", metadata={"choices": PRESETS, "help": "Tolerance preset."})
    atol: float | None = field(default=None, metadata={"help": "Absolute tolerance (overrides the preset's)."})
    rtol: float | None = field(default=None, metadata={
        "help": "Tolerance relative to the output scale (overrides the preset's)."})
    random_batches: tuple[int, ...] = field(default=RANDOM_BATCHES, metadata={"help": "Batch sizes of random-input sets."})
    batch_size: int = field(default=32, metadata={"help": "Batch size for the eval set."})
    threads: int = field(default=0, metadata={"help": "Intra-op threads (0: the runtime's default)."})
    localize: bool | None = field(default=None, metadata={
        "help": "Compare every quadratic layer and block. [default: only when out of tolerance]"})
    check_finite: bool = field(default=False, metadata={"help": "Refuse inputs with NaN or Inf."})
    out: Path | None = field(default=None, metadata={
        "help": "JSON report path. [default: verify_<backend>.json beside the model]"})


@dataclass
class VerifyResult:
    """The verify report (as written to `path`) and the engine that was checked."""

    report: VerifyReport
    path: Path
    engine: Engine

    @property
    def passed(self) -> bool:
        return self.report.passed


def find_reference(model: Path) -> Path:
    """The PyTorch model an ONNX file (or a plan built from one) came from: its export report's `source`."""
    folder = locate(model).model_folder
    if folder is None:
        raise QDeployError(f"cannot tell which PyTorch model {model} came from (no {REPORT_FILE} naming an existing "
                           "source beside it); pass --reference MODEL_FOLDER")
    return folder


def run_verify(engine: Engine, reference: TorchEngine, tolerance: Tolerance | Mapping[str, Tolerance],
               eval_set: EvalSet | None, random_batches: tuple[int, ...], batch_size: int, localize: bool | None,
               threads: int, reference_cache: dict[str, dict[str, np.ndarray]] | None = None) -> VerifyReport:
    """verify(), plus the drift localisation of an ONNX engine that failed (or always with localize=True).

    reference_cache: reference outputs by input set, filled on first use, so several files
    checked against one reference run it once.
    """
    report = verify(engine, reference, tolerance, eval_set, random_batches, batch_size, cache=reference_cache)
    onnx_file = getattr(engine, "path", None)
    wants = localize if localize is not None else not report.passed
    if wants and onnx_file is not None and Path(onnx_file).suffix == ".onnx":
        images = random_batch(tuple(engine.inputs[0].shape[1:]), 2, seed=0)
        backend = engine.backend if engine.backend.startswith("ort-") else "ort-cpu"
        drift_tolerance = tolerance if isinstance(tolerance, Tolerance) else next(iter(tolerance.values()))
        report.drift = localize_drift(onnx_file, reference.model, images, drift_tolerance, backend, threads)
    return report


def int8_fp32_file(model: Path) -> Path | None:
    """The fp32 file an exported int8 file was judged against (kept beside it), or None for other files."""
    stored = locate(model)
    if stored.kind != "onnx" or not stored.report:
        return None
    for info in stored.report.files.values():
        int8 = info.int8 or {}
        if info.file == model.name and int8.get("shipped") == "int8" and int8.get("fp32_file"):
            return model.parent / int8["fp32_file"]
    return None


def agreement_with_fp32(engine: Engine, fp32_file: Path, eval_set: EvalSet, batch_size: int,
                        threads: int) -> dict[str, Any]:
    """The int8 rule on `eval_set`: top-1 agreement of `engine` with the fp32 file and both accuracies."""
    from qdeploy.export.int8 import int8_parity
    from qdeploy.runtime.parity import run_all

    if not fp32_file.is_file():
        raise QDeployError(f"{fp32_file} (the fp32 file this int8 file was judged against) is missing; "
                           "re-export with `qdeploy export --precision int8`")
    fp32 = load_engine(fp32_file, "ort-cpu", threads)
    output = run_all(engine, eval_set.images, batch_size)[engine.outputs[0].name]
    reference = run_all(fp32, eval_set.images, batch_size)[fp32.outputs[0].name]
    return {"file": fp32_file.name, **int8_parity(reference, output, eval_set.labels)}


def verify_model(model: Path, options: VerifyOptions = VerifyOptions()) -> VerifyResult:
    """Compare MODEL (ONNX file, plan or model folder) on a backend with its PyTorch model; writes the report.

    options.data: a labelled eval set, "none", or None for the data the model was trained on (its
    held-out split, as the training record says).
    """
    o = options
    engine = load_engine(model, o.backend, o.threads, o.check_finite)
    if len(engine.inputs) != 1 or len(engine.inputs[0].shape) != 4:
        raise QDeployError(f"{model} does not take one image batch (N, C, H, W); verify compares image classifiers")
    size = engine.inputs[0].shape[2:]
    if not all(isinstance(d, int) for d in size):
        raise QDeployError(f"{model} has a dynamic image size; export it with a fixed --input-size")
    reference_path = o.reference or find_reference(model)
    reference_engine = TorchEngine(reference_path, threads=o.threads, input_size=tuple(size))
    stored = locate(reference_path)  # the natural eval set: the held-out part of its training data
    data = None if o.data == "none" else (o.data or stored.eval_data)
    eval_set = load_eval_set(data, reference_engine.model, tuple(size), o.limit,
                             **(stored.record.split_for(data) if stored.record else {})) if data else None
    report = run_verify(engine, reference_engine, resolve_tolerance(o.precision, o.atol, o.rtol), eval_set,
                        o.random_batches, o.batch_size, o.localize, o.threads)
    fp32_file = int8_fp32_file(model) if model.suffix == ".onnx" else None
    if fp32_file is not None and eval_set is not None:
        int8 = agreement_with_fp32(engine, fp32_file, eval_set, o.batch_size, o.threads)
        report = replace(report, int8_vs_fp32=int8, passed=report.passed and int8["passed"])  # the rule it shipped under
    out = o.out or (model if model.is_dir() else model.parent) / f"verify_{engine.backend}.json"
    report.write(out)
    return VerifyResult(report, out, engine)
