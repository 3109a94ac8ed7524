"""Per-layer form of the activation behind a folded quadratic layer, chosen by measurement (cached).

After the fold (norm_fold.py) a quadratic layer ends in `P'(x) + Q'(x) -> activation`. When
ONNX Runtime cannot keep that activation in its blocked NCHWc layout (Clip, i.e. ReLU6),
there are two exact forms:

- `reorder`: the activation as it is; ONNX Runtime runs it between a ReorderOutput and a
  ReorderInput (two layout copies and a plain pass);
- `blocked`: an identity depthwise 1x1 Conv before it, which ONNX Runtime fuses with the
  activation and keeps blocked (one pass, no reorders).

Which is faster depends on the layer's size and the CPU, so, like TensorRT's tactic
selection, the exporter times both on the target provider: each layer is cut out of the
graph (from its input to the conv that consumes its activation, so both forms pay the same
layout changes at the ends) and run in each form; the faster is kept. Choices are cached per
layer geometry, ONNX Runtime version, CPU, threads and batch, so re-exports are fast, and
`tune=False` (`--no-tune`) takes `blocked` everywhere for reproducible files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from qdeploy import atomic
from qdeploy.errors import first_line
from qdeploy.onnx_io import SEPARATOR, ort_session, random_feeds
from qdeploy.export.norm_fold import FoldedNorm, insert_identity_conv
from qdeploy.timing import time_in_turns

FORMS = ("reorder", "blocked")
DEFAULT_FORM = "blocked"  # measured faster on this project's CPUs at 64 and 224 px (README, Export)
# Activations ONNX Runtime fuses into a Conv they follow but does not keep blocked after an Add
# (its NCHWc pass keeps Relu/Sigmoid/Tanh blocked by itself; anything else, e.g. a residual
# Add, has nothing to gain from the identity conv).
CONV_FUSED_ACTIVATIONS = frozenset({"Clip"})
CACHE_NAME = "qdeploy/layer_forms.json"
CACHE_FORMAT = "qdeploy-layer-forms/1"
TIMING_ROUNDS = 3  # interleaved turns per form when timing them


@dataclass(frozen=True)
class TuneSettings:
    """How to time the forms: the batch and thread count of the target, repeats per form, the cache file."""

    batch: int = 1
    threads: int = 1
    repeats: int = 21
    cache: Path | None = None  # None: default_cache()


def default_cache() -> Path:
    """The user's cache file for measured forms ($XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / CACHE_NAME


def choosable(fold: FoldedNorm) -> bool:
    """Whether the layer has two forms (its activation would otherwise leave the blocked layout)."""
    return fold.activation in CONV_FUSED_ACTIVATIONS


def apply_forms(model: ir.Model, folds: list[FoldedNorm], forms: dict[str, str]) -> None:
    """Rewrite the choosable layers into their forms (`blocked` inserts the identity conv)."""
    for fold in folds:
        if choosable(fold) and forms.get(fold.layer, DEFAULT_FORM) == "blocked":
            insert_identity_conv(model, fold)


def _boundary(fold: FoldedNorm, graph: onnx.GraphProto) -> tuple[list[str], str]:
    """(inputs, output) of the piece of graph that times this layer: its inputs -> the next conv's output.

    The layer's nodes are those named `<layer>/...` (layer_names.py) that the sum depends on;
    its inputs are the tensors they read that neither they nor the initializers provide.
    """
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    prefix = f"{fold.layer}{SEPARATOR}"
    seen: set[str] = set()
    inputs: list[str] = []
    frontier = [fold.sum_output.name]
    while frontier:
        name = frontier.pop()
        node = producers.get(name)
        if node is None or not node.name.startswith(prefix):
            if name not in initializers and name not in inputs:
                inputs.append(name)
        elif node.name not in seen:
            seen.add(node.name)
            frontier += [i for i in node.input if i]
    activation = next(n for n in graph.node if fold.sum_output.name in n.input)
    after = [n for n in graph.node if activation.output[0] in n.input]
    end = after[0].output[0] if len(after) == 1 and after[0].op_type == "Conv" else activation.output[0]
    return inputs, end


def session_and_feeds(path: Path, batch: int, threads: int, spin_after_run: bool = True):
    """A session of `path` and random inputs at `batch`, run once (spin_after_run: onnx_io.ort_session's)."""
    session = ort_session(path, threads, spin_after_run=spin_after_run)
    feeds = random_feeds(session, batch)
    session.run(None, feeds)  # warm-up: first runs allocate
    return session, feeds


