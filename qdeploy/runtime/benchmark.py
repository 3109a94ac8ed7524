"""Latency and throughput of engines side by side: percentiles, ratios, JSON/CSV/PNG outputs.

Each target is measured at every batch size and thread count after a warm-up, for a number
of iterations or until a time budget runs out (whichever first). Targets run one after
another in the same process on the same inputs, so ratios between them are fair on a
shared machine: `vs_first` compares with the first target, `vs_base` with the base-model
target on the same backend (the quadratic overhead).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qdeploy import atomic
from qdeploy.errors import QDeployError
from qdeploy.runtime.engine import Engine
from qdeploy.timing import paired_ratio, time_alternating, time_turns, timed_turn

EngineFactory = Callable[[int], Engine]  # threads -> a loaded engine
UNTIL_TIME_BUDGET = 1_000_000  # `iterations` for a measurement that its time budget ends
SCHEDULES = ("turns", "alternate")  # how targets share the machine (qdeploy/timing.py)


@dataclass(frozen=True)
class Target:
    """One column of a benchmark: a label, how to load it, and which base target it is compared with."""

    label: str
    load: EngineFactory
    base: str | None = None  # label of the unadapted model's target on the same backend
    onnx: Path | None = None  # the ONNX file, when ONNX Runtime runs one (what --profile profiles)
    backend: str | None = None  # load_engine's backend name, where known (bench alternates ONNX Runtime's)


@dataclass
class Measurement:
    label: str
    backend: str
    batch: int
    threads: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # images per second at the mean latency
    vs_first: float | None = None  # over the first target's time (same batch and threads), paired by turn
    vs_base: float | None = None  # over the base target's time, paired by turn (timing.paired_ratio)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _feeds(engine: Engine, label: str, batch: int, seed: int) -> dict[str, np.ndarray]:
    for spec in engine.inputs:
        if not spec.batched and spec.shape[0] != batch:
            raise QDeployError(f"{label} has a fixed batch of {spec.shape[0]}; bench it at --batch {spec.shape[0]}")
    rng = np.random.default_rng(seed)
    return {spec.name: rng.standard_normal(spec.example_shape(batch)).astype(spec.dtype) for spec in engine.inputs}


def _measurement(label: str, backend: str, batch: int, threads: int, times: Sequence[float]) -> Measurement:
    ms = np.array(times) * 1e3
    mean = float(ms.mean())
    return Measurement(label, backend, batch, threads, len(times), float(np.percentile(ms, 50)),
                       float(np.percentile(ms, 90)), float(np.percentile(ms, 99)), mean, batch * 1e3 / mean)


def measure(engine: Engine, label: str, batch: int, threads: int, warmup: int = 5, iterations: int = 100,
            time_budget_s: float | None = None, seed: int = 0) -> Measurement:
    """Time `engine.infer` on one random batch: `warmup` untimed runs, then up to `iterations` timed."""
    if iterations < 1 or warmup < 0:
        raise QDeployError(f"--iterations must be >= 1 and --warmup >= 0, got {iterations} and {warmup}")
    feeds = _feeds(engine, label, batch, seed)
    times = timed_turn(lambda: engine.infer(feeds), warmup, iterations, time_budget_s)
    return _measurement(label, engine.backend, batch, threads, times)


def run_benchmark(targets: Sequence[Target], batches: Sequence[int], threads: Sequence[int], warmup: int = 5,
                  iterations: int = 100, time_budget_s: float | None = None,
                  progress: Callable[[str], None] | None = None, rounds: int = 1,
                  schedule: str = "turns") -> list[Measurement]:
    """Every target x thread count x batch size; ratios filled in against the first and the base targets.

    With `rounds` > 1 the targets take turns (qdeploy/timing.py): each round times every target
    (a share of the iterations and of the time budget) after it settles from the switch, so a
    load change on a shared machine hits all of them alike. Percentiles pool the turns' times;
    the ratios pair them (each turn against the other target's turn at the same batch, which
    runs next to it; the median over turns), so a drift between turns cancels.
    With `schedule` "alternate" the targets at a batch run a short block each per cycle instead
    (timing.time_alternating: its first runs untimed; `rounds` must be 1) and the ratios pair
    block by block: for engines that stop spinning when a run ends (OrtEngine(spin_after_run=
    False)), where it is the most precise of the two.
    """
    if not targets:
        raise QDeployError("nothing to benchmark; pass at least one model")
    if iterations < 1 or warmup < 0 or rounds < 1:
        raise QDeployError(f"--iterations and rounds must be >= 1 and --warmup >= 0, got {iterations}, {rounds} "
                           f"and {warmup}")
    if schedule not in SCHEDULES or (schedule == "alternate" and rounds != 1):
        raise QDeployError(f"schedule must be one of {', '.join(SCHEDULES)} (alternate with one round), "
                           f"got {schedule!r} with {rounds} rounds")
    labels = [target.label for target in targets]
    if len(set(labels)) != len(labels):
        raise QDeployError(f"benchmark targets need distinct labels, got {labels}")
    base_of = {target.label: target.base for target in targets}
    results: list[Measurement] = []
    for count in threads:
        engines = {target.label: target.load(count) for target in targets}
        feeds = {(label, batch): _feeds(engine, label, batch, seed=0)
                 for label, engine in engines.items() for batch in batches}
        # Batch-major, so the targets compared at a batch take their turns next to each other.
        runs = {(label, batch): (lambda e=engines[label], f=feeds[(label, batch)]: e.infer(f))
                for batch in batches for label in engines}

        def say(key: tuple[str, int], round_index: int, count: int = count) -> None:
            if progress:
                progress(f"{key[0]} batch {key[1]} threads {count}"
                         + (f" round {round_index + 1}/{rounds}" if rounds > 1 else ""))

        if schedule == "alternate":
            turns = {}
            for batch in batches:
                say((" / ".join(engines), batch), 0)
                cycles = time_alternating({label: runs[(label, batch)] for label in engines}, iterations,
                                          time_budget_s, warmup)
                turns.update({(label, batch): cycles[label] for label in engines})
        else:
            turns = time_turns(runs, rounds, iterations, time_budget_s, warmup, progress=say)
        for label in engines:
            for batch in batches:
                m = _measurement(label, engines[label].backend, batch, count,
                                 [t for turn in turns[(label, batch)] for t in turn])
                m.vs_first = paired_ratio(turns[(label, batch)], turns[(labels[0], batch)])
                base = base_of[label]
                m.vs_base = paired_ratio(turns[(label, batch)], turns[(base, batch)]) if base in engines else None
                results.append(m)
    return results


def to_csv(results: Sequence[Measurement]) -> str:
    buffer = io.StringIO()
    fields = list(Measurement.__dataclass_fields__)
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for m in results:
        writer.writerow(m.to_dict())
    return buffer.getvalue()


def plot(results: Sequence[Measurement], path: Path, title: str) -> Path:
    """Median latency against batch size, one line per target (one panel per thread count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thread_counts = sorted({m.threads for m in results})
    fig, axes = plt.subplots(1, len(thread_counts), figsize=(5.5 * len(thread_counts), 4), squeeze=False)
    for ax, count in zip(axes[0], thread_counts):
        for label in dict.fromkeys(m.label for m in results):
            points = sorted((m.batch, m.p50_ms) for m in results if m.label == label and m.threads == count)
            ax.plot([b for b, _ in points], [t for _, t in points], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"{title} - {count} thread(s)" if count else f"{title} - default threads")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic.save_figure(fig, path)


def write_results(results: Sequence[Measurement], out: str | Path, meta: dict[str, Any],
                  title: str = "qdeploy bench") -> dict[str, Path]:
    """bench.json (meta + rows), bench.csv and bench.png in `out`, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "csv": out / "bench.csv", "png": out / "bench.png"}
    atomic.write_json(paths["json"], {**meta, "results": [m.to_dict() for m in results]})
    atomic.write_text(paths["csv"], to_csv(results))
    plot(results, paths["png"], title)
    return paths
