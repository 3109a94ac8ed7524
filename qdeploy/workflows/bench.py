"""`qdeploy bench` as a function: latency of exported models, backends side by side, vs the base model.

Targets are ONNX files (or export folders: both modes), TensorRT plans and model folders
(run by PyTorch). With an adapted model among them (or named by the export report beside a
file), its unadapted base model runs beside each backend, so the quadratic overhead is a ratio.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from qdeploy import atomic
from qdeploy.errors import QDeployError
from qdeploy.export.base_model import base_of, export_plain_onnx
from qdeploy.runtime import BACKENDS, load_engine
from qdeploy.runtime.benchmark import SCHEDULES, Measurement, Target, run_benchmark, write_results
from qdeploy.runtime.profile import Profile, profile_onnx
from qdeploy.runtime.torch_engine import TorchEngine
from qdeploy.store import PLAN_SUFFIXES, load, locate

PROFILE_RUNS = 20  # profiled runs per file, batch and thread count (at most `iterations`)
ORT_BACKENDS = tuple(b for b in BACKENDS if b.startswith("ort-"))


@dataclass(frozen=True)
class BenchOptions:
    """Every setting of a bench run (the CLI's options are generated from these fields)."""

    backends: tuple[str, ...] = field(default=("ort-cpu",), metadata={
        "option": "--backend", "choices": ORT_BACKENDS, "help": "ONNX Runtime backends for ONNX files (repeatable)."})
    batches: tuple[int, ...] = field(default=(1, 32), metadata={"option": "--batch", "help": "Batch sizes."})
    threads: tuple[int, ...] = field(default=(os.cpu_count() or 1,), metadata={"help": "Thread counts."})
    warmup: int = field(default=5, metadata={"help": "Untimed runs before timing."})
    iterations: int = field(default=100, metadata={"help": "Timed runs (at most)."})
    time_budget: float | None = field(default=None, metadata={"help": "Seconds per measurement (stops early)."})
    rounds: int = field(default=5, metadata={
        "help": "Interleave the targets: each of N rounds times every target (a share of the runs and of "
                "--time-budget), so a load change hits all alike; 1: one target after another."})
    schedule: str = field(default="turns", metadata={"choices": SCHEDULES, "help": (
        "turns: every target in --rounds settled turns, sessions as deployed; alternate: ONNX Runtime targets in "
        "alternating short blocks, sessions stopping their spinning after each run (how the latency plan and the "
        "pipeline time; one round), the others in turns.")})
    base: bool = field(default=True, metadata={
        "help": "Also run the unadapted base model (needs the adapted model folder or an export report naming it)."})
    out: Path = field(default=Path("bench"), metadata={"help": "Folder for bench.json, bench.csv, bench.png (and "
                                                               "profile.json)."})
    profile: bool = field(default=False, metadata={
        "help": "Also profile every ONNX file on ort-cpu (ONNX Runtime's profiler): time per op type and per "
                "quadratic layer, at each batch and thread count."})


@dataclass
class BenchResult:
    """The measurements, the files written (bench.json/csv/png, profile.json) and the profiles."""

    results: list[Measurement]
    paths: dict[str, Path]
    profiles: list[Profile] = field(default_factory=list)


def engine_factory(path: Path, backend: str, **options):
    """threads -> the engine of `path` on `backend` (`options`: load_engine's keywords)."""
    return lambda threads: load_engine(path, backend, threads, **options)


def expand_targets(paths: Sequence[Path], backends: Sequence[str],
                   **ort_options) -> tuple[list[Target], Path | None, tuple[int, ...] | None]:
    """Targets for the given paths (ONNX Runtime engines loaded with `ort_options`); also the adapted model
    folder found (for --base) and the image size."""
    targets: list[Target] = []
    model_folder: Path | None = None
    size: tuple[int, ...] | None = None
    for path in paths:
        stored = locate(path)
        if stored.kind == "model":
            label = "adapted torch" if model_folder is None else f"{path.name} torch"
            model_folder = model_folder or stored.model_folder
            targets.append(Target(label, engine_factory(path, "torch"), base="base torch", backend="torch"))
            continue
        model_folder = model_folder or stored.model_folder  # named by the export report beside it
        size = size or stored.input_size
        for file in stored.files:
            for backend in (("tensorrt",) if file.suffix in PLAN_SUFFIXES else backends):
                options = ort_options if backend in ORT_BACKENDS else {}
                targets.append(Target(f"{file.stem} {backend}", engine_factory(file, backend, **options),
                                      base=f"base {backend}", onnx=file if backend == "ort-cpu" else None,
                                      backend=backend))
    return targets, model_folder, size


def base_targets(model: nn.Module, targets: Sequence[Target], backends: Sequence[str], out: Path,
                 input_size: tuple[int, ...] | None, **engine_options) -> list[Target]:
    """The unadapted `model` on every backend the targets use (its ONNX file written to `out`; its engines
    loaded with `engine_options`, load_engine's keywords)."""
    base = base_of(model)
    engine = TorchEngine(base, input_size=input_size)
    wanted = {t.base for t in targets}
    extra: list[Target] = []
    if "base torch" in wanted:
        extra.append(Target("base torch", lambda threads: TorchEngine(base, threads=threads, input_size=input_size),
                            backend="torch"))
    onnx_backends = [b for b in backends if f"base {b}" in wanted]
    if onnx_backends:
        path = export_plain_onnx(base, out / "base.onnx", tuple(engine.inputs[0].shape[1:]))
        extra += [Target(f"base {b}", engine_factory(path, b, **engine_options), onnx=path if b == "ort-cpu" else None,
                         backend=b) for b in onnx_backends]
    return extra


def run_alternated_and_in_turns(alternated: Sequence[Target], in_turns: Sequence[Target], batches: Sequence[int],
                                threads: Sequence[int], warmup: int, iterations: int, time_budget_s: float | None,
                                rounds: int, progress: Callable[[str], None] | None = None) -> list[Measurement]:
    """`alternated` (ONNX Runtime engines that stop spinning after a run) in alternating blocks, then
    `in_turns` (PyTorch, TensorRT: their threads spin on) in `rounds` settled turns; each group's ratios
    are within it (a target's base must be in its group)."""
    return [m for targets, schedule, count in ((alternated, "alternate", 1), (in_turns, "turns", rounds)) if targets
            for m in run_benchmark(targets, batches, threads, warmup, iterations, time_budget_s, progress=progress,
                                   rounds=count, schedule=schedule)]


def machine() -> dict[str, object]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()}


