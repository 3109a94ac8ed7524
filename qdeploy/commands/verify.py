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

from qdeploy.commands.parsing import dataclass_options, parse_dataclass_options
from qdeploy.commands.tables import print_table
from qdeploy.store import VerifyReport
from qdeploy.workflows.verify import VerifyOptions, verify_model


def print_report(report: VerifyReport, console: Console) -> None:
    tol = report.tolerance
    limits = (f"atol {tol['atol']:.0e}, rtol {tol['rtol']:.0e} of scale" if "atol" in tol
              else "per-output tolerances")
    table = Table(title=f"{Path(report.model).name or 'model'} on {report.backend} vs PyTorch ({limits})")
    several = len({s["output"] for s in report.sets}) > 1
    for column in ("set", *(("output",) if several else ()), "n", "max abs", "q99 abs", "max rel", "cosine", "top-1",
                   "top-5", "acc torch", "acc", "ok"):
        table.add_column(column, no_wrap=True)
    percent = lambda value: "-" if value is None else f"{value:.1%}"  # noqa: E731
    for s in report.sets:
        table.add_row(s["name"], *((s["output"],) if several else ()), str(s["images"]), f"{s['max_abs']:.2e}",
                      f"{s['quantile_abs']:.2e}", f"{s['max_rel']:.2e}", f"{s['cosine']:.5f}",
                      percent(s["top1_agreement"]), percent(s["top5_agreement"]), percent(s["reference_accuracy"]),
                      percent(s["backend_accuracy"]), "yes" if s["passed"] else "[red]NO[/red]")
    print_table(console, table)
    int8 = report.int8_vs_fp32
    if int8:
        console.print(f"int8 vs its fp32 file {int8['file']}: top-1 agreement {int8['top1_agreement']:.1%} on "
                      f"{int8['images']} images, accuracy {int8['int8_accuracy']:.1%} (fp32 "
                      f"{int8['reference_accuracy']:.1%}): int8 rule {'met' if int8['passed'] else 'missed'}")
    drift = report.drift
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
@dataclass_options(VerifyOptions)
def verify_command(model: Path, **options: Any) -> None:
    """Compare MODEL (ONNX file, TensorRT plan or model folder) on a backend with the PyTorch model."""
    result = verify_model(model, parse_dataclass_options(VerifyOptions, options))
    console = Console()
    console.print(f"backend: {result.engine.describe()}")
    print_report(result.report, console)
    console.print(f"report: {result.path}")
    if not result.passed:
        console.print("[red]out of tolerance[/red]")
        sys.exit(1)
