"""The export driver: adapted model -> verified ONNX files + export_report.json, all or nothing.

One torch.onnx (dynamo) conversion serves both modes: the quadratic custom ops become plugin
nodes (translations.py); the fused file gives them their model-local functions, the
decomposed file inlines those functions. Every file is checked (onnx.checker, shape
inference) and run by ONNX Runtime against PyTorch before the output folder is replaced.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnx_ir as ir
import torch
from torch import nn

from qdeploy import __version__, atomic
from qdeploy.adaptation import quadratic_layers
from qdeploy.errors import QDeployError, first_line
from qdeploy.export import translations
from qdeploy.export.forms import TuneSettings
from qdeploy.export.fp16 import fp16_compute
from qdeploy.export.graph_rewrites import Forms, rewrite_graph
from qdeploy.export.int8 import INT8_TARGETS
from qdeploy.export.int8_accuracy_control import AccuracyControl, check_calibration_images, quantize_with_accuracy_control
from qdeploy.export.rewrite import export_copy
from qdeploy.compare import PRESETS
from qdeploy.export.parity import check_parity, sample_batch
from qdeploy.export.report import files_bytes, node_counts, weights_sha256
from qdeploy.export.validate import check_onnx_file
from qdeploy.onnx_io import RANDOM_BATCHES, random_batch, random_sets
from qdeploy.model_io import BATCH_AXIS, INPUT_NAME, OUTPUT_NAME, model_input_size
from qdeploy.store import EXPORT_MODES, ExportedFile, ExportReport, Stored, config_of, locate, write_report

MODES = EXPORT_MODES
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = translations.MIN_OPSET
# Protobuf messages stop at 2 GiB; keep headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
MAX_DYNAMIC_BATCH = 65536  # torch.export needs a bound; no runtime batch comes near it
INT8_EVAL_IMAGES = 2000  # a seeded choice of the held-out images tunes (512) and judges (the rest) int8
TUNE_BATCH = 8  # forms of a dynamic-batch export are timed at this batch (big enough to time a layer)
_KNOWN_NAMESPACES = {"aten", "prims", "qdeploy"}


@dataclass(frozen=True)
class ExportOptions:
    """How to export. batch None = dynamic; input_size (H, W) None = the model's own size."""

    modes: tuple[str, ...] = MODES
    opset: int = DEFAULT_OPSET
    batch: int | None = None
    input_size: tuple[int, int] | None = None
    precision: str = "fp32"
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
    rewrites: bool = True  # exact graph rewrites (graph_rewrites.py); off: the graph as torch.onnx made it
    tune: bool = True  # time each layer's forms (forms.py); off: DEFAULT_FORM everywhere, reproducible
    tune_cache: Path | None = None  # None: forms.default_cache()
    calibration: str | None = None  # int8: "digits-shift" or an ImageFolder; calibrates and judges parity
    # the seed and val_fraction the model trained with on `calibration` (TrainingRecord.split_for): int8 is
    # calibrated and judged on the images it did not train on
    calibration_split: dict[str, Any] = field(default_factory=dict, compare=False)
    int8_target: str = INT8_TARGETS[0]
    int8_control: AccuracyControl = field(default_factory=AccuracyControl)  # the rule's drop, steps, timing
    source: str | None = field(default=None, compare=False)

    def tune_settings(self) -> TuneSettings | None:
        """Tune at the export's batch (or TUNE_BATCH when dynamic) with this machine's threads."""
        if not self.tune:
            return None
        return TuneSettings(batch=self.batch or TUNE_BATCH, threads=os.cpu_count() or 1, cache=self.tune_cache)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown or not self.modes:
            raise QDeployError(f"unknown export mode(s) {unknown or 'none'}; use decomposed, fused or both")
        if self.precision not in PRECISIONS:
            raise QDeployError(f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.precision == "int8" and self.modes != ("decomposed",):
            raise QDeployError("--precision int8 quantizes the decomposed file only; pass --mode decomposed")
        if self.int8_target not in INT8_TARGETS:
            raise QDeployError(f"unknown int8 target {self.int8_target!r}; use {' or '.join(INT8_TARGETS)}")
        if not translations.MIN_OPSET <= self.opset <= translations.MAX_OPSET:
            raise QDeployError(f"opset {self.opset} is not supported; use {translations.MIN_OPSET}..{translations.MAX_OPSET}")
        if self.batch is not None and self.batch < 1:
            raise QDeployError(f"batch must be >= 1 or dynamic, got {self.batch}")
        if self.input_size is not None and min(self.input_size) < 1:
            raise QDeployError(f"input size must be positive, got {self.input_size}; pass --input-size HxW")


def _input_shape(model: nn.Module, options: ExportOptions) -> tuple[int, int, int]:
    """(C, H, W): --input-size, else the model's own (ViT patch grid, timm pretrained_cfg)."""
    patch_grid = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if options.input_size is None and patch_grid is None and "input_size" not in getattr(model, "pretrained_cfg", {}):
        raise QDeployError(f"{type(model).__name__} has no default input size (no pretrained_cfg input_size); "
                           "pass --input-size HxW")
    channels, height, width = model_input_size(model)
    return (channels, *(options.input_size or (height, width)))  # type: ignore[return-value]


def run_reference(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """PyTorch outputs; a failure names the innermost module that raised (e.g. a fixed-size patch grid)."""
    stack: list[str] = []  # modules entered and not yet left: on error, the last one raised
    names = {module: name for name, module in model.named_modules() if name}
    hooks = [m.register_forward_pre_hook(lambda m, a: stack.append(names[m])) for m in names]
    hooks += [m.register_forward_hook(lambda m, a, o: stack.pop() and None) for m in names]
    try:
        with torch.no_grad():
            return model(batch)
    except Exception as exc:
        where = stack[-1] if stack else "the model"
        for hook in hooks:
            hook.remove()
        if _runs_at_own_size(model, batch):
            raise QDeployError(f"module {where!r} fails at input size {tuple(batch.shape[1:])} ({first_line(exc)}); "
                               "pass an --input-size the model accepts") from exc
        raise QDeployError(f"module {where!r} fails in forward ({first_line(exc)}), at the model's own input size "
                           "too: the model is broken, not the input size") from exc
    finally:
        for hook in hooks:
            hook.remove()


def _check_finite(references: dict[str, list[np.ndarray]], out: str | Path) -> None:
    """Parity against NaN or inf means nothing ("max error nan"): name the model as the cause."""
    for name, outputs in references.items():
        if not all(np.isfinite(output).all() for output in outputs):
            raise QDeployError(f"the PyTorch model itself gives non-finite outputs (NaN/inf) on the {name} inputs, "
                               f"so no export can match it: check its weights (a diverged run?); nothing was "
                               f"written to {out}")


def _as_list(outputs: torch.Tensor | tuple | list) -> list[torch.Tensor]:
    """A model's outputs in order (one tensor, or a tuple/list of them), as the ONNX graph lists them."""
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def _runs_at_own_size(model: nn.Module, batch: torch.Tensor) -> bool:
    """Whether `model` runs at its own input size while it failed at `batch`'s: only then is
    the input size to blame (a model that fails everywhere has another fault)."""
    try:
        own = model_input_size(model)
        if tuple(own) == tuple(batch.shape[1:]):
            return False
        with torch.no_grad():
            model(torch.zeros((1, *own), dtype=batch.dtype, device=batch.device))
    except Exception:  # noqa: BLE001 - any failure here means the size is not the cause
        return False
    return True


def _module_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else "the model"


def _check_ops(program: torch.export.ExportedProgram) -> None:
    """Ops outside aten/prims/qdeploy have no ONNX translation: name the module that calls them."""
    for node in program.graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
            namespace = target.namespace
            if namespace not in _KNOWN_NAMESPACES:
                raise QDeployError(
                    f"module {_module_of(node)!r} calls op {namespace}::{target._opname}, which has no ONNX "
                    "translation; replace the module or exclude it before exporting"
                )


def _capture(model: nn.Module, example: torch.Tensor, dynamic: bool) -> torch.export.ExportedProgram:
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)},) if dynamic else None
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=shapes, strict=False)
    except Exception as exc:
        raise QDeployError(f"torch.export cannot capture the model ({first_line(exc)}); try a fixed --batch N") from exc
    _check_ops(program)
    return program


