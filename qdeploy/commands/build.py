"""`qdeploy build MODEL.onnx`: a TensorRT engine (model.plan + engine.json) for this GPU."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from qdeploy.runtime.plugin_library import PLUGIN_KINDS
from qdeploy.runtime.tensorrt_build import PRECISIONS, BuildOptions, build_engine


@click.command("build")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Output folder for model.plan and engine.json (replaced atomically). [default: <MODEL>-engine/ "
                   "beside the ONNX file]")
@click.option("--min-batch", type=int, default=1, show_default=True, help="Smallest batch of the profile.")
@click.option("--opt-batch", type=int, default=8, show_default=True, help="Batch TensorRT tunes for.")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Largest batch of the profile.")
@click.option("--workspace", type=int, default=4096, show_default=True, help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Kernel timing cache file: read when present, updated after the build (faster rebuilds).")
@click.option("--plugin", type=click.Choice(PLUGIN_KINDS), default="auto", show_default=True,
              help="Plugins for fused nodes: cpp library, python (Triton AOT), none, or auto (cpp if built, "
                   "else python if usable, else none).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: the ONNX graph's. TensorRT 10 also lowers fp32 graphs with --precision fp16; "
                   "TensorRT 11 takes precision from the graph only.")
def build(onnx_path: Path, out: Path | None, min_batch: int, opt_batch: int, max_batch: int, workspace: int,
          timing_cache: Path | None, plugin: str, precision: str) -> None:
    """Build a TensorRT plan from an exported ONNX file (TensorRT 10 or 11, on the GPU it will run on)."""
    options = BuildOptions(onnx_path, out or onnx_path.parent / f"{onnx_path.stem}-engine", min_batch, opt_batch,
                           max_batch, workspace, timing_cache, plugin, precision)
    options.check()
    console = Console()
    with console.status(f"building a TensorRT engine from {onnx_path} (minutes for large models)..."):
        info = build_engine(options)
    console.print(f"wrote {options.out_dir}/model.plan and engine.json: TensorRT {info.tensorrt_version}, "
                  f"{info.gpu_name}, {info.precision}, plugins {info.plugins}, {info.build_seconds:.1f} s")
    for note in info.notes:
        console.print(f"note: {note}")
