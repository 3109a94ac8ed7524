"""Accuracy-controlled int8: the fastest QDQ file that keeps the fp32 file's answers, or the fp32 file.

Plain static quantization either meets the int8 rule (top-1 agreement with the fp32 file >=
INT8_MIN_TOP1, accuracy drop <= the allowed points) or it does not, and then no int8 ships.
This module does what OpenVINO NNCF's `quantize_with_accuracy_control` does, with
onnxruntime.quantization doing the quantizing (`nodes_to_exclude`):

1. split the eval set (EvalSplit): the first half (at most RANKING_IMAGES) tunes, the rest
   judges every file, so the ranking cannot pick groups for the images that judge it;
   calibrate once on the first tuning images (the activation ranges are cached, so every later
   file differs from the first only in which nodes stay float), quantize everything, judge it;
2. when it misses the rule, rank the quantized node groups by a measured sensitivity: each
   group is returned to float *in the all-int8 graph* (its nodes read float weights, and the
   tensors between them stay float; no re-quantization) and the normalised squared error of
   the logits against the fp32 file on the ranking images is measured; the sensitivity is
   how much of the all-int8 error that removes. Groups are the nodes of one part of a quadratic layer
   (`<layer>/quad`: factor convs, product, projection; `<layer>/primary`, `/sum`, `/blocked`),
   so the ranking also says where the quadratic terms need float, and every other quantized
   node on its own; per quantized activation tensor, its producer with all its readers
   (the only exclusion that keeps the tensor itself float: `activation_groups`); and each
   quadratic layer whole (`layer_groups`);
3. return the groups whose float form lowers the error to float in that order (less a group
   that one of its own subsets nearly matches: `returnable`), one more per step (judged on
   the judging images),
   until a file meets the rule or `max_steps` is spent; a step is the all-int8 graph with
   those groups reverted, which gives the same outputs as re-quantizing with them in
   `nodes_to_exclude` (checked: equal logits), at a fraction of the cost; the shipped file is
   quantized again by onnxruntime.quantization and judged again;
4. time every step tried against the fp32 file (ONNX Runtime CPU, the median of rounds of
   paired alternating blocks, at each timing batch: `time_against_fp32`); quantize the fastest
   one that meets the rule again as it would ship, time that file the same way, and ship it if
   it beats fp32 (geometric mean of the per-batch latency ratios < 1); else ship the fp32 file
   and say why.

Why this ranking: re-quantizing per candidate (what NNCF does with its graph) costs ~5 s per
group on EfficientNet-Lite0 in onnxruntime.quantization's per-channel Python loop, x100
groups; reverting a group inside the all-int8 graph costs one session and one small batch.
The logits' squared error is used instead of the agreement because it is continuous: on a
few hundred images most single groups change no top-1 answer, yet they move the logits.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from qdeploy.errors import QDeployError
from qdeploy.export import int8
from qdeploy.export.int8 import INT8_MAX_ACCURACY_DROP, int8_parity, quantize_qdq
from qdeploy.export.forms import session_and_feeds
from qdeploy.onnx_io import SEPARATOR, layer_of, part_of
from qdeploy.timing import paired_ratio, time_alternating

MIN_CALIBRATION_IMAGES = 32  # fewer: min-max ranges and a 99% agreement on them mean little
CALIBRATION_IMAGES = 256  # at most: the first of the tuning images (eval_split)
RANKING_IMAGES = 512  # at most: flips sit on a few low-margin images (128 missed them on digits-shift)
EVAL_BATCH = 64
# a group is not returned when one of its proper subsets removes this share of what it removes (`returnable`)
SUBSET_SHARE = 0.8
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FLOAT_SUFFIX = ".float"
ACTIVATION_SUFFIX = " (activation)"  # names an activation group (activation_groups)
LAYER_SUFFIX = " (whole layer)"  # names a layer group (layer_groups)
TIMING_RUNS = 300  # timed runs per file, batch and round at most (timing_seconds usually ends it first)
# Rounds per file and batch, each loading both files afresh; the median over them decides. One timing (spinning
# sessions in turns) put the same 11-float-node file at 0.97x and at 1.16x the fp32 file in two pipeline runs.
TIMING_ROUNDS = 5


@dataclass(frozen=True)
class AccuracyControl:
    """How far the control may go: the allowed accuracy drop, the steps, how steps are timed."""

    max_accuracy_drop: float = INT8_MAX_ACCURACY_DROP  # a fraction: 0.005 = 0.5 points
    max_steps: int = 32  # float groups returned at most (one per step) before shipping fp32
    timing_batches: tuple[int, ...] = (1, 32)
    timing_seconds: float = 0.5  # per file, batch and round (TIMING_ROUNDS), in alternating blocks (time_against_fp32)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise QDeployError(f"--max-accuracy-drop must be between 0 and 100 points, got "
                               f"{100 * self.max_accuracy_drop:g}")


def check_calibration_images(images: np.ndarray, input_shape: tuple[int, ...], name: str) -> None:
    """Refuse a set too small to calibrate and judge, or of another image shape than the file takes."""
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape):
        got = "x".join(map(str, images.shape[1:]))
        raise QDeployError(f"calibration images of {name} are {got} but the model takes "
                           f"{'x'.join(map(str, input_shape))} (CxHxW); give images of the model's channels "
                           "and size, or export at their --input-size")
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise QDeployError(f"calibration set {name} has {len(images)} held-out images; int8 needs at least "
                           f"{MIN_CALIBRATION_IMAGES} to calibrate and judge the file: add images (a folder "
                           "keeps 20% for this, or give it a val/ folder) or pass another --calib")


@dataclass(frozen=True)
class EvalSplit:
    """Which eval images calibrate, which rank the groups, and which judge the files (apart from both).

    Why apart: the ranking picks the groups that fix the answers of the images it measures, so
    a file judged on them looks better than it is. On a Fashion-MNIST-trained EfficientNet-Lite0
    the file judged 99.0% on images that had ranked agreed 98.6% on 4,000 that had not.
    The halves are drawn at random (seeded): an ImageFolder's val split comes class by class.
    """

    calibration: np.ndarray  # indices into the eval set
    ranking: np.ndarray
    judged: np.ndarray

    @classmethod
    def of(cls, count: int, seed: int = 0) -> "EvalSplit":
        """Half the images (at most RANKING_IMAGES) tune, the first CALIBRATION_IMAGES of them calibrating; the rest judge."""
        order = np.random.default_rng(seed).permutation(count)
        tune = min(RANKING_IMAGES, count // 2)
        return cls(order[:min(CALIBRATION_IMAGES, tune)], order[:tune], order[tune:])


def group_of(node_name: str) -> str:
    """The float-return unit of a node: `<layer>/<part>` inside a quadratic layer (`quad`: factor convs,
    product and projection; `primary`; `sum`; `blocked`), else the node itself."""
    layer = layer_of(node_name)
    return node_name if layer is None else f"{layer}{SEPARATOR}{part_of(node_name)}"


def tensor_links(model: onnx.ModelProto) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Tensor -> the node that writes it, and tensor -> the nodes that read it (in graph order)."""
    producer = {out: n.name for n in model.graph.node for out in n.output}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    return producer, readers


