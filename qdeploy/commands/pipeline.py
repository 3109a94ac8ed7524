"""`qdeploy pipeline`: adapt (train) -> export (both modes) -> verify -> bench, one summary table.

The README's main command: on the built-in default (EfficientNet-Lite0 on the digits-shift
set) it runs on a 2-core CPU in about 6 minutes, so a user sees in one go what adapting
buys (accuracy, beside the plain base fine-tuned with the same budget), whether the deployed
files give the PyTorch answers (parity) and what the quadratic terms cost at inference
(latency of the base model against the adapted one).

Training defaults (measured, README "What qdeploy pipeline shows"): the primary trains with
the quadratic terms (`--train-primary`; frozen ImageNet features on 64 px shifted digits
learn several times slower), EPOCHS epochs at the trainer's AdamW defaults, each run capped
at TRAIN_MINUTES.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from qdeploy import atomic
from qdeploy.commands.parsing import parse_ints
from qdeploy.errors import QDeployError
from qdeploy.models.sources import BUILTIN_DEFAULT
from qdeploy.commands.tables import print_table

SUMMARY_FILE = "pipeline_summary.json"


EPOCHS = 3
TRAIN_MINUTES = 3.0


@dataclass(frozen=True)
class PipelineOptions:
    model: str = BUILTIN_DEFAULT
    data: str = "digits-shift"
    out: Path = Path("runs/pipeline")
    epochs: int = EPOCHS
    train_minutes: float = TRAIN_MINUTES
    max_samples: int | None = None
    batches: tuple[int, ...] = (1, 32)
    threads: int = os.cpu_count() or 1
    bench_seconds: float = 2.0
    seed: int = 0
    train_primary: bool = True
    baseline: bool = True  # also fine-tune the plain base with the same budget


def _train(options: PipelineOptions, console: Console, mode: str) -> tuple[Path, dict[str, Any]]:
    """One training run of the pipeline: "adapt" (into train/) or the "finetune" baseline (finetune/)."""
    from qdeploy.nqm.training import torch_threads
    from qdeploy.training import TrainConfig, train

    folder = "train" if mode == "adapt" else mode
    config = TrainConfig(model=options.model, data=options.data, out=str(options.out / folder), mode=mode,
                         train_primary=mode == "adapt" and options.train_primary, epochs=options.epochs,
                         max_minutes=options.train_minutes, max_samples=options.max_samples, seed=options.seed)
    with torch_threads(options.threads):  # --threads 1 is what a shared, oversubscribed CPU needs
        result = train(config, console=console)
    return result.model_dir, result.summary


def _export(model_dir: Path, out: Path, image_size: int) -> dict[str, Any]:
    from qdeploy.export import ExportOptions, export_model
    from qdeploy.store import load_model

    options = ExportOptions(modes=("decomposed", "fused"), input_size=(image_size, image_size), source=str(model_dir))
    return export_model(load_model(model_dir), out, options)


def _eval_entry(report: dict[str, Any]) -> dict[str, Any]:
    """The labelled set's comparison in a verify report (the random sets have no accuracy)."""
    return next(s for s in report["sets"] if s["reference_accuracy"] is not None)


def _accuracy(engine: Any, eval_set: Any) -> float:
    from qdeploy.runtime.parity import run_all

    logits = run_all(engine, eval_set.images, 64)[engine.outputs[0].name]
    return float(np.mean(logits.argmax(axis=1) == eval_set.labels))


