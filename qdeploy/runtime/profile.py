"""Where an ONNX file's time goes on ONNX Runtime: per op type and per quadratic layer, from ORT's profiler.

ONNX Runtime's profiler writes one event per node run (`<node name>_kernel_time`, op type,
microseconds). The exporter names a quadratic layer's nodes `<layer>/<op>` and ONNX Runtime
keeps that prefix on the nodes it makes from them (export/layer_names.py, read by qdeploy.onnx_io), so summing the
events by prefix gives each adapted layer's cost, split by part (`primary Conv`, `quad Conv`
for the factors A and B, `quad Mul`, `blocked Conv` for the fused activation form); every
event also counts in the per-op-type totals.
Times are per inference: the sum over `runs` timed runs (after a warm-up) divided by `runs`.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from qdeploy.errors import QDeployError
from qdeploy.onnx_io import layer_of, ort_session, part_of, random_feeds

_KERNEL_SUFFIX = "_kernel_time"


@dataclass
class Profile:
    """Milliseconds per inference: total of the node events, per op type, per quadratic layer (and its ops)."""

    file: str
    batch: int
    threads: int
    runs: int
    node_ms: float
    by_op: dict[str, float] = field(default_factory=dict)
    by_layer: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> "<part> <op>" -> ms

    @property
    def layers_ms(self) -> float:
        return sum(sum(ops.values()) for ops in self.by_layer.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers_ms": self.layers_ms}


def summarize(events: list[dict[str, Any]], runs: int) -> tuple[float, dict[str, float], dict[str, dict[str, float]]]:
    """(total, per op type, per layer and op) in ms per run, from ORT profiler events of `runs` runs."""
    by_op: dict[str, float] = defaultdict(float)
    by_layer: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    total = 0.0
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX):
            continue
        ms = event["dur"] / 1e3 / runs
        op = event.get("args", {}).get("op_name", "?")
        total += ms
        by_op[op] += ms
        node = name.removesuffix(_KERNEL_SUFFIX)
        layer = layer_of(node)
        if layer is not None:
            part = part_of(node)
            by_layer[layer][f"{part} {op}" if part else op] += ms
    ordered_ops = dict(sorted(by_op.items(), key=lambda item: -item[1]))
    layers = {layer: dict(sorted(ops.items(), key=lambda item: -item[1])) for layer, ops in by_layer.items()}
    return total, ordered_ops, layers


def profile_onnx(path: str | Path, batch: int, threads: int, runs: int = 10, warmup: int = 3, seed: int = 0) -> Profile:
    """Run `path` on ORT CPU with profiling on; `runs` timed runs after `warmup` untimed ones."""
    if runs < 1:
        raise QDeployError(f"profiling needs at least one run, got {runs}")
    with tempfile.TemporaryDirectory(prefix="qdeploy-profile-") as tmp:
        session = ort_session(path, threads, enable_profiling=True, profile_file_prefix=str(Path(tmp) / "ort"))
        feeds = random_feeds(session, batch, seed)
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_from = starts[warmup] if len(starts) > warmup else 0  # the warm-up runs' events are left out
    total, by_op, by_layer = summarize([e for e in events if e.get("ts", 0) >= timed_from], runs)
    return Profile(str(path), batch, threads, runs, total, by_op, by_layer)
