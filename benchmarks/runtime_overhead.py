"""Runtime figures of issues #15 and #21: the quadratic overhead on ONNX Runtime CPU, fp32 and int8.

On the built-in default (EfficientNet-Lite0 with a 10-class head, 16 adapted depthwise
layers), at each image size (64 px: the digits-shift training size; 224 px: ImageNet's), in
one process, targets interleaved over `--rounds` (the machine is shared: a load change hits
every target alike), at batch 1 and 32 and each thread count:

- base fp32: the unadapted model; base int8: its accuracy-controlled int8 file;
- plain: the adapted decomposed file as torch.onnx makes it (`--no-rewrites`, the "before");
- adapted fp32 / fused: the adapted files `qdeploy export` writes now (BN folded, blocked
  ReLU6 form, `--no-tune` for reproducibility);
- adapted int8: the accuracy-controlled int8 file (qdeploy.export.int8_accuracy_control,
  calibrated and judged on digits-shift images: >= 99% top-1 agreement with its fp32 file,
  <= 0.5 points of accuracy lost); when the control ships fp32 (rule missed or no faster),
  the plain all-int8 file is timed instead and the JSON says so;
- adapted torch: PyTorch eager, for the ONNX Runtime speed-up.

Goals: adapted/base p50 <= 1.10x at batch 1 and <= 1.20x at batch 32 (#15); adapted int8 <=
0.8x base fp32 at batch 32 and <= 1.0x at batch 1, and <= 1.15x base int8 (#21). Also ORT's
optimized graph is checked for Reorder nodes.

    python benchmarks/runtime_overhead.py [--model-dir runs/.../model] [--sizes 64,224] [--threads 1,2]
    python benchmarks/runtime_overhead.py --quick   # a tiny model at 32 px, seconds (the test runs it)

Without --model-dir the adapted model gets random quadratic weights and an untrained head
(its int8 agreement means little: the answers are near ties); pass the pipeline's trained
model for int8 figures that matter. Writes benchmarks/results/runtime_overhead.json
(--quick: runtime_overhead_quick.json).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import torch

from qdeploy.commands.tables import print_table
from qdeploy.errors import exit_on_user_error

RESULTS = Path(__file__).parent / "results" / "runtime_overhead.json"
QUICK_RESULTS = RESULTS.with_name("runtime_overhead_quick.json")
INT8_STEPS = 8  # float groups the int8 control returns at most here (each step is judged and timed)
INT8_IMAGES = 256  # digits-shift val images that calibrate and judge the int8 files (bounds the 224 px cost)
QUICK_INT8_STEPS, QUICK_INT8_IMAGES = 2, 64


def adapted_model(model_dir: str | None, quick: bool = False) -> torch.nn.Module:
    from qdeploy.adaptation import adapt, randomize_quadratic_terms
    from qdeploy.models.sources import load_base_model
    from qdeploy.store import load_model

    if model_dir:
        return load_model(model_dir)
    torch.manual_seed(0)
    model = load_base_model("test_resnet", pretrained=False) if quick else load_base_model()
    model.reset_classifier(10)
    adapt(model, count_model_flops=False)
    randomize_quadratic_terms(model)  # as after training: the quadratic terms contribute
    return model.eval()


def reorders(path: Path, folder: Path) -> dict[str, int]:
    """Reorder nodes in ONNX Runtime's optimized CPU graph of `path`."""
    import onnx

    from qdeploy.onnx_io import ort_session

    optimized = folder / f"{path.stem}.optimized.onnx"
    ort_session(path, optimized_model_filepath=str(optimized))
    counts = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return {op: counts[op] for op in ("ReorderInput", "ReorderOutput")}


def int8_file(fp32: Path, out: Path, eval_set, threads: int, steps: int) -> dict:
    """The accuracy-controlled int8 file of `fp32` at `out` (the plain all-int8 file when the control
    ships fp32), and what the control found."""
    from qdeploy.export.int8 import quantize_qdq
    from qdeploy.export.int8_accuracy_control import AccuracyControl, EvalSplit, quantize_with_accuracy_control

    control = AccuracyControl(max_steps=steps, threads=threads)
    report = quantize_with_accuracy_control(fp32, out, eval_set.images, eval_set.labels, "ort-cpu", control)
    if report["shipped"] != "int8":
        quantize_qdq(fp32, out, eval_set.images[EvalSplit.of(len(eval_set.images)).calibration], "ort-cpu")
    first = report["steps"][0]
    return {"shipped": report["shipped"], "reason": report["reason"], "float_nodes": len(report["float_nodes"]),
            "timed": "accuracy-controlled" if report["shipped"] == "int8" else "plain all-int8",
            "plain_top1_agreement": first["top1_agreement"],
            "top1_agreement": report["top1_agreement"] if report["shipped"] == "int8" else first["top1_agreement"],
            "accuracy_drop": report["reference_accuracy"] - (report["int8_accuracy"] or 0.0)
            if report["shipped"] == "int8" else first["accuracy_drop"], "images": report["images"]}