def _convert(program: torch.export.ExportedProgram, opset: int) -> ir.Model:
    try:
        onnx_program = torch.onnx.export(
            program, (), dynamo=True, opset_version=opset, custom_translation_table=translations.translation_table(),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], optimize=True, verbose=False,
        )
    except Exception as exc:
        summary = [line for line in str(exc).splitlines() if line.startswith("<class")]
        detail = summary[-1] if summary else first_line(exc)
        raise QDeployError(f"torch.onnx cannot convert the model ({detail}); see the op named there") from exc
    _name_batch_axis(onnx_program.model)
    return onnx_program.model


def to_onnx(model: nn.Module, example: torch.Tensor, dynamic_batch: bool, opset: int = DEFAULT_OPSET) -> ir.Model:
    """`model` as one ONNX graph (plugin nodes where quadratic layers are), named `input` -> `output`."""
    return _convert(_capture(model, example, dynamic_batch), opset)


def _name_batch_axis(model: ir.Model) -> None:
    """Call the dynamic batch dim `batch` everywhere (torch.export names it after a symbol, e.g. s77)."""
    symbol = model.graph.inputs[0].shape[0] if model.graph.inputs[0].shape else None
    if not isinstance(symbol, ir.SymbolicDim) or symbol.value is None:
        return
    values = [*model.graph.inputs, *(v for node in model.graph.all_nodes() for v in node.outputs)]
    for value in values:
        if value.shape is not None and symbol.value in (getattr(d, "value", None) for d in value.shape):
            value.shape = ir.Shape([BATCH_AXIS if getattr(d, "value", None) == symbol.value else d for d in value.shape])


