"""`qdeploy bench`: parses the options of `qdeploy.workflows.bench.bench` and prints its tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import click
from rich.console import Console
from rich.table import Table

from qdeploy.commands.parsing import dataclass_options, parse_dataclass_options
from qdeploy.commands.tables import print_table
from qdeploy.runtime.benchmark import Measurement
from qdeploy.runtime.profile import Profile
from qdeploy.workflows.bench import BenchOptions, bench as run_bench


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
@dataclass_options(BenchOptions)
def bench(models: tuple[Path, ...], **options: Any) -> None:
    """Measure latency (p50/p90/p99/mean) and throughput of MODELS side by side."""
    console = Console()
    with console.status("benchmarking") as status:
        result = run_bench(models, parse_dataclass_options(BenchOptions, options),
                           progress=lambda text: status.update(f"benchmarking {text}"))
    print_results(result.results, console)
    console.print("wrote " + ", ".join(str(p) for name, p in result.paths.items() if name != "profile"))
    for item in result.profiles:
        print_profile(item, console)
    if "profile" in result.paths:
        console.print(f"wrote {result.paths['profile']}")