def files_for_size(model: torch.nn.Module, size: int, folder: Path, console, threads: int,
                   quick: bool) -> tuple[dict[str, Path], dict]:
    """Every ONNX file of one image size, and what the int8 control found for base and adapted."""
    from qdeploy.export import ExportOptions, export_model
    from qdeploy.export.base_model import base_of, export_plain_onnx
    from qdeploy.data.eval_set import load_eval_set

    console.print(f"{size} px: exporting base, plain, rewritten and fused files, then int8 (accuracy control) ...")
    files = {"base fp32": export_plain_onnx(base_of(model), folder / "base.onnx", (3, size, size))}
    export_model(model, folder / "plain", ExportOptions(input_size=(size, size), modes=("decomposed",), rewrites=False))
    export_model(model, folder / "now", ExportOptions(input_size=(size, size), tune=False))
    files.update({"plain": folder / "plain" / "decomposed.onnx", "adapted fp32": folder / "now" / "decomposed.onnx",
                  "fused": folder / "now" / "fused.onnx"})
    eval_set = load_eval_set("digits-shift", model, (size, size), limit=QUICK_INT8_IMAGES if quick else INT8_IMAGES)
    int8 = {}
    for name, fp32 in (("base int8", files["base fp32"]), ("adapted int8", files["adapted fp32"])):
        files[name] = folder / f"{name.replace(' ', '-')}.onnx"
        int8[name] = int8_file(fp32, files[name], eval_set, threads, QUICK_INT8_STEPS if quick else INT8_STEPS)
    return files, int8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="a trained model folder (default: built-in, random terms)")
    parser.add_argument("--sizes", default="64,224", help="image sizes, e.g. 64,224")
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    parser.add_argument("--seconds", type=float, default=4.0, help="time budget per measurement (all rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model at 32 px, 1 thread, 0.2 s per measurement: checks the script, no figures")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results [default: {RESULTS.name} in "
                        f"benchmarks/results, {QUICK_RESULTS.name} with --quick]")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.threads, args.seconds, args.rounds = "32", "1", 0.2, 1

    from rich.console import Console
    from rich.table import Table

    from qdeploy import atomic
    from qdeploy.commands.bench import print_results
    from qdeploy.workflows.bench import machine
    from qdeploy.runtime import load_engine
    from qdeploy.runtime.benchmark import UNTIL_TIME_BUDGET, Target, run_benchmark
    from qdeploy.runtime.torch_engine import TorchEngine

    threads = tuple(int(t) for t in args.threads.split(","))
    sizes = tuple(int(s) for s in args.sizes.split(","))
    console = Console()
    model = adapted_model(args.model_dir, args.quick)
    report: dict = {"machine": machine(), "threads": list(threads), "rounds": args.rounds,
                    "model": args.model_dir or "built-in efficientnet_lite0, random quadratic terms", "sizes": {}}
    table = Table(title="p50 / base fp32 on ORT CPU (goals: adapted fp32 <= 1.10x at b1, <= 1.20x at b32; adapted "
                        "int8 <= 1.0x at b1, <= 0.8x at b32, <= 1.15x base int8)")
    for column in ("px", "thr", "batch", "plain", "adapted fp32", "fused", "base int8", "adapted int8",
                   "int8 vs base int8", "torch eager"):
        table.add_column(column, no_wrap=True)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="qdeploy-bench-") as tmp:
            folder = Path(tmp)
            files, int8 = files_for_size(model, size, folder, console, max(threads), args.quick)
            graph = {name: reorders(path, folder) for name, path in files.items() if "int8" not in name}
            ort = lambda path: lambda count: load_engine(path, "ort-cpu", count)  # noqa: E731
            targets = [Target(name, ort(path), base=None if name == "base fp32" else "base fp32")
                       for name, path in files.items()]
            targets.append(Target("adapted torch", lambda count: TorchEngine(model, threads=count,
                                                                             input_size=(size, size)),
                                  base="base fp32"))
            with console.status(f"benchmarking {size} px") as status:
                results = run_benchmark(targets, (1, 32), threads, warmup=3, iterations=UNTIL_TIME_BUDGET,
                                        time_budget_s=args.seconds, rounds=args.rounds,
                                        progress=lambda t: status.update(f"benchmarking {size} px: {t}"))
        print_results(results, console, title=f"latency at {size}x{size}")
        ratio = {(m.label, m.batch, m.threads): m.vs_base for m in results}
        for count in threads:
            for batch in (1, 32):
                table.add_row(str(size), str(count), str(batch),
                              *(f"{ratio[(label, batch, count)]:.2f}x" for label in
                                ("plain", "adapted fp32", "fused", "base int8", "adapted int8")),
                              f"{ratio[('adapted int8', batch, count)] / ratio[('base int8', batch, count)]:.2f}x",
                              f"{ratio[('adapted torch', batch, count)]:.2f}x")
        report["sizes"][str(size)] = {"reorders": graph, "int8": int8, "results": [m.to_dict() for m in results]}
    print_table(console, table)  # whole numbers in a log too
    for size, entry in report["sizes"].items():
        console.print(f"{size} px: ORT Reorder nodes {entry['reorders']}")
        for name, found in entry["int8"].items():
            console.print(f"  {name} ({found['timed']}, {found['float_nodes']} float nodes): top-1 agreement with fp32 "
                          f"{found['top1_agreement']:.1%} on {found['images']} digits-shift images (plain int8 "
                          f"{found['plain_top1_agreement']:.1%}); control: {found['reason']}")
    results_path = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    atomic.write_json(results_path, report)
    console.print(f"wrote {results_path}")


if __name__ == "__main__":
    exit_on_user_error(main)
