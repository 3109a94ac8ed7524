"""`qdeploy export`: adapted model -> verified ONNX files (decomposed and/or fused) + report."""

from __future__ import annotations

import re
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from qdeploy.errors import QDeployError
from qdeploy.export.int8 import INT8_MAX_ACCURACY_DROP, INT8_TARGETS
from qdeploy.export.int8_accuracy_control import AccuracyControl
from qdeploy.export.onnx_export import DEFAULT_OPSET, PRECISIONS, ExportOptions, export_model, for_stored
from qdeploy.store import REPORT_FILE, ExportedFile, locate
from qdeploy.commands.tables import print_table


def _batch(value: str) -> int | None:
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise QDeployError(f"--batch {value!r} is neither 'dynamic' nor a positive integer; e.g. --batch 8")
    return int(value)


def _input_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", value)
    if not match:
        raise QDeployError(f"--input-size {value!r} is not HxW; e.g. --input-size 224x224")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


@click.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (replaced atomically). [default: export/<source>-onnx]")
@click.option("--mode", type=click.Choice(["decomposed", "fused", "both"]), default="both", show_default=True,
              help="decomposed: standard ONNX ops only; fused: one TensorRT-plugin node per quadratic layer.")
@click.option("--opset", default=DEFAULT_OPSET, show_default=True, help="Default-domain ONNX opset (18-23).")
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic' or a fixed batch size.")
@click.option("--input-size", default=None, help="Spatial size HxW (fixed in the graph). [default: the trained size, else the model's]")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="fp16: the graph computes in float16 with float32 input and output; int8: static QDQ "
                   "quantization (decomposed file), calibrated and checked on --calib.")
@click.option("--calib", default=None,
              help="int8 calibration and parity images: 'digits-shift' or an ImageFolder. "
                   "[default: the data the model was trained on]")
@click.option("--int8-target", type=click.Choice(list(INT8_TARGETS)), default=INT8_TARGETS[0], show_default=True,
              help="ort-cpu: uint8 activations (fast on x86 CPUs); tensorrt: symmetric int8 activations.")
@click.option("--max-accuracy-drop", type=float, default=100 * INT8_MAX_ACCURACY_DROP, show_default=True,
              help="int8: accuracy points the file may lose against the fp32 file (besides >= 99% top-1 "
                   "agreement); the most harmful nodes return to float until it holds.")
@click.option("--int8-max-steps", type=click.IntRange(min=0), default=AccuracyControl.max_steps, show_default=True,
              help="int8: node or activation groups returned to float at most (one per step) before the fp32 file ships.")
@click.option("--rewrites/--no-rewrites", default=True, show_default=True,
              help="Exact graph rewrites: fold the norm after each quadratic layer, per-layer activation form.")
@click.option("--tune/--no-tune", default=True, show_default=True,
              help="Time each layer's forms on ONNX Runtime CPU and keep the fastest (cached); "
                   "--no-tune takes the default form everywhere, for reproducible files.")
