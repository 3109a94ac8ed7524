"""`qdeploy verify`: does a deployed model (ONNX, plan, model folder) still give the PyTorch answers?

Exit status 0 when every input set is within tolerance, 1 when one is not (after printing
where the drift starts), 2 for bad input (a QDeployError).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from qdeploy import atomic
from qdeploy.commands.parsing import parse_ints
from qdeploy.errors import QDeployError
from qdeploy.runtime import BACKENDS, Engine, load_engine
from qdeploy.runtime.drift import localize_drift
from qdeploy.data.eval_set import EvalSet, load_eval_set, training_split
from qdeploy.compare import PRESETS, Tolerance, resolve_tolerance
from qdeploy.runtime.parity import verify
from qdeploy.runtime.torch_engine import TorchEngine
from qdeploy.store import REPORT_FILE, locate
from qdeploy.commands.tables import print_table


def find_reference(model: Path) -> Path:
    """The PyTorch model an ONNX file (or a plan built from one) came from: its export report's `source`."""
    folder = locate(model).model_folder
    if folder is None:
        raise QDeployError(f"cannot tell which PyTorch model {model} came from (no {REPORT_FILE} naming an existing "
                           "source beside it); pass --reference MODEL_FOLDER")
    return folder


def run_verify(engine: Engine, reference: TorchEngine, tolerance: Tolerance, eval_set: EvalSet | None,
               random_batches: tuple[int, ...], batch_size: int, localize: bool | None, threads: int) -> dict[str, Any]:
    """verify(), plus the drift localisation of an ONNX engine that failed (or always with localize=True)."""
    report = verify(engine, reference, tolerance, eval_set, random_batches, batch_size)
    onnx_file = getattr(engine, "path", None)
    wants = localize if localize is not None else not report["passed"]
    if wants and onnx_file is not None and Path(onnx_file).suffix == ".onnx":
        from qdeploy.export.parity import random_batch

        images = random_batch(tuple(engine.inputs[0].shape[1:]), 2, seed=0).numpy()
        backend = engine.backend if engine.backend.startswith("ort-") else "ort-cpu"
        report["drift"] = localize_drift(onnx_file, reference.model, images, tolerance, backend, threads)
    return report


def print_report(report: dict[str, Any], console: Console) -> None:
    tol = report["tolerance"]
    limits = (f"atol {tol['atol']:.0e}, rtol {tol['rtol']:.0e} of scale" if "atol" in tol
              else "per-output tolerances")
    table = Table(title=f"{Path(report['model']).name or 'model'} on {report['backend']} vs PyTorch ({limits})")
    several = len({s["output"] for s in report["sets"]}) > 1
    for column in ("set", *(("output",) if several else ()), "n", "max abs", "q99 abs", "max rel", "cosine", "top-1",
                   "top-5", "acc torch", "acc", "ok"):
        table.add_column(column, no_wrap=True)
    percent = lambda value: "-" if value is None else f"{value:.1%}"  # noqa: E731
    for s in report["sets"]:
        table.add_row(s["name"], *((s["output"],) if several else ()), str(s["images"]), f"{s['max_abs']:.2e}",
                      f"{s['quantile_abs']:.2e}", f"{s['max_rel']:.2e}", f"{s['cosine']:.5f}",
                      percent(s["top1_agreement"]), percent(s["top5_agreement"]), percent(s["reference_accuracy"]),
                      percent(s["backend_accuracy"]), "yes" if s["passed"] else "[red]NO[/red]")
    print_table(console, table)
    drift = report.get("drift")
    if drift:
        if drift["first_layer"] or drift["first_block"]:
            console.print(f"drift starts at quadratic layer {drift['first_layer'] or '-'} "
                          f"(first block past tolerance: {drift['first_block'] or '-'})")
        elif drift["uncompared"] or drift["missing"]:
            unchecked = drift["uncompared"] + drift["missing"]
            console.print(f"no compared layer is past tolerance, but {len(unchecked)} could not be compared "
                          f"(shape differs or not found in the graph): {', '.join(unchecked)}")
        else:
            console.print("every quadratic layer and block is within tolerance; the drift comes from another layer")


@click.command("verify")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="PyTorch model folder to compare with. [default: the source named in export_report.json]")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--data", default=None, help="Labelled eval set: 'digits-shift', an ImageFolder path, or 'none'. "
              "[default: the data the model was trained on]")
@click.option("--limit", type=int, default=None, help="Use at most N eval images.")
@click.option("--precision", type=click.Choice(list(PRESETS)), default="fp32", show_default=True,
              help="Tolerance preset.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance (overrides the preset's).")
@click.option("--rtol", type=float, default=None, help="Tolerance relative to the output scale (overrides the preset's).")
@click.option("--random-batches", default="1,8", show_default=True, help="Batch sizes of random-input sets.")
@click.option("--batch-size", default=32, show_default=True, help="Batch size for the eval set.")
@click.option("--threads", default=0, show_default=True, help="Intra-op threads (0: the runtime's default).")
@click.option("--localize/--no-localize", default=None,
              help="Compare every quadratic layer and block. [default: only when out of tolerance]")
@click.option("--check-finite", is_flag=True, help="Refuse inputs with NaN or Inf.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON report path. [default: verify_<backend>.json beside the model]")
def verify_command(model: Path, reference: Path | None, backend: str, data: str | None, limit: int | None,
                   precision: str, atol: float | None, rtol: float | None, random_batches: str, batch_size: int,
                   threads: int, localize: bool | None, check_finite: bool, out: Path | None) -> None:
    """Compare MODEL (ONNX file, TensorRT plan or model folder) on a backend with the PyTorch model."""
    tolerance = resolve_tolerance(precision, atol, rtol)
    engine = load_engine(model, backend, threads, check_finite)
    console = Console()
    console.print(f"backend: {engine.describe()}")
    if len(engine.inputs) != 1 or len(engine.inputs[0].shape) != 4:
        raise QDeployError(f"{model} does not take one image batch (N, C, H, W); verify compares image classifiers")
    size = engine.inputs[0].shape[2:]
    if not all(isinstance(d, int) for d in size):
        raise QDeployError(f"{model} has a dynamic image size; export it with a fixed --input-size")
    reference_path = reference or find_reference(model)
    reference_engine = TorchEngine(reference_path, threads=threads, input_size=tuple(size))
    training = locate(reference_path).record  # the natural eval set: the held-out part of its training data
    data = None if data == "none" else (data or training.get("data"))
    eval_set = load_eval_set(data, reference_engine.model, tuple(size), limit,
                             **training_split(training, data)) if data else None
    report = run_verify(engine, reference_engine, tolerance, eval_set, parse_ints(random_batches, "--random-batches", minimum=1),
                        batch_size, localize, threads)
    out = out or (model if model.is_dir() else model.parent) / f"verify_{engine.backend}.json"
    atomic.write_json(out, report)
    print_report(report, console)
    console.print(f"report: {out}")
    if not report["passed"]:
        console.print("[red]out of tolerance[/red]")
        sys.exit(1)