def run_pipeline(options: PipelineOptions, console: Console) -> dict[str, Any]:
    """Every stage in order; returns (and writes) the summary the table shows."""
    from qdeploy.commands.bench import base_targets, print_results
    from qdeploy.commands.verify import print_report, run_verify
    from qdeploy.runtime import load_engine
    from qdeploy.export.base_model import base_of
    from qdeploy.runtime.benchmark import Target, run_benchmark, write_results
    from qdeploy.data.eval_set import load_eval_set
    from qdeploy.compare import resolve_tolerance
    from qdeploy.runtime.torch_engine import TorchEngine

    for folder in ("train", "finetune"):
        if (options.out / folder).exists():
            raise QDeployError(f"{options.out / folder} already holds a run; pass another --out")
    started, stages = time.perf_counter(), {}
    console.rule("1/4 adapt (train)" + (", and fine-tune the base with the same budget" if options.baseline else ""))
    model_dir, train_summary = _train(options, console, "adapt")
    stages["train_s"] = time.perf_counter() - started
    finetune_dir = finetune_summary = None
    if options.baseline:
        tick = time.perf_counter()
        finetune_dir, finetune_summary = _train(options, console, "finetune")
        stages["finetune_s"] = time.perf_counter() - tick
    size = int(train_summary["image_size"])

    console.rule("2/4 export (decomposed + fused)")
    tick = time.perf_counter()
    export_report = _export(model_dir, options.out / "onnx", size)
    stages["export_s"] = time.perf_counter() - tick

    console.rule("3/4 verify (ONNX Runtime CPU vs PyTorch)")
    tick = time.perf_counter()
    reference = TorchEngine(model_dir, threads=options.threads, input_size=(size, size))
    eval_set = load_eval_set(options.data, reference.model, (size, size), seed=options.seed)  # the held-out split
    base_accuracy = _accuracy(TorchEngine(base_of(reference.model), input_size=(size, size)), eval_set)
    finetune_accuracy = None if finetune_dir is None else _accuracy(TorchEngine(finetune_dir, input_size=(size, size)),
                                                                    eval_set)
    tolerance = resolve_tolerance("fp32")
    parity = {}
    for mode in ("decomposed", "fused"):
        engine = load_engine(options.out / "onnx" / f"{mode}.onnx", "ort-cpu", options.threads)
        report = run_verify(engine, reference, tolerance, eval_set, (1, 8), 32, None, options.threads)
        atomic.write_json(options.out / f"verify_{mode}.json", report)
        print_report(report, console)
        parity[mode] = report
    stages["verify_s"] = time.perf_counter() - tick

    console.rule("4/4 bench (base vs adapted)")
    tick = time.perf_counter()
    onnx_dir = options.out / "onnx"
    targets = [Target(f"{mode} ort-cpu", lambda threads, m=mode: load_engine(onnx_dir / f"{m}.onnx", "ort-cpu", threads),
                      base="base ort-cpu") for mode in ("decomposed", "fused")]
    targets.append(Target("adapted torch", lambda threads: TorchEngine(model_dir, threads=threads), base="base torch"))
    targets += base_targets(model_dir, targets, ("ort-cpu",), options.out / "bench", (size, size))
    with console.status("benchmarking") as status:
        results = run_benchmark(targets, options.batches, (options.threads,), warmup=3, iterations=200,
                                time_budget_s=options.bench_seconds,
                                progress=lambda text: status.update(f"benchmarking {text}"))
    write_results(results, options.out / "bench", {"pipeline": str(options.out)})
    print_results(results, console)
    stages["bench_s"] = time.perf_counter() - tick
    stages["total_s"] = time.perf_counter() - started

    summary = {
        "model": options.model, "data": options.data, "image_size": size,
        "accuracy": {"step0_untrained_head": train_summary["initial_val_acc"],
                     "adapted": _eval_entry(parity["decomposed"])["reference_accuracy"],
                     "adapted_without_quadratic_terms": base_accuracy, "finetuned_base": finetune_accuracy,
                     **{f"onnx_{mode}": _eval_entry(r)["backend_accuracy"] for mode, r in parity.items()}},
        "parity": {mode: {"passed": r["passed"], "max_rel": max(s["max_rel"] for s in r["sets"]),
                          "eval_top1_agreement": _eval_entry(r)["top1_agreement"]} for mode, r in parity.items()},
        "latency": [m.to_dict() for m in results],
        "training": {mode: {k: s[k] for k in ("steps", "train_seconds", "trainable_params", "stop_reason",
                                              "catapult_events")}
                     for mode, s in (("adapt", train_summary), ("finetune", finetune_summary)) if s is not None},
        "export_nodes": {mode: info["nodes_total"] for mode, info in export_report["files"].items()},
        "seconds": {k: round(v, 1) for k, v in stages.items()},
    }
    atomic.write_json(options.out / SUMMARY_FILE, summary)
    return summary