def _name_plugin_nodes(model: ir.Model) -> None:
    """Name each plugin node after its quadratic layer (from its weight's name), for runtime logs."""
    for node in model.graph:
        if node.domain == translations.PLUGIN_DOMAIN:
            node.name = node.inputs[1].name.removesuffix(".quad.a.weight")


def _finalize(base: ir.Model, mode: str) -> ir.Model:
    model = base.clone()  # initializer tensors are shared, not copied: no second copy of a large model
    translations.attach_functions(model)
    if mode == "decomposed":
        translations.decompose(model)
    else:
        _name_plugin_nodes(model)
    return model


def save_onnx(model: ir.Model, path: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> bool:
    """Write `path`; weights go to `<name>.data` beside it when they would break the 2 GB limit."""
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    external = weight_bytes > threshold
    ir.save(model, path, external_data=f"{path.name}.data" if external else None)
    return external


def _input_sets(model: nn.Module, shape: tuple[int, int, int], batch: int | None) -> dict[str, np.ndarray]:
    """verify's random sets (RANDOM_BATCHES when dynamic, else the fixed batch) and real photos."""
    sets = random_sets(shape, RANDOM_BATCHES if batch is None else (batch,))
    sets["samples"] = sample_batch(model, shape, 3 if batch is None else batch).numpy()
    return sets


def _calibration_set(model: nn.Module, shape: tuple[int, int, int], options: ExportOptions):
    """The labelled images that calibrate and judge an int8 export (None for other precisions)."""
    if options.precision != "int8":
        return None
    if not options.calibration:
        raise QDeployError("--precision int8 needs calibration images and the model records no training data; "
                           "pass --calib DIR (an ImageFolder) or --calib digits-shift")
    from qdeploy.data.eval_set import load_eval_set

    eval_set = load_eval_set(options.calibration, model, shape[1:], INT8_EVAL_IMAGES,  # type: ignore[arg-type]
                             **options.calibration_split)
    check_calibration_images(eval_set.images, shape, options.calibration)  # type: ignore[arg-type]
    return eval_set


def _quantize(path: Path, eval_set, options: ExportOptions, progress: Callable[[str], None]) -> dict[str, Any]:
    """Replace the checked fp32 file at `path` by the accuracy-controlled int8 file, or keep fp32 (the report says why).

    A shipped int8 file keeps its fp32 file beside it (`<stem>.fp32.onnx`): what it was judged
    against, for `qdeploy verify` and benchmarks.
    """
    fp32 = path.with_name(f"{path.stem}.fp32.onnx")
    path.rename(fp32)
    result = quantize_with_accuracy_control(fp32, path, eval_set.images, eval_set.labels, options.int8_target,
                                            options.int8_control, (options.batch,) if options.batch else None,
                                            progress)
    result["calibration"] = options.calibration
    original = onnx.load(str(fp32), load_external_data=False)
    export_info = json.loads(next(p.value for p in original.metadata_props if p.key == "qdeploy.export"))
    export_info["precision"] = result["shipped"]
    shipped = onnx.load(str(path))
    del shipped.metadata_props[:]
    shipped.metadata_props.extend(original.metadata_props)  # the quantizer drops them
    next(p for p in shipped.metadata_props if p.key == "qdeploy.export").value = json.dumps(export_info, sort_keys=True)
    onnx.save(shipped, str(path))
    if result["shipped"] == "int8":
        result["fp32_file"] = fp32.name
    else:
        fp32.unlink()
    check_onnx_file(path)
    return result


def for_stored(stored: Stored, options: ExportOptions) -> ExportOptions:
    """`options` with what a stored model implies: its trained image size (a 64 px model exported at its
    architecture's 224 px would be checked, calibrated and served wrongly), its training data as the
    int8 calibration set, and its folder as the report's source."""
    if stored.kind != "model":
        raise QDeployError(f"{stored.path} is already an {stored.kind} file or folder; pass the model it came from "
                           "(a train run or model folder)")
    calibration = options.calibration or (stored.eval_data if options.precision == "int8" else None)
    return replace(options, input_size=options.input_size or stored.input_size, calibration=calibration,
                   calibration_split=stored.record.split_for(calibration) if stored.record else {},
                   source=options.source or str(stored.weights or stored.model_folder))


def export_model(model: nn.Module | Stored | str | Path, out: str | Path, options: ExportOptions = ExportOptions(),
                 progress: Callable[[str], None] = lambda text: None) -> ExportReport:
    """Export an adapted model (a module, or a stored one: a run, model folder or weights file, at its
    trained size) to `out` (replaced atomically); returns the report it writes.

    progress: told what the int8 accuracy control is doing (its steps take minutes on large models).

    Raises QDeployError (and leaves `out` untouched) when a layer cannot be exported, a file
    fails the ONNX checks, or ONNX Runtime's outputs miss the precision's tolerance.
    """
    started = time.perf_counter()
    if not isinstance(model, nn.Module):
        stored = model if isinstance(model, Stored) else locate(model)
        options = for_stored(stored, options)
        model = stored.build()
    model = model.eval()
    shape = _input_shape(model, options)
    layers = quadratic_layers(model)
    inputs = _input_sets(model, shape, options.batch)
    references = {name: [t.float().numpy() for t in _as_list(run_reference(model, torch.from_numpy(batch)))]
                  for name, batch in inputs.items()}
    _check_finite(references, out)

    eval_set = _calibration_set(model, shape, options)
    exportable = export_copy(model, fused="fused" in options.modes)
    if options.precision == "fp16":
        exportable = fp16_compute(exportable)
    example = torch.from_numpy(random_batch(shape, options.batch or 2, seed=0))
    convert_start = time.perf_counter()
    base = to_onnx(exportable, example, options.batch is None, options.opset)
    convert_s = time.perf_counter() - convert_start
    metadata = {
        "qdeploy.version": __version__,
        "qdeploy.adapter": json.dumps(config_of(model)[1], sort_keys=True),
        "qdeploy.weights_sha256": weights_sha256(model),
    }
    tolerance = PRESETS["fp32" if options.precision == "int8" else options.precision]  # int8: of the fp32 graph
    files: dict[str, ExportedFile] = {}
    forms: Forms | None = None
    with atomic.staged_directory(out) as stage:
        for mode in options.modes:
            mode_start = time.perf_counter()
            onnx_model = _finalize(base, mode)
            rewrites: dict[str, Any] = {"enabled": options.rewrites}
            if options.rewrites:
                done, forms = rewrite_graph(onnx_model, list(layers), options.tune_settings(), forms)
                rewrites.update(done)
            export_info = {"mode": mode, "precision": options.precision, "opset": options.opset,
                           **({"int8_target": options.int8_target} if options.precision == "int8" else {}),
                           "batch": options.batch or "dynamic", "input_shape": list(shape)}
            onnx_model.metadata_props.update({**metadata, "qdeploy.export": json.dumps(export_info, sort_keys=True)})
            path = stage / f"{mode}.onnx"
            external = save_onnx(onnx_model, path, options.external_data_threshold)
            proto = check_onnx_file(path)
            plugin_count = len(translations.plugin_nodes(proto))
            expected = len(layers) if mode == "fused" else 0  # packed_copy refused RBF layers for fused
            if plugin_count != expected:
                raise QDeployError(f"{mode} graph has {plugin_count} plugin nodes, expected {expected}; please report this bug")
            export_s = convert_s + time.perf_counter() - mode_start
            parity = check_parity(path, inputs, references, tolerance)
            files[mode] = ExportedFile(path.name, external, files_bytes(path), round(export_s, 3), node_counts(proto),
                                       len(proto.graph.node), plugin_count, rewrites,
                                       {name: stats.to_dict() for name, stats in parity.items()},
                                       all(stats.passed for stats in parity.values()))
            if not files[mode].passed:
                worst = max(parity.items(), key=lambda item: item[1].max_rel)
                raise QDeployError(
                    f"{mode} ONNX output differs from PyTorch on {worst[0]}: max error {worst[1].max_rel:.2e} of the "
                    f"output scale, past the {options.precision} tolerance (atol {tolerance.atol:.0e} + rtol "
                    f"{tolerance.rtol:.0e} of the scale); nothing was written to {out}"
                )
            if eval_set is not None:
                int8 = _quantize(path, eval_set, options, progress)
                nodes = node_counts(check_onnx_file(path))
                files[mode] = replace(files[mode], int8=int8, file_bytes=files_bytes(path), nodes=nodes,
                                      nodes_total=sum(nodes.values()))
        report = ExportReport(
            __version__, options.source, config_of(model)[1]["base"], len(layers), metadata["qdeploy.weights_sha256"],
            options.precision, options.opset, options.batch or "dynamic",
            {"name": INPUT_NAME, "shape": [BATCH_AXIS if options.batch is None else options.batch, *shape],
             "dtype": "float32"},
            asdict(tolerance), round(convert_s, 3), round(time.perf_counter() - started, 3), files)
        write_report(stage, report)
    return report
