"""INT8 export: static quantization to a QDQ graph with onnxruntime.quantization, and its parity rule.

Calibration runs the fp32 file (rewrites included) on real images and records activation
ranges, clipped at the CALIBRATION_PERCENTILE of each tensor's histogram rather than its
min and max: on the pipeline's digits-shift-trained EfficientNet-Lite0 (64 px, 359 images) the
int8 logits' error fell from 0.017 to 0.011 of their variance and the accuracy drop from 1.4 to
1.1 points (entropy calibration: no change from min-max; 8-bit unsigned weights: worse).
Weights are quantised per output channel (signed, symmetric). The result keeps
QuantizeLinear/DequantizeLinear pairs around every quantised op (QDQ format), which both
ONNX Runtime (fusing them into integer kernels) and TensorRT (int8 from the graph, the only
way TensorRT 11 takes it) understand. The activation type depends on the target:

- `ort-cpu`: unsigned, asymmetric activations (U8S8), ONNX Runtime's fast x86 path; signed
  activations ran the adapted EfficientNet-Lite0 6.5x slower at batch 32 (measured). Weights
  of GEMM-based convolutions and MatMuls use 7 of the 8 bits (`reduce_range`): x86 CPUs
  without VNNI (AVX2 only, like this machine's AMD EPYC) add pairs of u8 x s8 products in
  int16, which saturates with full-range weights; measured on a digits-shift-trained
  EfficientNet-Lite0 (64 px, 359 images), top-1 agreement with fp32 rose from 70.5% to 95.8%
  and the logits' error fell 8x. ONNX Runtime's own guidance; VNNI machines lose almost
  nothing by it, and a file may run on either. Depthwise convolutions (one input and one
  output channel per group) run MLAS's depthwise kernel, which widens every product to
  int32, so their weights keep all 8 bits (`depthwise_full_range`): on that model the logits'
  error halved again (0.011 -> 0.0079) and agreement rose 98.6% -> 99.2% at the same latency;
- `tensorrt`: signed, symmetric activations (zero point 0), which TensorRT requires.

Around each Clip-bounded sum (ReLU6 behind a quadratic layer's P(x) + Q(x)) the activation
ranges are narrowed beyond calibration where that changes no output (`narrowed_ranges`): the
primary conv's P(x), whose range the folded BN widens, only matters in a window the Clip and
Q(x) bound. On a Fashion-MNIST-trained Lite0 that halved the logits' error.

Parity is judged on answers, not digits: on labelled images the int8 file must agree with
the fp32 file's top-1 on at least INT8_MIN_TOP1 of them and lose at most INT8_MAX_ACCURACY_DROP
accuracy. int8_accuracy_control.py returns the most harmful nodes to float until a file
meets that rule (`nodes_to_exclude`), re-using one calibration (`calibration_cache`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qdeploy.errors import QDeployError, first_line

INT8_TARGETS = ("ort-cpu", "tensorrt")
INT8_MIN_TOP1 = 0.99
INT8_MAX_ACCURACY_DROP = 0.005  # 0.5 points
CALIBRATION_BATCH = 16
CALIBRATION_PERCENTILE = 99.999


def quantize_qdq(fp32_path: Path, out_path: Path, images: np.ndarray, target: str, input_name: str = "input",
                 nodes_to_exclude: Sequence[str] = (), calibration_cache: Path | None = None) -> dict[str, list[float]]:
    """Write the static-QDQ int8 form of `fp32_path` to `out_path`, calibrated (percentile) on `images`;
    returns the activation ranges narrowed beyond calibration (`narrowed_ranges`).

    nodes_to_exclude stay in float. calibration_cache: a JSON file of activation ranges; the
    first call writes it, later calls read it instead of calibrating again (each exclusion
    set of the accuracy control re-quantizes with the same ranges, so only the exclusions differ).
    The narrowed ranges need the calibrated ones, so a call without a cache calibrates into a
    temporary one and, when some range narrows, quantizes twice.
    """
    if target not in INT8_TARGETS:
        raise QDeployError(f"unknown int8 target {target!r}; use {' or '.join(INT8_TARGETS)}")
    signed = target == "tensorrt"
    overrides = {} if signed else depthwise_full_range(fp32_path)
    with tempfile.TemporaryDirectory(prefix="qdeploy-calibration-") as tmp:
        cache = calibration_cache or Path(tmp) / "calibration.json"
        calibrating = not cache.is_file()
        if calibrating:
            if len(images) == 0:
                raise QDeployError("no calibration images; pass --calib DIR with images of the model's classes")
            _quantize_static(fp32_path, out_path, images, target, input_name, nodes_to_exclude, cache, overrides)
        narrowed = narrowed_ranges(fp32_path, cache, symmetric=signed)
        if narrowed or not calibrating:  # else the file just written is the one
            ranges = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for name, (lo, hi) in narrowed.items()}
            _quantize_static(fp32_path, out_path, None, target, input_name, nodes_to_exclude, cache, overrides | ranges)
    return narrowed


def _quantize_static(fp32_path: Path, out_path: Path, images: np.ndarray | None, target: str, input_name: str,
                     nodes_to_exclude: Sequence[str], cache: Path, overrides: dict[str, list[dict[str, Any]]]) -> None:
    """onnxruntime.quantization's quantize_static with qdeploy's settings (module docstring); `images` None: the
    cache's ranges, else calibrate on them and write the cache. `overrides`: its TensorQuantOverrides."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    # whole batches only: ONNX Runtime's histogram collector fails on a shorter last batch
    # ("inhomogeneous shape"), so a tail of fewer than CALIBRATION_BATCH images is left out
    usable = 0 if images is None else len(images) - len(images) % CALIBRATION_BATCH or len(images)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(images[i:i + CALIBRATION_BATCH] for i in range(0, usable, CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    signed = target == "tensorrt"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns about pre-processing the exporter already did
    try:  # the percentile calibrator prints its progress; the export reports its own
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(fp32_path), str(out_path), None if images is None else Batches(),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=not signed,
                            nodes_to_exclude=list(nodes_to_exclude), calibrate_method=CalibrationMethod.Percentile,
                            calibration_cache_path=str(cache),
                            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": signed,
                                                                        "WeightSymmetric": True,
                                                                        "CalibPercentile": CALIBRATION_PERCENTILE,
                                                                        "TensorQuantOverrides": overrides})
    except Exception as exc:
        raise QDeployError(f"onnxruntime.quantization cannot quantize {fp32_path.name} ({first_line(exc)}); "
                           "export fp32 instead and report this") from exc
    finally:
        root.setLevel(level)


