"""`qdeploy build`: an exported ONNX file -> a TensorRT plan (model.plan) plus engine.json.

Precision follows the ONNX graph. TensorRT 11 networks are always strongly typed (its FP16
and INT8 builder flags and calibrators are gone), so a float16 or Q/DQ graph is exported as
such (`qdeploy export --precision fp16`, float32 input and output kept) and built as it is.
TensorRT 10 takes the same precisions as builder flags (FP16, INT8 for Q/DQ graphs), and
can also lower a float32 graph to float16 on request. Everything up to the TensorRT calls
(argument checks, graph inspection, the precision decision, profiles) is plain Python,
tested without TensorRT.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import onnx

from qdeploy.atomic import staged_directory, write_bytes
from qdeploy.errors import QDeployError
from qdeploy.onnx_io import load_onnx
from qdeploy.runtime.plan_info import PLAN_FILE, EngineInfo
from qdeploy.plugin_contract import PLUGIN_DOMAIN, PLUGIN_NAMESPACE
from qdeploy.runtime.plugin_library import PLUGIN_KINDS, LoadedPlugins, load_plugins
from qdeploy.runtime.tensorrt_support import (
    Version,
    always_strongly_typed,
    format_version,
    gpu_identity,
    import_tensorrt,
    installed_ort_version,
    ort_compatibility_note,
    tensorrt_version,
)

PRECISIONS = ("auto", "fp32", "fp16", "int8")
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class BuildOptions:
    """What `qdeploy build` was asked for; check() refuses what cannot work."""

    onnx_path: Path
    out_dir: Path
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 4096
    timing_cache: Path | None = None
    plugin: str = "auto"
    precision: str = "auto"

    def check(self) -> None:
        if not self.onnx_path.is_file():
            raise QDeployError(f"{self.onnx_path} does not exist; export one with `qdeploy export`")
        if self.onnx_path.suffix != ".onnx":
            raise QDeployError(f"{self.onnx_path} is not an .onnx file; pass the model.onnx that `qdeploy export` wrote")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise QDeployError(f"batch sizes must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                               f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")
        if self.workspace_mib < 1:
            raise QDeployError(f"--workspace {self.workspace_mib} MiB must be at least 1")
        if self.plugin not in PLUGIN_KINDS:
            raise QDeployError(f"--plugin {self.plugin!r} is not one of {', '.join(PLUGIN_KINDS)}")
        if self.precision not in PRECISIONS:
            raise QDeployError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.timing_cache is not None and self.timing_cache.is_dir():
            raise QDeployError(f"--timing-cache {self.timing_cache} is a folder; give a file path")


@dataclass(frozen=True)
class GraphSummary:
    """What the builder needs to know about an ONNX file before TensorRT sees it."""

    inputs: dict[str, tuple[int | None, ...]]
    precision: str  # "fp32", "fp16" (float16 compute) or "int8" (Q/DQ nodes)
    plugin_ops: tuple[str, ...]
    sha256: str


def _file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def summarize_onnx(path: Path) -> GraphSummary:
    """Inputs (None for symbolic dims), graph precision, plugin nodes and the file's hash."""
    model = load_onnx(path)
    initializers = {init.name for init in model.graph.initializer}
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        inputs[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    nodes = list(model.graph.node)
    float16 = onnx.TensorProto.FLOAT16
    if any(node.op_type in _QDQ_OPS for node in nodes):
        precision = "int8"
    elif (any(init.data_type == float16 for init in model.graph.initializer)
          or any(attr.name == "to" and attr.i == float16 for node in nodes if node.op_type == "Cast"
                 for attr in node.attribute)):
        precision = "fp16"
    else:
        precision = "fp32"
    plugin_ops = tuple(sorted({node.op_type for node in nodes if node.domain == PLUGIN_DOMAIN}))
    external = sorted({path.parent / entry.value for init in model.graph.initializer
                       for entry in init.external_data if entry.key == "location"})
    return GraphSummary(inputs, precision, plugin_ops, _file_digest([path, *external]))


def profile_shapes(inputs: dict[str, tuple[int | None, ...]], min_batch: int, opt_batch: int,
                   max_batch: int) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes per input: the batch (first) dimension varies, the others are the graph's."""
    profile = {}
    for name, dims in inputs.items():
        if not dims:
            raise QDeployError(f"input {name!r} has no shape; export with a static image size")
        if any(d is None for d in dims[1:]):
            raise QDeployError(f"input {name!r} has dynamic dimensions {dims} beyond the batch; re-export with a "
                               "fixed image size (`qdeploy export --input-size HxW`)")
        if dims[0] is not None and not min_batch == opt_batch == max_batch == dims[0]:
            raise QDeployError(f"input {name!r} has a fixed batch of {dims[0]}; re-export with `--batch dynamic` "
                               f"or build with --min-batch/--opt-batch/--max-batch {dims[0]}")
        rest = list(dims[1:])
        profile[name] = {"min": [min_batch, *rest], "opt": [opt_batch, *rest], "max": [max_batch, *rest]}
    return profile


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]