@click.option("--tune-cache", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON file of measured layer forms. [default: ~/.cache/qdeploy/layer_forms.json]")
@click.option("--triton-repo", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write the verified model into this Triton model repository "
                   "(decomposed.onnx when exported, else fused.onnx; platform onnxruntime_onnx).")
@click.option("--triton-name", default=None, help="Model name in --triton-repo. [default: the --out folder's name]")
def export(source: Path, out: Path | None, mode: str, opset: int, batch: str, input_size: str | None,
           precision: str, calib: str | None, int8_target: str, max_accuracy_drop: float, int8_max_steps: int,
           rewrites: bool, tune: bool, tune_cache: Path | None,
           triton_repo: Path | None, triton_name: str | None) -> None:
    """Export an adapted model (a train run, its model folder or a checkpoint in one) to ONNX and verify it."""
    stored = locate(source)
    options = for_stored(stored, ExportOptions(
        modes=("decomposed", "fused") if mode == "both" else (mode,), opset=opset, batch=_batch(batch),
        precision=precision, input_size=_input_size(input_size), rewrites=rewrites, tune=tune, tune_cache=tune_cache,
        calibration=calib, int8_target=int8_target,
        int8_control=AccuracyControl(max_accuracy_drop=max_accuracy_drop / 100, max_steps=int8_max_steps)))
    out = out or Path("export") / f"{(source if source.is_dir() else source.parent).resolve().name}-onnx"
    if triton_repo is not None:
        from qdeploy.serving.repository import check_model_name

        triton_name = check_model_name(triton_name or out.resolve().name)  # refuse before the long export
    with Console().status("exporting") as status:
        report = export_model(stored, out, options, progress=lambda text: status.update(text))

    table = Table(title=f"ONNX export of {report.base['name']} ({precision}, batch {report.batch})")
    for column in ("file", "nodes", "plugin nodes", "MB", "max err / scale", "top-1 agree", "export s"):
        table.add_column(column)
    for info in report.files.values():
        worst = max(info.parity.values(), key=lambda stats: stats["max_rel"])
        top1 = min(stats["top1_agreement"] for stats in info.parity.values())
        table.add_row(info.file, str(info.nodes_total), str(info.plugin_nodes), f"{info.file_bytes / 1e6:.1f}",
                      f"{worst['max_rel']:.1e}", f"{top1:.0%}", f"{info.export_s:.1f}")
    console = Console()
    print_table(console, table)
    tolerance = report.tolerance
    console.print(f"parity passed (tolerance atol {tolerance['atol']:.0e} + rtol {tolerance['rtol']:.0e} of the "
                  f"output scale); report: {out / REPORT_FILE}")
    for info in report.files.values():
        _print_rewrites(info, console)
    if triton_repo is not None:
        _write_triton(triton_repo, triton_name, out / report.files[options.modes[0]].file, options.batch)


def _print_rewrites(info: ExportedFile, console: Console) -> None:
    """One line on the rewrites of a file and, for int8, one on its answers."""
    rewrites = info.rewrites
    if rewrites["enabled"]:
        forms = [layer.get("form") for layer in rewrites["layers"].values() if layer.get("form")]
        counts = ", ".join(f"{forms.count(f)} {f}" for f in sorted(set(forms))) or "none to choose"
        console.print(f"{info.file}: {rewrites['folded_norms']} norms folded into quadratic layers; "
                      f"activation forms: {counts}")
    if info.int8 is not None:
        _print_int8(info.file, info.int8, console)


def _print_int8(file: str, q: dict, console: Console) -> None:
    """The accuracy control's steps (float groups, answers, latency vs fp32) and what shipped."""
    table = Table(title=f"{file}: int8 steps judged on {q['images']} {q['calibration']} images vs the fp32 file "
                        f"(accuracy {q['reference_accuracy']:.1%}; {q['ranking_images']} others calibrated and ranked; "
                        f"{len(q['narrowed_ranges'])} ranges narrowed around clipped sums)")
    batches = list(q["steps"][0]["latency"]["batches"])
    for column in ("step", "float nodes", "last group returned to float", "agree", "acc drop", "rule",
                   *(f"b{b} vs fp32" for b in batches)):
        table.add_column(column)
    for step in q["steps"]:
        table.add_row(str(step["step"]), str(len(step["float_nodes"])), (step["float_groups"] or ["-"])[-1],
                      f"{step['top1_agreement']:.1%}", f"{100 * step['accuracy_drop']:+.1f} pt",
                      "met" if step["passed"] else "missed",
                      *(f"{step['latency']['batches'][b]['ratio']:.2f}x" for b in batches))
    print_table(console, table)
    console.print(f"{file}: shipped {q['shipped']}: {q['reason']}")


def _write_triton(repo: Path, name: str, model_path: Path, batch: int | None) -> None:
    """The exported file as `<repo>/<name>/1/model.onnx` + config.pbtxt (issue #7's layout).

    A dynamic-batch export lets Triton batch requests (max_batch_size MAX_BATCH); a fixed --batch N
    graph has no free batch axis, so it is served as is (max_batch_size 0).
    """
    from qdeploy.serving.repository import CONFIG_FILE, MAX_BATCH, write_triton_model

    folder = write_triton_model(repo, name, model_path, max_batch=MAX_BATCH if batch is None else 0)
    Console().print(f"Triton model: {folder / CONFIG_FILE} and {folder / '1'}/")