def _budget(training: dict[str, Any]) -> str:
    return f"{training['steps']} steps, {training['train_seconds']:.0f} s"


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"qdeploy pipeline: {summary['model']} on {summary['data']} "
                        f"({summary['seconds']['total_s']:.0f} s)")
    table.add_column("")
    table.add_column("result")
    percent = lambda value: f"{value:.1%}"  # noqa: E731
    acc = summary["accuracy"]
    table.add_row("accuracy before adaptation (step 0)", percent(acc["step0_untrained_head"]))
    training = summary["training"]
    table.add_row("accuracy after adaptation (PyTorch)",
                  f"{percent(acc['adapted'])} ({_budget(training['adapt'])})")
    if acc["finetuned_base"] is not None:
        table.add_row("  plain base fine-tuned, same budget",
                      f"{percent(acc['finetuned_base'])} ({_budget(training['finetune'])}; its latency: base rows)")
    table.add_row("  adapted model without quadratic terms", percent(acc["adapted_without_quadratic_terms"]))
    for mode, parity in summary["parity"].items():
        verdict = "pass" if parity["passed"] else "FAIL"
        table.add_row(f"parity {mode}.onnx (ORT CPU, fp32)",
                      f"{verdict}: max err {parity['max_rel']:.1e} of scale, top-1 agree "
                      f"{percent(parity['eval_top1_agreement'])}, acc {percent(acc['onnx_' + mode])}")
    rows = {(m["label"], m["batch"]): m for m in summary["latency"]}
    for label in dict.fromkeys(m["label"] for m in summary["latency"] if not m["label"].startswith("base")):
        for (name, batch), m in rows.items():
            if name == label and m["vs_base"] is not None:
                base = label.split(" ", 1)[1]
                table.add_row(f"latency {label}, batch {batch}",
                              f"{m['p50_ms']:.2f} ms vs base {m['p50_ms'] / m['vs_base']:.2f} ms "
                              f"({m['vs_base']:.2f}x, base {base})")
    print_table(console, table)


@click.command("pipeline")
@click.option("--model", default=BUILTIN_DEFAULT, show_default=True, help="Built-in name or timm name.")
@click.option("--data", default="digits-shift", show_default=True,
              help="'digits-shift', 'fashion-mnist[:DIR]' or an ImageFolder path.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/pipeline"), show_default=True)
@click.option("--epochs", default=EPOCHS, show_default=True)
@click.option("--train-minutes", default=TRAIN_MINUTES, show_default=True,
              help="Time budget of each training run (minutes).")
@click.option("--train-primary/--freeze-primary", default=True, show_default=True,
              help="Adapt: train the pretrained weights with the quadratic terms, or only the terms and head.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also fine-tune the plain base with the same budget and show its accuracy.")
@click.option("--max-samples", type=int, default=None, help="Cap train/val images (quick trials).")
@click.option("--batch", "batches", default="1,32", show_default=True, help="Bench batch sizes.")
@click.option("--threads", default=os.cpu_count() or 1, show_default=True,
              help="Threads for ORT and PyTorch (training too; 1 on a shared, busy CPU).")
@click.option("--bench-seconds", default=2.0, show_default=True, help="Time budget per latency measurement.")
def pipeline(model: str, data: str, out: Path, epochs: int, train_minutes: float, train_primary: bool,
             baseline: bool, max_samples: int | None, batches: str, threads: int, bench_seconds: float) -> None:
    """Adapt (train), export both ONNX modes, verify them against PyTorch and bench base vs adapted."""
    options = PipelineOptions(model, data, out, epochs, train_minutes, max_samples,
                              parse_ints(batches, "--batch", minimum=1),
                              threads, bench_seconds, train_primary=train_primary, baseline=baseline)
    console = Console()
    summary = run_pipeline(options, console)
    print_summary(summary, console)
    console.print(f"summary: {out / SUMMARY_FILE}")