def bench(models: Sequence[Path], options: BenchOptions = BenchOptions(),
          progress: Callable[[str], None] | None = None) -> BenchResult:
    """Measure latency (p50/p90/p99/mean) and throughput of `models` side by side; writes to `options.out`."""
    backends, out, iterations, warmup, thread_counts = (options.backends, options.out, options.iterations,
                                                        options.warmup, options.threads)
    if options.schedule not in SCHEDULES:
        raise QDeployError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {options.schedule!r}")
    alternate = options.schedule == "alternate"
    quiet = {"spin_after_run": False} if alternate else {}  # sessions timed in blocks stop spinning after a run
    targets, model_folder, size = expand_targets(models, backends, **quiet)
    if options.base:
        if model_folder is None:
            raise QDeployError("--base needs the adapted model, and no export report beside the files names an existing one: "
                               "pass its folder too, or use --no-base")
        stored = load(model_folder)
        targets += base_targets(stored.model, targets, backends, out, size or stored.input_size, **quiet)
    if alternate:
        alternated = [t for t in targets if t.backend in ORT_BACKENDS]
        results = run_alternated_and_in_turns(alternated, [t for t in targets if t not in alternated],
                                              options.batches, thread_counts, warmup, iterations, options.time_budget,
                                              options.rounds, progress)
    else:
        results = run_benchmark(targets, options.batches, thread_counts, warmup, iterations, options.time_budget,
                                progress=progress, rounds=options.rounds)
    paths = write_results(results, out, {"machine": machine(), "models": [str(m) for m in models]})
    profiles: list[Profile] = []
    if options.profile:
        profiles = [profile_onnx(t.onnx, b, n, runs=min(iterations, PROFILE_RUNS), warmup=warmup)
                    for n in thread_counts for t in targets if t.onnx is not None for b in options.batches]
        if not profiles:
            raise QDeployError("--profile needs an ONNX file run on ort-cpu; pass an export folder or .onnx file")
        paths["profile"] = out / "profile.json"
        atomic.write_json(paths["profile"], {"machine": machine(), "profiles": [p.to_dict() for p in profiles]})
    return BenchResult(results, paths, profiles)