def time_forms(pieces: dict[str, Path], batch: int, threads: int, repeats: int,
               time_budget_s: float | None = None) -> dict[str, float]:
    """Median ms of each piece over `repeats` runs (or `time_budget_s` seconds), in TIMING_ROUNDS
    interleaved turns (qdeploy/timing.py) so load changes hit all alike."""
    runs = {form: session_and_feeds(path, batch, threads) for form, path in pieces.items()}
    times = time_in_turns({form: (lambda s=session, f=feeds: s.run(None, f)) for form, (session, feeds) in runs.items()},
                          TIMING_ROUNDS, repeats, time_budget_s)
    return {form: 1e3 * float(np.median(values)) for form, values in times.items()}


def machine_key(threads: int, batch: int) -> str:
    """What a measurement on this machine depends on: ONNX Runtime version, CPU, threads, batch."""
    import onnxruntime as ort

    return f"ort {ort.__version__}|{platform.machine()}|{platform.processor() or _cpu_model()}|" \
           f"threads {threads}|batch {batch}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


def _geometry_key(piece: onnx.ModelProto) -> str:
    """A hash of the piece's ops, attributes and tensor shapes, not its weights or names."""
    parts = [(n.op_type, sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute))
             for n in piece.graph.node]
    shapes = sorted(tuple(t.dims) for t in piece.graph.initializer)
    io = [str(v.type.tensor_type.shape) for v in (*piece.graph.input, *piece.graph.output)]
    return hashlib.sha256(json.dumps([parts, shapes, io], default=str).encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache only costs a re-measurement; it is rewritten below
    return data.get("forms", {}) if data.get("format") == CACHE_FORMAT else {}


def tune_forms(model: ir.Model, folds: list[FoldedNorm], settings: TuneSettings) -> dict[str, dict]:
    """Time both forms of every choosable layer; returns {layer: {form, ms per form, cached}}."""
    candidates = [fold for fold in folds if choosable(fold)]
    if not candidates:
        return {}
    cache_path = settings.cache or default_cache()
    cache = _read_cache(cache_path)
    machine = machine_key(settings.threads, settings.batch)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="qdeploy-tune-") as tmp:
        folder = Path(tmp)
        variants: dict[str, Path] = {}
        for form in FORMS:
            copy = model.clone()
            folds_in_copy = _same_folds(copy, candidates)
            apply_forms(copy, folds_in_copy, {fold.layer: form for fold in folds_in_copy})
            variants[form] = folder / f"{form}.onnx"
            ir.save(copy, variants[form])
        graph = onnx.load(str(variants["reorder"]), load_external_data=False).graph
        for fold in candidates:
            try:
                results[fold.layer] = _measure(fold, graph, variants, folder, machine, cache, settings)
            except Exception as exc:  # a piece ONNX Runtime cannot cut out or run: keep the default, say why
                results[fold.layer] = {"form": DEFAULT_FORM, "tuned": False, "error": first_line(exc)}
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(cache_path, {"format": CACHE_FORMAT, "forms": cache})
    return results


def _measure(fold: FoldedNorm, graph: onnx.GraphProto, variants: dict[str, Path], folder: Path, machine: str,
             cache: dict[str, str], settings: TuneSettings) -> dict:
    """The layer's form from the cache, or timed (and stored in `cache`)."""
    inputs, end = _boundary(fold, graph)
    pieces = {}
    for form, path in variants.items():
        pieces[form] = folder / f"{form}-piece.onnx"
        onnx.utils.extract_model(str(path), str(pieces[form]), inputs, [end], check_model=False)
    key = f"{machine}|{_geometry_key(onnx.load(str(pieces['reorder'])))}"
    if key in cache:
        return {"form": cache[key], "cached": True}
    ms = time_forms(pieces, settings.batch, settings.threads, settings.repeats)
    cache[key] = min(ms, key=ms.__getitem__)
    return {"form": cache[key], "cached": False, "ms": ms}  # unrounded: rounding could tie the two


def _same_folds(copy: ir.Model, folds: list[FoldedNorm]) -> list[FoldedNorm]:
    """The folds re-pointed at the values of a cloned model (matched by name)."""
    values = {out.name: out for node in copy.graph for out in node.outputs}
    return [FoldedNorm(f.norm, f.layer, values[f.sum_output.name], f.activation) for f in folds]
