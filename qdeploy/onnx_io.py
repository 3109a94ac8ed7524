"""ONNX files as every stage reads them: load, the one ONNX Runtime session factory, random inputs, layer names.

Neutral ground (no torch at import): the exporter checks its files, the runtime runs and
profiles them, serving reads their signatures, all through here, so a file that cannot be
loaded gets the same one-line error everywhere and a session is configured one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from qdeploy.errors import QDeployError, first_line

REEXPORT = "re-export it with `qdeploy export`"
RANDOM_BATCHES = (1, 8)  # batch sizes of the random input sets export and verify both compare on
SEPARATOR = "/"  # quadratic layer nodes are named `<layer>/<part>.<op>_<index>` (export/layer_names.py)
CPU = ("CPUExecutionProvider",)


def load_onnx(path: str | Path, load_external_data: bool = False) -> onnx.ModelProto:
    """The model at `path`, or one clear error when it is missing, truncated or not ONNX at all."""
    path = Path(path)
    if not path.is_file():
        raise QDeployError(f"{path} does not exist; pass the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise QDeployError(f"{path} is not a readable ONNX model (truncated or corrupt: {exc}); {REEXPORT}") from exc
    if not model.graph.node or not model.opset_import:
        raise QDeployError(f"{path} holds no ONNX graph (empty, truncated or not an ONNX file); {REEXPORT}")
    return model


STOP_SPINNING_ENTRY = "session.force_spinning_stop"  # ONNX Runtime's session config key, "0" or "1"


def ort_session(path: str | Path, threads: int = 0, providers: Sequence[Any] = CPU, spin_after_run: bool = True,
                **settings: Any):
    """An onnxruntime.InferenceSession (quiet logs, `threads` intra-op threads; `settings`: other
    SessionOptions attributes, e.g. enable_profiling), or one clear error when it cannot load.

    spin_after_run: False stops the intra-op workers spinning when a run ends (they still spin
    between the nodes of a run, as deployed), so the session leaves the cores idle between runs;
    sessions timed in alternation need it (qdeploy/timing.py). Turning spinning off altogether
    (allow_spinning 0) would not do: it made batch 1 twice as slow (64 px, 2 threads: 2.2 ms
    against 1.3 ms), a configuration nobody deploys.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry(STOP_SPINNING_ENTRY, "0" if spin_after_run else "1")
    for name, value in settings.items():
        setattr(options, name, value)
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        load_onnx(path)  # a missing, truncated or corrupt file gets its own message; parsed only on failure
        raise QDeployError(f"ONNX Runtime cannot load {path} ({first_line(exc)}); {REEXPORT}") from exc


def random_batch(input_size: tuple[int, ...], batch: int, seed: int) -> np.ndarray:
    """Standard-normal float32 inputs (the scale of normalised images), reproducible by seed."""
    import torch  # torch's generator: the same numbers the exporter's checks have always used

    return torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed)).numpy()


def random_sets(input_size: tuple[int, ...], batches: Sequence[int] = RANDOM_BATCHES, seed: int = 0) -> dict[str, np.ndarray]:
    """The named random input sets (`random_b<batch>`) export parity and verify compare on."""
    return {f"random_b{batch}": random_batch(input_size, batch, seed + batch) for batch in batches}


def random_feeds(session: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for every input of a session (free dims at `batch`), float16 where the graph takes it."""
    rng = np.random.default_rng(seed)
    return {spec.name: rng.standard_normal([batch if not isinstance(d, int) else d for d in spec.shape]).astype(
        np.float16 if spec.type == "tensor(float16)" else np.float32) for spec in session.get_inputs()}


def layer_of(runtime_name: str) -> str | None:
    """The quadratic layer a runtime node name (ONNX Runtime's, possibly suffixed) belongs to, if any."""
    head, separator, _ = runtime_name.partition(SEPARATOR)
    return head if separator else None


def part_of(runtime_name: str) -> str:
    """`primary`, `quad`, `sum`, `blocked` (the activation form) of a layer's runtime node name, else ``."""
    part, dot, _ = runtime_name.partition(SEPARATOR)[2].partition(".")
    return part if dot else ""