def plan_precision(version: Version, graph_precision: str, requested: str) -> PrecisionPlan:
    """Network typing and builder flags for a graph's precision and the --precision asked for."""
    if graph_precision != "fp32" and requested not in ("auto", graph_precision):
        raise QDeployError(f"the ONNX graph computes in {graph_precision}, which sets the engine's precision; "
                           f"re-export it at {requested} instead of passing --precision {requested}")
    precision = graph_precision if requested == "auto" else requested
    if precision == "int8" and graph_precision != "int8":
        raise QDeployError("int8 engines need Q/DQ (QuantizeLinear/DequantizeLinear) nodes in the ONNX graph; "
                           "qdeploy does not calibrate (TensorRT 11 dropped calibrators)")
    if always_strongly_typed(version):
        if precision != graph_precision:
            raise QDeployError(f"TensorRT {format_version(version)} networks are strongly typed and have no "
                               f"{precision.upper()} builder flag: export the model with "
                               f"`qdeploy export --precision {precision}` and build that file")
        return PrecisionPlan(precision, True, ())
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
    return PrecisionPlan(precision, False, flags)


def _make_logger(trt: ModuleType):
    """A TensorRT logger that prints warnings and keeps errors, so a failed build can say why."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {msg}")

    return Logger()


def _parse_network(trt: ModuleType, builder, logger, path: Path, strongly_typed: bool, plugins: LoadedPlugins,
                   summary: GraphSummary):
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        hint = ""
        if summary.plugin_ops and plugins.kind == "none":
            hint = (f" The file has {PLUGIN_NAMESPACE} plugin nodes ({', '.join(summary.plugin_ops)}) and no plugins "
                    "were loaded: use --plugin cpp/python or build the decomposed export.")
        raise QDeployError(f"TensorRT could not parse {path}: {' | '.join(errors[:3])}.{hint}")
    return network


def build_engine(options: BuildOptions, trt: ModuleType | None = None) -> EngineInfo:
    """Build options.onnx_path into options.out_dir/model.plan + engine.json (the folder replaced atomically)."""
    options.check()
    summary = summarize_onnx(options.onnx_path)
    profile = profile_shapes(summary.inputs, options.min_batch, options.opt_batch, options.max_batch)
    trt = trt or import_tensorrt()
    version = tensorrt_version(trt)
    precision = plan_precision(version, summary.precision, options.precision)
    gpu_name, capability = gpu_identity()
    plugins = load_plugins(options.plugin, trt)
    notes = [note for note in (plugins.note, ort_compatibility_note(version, installed_ort_version())) if note]

    start = time.perf_counter()
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network = _parse_network(trt, builder, logger, options.onnx_path, precision.strongly_typed, plugins, summary)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    for flag in precision.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    optimization_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimization_profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(optimization_profile)
    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise QDeployError(f"TensorRT failed to build {options.onnx_path}: {' | '.join(logger.errors[-3:]) or 'no log'}")
    seconds = time.perf_counter() - start
    info = EngineInfo(
        tensorrt_version=format_version(version), gpu_name=gpu_name, compute_capability=capability,
        precision=precision.precision, strongly_typed=precision.strongly_typed,
        builder_flags=precision.builder_flags, profile=profile, onnx_path=str(options.onnx_path),
        onnx_sha256=summary.sha256, plugins=plugins.kind,
        plugin_library=str(plugins.library) if plugins.library else None,
        workspace_bytes=options.workspace_mib << 20, build_seconds=round(seconds, 3),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), notes=tuple(notes),
    )
    with staged_directory(options.out_dir) as stage:
        write_bytes(stage / PLAN_FILE, bytes(plan))
        info.write(stage)
    if options.timing_cache is not None:
        write_bytes(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    return info
