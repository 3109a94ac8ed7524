"""Runtime figures of issue #15: the quadratic overhead on ONNX Runtime CPU before and after the rewrites, and int8.

On the built-in default (EfficientNet-Lite0 with a 10-class head, 16 adapted depthwise
layers), at each image size (64 px: the digits-shift training size; 224 px: ImageNet's), in
one process, targets interleaved over `--rounds` (the machine is shared: a load change hits
every target alike), at batch 1 and 32 and each thread count:

- base fp32: the unadapted model;
- plain: the adapted decomposed file as torch.onnx makes it (`--no-rewrites`, the "before");
- rewritten / fused: the adapted files `qdeploy export` writes now (BN folded, blocked
  ReLU6 form, `--no-tune` for reproducibility);
- int8 (base and adapted): static QDQ (uint8 activations, ONNX Runtime's CPU path)
  calibrated on digits-shift images; their top-1 agreement with fp32 is reported, since the
  exporter's int8 rule (>= 99%, accuracy within 0.5 points) decides whether it ships;
- adapted torch: PyTorch eager, for the ONNX Runtime speed-up.

Goals: adapted/base p50 <= 1.10x at batch 1 and <= 1.20x at batch 32; adapted int8 <=
1.0x base fp32 at batch 32. Also ORT's optimized graph is checked for Reorder nodes.

    python benchmarks/runtime_overhead.py [--model-dir runs/.../model] [--sizes 64,224] [--threads 1,2]

Without --model-dir the adapted model gets random quadratic weights (trained-like values;
zero terms would hide their cost in nothing). Writes benchmarks/results/runtime_overhead.json.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from qdeploy.commands.tables import print_table
from qdeploy.errors import exit_on_user_error

RESULTS = Path(__file__).parent / "results" / "runtime_overhead.json"
TRAINING_SIZE = 64  # the digits-shift training size the pipeline uses
CALIBRATION_IMAGES = 128


def adapted_model(model_dir: str | None) -> torch.nn.Module:
    from qdeploy.adaptation import adapt, randomize_quadratic_terms
    from qdeploy.models.sources import load_base_model
    from qdeploy.store import load_model

    if model_dir:
        return load_model(model_dir)
    torch.manual_seed(0)
    model = load_base_model()
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


def top1_agreement(a: Path, b: Path, images: np.ndarray) -> float:
    from qdeploy.onnx_io import ort_session

    outputs = [np.concatenate([ort_session(p).run(None, {"input": images[i:i + 64]})[0]
                               for i in range(0, len(images), 64)]) for p in (a, b)]
    return float(np.mean(outputs[0].argmax(1) == outputs[1].argmax(1)))


def files_for_size(model: torch.nn.Module, size: int, folder: Path, console) -> tuple[dict[str, Path], dict]:
    """Every ONNX file of one image size, and the int8 agreement figures."""
    from qdeploy.export import ExportOptions, export_model
    from qdeploy.export.int8 import quantize_qdq
    from qdeploy.export.base_model import base_of, export_plain_onnx
    from qdeploy.data.eval_set import load_eval_set

    console.print(f"{size} px: exporting base, plain, rewritten and fused files, then int8 ...")
    files = {"base fp32": export_plain_onnx(base_of(model), folder / "base.onnx", (3, size, size))}
    export_model(model, folder / "plain", ExportOptions(input_size=(size, size), modes=("decomposed",), rewrites=False))
    export_model(model, folder / "now", ExportOptions(input_size=(size, size), tune=False))
    files.update({"plain": folder / "plain" / "decomposed.onnx", "rewritten": folder / "now" / "decomposed.onnx",
                  "fused": folder / "now" / "fused.onnx"})
    images = load_eval_set("digits-shift", model, (size, size)).images
    for name, fp32 in (("base int8", files["base fp32"]), ("adapted int8", files["rewritten"])):
        files[name] = folder / f"{name.replace(' ', '-')}.onnx"
        quantize_qdq(fp32, files[name], images[:CALIBRATION_IMAGES], "ort-cpu")
    agreement = {"base": top1_agreement(files["base fp32"], files["base int8"], images),
                 "adapted": top1_agreement(files["rewritten"], files["adapted int8"], images),
                 "images": len(images)}
    return files, agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="a trained model folder (default: built-in, random terms)")
    parser.add_argument("--sizes", default="64,224", help="image sizes, e.g. 64,224")
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    parser.add_argument("--seconds", type=float, default=6.0, help="time budget per measurement (all rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from qdeploy import atomic
    from qdeploy.commands.bench import print_results
    from qdeploy.workflows.bench import machine
    from qdeploy.runtime import load_engine
    from qdeploy.runtime.benchmark import Target, run_benchmark
    from qdeploy.runtime.torch_engine import TorchEngine

    threads = tuple(int(t) for t in args.threads.split(","))
    sizes = tuple(int(s) for s in args.sizes.split(","))
    console = Console()
    model = adapted_model(args.model_dir)
    report: dict = {"machine": machine(), "threads": list(threads), "rounds": args.rounds,
                    "model": args.model_dir or "built-in efficientnet_lite0, random quadratic terms", "sizes": {}}
    table = Table(title="adapted / base fp32 p50 on ORT CPU (goals: <= 1.10x at batch 1, <= 1.20x at 32; "
                        "int8 <= 1.0x at 32)")
    for column in ("px", "thr", "batch", "plain", "rewritten", "fused", "int8", "torch eager"):
        table.add_column(column, no_wrap=True)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="qdeploy-bench-") as tmp:
            folder = Path(tmp)
            files, agreement = files_for_size(model, size, folder, console)
            graph = {name: reorders(path, folder) for name, path in files.items() if "int8" not in name}
            ort = lambda path: lambda count: load_engine(path, "ort-cpu", count)  # noqa: E731
            targets = [Target(name, ort(path), base=None if name == "base fp32" else "base fp32")
                       for name, path in files.items()]
            targets.append(Target("adapted torch", lambda count: TorchEngine(model, threads=count,
                                                                             input_size=(size, size)),
                                  base="base fp32"))
            with console.status(f"benchmarking {size} px") as status:
                results = run_benchmark(targets, (1, 32), threads, warmup=3, iterations=10_000,
                                        time_budget_s=args.seconds, rounds=args.rounds,
                                        progress=lambda t: status.update(f"benchmarking {size} px: {t}"))
        print_results(results, console, title=f"latency at {size}x{size}")
        ratio = {(m.label, m.batch, m.threads): m.vs_base for m in results}
        for count in threads:
            for batch in (1, 32):
                table.add_row(str(size), str(count), str(batch),
                              *(f"{ratio[(label, batch, count)]:.2f}x" for label in
                                ("plain", "rewritten", "fused", "adapted int8", "adapted torch")))
        report["sizes"][str(size)] = {"reorders": graph, "int8_top1_agreement": agreement,
                                      "results": [m.to_dict() for m in results]}
    print_table(console, table)  # whole numbers in a log too
    for size, entry in report["sizes"].items():
        console.print(f"{size} px: ORT Reorder nodes {entry['reorders']}; int8 top-1 agreement with fp32 on "
                      f"{entry['int8_top1_agreement']['images']} digits-shift images: base "
                      f"{entry['int8_top1_agreement']['base']:.1%}, adapted {entry['int8_top1_agreement']['adapted']:.1%}")
    atomic.write_json(RESULTS, report)
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    exit_on_user_error(main)
