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

from qdeploy.commands.parsing import parse_ints
from qdeploy.commands.tables import print_table
from qdeploy.compare import PRESETS, resolve_tolerance
from qdeploy.runtime import BACKENDS
from qdeploy.workflows.verify import verify_model


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
    int8 = report.get("int8_vs_fp32")
    if int8:
        console.print(f"int8 vs its fp32 file {int8['file']}: top-1 agreement {int8['top1_agreement']:.1%} on "
                      f"{int8['images']} images, accuracy {int8['int8_accuracy']:.1%} (fp32 "
                      f"{int8['reference_accuracy']:.1%}): int8 rule {'met' if int8['passed'] else 'missed'}")
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
    result = verify_model(model, resolve_tolerance(precision, atol, rtol), reference, backend, data, limit,
                          parse_ints(random_batches, "--random-batches", minimum=1), batch_size, threads, localize,
                          check_finite, out)
    console = Console()
    console.print(f"backend: {result.engine.describe()}")
    print_report(result.report, console)
    console.print(f"report: {result.path}")
    if not result.passed:
        console.print("[red]out of tolerance[/red]")
        sys.exit(1)