def depthwise_full_range(fp32_path: Path) -> dict[str, list[dict[str, Any]]]:
    """onnxruntime.quantization's TensorQuantOverrides giving every depthwise Conv weight (shape [C, 1, kh, kw],
    group C) all 8 bits under `reduce_range`: their kernel cannot saturate (module docstring)."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    overrides = {}
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if dims is not None and group > 1 and len(dims) == 4 and dims[0] == group and dims[1] == 1:
            overrides[node.input[1]] = [{"axis": 0, "reduce_range": False}]
    return overrides


def narrowed_ranges(fp32_path: Path, cache: Path, symmetric: bool = False) -> dict[str, list[float]]:
    """Activation ranges narrower than calibrated that change no output of the int8 graph: around each sum
    that a Clip bounds (ReLU6 behind a quadratic layer's P(x) + Q(x)).

    - The sum takes the Clip's [lo, hi] also when the `blocked` form's identity conv
      (norm_fold.insert_identity_conv) stands between them: onnxruntime.quantization does
      that only for a Clip's direct input. Clamping before x * 1 + 0 and the Clip changes nothing.
    - The wider of the two summands X (the primary conv's P(x), after the folded BN it can span
      +-58) takes [lo - max Y, hi - min Y], Y being the other summand in its quantized range
      (as the quantizer takes it: holding 0, or +-max when `symmetric`, and widened by one of its
      steps for the rounding of its scale): below that window X + Y < lo for every Y, above it
      X + Y > hi, and the Clip gives lo or hi whatever X was, so clamping X there is exact.
      Its step shrinks by the window's share of its range.

    Measured on a Fashion-MNIST-trained EfficientNet-Lite0 (32 px, 3 quadratic layers; 9,488
    images that did not calibrate): the logits' error 0.0050 -> 0.0025 of their variance, top-1
    agreement with fp32 98.5% -> 99.1%, without a float node (docs/int8.md).
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.calibrate import load_tensors_data

    calibrated = load_tensors_data(cache)
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def sole_reader(tensor: str) -> Any:
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 else None

    def clip_bounds(node: Any) -> tuple[float, float] | None:
        bounds = [constants.get(name) for name in node.input[1:3]] if node is not None and node.op_type == "Clip" else []
        return (float(bounds[0]), float(bounds[1])) if len(bounds) == 2 and all(b is not None for b in bounds) else None

    def identity_conv(node: Any) -> bool:
        weight = constants.get(node.input[1]) if node is not None and node.op_type == "Conv" else None
        bias = constants.get(node.input[2]) if len(node.input) > 2 else np.zeros(1, np.float32)
        return (weight is not None and bias is not None and weight.ndim == 4 and weight.shape[1:] == (1, 1, 1)
                and bool(np.all(weight == 1)) and not np.any(bias))

    def calibrated_range(tensor: str) -> tuple[float, float] | None:
        return tuple(float(v) for v in calibrated[tensor].range_value) if tensor in calibrated else None  # type: ignore[return-value]

    narrowed: dict[str, list[float]] = {}
    for node in graph.node:
        reader = sole_reader(node.output[0]) if node.op_type == "Add" else None
        behind_identity = reader is not None and identity_conv(reader)
        bounds = clip_bounds(sole_reader(reader.output[0]) if behind_identity else reader)
        if bounds is None:
            continue
        lo, hi = bounds
        if behind_identity:
            narrowed[node.output[0]] = [lo, hi]
        ranges = [calibrated_range(name) for name in node.input]
        if any(r is None for r in ranges) or any(sole_reader(name) is not node for name in node.input):
            continue
        wide = int(ranges[1][1] - ranges[1][0] > ranges[0][1] - ranges[0][0])  # type: ignore[index]
        (x_lo, x_hi), (y_lo, y_hi) = ranges[wide], ranges[1 - wide]  # type: ignore[misc]
        y_lo, y_hi = min(y_lo, 0.0), max(y_hi, 0.0)
        if symmetric:
            y_lo, y_hi = -max(-y_lo, y_hi), max(-y_lo, y_hi)
        step = (y_hi - y_lo) / 255
        window = (max(x_lo, lo - y_hi - step), min(x_hi, hi - y_lo + step))
        if window[0] < window[1] and window != (x_lo, x_hi):
            narrowed[node.input[wide]] = [window[0], window[1]]
    return narrowed


def int8_parity(reference: np.ndarray, output: np.ndarray, labels: np.ndarray,
                max_accuracy_drop: float | None = None) -> dict[str, Any]:
    """Top-1 agreement with the reference (the fp32 file) and both accuracies; `passed` applies the
    int8 rule, with `max_accuracy_drop` (a fraction) in place of INT8_MAX_ACCURACY_DROP when given."""
    drop = INT8_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop
    ref_top1, out_top1 = reference.argmax(axis=1), output.argmax(axis=1)
    agreement = float(np.mean(ref_top1 == out_top1))
    ref_acc, out_acc = float(np.mean(ref_top1 == labels)), float(np.mean(out_top1 == labels))
    return {"images": int(len(labels)), "top1_agreement": agreement, "reference_accuracy": ref_acc,
            "int8_accuracy": out_acc, "min_top1_agreement": INT8_MIN_TOP1,
            "max_accuracy_drop": drop, "passed": agreement >= INT8_MIN_TOP1 and ref_acc - out_acc <= drop + 1e-12}
