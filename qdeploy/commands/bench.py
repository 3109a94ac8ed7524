"""`qdeploy bench`: parses the options of `qdeploy.workflows.bench.bench` and prints its tables."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click
from rich.console import Console
from rich.table import Table

from qdeploy.commands.parsing import parse_ints
from qdeploy.commands.tables import print_table
from qdeploy.runtime import BACKENDS
from qdeploy.runtime.benchmark import Measurement
from qdeploy.runtime.profile import Profile
from qdeploy.workflows.bench import bench as run_bench


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
    console = Console()
    with console.status("benchmarking") as status:
        result = run_bench(models, backends, parse_ints(batches, "--batch", minimum=1),
                           parse_ints(threads, "--threads") if threads else None, warmup, iterations, time_budget,
                           rounds, base, out, profile, progress=lambda text: status.update(f"benchmarking {text}"))
    print_results(result.results, console)
    console.print("wrote " + ", ".join(str(p) for name, p in result.paths.items() if name != "profile"))
    for item in result.profiles:
        print_profile(item, console)
    if "profile" in result.paths:
        console.print(f"wrote {result.paths['profile']}")
