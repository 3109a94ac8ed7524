"""Does an alternated timing need its untimed opening run? First-run effect and round spread (issue 20).

qdeploy.timing.time_alternating opens each block with an untimed run, because right after the
other model ran, batch 1 at 64 px read the adapted/base ratio low on the first run. At 224 px,
batch 32 a run takes ~100 ms, so that run halves the cycles a second of blocks pairs, and the
plan's check rounds spread (0.98-1.15x for one set). Two measurements per image size and batch,
base against one adapted file (random terms, exported as the plan exports), ORT CPU sessions that
stop spinning when a run ends:

    positions   cycles of blocks of `--positions` timed runs each, none untimed, in reversing order:
                the median over cycles of the adapted/base ratio at each position in the block
                (a first-run effect reads as position 1 apart from the rest) and each file's ms
    rounds      `--rounds` rounds of each schedule, taking turns, both files loaded afresh per round,
                `--seconds` of blocks per file as the plan's check times them: "settle" opens every
                block with an untimed run, "no settle" opens none (settled_run_s 0); per schedule
                the median, min-max and sd of the rounds' paired ratios and the cycles per round

Run alone on the machine:

    python benchmarks/block_settle.py --json benchmarks/results/block_settle.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_report  # noqa: E402
from qdeploy.commands import tables  # noqa: E402
from qdeploy.errors import exit_on_user_error  # noqa: E402
from qdeploy.export.base_model import export_plain_onnx  # noqa: E402
from qdeploy.models.sources import BUILTIN_DEFAULT, load_base_model  # noqa: E402
from qdeploy.runtime import load_engine  # noqa: E402
from qdeploy.timing import BLOCK_SETTLE_S, paired_ratio, time_alternating, timed_turn  # noqa: E402
from qdeploy.workflows.latency_plan import PlanOptions, export_timing_file  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "block_settle.json"
SCHEDULES = {"settle": math.inf, "no settle": 0.0}  # time_alternating's settled_run_s


def _engines(files: dict[str, Path], threads: int) -> dict:
    return {label: load_engine(path, "ort-cpu", threads, spin_after_run=False) for label, path in files.items()}


def _runs(engines: dict, batch: int) -> dict:
    feeds = {}
    for label, engine in engines.items():
        rng = np.random.default_rng(0)
        feeds[label] = {spec.name: rng.standard_normal(spec.example_shape(batch)).astype(spec.dtype)
                        for spec in engine.inputs}
    return {label: (lambda e=engine, f=feeds[label]: e.infer(f)) for label, engine in engines.items()}


def positions(files: dict[str, Path], batch: int, threads: int, per_block: int, seconds: float) -> dict:
    """Median adapted/base ratio at each position of blocks with no untimed run, and each file's median ms."""
    runs = _runs(_engines(files, threads), batch)
    for run in runs.values():
        run()
    blocks: dict[str, list[list[float]]] = {label: [] for label in runs}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(blocks["base"]) < 4:
        order = list(runs) if len(blocks["base"]) % 2 == 0 else list(runs)[::-1]
        for label in order:
            blocks[label].append(timed_turn(runs[label], 0, per_block))
    ratios = [statistics.median(a[i] / b[i] for a, b in zip(blocks["adapted"], blocks["base"]))
              for i in range(per_block)]
    return {"cycles": len(blocks["base"]), "ratio_by_position": ratios,
            "ms": {label: 1e3 * statistics.median(t for block in own for t in block) for label, own in blocks.items()}}


def rounds(files: dict[str, Path], batch: int, threads: int, count: int, seconds: float) -> dict:
    """Per schedule: every round's paired ratio and cycles, rounds of the two schedules taking turns."""
    result = {name: {"ratios": [], "cycles": []} for name in SCHEDULES}
    for index in range(count):
        order = list(SCHEDULES) if index % 2 == 0 else list(SCHEDULES)[::-1]
        for name in order:
            runs = _runs(_engines(files, threads), batch)
            cycles = time_alternating(runs, 10**9, seconds, warmup=3, settle_s=BLOCK_SETTLE_S,
                                      settled_run_s=SCHEDULES[name])
            result[name]["ratios"].append(paired_ratio(cycles["adapted"], cycles["base"]))
            result[name]["cycles"].append(len(cycles["base"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", nargs="+", default=["blocks.1.0.conv_dw", "blocks.4.0.conv_dw"],
                        help="the adapted file's layers (an early and a late depthwise conv)")
    parser.add_argument("--positions", type=int, default=3, help="timed runs per block in the positions study")
    parser.add_argument("--position-seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=9, help="rounds per schedule")
    parser.add_argument("--seconds", type=float, default=PlanOptions().check_seconds,
                        help="seconds of blocks per file in a round [the plan check's]")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    console = Console()
    model = load_base_model(BUILTIN_DEFAULT).eval()
    rows = []
    with tempfile.TemporaryDirectory(prefix="block-settle-") as tmp:
        for size in args.sizes:
            options = PlanOptions(input_size=(size, size), threads=args.threads)
            files = {"adapted": export_timing_file(model, args.layers, Path(tmp) / f"adapted{size}", (size, size),
                                                   options),
                     "base": export_plain_onnx(model, Path(tmp) / f"base{size}.onnx", (3, size, size))}
            for batch in args.batches:
                console.print(f"{size} px, batch {batch}: positions, then {args.rounds} rounds per schedule")
                rows.append({"size": size, "batch": batch,
                             "positions": positions(files, batch, args.threads, args.positions, args.position_seconds),
                             "rounds": rounds(files, batch, args.threads, args.rounds, args.seconds)})
    table = Table(title=f"adapted ({len(args.layers)} layers) / base, ORT CPU, {args.threads} threads: ratio by "
                        "position in a block with no untimed run; rounds of the plan's check per schedule")
    for column in ("px", "batch", "ms base", "ms adapted", "cycles", *[f"pos {i + 1}" for i in range(args.positions)],
                   *[f"{name} {stat}" for name in SCHEDULES for stat in ("median", "min-max", "sd", "cycles")]):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        pos = row["positions"]
        stats = []
        for name in SCHEDULES:
            ratios = row["rounds"][name]["ratios"]
            stats += [f"{statistics.median(ratios):.3f}x", f"{min(ratios):.3f}-{max(ratios):.3f}",
                      f"{statistics.stdev(ratios):.3f}" if len(ratios) > 1 else "-",
                      f"{statistics.median(row['rounds'][name]['cycles']):.0f}"]
        table.add_row(str(row["size"]), str(row["batch"]), f"{pos['ms']['base']:.1f}", f"{pos['ms']['adapted']:.1f}",
                      str(pos["cycles"]), *[f"{r:.3f}x" for r in pos["ratio_by_position"]], *stats)
    tables.print_table(console, table)
    write_report(args.json, args, console, benchmark="block_settle", model=BUILTIN_DEFAULT, rows=rows)


if __name__ == "__main__":
    exit_on_user_error(main)