def activation_groups(qdq: onnx.ModelProto, fp32: onnx.ModelProto) -> dict[str, list[str]]:
    """`<tensor> (activation)` -> the nodes that keep that quantized activation float: its producer and
    every reader (onnxruntime.quantization leaves a tensor unquantized only when none of them is quantized).

    Why besides the node groups: a float node still reads and writes quantized tensors (the
    QDQ pairs around it stay), so node groups remove weight rounding only. On a
    Fashion-MNIST-trained EfficientNet-Lite0 (32 px, 91.25%), where activations carry two thirds
    of the int8 error, 32 node groups never lifted the agreement above 98.7%; two activation
    groups reached 99.0% (docs/int8.md).
    """
    weights = {t.name for t in fp32.graph.initializer}
    producer, readers = tensor_links(fp32)
    quantized = dict.fromkeys(n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    groups = {}
    for tensor in quantized:
        if tensor in readers and tensor not in weights:  # a graph input has readers only
            writer = [producer[tensor]] if tensor in producer else []
            groups[f"{tensor}{ACTIVATION_SUFFIX}"] = list(dict.fromkeys(writer + readers[tensor]))
    return groups


def layer_groups(fp32: onnx.ModelProto) -> dict[str, list[str]]:
    """`<layer> (whole layer)` -> every node of one quadratic layer, so that all the tensors between them stay float.

    Why: the layer's three activations (P(x), the factors, the sum) are quantised one after
    another, and each one kept float alone removes little because the others still round; on a
    Fashion-MNIST-trained EfficientNet-Lite0 its first layer in float halved the logits' error
    in one step (docs/int8.md), where single groups took nine.
    """
    groups: dict[str, list[str]] = {}
    for node in fp32.graph.node:
        layer = layer_of(node.name)
        if layer is not None:
            groups.setdefault(f"{layer}{LAYER_SUFFIX}", []).append(node.name)
    return groups


def candidate_groups(qdq: onnx.ModelProto, fp32: onnx.ModelProto) -> dict[str, list[str]]:
    """What the control may return to float: node groups, activation groups and whole quadratic layers."""
    return quantized_groups(qdq) | activation_groups(qdq, fp32) | layer_groups(fp32)


def quantized_groups(qdq: onnx.ModelProto) -> dict[str, list[str]]:
    """Group -> names of the nodes of the QDQ graph that read a dequantized tensor (the int8 nodes)."""
    dequantized = {out for n in qdq.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    groups: dict[str, list[str]] = {}
    for node in qdq.graph.node:
        if node.op_type not in _QDQ_OPS and any(name in dequantized for name in node.input):
            groups.setdefault(group_of(node.name), []).append(node.name)
    return groups


def with_float_nodes(qdq: onnx.ModelProto, fp32: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy of `qdq` as `nodes_to_exclude=names` would quantize it, without quantizing again.

    As onnxruntime.quantization does for excluded nodes: their weights and biases are the
    float initializers again, and an activation stays float only when neither its producer
    nor any of its readers is quantized (a graph input has no producer); otherwise every
    reader gets its dequantized value. A float tensor the QDQ graph no longer has (an
    activation the quantizer folded away) keeps its dequantized value.
    """
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    float_weights = {t.name: t for t in fp32.graph.initializer}
    produced_by, read_by = tensor_links(fp32)
    graph_inputs = {i.name for i in fp32.graph.input}
    float_nodes = {n.name: n for n in fp32.graph.node if n.name in names}
    still_produced = {(n.name, out) for n in model.graph.node for out in n.output}
    added: set[str] = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        original = float_nodes.get(node.name)
        if original is None or len(original.input) != len(node.input):
            continue
        for position, name in enumerate(original.input):
            if name in float_weights:  # under a new name: the quantizer names a bias's dequantized value after it
                float_name = f"{name}{FLOAT_SUFFIX}"
                if float_name not in added:
                    weight = model.graph.initializer.add()
                    weight.CopyFrom(float_weights[name])
                    weight.name = float_name
                    added.add(float_name)
                node.input[position] = float_name
            elif set(read_by[name]) <= names and (name in graph_inputs or (
                    produced_by.get(name) in names and (produced_by[name], name) in still_produced)):
                node.input[position] = name
    return model


def _session(model: Path | onnx.ModelProto, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_logits(model: Path | onnx.ModelProto, images: np.ndarray, threads: int) -> np.ndarray:
    """The first output of `model` on `images`, in batches of EVAL_BATCH."""
    session = _session(model, threads)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + EVAL_BATCH]})[0]
                           for i in range(0, len(images), EVAL_BATCH)])


def logit_error(reference: np.ndarray, output: np.ndarray) -> float:
    """Mean squared logit error relative to the reference logits' variance (0: identical)."""
    return float(np.mean((output - reference) ** 2) / max(float(np.var(reference)), 1e-12))


def rank_groups(qdq_path: Path, fp32_path: Path, images: np.ndarray, reference: np.ndarray,
                threads: int, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every quantized group with its measured sensitivity (the logit error it removes when float), worst first."""
    qdq, fp32 = onnx.load(str(qdq_path)), onnx.load(str(fp32_path))
    groups = candidate_groups(qdq, fp32)
    baseline = logit_error(reference, run_logits(qdq, images, threads))
    ranking = []
    for index, (group, nodes) in enumerate(groups.items()):
        progress(f"int8 sensitivity {index + 1}/{len(groups)}: {group}")
        logits = run_logits(with_float_nodes(qdq, fp32, set(nodes)), images, threads)
        error = logit_error(reference, logits)
        ranking.append({"group": group, "nodes": nodes, "sensitivity": baseline - error,
                        "error_when_float": error,
                        "top1_agreement_when_float": float(np.mean(logits.argmax(1) == reference.argmax(1)))})
    ranking.sort(key=lambda entry: entry["sensitivity"], reverse=True)
    return ranking


def returnable(ranking: list[dict[str, Any]]) -> list[str]:
    """The groups the control returns to float, in ranking order: those whose float form lowers the error,
    less each one a proper subset of it nearly matches (SUBSET_SHARE of its sensitivity).

    Why: a whole layer always removes at least what its parts remove, so it would rank above
    them even when one part carries the error, and every float node costs latency. On the
    pipeline's digits-shift model the first layer whole (7 nodes) removed 0.00091 and its
    primary conv's activation (2 nodes) 0.00077: shipping the whole layer cost 0.59x -> 1.05x
    of fp32 at batch 32. On the Fashion-MNIST model no part came near its first layer whole,
    and that layer is what made the file meet the rule.
    """
    helpful = [(entry["group"], set(entry["nodes"]), entry["sensitivity"]) for entry in ranking if entry["sensitivity"] > 0]
    return [group for group, nodes, sensitivity in helpful
            if not any(other < nodes and removed >= SUBSET_SHARE * sensitivity for _, other, removed in helpful)]


def sensitivity_by_part(ranking: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per part of the quadratic layers (`quad`, `primary`, `sum`, `blocked`; `other`: the rest of the
    network; `<part> activations`: the activation groups written by that part): its groups, how many
    of them float helps, and the logit error those remove in sum."""
    parts: dict[str, dict[str, Any]] = {}
    for entry in ranking:
        name = entry["group"].removesuffix(ACTIVATION_SUFFIX)
        part = (part_of(name) or name.partition(SEPARATOR)[2]) if layer_of(name) else "other"
        if name != entry["group"]:
            part = f"{part} activations"
        if entry["group"].endswith(LAYER_SUFFIX):
            part = "whole layers"
        summary = parts.setdefault(part, {"groups": 0, "harmful_groups": 0, "error_removed": 0.0})
        summary["groups"] += 1
        if entry["sensitivity"] > 0:
            summary["harmful_groups"] += 1
            summary["error_removed"] += entry["sensitivity"]
    return dict(sorted(parts.items(), key=lambda item: -item[1]["error_removed"]))


def _quiet_run(path: Path, batch: int, threads: int) -> Callable[[], object]:
    """One run of `path` on random inputs, in a session that stops spinning when a run ends (alternation)."""
    session, feeds = session_and_feeds(path, batch, threads, spin_after_run=False)
    return lambda: session.run(None, feeds)


def time_against_fp32(path: Path, fp32_path: Path, control: AccuracyControl, batches: tuple[int, ...]) -> dict[str, Any]:
    """Per batch: the int8/fp32 ratio, the median over TIMING_ROUNDS rounds (each loads both files afresh
    and runs them in alternating blocks, paired block by block: timing.time_alternating, as the latency
    plan checks a set), the rounds' ratios and each file's p50 ms; and the geometric mean over batches,
    which decides whether the int8 file ships."""
    per_batch = {}
    for batch in batches:
        rounds, times = [], {"fp32": [], "int8": []}
        for _ in range(TIMING_ROUNDS):
            blocks = time_alternating({form: _quiet_run(file, batch, control.threads)
                                       for form, file in (("fp32", fp32_path), ("int8", path))},
                                      TIMING_RUNS, control.timing_seconds)
            rounds.append(paired_ratio(blocks["int8"], blocks["fp32"]))
            for form, own in blocks.items():
                times[form].extend(t for block in own for t in block)
        per_batch[str(batch)] = {"fp32_ms": 1e3 * float(np.median(times["fp32"])),
                                 "int8_ms": 1e3 * float(np.median(times["int8"])),
                                 "ratio": float(np.median(rounds)), "rounds": rounds}
    ratio = math.exp(np.mean([math.log(entry["ratio"]) for entry in per_batch.values()]))
    return {"batches": per_batch, "threads": control.threads, "ratio_vs_fp32": ratio}


def _judge(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray, control: AccuracyControl) -> dict[str, Any]:
    judged = int8_parity(reference, logits, labels, control.max_accuracy_drop)
    return {"top1_agreement": judged["top1_agreement"], "int8_accuracy": judged["int8_accuracy"],
            "accuracy_drop": judged["reference_accuracy"] - judged["int8_accuracy"],
            "logit_error": logit_error(reference, logits), "passed": judged["passed"]}


def quantize_with_accuracy_control(fp32_path: Path, out_path: Path, images: np.ndarray, labels: np.ndarray,
                                   target: str, control: AccuracyControl = AccuracyControl(),
                                   timing_batches: tuple[int, ...] | None = None,
                                   progress: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Write the shipped file (an int8 mix, or a copy of the fp32 file) to `out_path`; returns the report section.

    images/labels: the eval set, split by EvalSplit (calibration and ranking images tune, the
    rest judge every file). timing_batches overrides control.timing_batches (a fixed-batch
    graph runs at its batch only). Steps after the first are the all-int8 graph with a prefix
    of the ranking in float (with_float_nodes, the same outputs as re-quantizing with those
    `nodes_to_exclude`: checked on the shipped file, which is quantized again by
    onnxruntime.quantization and judged again).
    """
    batches = timing_batches or control.timing_batches
    split = EvalSplit.of(len(images))
    with tempfile.TemporaryDirectory(prefix="qdeploy-int8-") as tmp:
        work = Path(tmp)
        cache = work / "calibration.json"
        reference = run_logits(fp32_path, images, control.threads)
        judged_images, judged_reference, judged_labels = (images[split.judged], reference[split.judged],
                                                          labels[split.judged])
        all_int8 = work / "all_int8.onnx"
        progress("int8: calibrating and quantizing")
        narrowed = quantize_qdq(fp32_path, all_int8, images[split.calibration], target, calibration_cache=cache)
        qdq, fp32 = onnx.load(str(all_int8)), onnx.load(str(fp32_path))
        groups = candidate_groups(qdq, fp32)
        steps: list[dict[str, Any]] = []
        ranking: list[dict[str, Any]] = []
        harmful: list[str] = []

        def judge(path: Path) -> dict[str, Any]:
            return _judge(run_logits(path, judged_images, control.threads), judged_reference, judged_labels, control)

        def try_step(float_groups: list[str]) -> dict[str, Any]:
            index = len(steps)
            nodes = list(dict.fromkeys(node for group in float_groups for node in groups[group]))
            path = all_int8 if not nodes else work / f"step{index}.onnx"
            if nodes:
                onnx.save(with_float_nodes(qdq, fp32, set(nodes)), str(path))
            progress(f"int8 step {index}: {len(float_groups)} float group(s), judging and timing")
            step = {"step": index, "float_groups": list(float_groups), "float_nodes": nodes, **judge(path)}
            step["latency"] = time_against_fp32(path, fp32_path, control, batches)
            steps.append(step)
            return step

        if not try_step([])["passed"]:
            ranking = rank_groups(all_int8, fp32_path, images[split.ranking], reference[split.ranking],
                                  control.threads, progress)
            harmful = returnable(ranking)
            for count in range(1, min(control.max_steps, len(harmful)) + 1):
                if try_step(harmful[:count])["passed"]:
                    break
        passing = [step for step in steps if step["passed"]]
        fastest = min(passing, key=lambda step: step["latency"]["ratio_vs_fp32"], default=None)
        candidate, latency = None, None
        if fastest is not None:
            # Timed as it would ship: quantized again with the step's nodes excluded. The step's graph
            # (float nodes reverted inside the all-int8 one) gives the same logits but not the same
            # speed: 11 float nodes read 1.44x the fp32 file at batch 32 as a step, 0.67x as shipped.
            candidate = all_int8  # step 0: the file as it ships
            if fastest["float_nodes"]:
                candidate = work / "candidate.onnx"
                progress(f"int8: quantizing step {fastest['step']}'s file as it would ship, and timing it")
                quantize_qdq(fp32_path, candidate, images[split.calibration], target,
                             nodes_to_exclude=fastest["float_nodes"], calibration_cache=cache)
            latency = time_against_fp32(candidate, fp32_path, control, batches)
        shipped = fastest if latency is not None and latency["ratio_vs_fp32"] < 1.0 else None
        if fastest is None:
            reason = (f"no int8 file met the rule within {len(steps) - 1} float group(s) "
                      f"(best agreement {max(s['top1_agreement'] for s in steps):.1%}); shipping the fp32 file")
        elif shipped is None:
            reason = (f"the fastest int8 file that meets the rule (step {fastest['step']}) runs at "
                      f"{latency['ratio_vs_fp32']:.2f}x the fp32 file; shipping the fp32 file")
        else:
            reason = (f"step {shipped['step']} meets the rule with {len(shipped['float_nodes'])} float node(s) at "
                      f"{latency['ratio_vs_fp32']:.2f}x the fp32 file's latency")
        final: dict[str, Any] = {}
        if shipped is None:
            shutil.copyfile(fp32_path, out_path)
        else:
            shutil.copyfile(candidate, out_path)
            final = judge(out_path)
    chosen = set(harmful)
    return {
        "shipped": "int8" if shipped else "fp32",
        "reason": reason,
        "chosen_step": None if shipped is None else shipped["step"],
        "float_nodes": [] if shipped is None else shipped["float_nodes"],
        "images": int(len(judged_labels)),  # judged: apart from the calibration and ranking images
        "calibration_images": len(split.calibration),
        "ranking_images": len(split.ranking),
        "target": target,
        "narrowed_ranges": narrowed,  # activation ranges narrowed beyond calibration, exactly (int8.narrowed_ranges)
        "rule": {"min_top1_agreement": int8.INT8_MIN_TOP1, "max_accuracy_drop": control.max_accuracy_drop},
        "reference_accuracy": float(np.mean(judged_reference.argmax(1) == judged_labels)),
        # the shipped file's own figures (an fp32 copy agrees with itself)
        "top1_agreement": final.get("top1_agreement", 1.0),
        "int8_accuracy": final.get("int8_accuracy"),
        "passed": final.get("passed", True),
        "steps": steps,
        "latency": latency,  # the fastest passing step's file as it would ship, against the fp32 file (None: none)
        # returnable: what the steps took from (returnable()); a group left out has a subset that nearly matches it
        "ranking": [{k: v for k, v in entry.items() if k != "nodes"}
                    | {"nodes": len(entry["nodes"]), "returnable": entry["group"] in chosen} for entry in ranking],
        "sensitivity_by_part": sensitivity_by_part(ranking),
    }
