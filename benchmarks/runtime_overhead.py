"""Runtime figures of the issue: quadratic overhead, ONNX Runtime vs PyTorch, top-1 parity.

On the built-in default (EfficientNet-Lite0 with a 10-class head at the digits-shift size),
all in one side-by-side run (same process, same inputs, same threads):
1. adapted vs base model on ORT CPU at batch 1 and 32: the overhead ratio (aim <= 1.10x),
   for the decomposed and the fused file;
2. ORT CPU (best of decomposed/fused) vs PyTorch eager CPU at batch 1 and 32 (aim >= 1.5x);
3. top-1 agreement of both ONNX files with PyTorch on the digits-shift val set (aim 100%).

    python benchmarks/runtime_overhead.py [--model-dir runs/.../model] [--seconds 5]

Without --model-dir the adapted model gets random quadratic weights (trained-like values;
zero terms would hide their cost in nothing). Writes benchmarks/results/runtime_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from qdeploy.errors import exit_on_user_error

RESULTS = Path(__file__).parent / "results" / "runtime_overhead.json"
SIZE = 64  # the digits-shift training size the pipeline uses


def adapted_model(model_dir: str | None) -> tuple[torch.nn.Module, int]:
    from qdeploy.adaptation import adapt, randomize_quadratic_terms
    from qdeploy.models.sources import load_base_model
    from qdeploy.runtime.torch_engine import load_model_source

    if model_dir:
        model, size = load_model_source(model_dir)
        return model, size or SIZE
    torch.manual_seed(0)
    model = load_base_model()
    model.reset_classifier(10)
    adapt(model, count_model_flops=False)
    randomize_quadratic_terms(model)  # as after training: the quadratic terms contribute
    return model.eval(), SIZE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="a trained model folder (default: built-in, random terms)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time budget per measurement")
    parser.add_argument("--threads", default=str(os.cpu_count() or 1), help="thread counts, e.g. 1,2")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from qdeploy import atomic
    from qdeploy.commands.bench import machine, print_results
    from qdeploy.export import ExportOptions, export_model
    from qdeploy.runtime import load_engine
    from qdeploy.runtime.base_model import base_of, export_plain_onnx
    from qdeploy.runtime.benchmark import Target, run_benchmark
    from qdeploy.runtime.eval_set import load_eval_set
    from qdeploy.runtime.parity import compare_outputs, resolve_tolerance, run_all
    from qdeploy.runtime.torch_engine import TorchEngine

    threads = tuple(int(t) for t in args.threads.split(","))
    console = Console()
    model, size = adapted_model(args.model_dir)
    base = base_of(model)
    with tempfile.TemporaryDirectory(prefix="qdeploy-bench-") as tmp:
        folder = Path(tmp)
        console.print("exporting the adapted model (both modes) and the base model ...")
        export_model(model, folder / "onnx", ExportOptions(input_size=(size, size)))
        export_plain_onnx(base, folder / "base.onnx", (3, size, size))
        files = {mode: folder / "onnx" / f"{mode}.onnx" for mode in ("decomposed", "fused")}
        ort = lambda path: lambda threads: load_engine(path, "ort-cpu", threads)  # noqa: E731
        targets = [
            Target("decomposed ort-cpu", ort(files["decomposed"]), base="base ort-cpu"),
            Target("fused ort-cpu", ort(files["fused"]), base="base ort-cpu"),
            Target("adapted torch", lambda threads: TorchEngine(model, threads=threads, input_size=(size, size)),
                   base="base torch"),
            Target("base ort-cpu", ort(folder / "base.onnx")),
            Target("base torch", lambda threads: TorchEngine(base, threads=threads, input_size=(size, size))),
        ]
        with console.status("benchmarking") as status:
            results = run_benchmark(targets, (1, 32), threads, warmup=5, iterations=10_000,
                                    time_budget_s=args.seconds, progress=lambda t: status.update(f"benchmarking {t}"))
        reference = TorchEngine(model, threads=threads[0], input_size=(size, size))
        eval_set = load_eval_set("digits-shift", model, (size, size))
        expected = run_all(reference, eval_set.images, 64)
        parity = {mode: compare_outputs(eval_set.name, expected, run_all(load_engine(path, "ort-cpu", threads[0]),
                                                                         eval_set.images, 64),
                                        resolve_tolerance("fp32"), eval_set.labels).to_dict()
                  for mode, path in files.items()}

    p50 = {(m.label, m.batch, m.threads): m.p50_ms for m in results}
    figures = {}
    for count in threads:
        for batch in (1, 32):
            at = lambda label: p50[(label, batch, count)]  # noqa: E731
            best = min(("decomposed ort-cpu", "fused ort-cpu"), key=at)
            figures[f"threads{count}_batch{batch}"] = {
                "overhead_decomposed_vs_base_ort": at("decomposed ort-cpu") / at("base ort-cpu"),
                "overhead_fused_vs_base_ort": at("fused ort-cpu") / at("base ort-cpu"),
                "best_ort_file": best.split()[0],
                "ort_best_speedup_vs_torch_eager": at("adapted torch") / at(best),
            }
    print_results(results, console, title=f"latency at {size}x{size}")
    table = Table(title="runtime figures (aims: overhead <= 1.10x, ORT >= 1.5x faster, 100% top-1)")
    table.add_column("figure")
    columns = [f"threads{t}_batch{b}" for t in threads for b in (1, 32)]
    for column in columns:
        table.add_column(column.replace("_", ", ").replace("threads", "threads ").replace("batch", "batch "))
    for key, label in (("overhead_decomposed_vs_base_ort", "adapted/base, ORT CPU, decomposed"),
                       ("overhead_fused_vs_base_ort", "adapted/base, ORT CPU, fused"),
                       ("ort_best_speedup_vs_torch_eager", "ORT CPU best vs PyTorch eager (speed-up)")):
        table.add_row(label, *(f"{figures[column][key]:.2f}x" for column in columns))
    for mode, stats in parity.items():
        table.add_row(f"top-1 agreement {mode} ({stats['images']} images)", f"{stats['top1_agreement']:.1%}",
                      f"max err {stats['max_rel']:.1e}", *[""] * (len(columns) - 2))
    console.print(table)
    atomic.write_json(RESULTS, {"machine": machine(), "threads": list(threads), "image_size": size,
                                "model": args.model_dir or "built-in efficientnet_lite0, random quadratic terms",
                                "figures": figures, "parity": parity,
                                "results": [m.to_dict() for m in results]})
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    exit_on_user_error(main)
