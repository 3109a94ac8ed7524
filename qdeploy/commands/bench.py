"""`qdeploy bench`: latency and throughput of exported models, backends side by side, vs the base model.

Targets are ONNX files (or export folders: both modes), TensorRT plans and model folders
(run by PyTorch). With an adapted model among them (or named by an export report), its
unadapted base model runs beside each backend, so the quadratic overhead is a ratio.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Sequence

import click
from rich.console import Console
from rich.table import Table

from qdeploy import atomic
from qdeploy.commands.parsing import parse_ints
from qdeploy.errors import QDeployError
from qdeploy.runtime import BACKENDS, load_engine
from qdeploy.export.base_model import base_of, export_plain_onnx
from qdeploy.runtime.benchmark import Measurement, Target, run_benchmark, write_results
from qdeploy.runtime.profile import Profile, profile_onnx
from qdeploy.runtime.torch_engine import TorchEngine
from qdeploy.store import PLAN_SUFFIXES, load, locate
from qdeploy.commands.tables import print_table

PROFILE_RUNS = 20  # profiled runs per file, batch and thread count (at most --iterations)


def _engine_factory(path: Path, backend: str, **options):
    return lambda threads: load_engine(path, backend, threads, **options)


def expand_targets(paths: Sequence[Path], backends: Sequence[str]) -> tuple[list[Target], Path | None, tuple[int, ...] | None]:
    """Targets for the given paths; also the adapted model folder found (for --base) and the image size."""
    targets: list[Target] = []
    model_folder: Path | None = None
    size: tuple[int, ...] | None = None
    for path in paths:
        stored = locate(path)
        if stored.kind == "model":
            label = "adapted torch" if model_folder is None else f"{path.name} torch"
            model_folder = model_folder or stored.model_folder
            targets.append(Target(label, _engine_factory(path, "torch"), base="base torch"))
            continue
        model_folder = model_folder or stored.model_folder  # named by the export report beside it
        if stored.report is not None:
            size = size or tuple(stored.report["input"]["shape"][2:])
        for file in stored.files:
            for backend in (("tensorrt",) if file.suffix in PLAN_SUFFIXES else backends):
                targets.append(Target(f"{file.stem} {backend}", _engine_factory(file, backend), base=f"base {backend}",
                                      onnx=file if backend == "ort-cpu" else None))
    return targets, model_folder, size


def base_targets(model_folder: Path, targets: Sequence[Target], backends: Sequence[str], out: Path,
                 size: tuple[int, ...] | None) -> list[Target]:
    """The unadapted model on every backend the targets use (its ONNX file written to `out`)."""
    stored = load(model_folder)
    base, trained_size = base_of(stored.model), stored.image_size
    input_size = tuple(size) if size else ((trained_size,) * 2 if trained_size else None)
    engine = TorchEngine(base, input_size=input_size)
    wanted = {t.base for t in targets}
    extra: list[Target] = []
    if "base torch" in wanted:
        extra.append(Target("base torch", lambda threads: TorchEngine(base, threads=threads, input_size=input_size)))
    onnx_backends = [b for b in backends if f"base {b}" in wanted]
    if onnx_backends:
        path = export_plain_onnx(base, out / "base.onnx", tuple(engine.inputs[0].shape[1:]))
        extra += [Target(f"base {b}", _engine_factory(path, b), onnx=path if b == "ort-cpu" else None)
                  for b in onnx_backends]
    return extra


def print_results(results: Sequence[Measurement], console: Console, title: str = "latency") -> None:
    """p50/p90/p99 and images/s per target (mean is in bench.json): numbers never wrap, labels do."""
    table = Table(title=f"{title} (ms; ratios of p50)")
    for column in ("target", "batch", "thr", "p50", "p90", "p99", "img/s", "vs first", "vs base"):
        table.add_column(column, overflow="fold", no_wrap=column != "target", min_width=3)
    ratio = lambda value: "-" if value is None else f"{value:.2f}x"  # noqa: E731
    for m in results:
        table.add_row(m.label, str(m.batch), str(m.threads), f"{m.p50_ms:.1f}", f"{m.p90_ms:.1f}", f"{m.p99_ms:.1f}",
                      f"{m.throughput:.1f}", ratio(m.vs_first), ratio(m.vs_base))
    print_table(console, table)


def print_profile(profile: Profile, console: Console, top_ops: int = 3) -> None:
    """Two tables: ms per op type, and ms per quadratic layer with its costliest op types."""
    title = f"{Path(profile.file).name}, batch {profile.batch}, {profile.threads} thread(s)"
    total = profile.node_ms or 1.0
    ops = Table(title=f"profile of {title}: {profile.node_ms:.2f} ms of node time per inference")
    for column in ("op type", "ms", "share"):
        ops.add_column(column, overflow="fold", no_wrap=column != "op type")
    for op, ms in profile.by_op.items():
        ops.add_row(op, f"{ms:.3f}", f"{ms / total:.1%}")
    print_table(console, ops)
    if not profile.by_layer:
        return
    layers = Table(title=f"quadratic layers of {title}: {profile.layers_ms:.2f} ms "
                         f"({profile.layers_ms / total:.1%}; primary conv included)")
    for column in ("layer", "ms", "share", "by op type (ms)"):
        layers.add_column(column, overflow="fold", no_wrap=column in ("ms", "share"))
    for layer, by_op in profile.by_layer.items():
        ms = sum(by_op.values())
        detail = ", ".join(f"{op} {t:.2f}" for op, t in list(by_op.items())[:top_ops])
        layers.add_row(layer, f"{ms:.3f}", f"{ms / total:.1%}", detail)
    print_table(console, layers)


def machine() -> dict[str, object]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()}


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backend", "backends", multiple=True, type=click.Choice([b for b in BACKENDS if b.startswith("ort-")]),
              default=("ort-cpu",), show_default=True, help="ONNX Runtime backends for ONNX files (repeatable).")
@click.option("--batch", "batches", default="1,32", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", default=None, help="Thread counts, comma-separated. [default: this machine's CPU count]")
@click.option("--warmup", default=5, show_default=True, help="Untimed runs before timing.")
@click.option("--iterations", default=100, show_default=True, help="Timed runs (at most).")
@click.option("--time-budget", type=float, default=None, help="Seconds per measurement (stops early).")
@click.option("--rounds", default=1, show_default=True,
              help="Interleave the targets: each of N rounds times every target (a share of the runs).")
@click.option("--base/--no-base", default=True, show_default=True,
              help="Also run the unadapted base model (needs the adapted model folder or an export report naming it).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench"), show_default=True,
              help="Folder for bench.json, bench.csv, bench.png (and profile.json).")
@click.option("--profile", is_flag=True, help="Also profile every ONNX file on ort-cpu (ONNX Runtime's profiler): "
              "time per op type and per quadratic layer, at each batch and thread count.")
def bench(models: tuple[Path, ...], backends: tuple[str, ...], batches: str, threads: str | None, warmup: int,
          iterations: int, time_budget: float | None, rounds: int, base: bool, out: Path, profile: bool) -> None:
    """Measure latency (p50/p90/p99/mean) and throughput of MODELS side by side."""
    batch_sizes = parse_ints(batches, "--batch", minimum=1)
    thread_counts = parse_ints(threads, "--threads") if threads else (os.cpu_count() or 1,)
    targets, model_folder, size = expand_targets(models, backends)
    if base:
        if model_folder is None:
            raise QDeployError("--base needs the adapted model, and no export report beside the files names an existing one: "
                               "pass its folder too, or use --no-base")
        targets += base_targets(model_folder, targets, backends, out, size)
    console = Console()
    with console.status("benchmarking") as status:
        results = run_benchmark(targets, batch_sizes, thread_counts, warmup, iterations, time_budget,
                                progress=lambda text: status.update(f"benchmarking {text}"), rounds=rounds)
    paths = write_results(results, out, {"machine": machine(), "models": [str(m) for m in models]})
    print_results(results, console)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    if profile:
        profiles = [profile_onnx(t.onnx, b, n, runs=min(iterations, PROFILE_RUNS), warmup=warmup)
                    for n in thread_counts for t in targets if t.onnx is not None for b in batch_sizes]
        if not profiles:
            raise QDeployError("--profile needs an ONNX file run on ort-cpu; pass an export folder or .onnx file")
        for item in profiles:
            print_profile(item, console)
        atomic.write_json(out / "profile.json", {"machine": machine(), "profiles": [p.to_dict() for p in profiles]})
        console.print(f"wrote {out / 'profile.json'}")
