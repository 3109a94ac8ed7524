"""The GPU evidence kit in its reduced CPU mode: every section runs, so the kit cannot rot.

The kit (benchmarks/gpu_evidence.py) is what a lent GPU machine runs in its few minutes; a
broken import or a renamed function found only there would waste the lease. Here the same
sections run on the CPU (Triton under TRITON_INTERPRET=1, the CUDA kernel compiled only), and
the report's GPU-only parts (kernel timings, goals) are rendered from a GPU-shaped section.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_module

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "benchmarks" / "gpu_evidence.py"


kit = load_module("gpu_evidence", KIT)


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KIT), "--mode", "cpu", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, str]:
    out = tmp_path_factory.mktemp("evidence")
    done = _run(out)
    return done, json.loads((out / kit.REPORT_JSON).read_text()), (out / kit.REPORT_MD).read_text()


def test_every_section_runs_on_cpu(cpu_report) -> None:
    done, report, _ = cpu_report
    statuses = {name: section["status"] for name, section in report["sections"].items()}
    assert statuses == dict.fromkeys(kit.SECTIONS, "ok"), done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0
    assert report["environment"]["mode"] == "cpu" and report["data"] == "digits-shift"


def test_kernels_section_checks_triton_and_compiles_cuda(cpu_report) -> None:
    kernels = cpu_report[1]["sections"]["kernels"]
    check = kernels["check"]
    assert check["runs"] == 2 * kit.SETTINGS["cpu"].kernel_random_shapes  # fp32 and fp16 per shape
    assert check["failures"] == [] and 0.0 < check["worst_error_over_tolerance"]["triton"] <= 1.0
    if shutil.which("nvcc"):
        assert kernels["cuda"]["built_for"] == "sm_90" and kernels["cuda"]["library_bytes"] > 10_000
    assert kernels["cuda"]["ran"] is False and kernels["bench"] is None


def test_engine_memory_and_training_sections_report_measurements(cpu_report) -> None:
    sections = cpu_report[1]["sections"]
    engine = sections["engine"]
    assert engine["numpy_input"]["passed"] and engine["tensor_input"]["passed"]
    assert engine["numpy_input"]["max_abs"] == 0.0  # the same CPU engine twice: bit-exact
    memory = sections["memory"]
    assert [row["mode"] for row in memory["rows"]] == ["plain", "memory_efficient"]
    assert 0.0 < memory["saved_activation_ratio"] < 1.0  # recomputation keeps fewer activations
    speed = sections["train_speed"]
    steps = kit.SETTINGS["cpu"].speed_steps
    assert [row["mode"] for row in speed["rows"]] == ["adapt", "scratch", "finetune"]
    assert all(row["steps"] == steps and row["steps_per_s"] > 0 and row["precision"] == "fp32" for row in speed["rows"])
    # Only the quadratic terms and the head train in adapt mode.
    trainable = {row["mode"]: row["trainable_params"] for row in speed["rows"]}
    assert trainable["adapt"] < trainable["finetune"] < trainable["scratch"]
    tta = sections["time_to_accuracy"]
    assert [row["mode"] for row in tta["rows"]] == ["scratch", "adapt"]
    assert tta["scratch_best"] == tta["rows"][0]["best_val_acc"]


def test_markdown_report_names_every_section(cpu_report) -> None:
    text = cpu_report[2]
    for heading in ("## Kernels", "## Torch engine on cpu", "## Memory-efficient backward", "## Training speed",
                    "## Time to accuracy", "Timing: not run (needs a GPU)."):
        assert heading in text
    assert "…" not in text


def test_a_failing_section_is_reported_and_the_rest_still_run(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    done = _run(tmp_path / "out", "--sections", "train_speed,engine", "--data", str(missing))
    report = json.loads((tmp_path / "out" / kit.REPORT_JSON).read_text())
    assert done.returncode == 1
    failed = report["sections"]["train_speed"]
    assert failed["status"] == "failed" and str(missing) in failed["error"]
    assert report["sections"]["engine"]["status"] == "ok"
    assert "## train_speed: failed" in (tmp_path / "out" / kit.REPORT_MD).read_text()


def test_unknown_section_is_one_line_error(tmp_path: Path) -> None:
    done = _run(tmp_path, "--sections", "kernels,warp-drive")
    assert done.returncode == 2 and "unknown section(s) warp-drive" in done.stderr


def test_gpu_report_computes_speedups_roofline_and_goals() -> None:
    """The GPU-only rendering: a kernels section shaped as the harness's bench writes it."""
    def row(layer, bound, roof_ms, cuda_ms, triton_ms, torch_ms):
        return {"layer": layer, "dtype": "float32", "bound": bound, "roofline_copy_ms": roof_ms,
                "ms": {"cuda": cuda_ms, "triton": triton_ms, "torch": torch_ms}}

    bench = {"batch": 32, "iters": 20, "copy_bytes_per_s": 4.0e12,
             "rows": [row("dw", "memory", 0.040, 0.050, 0.080, 0.100), row("dense", "compute", 0.020, 0.040, 0.030, 0.048)]}
    sections = {"kernels": {"status": "ok", "cuda": {"built_for": "this GPU", "ran": True}, "bench": bench,
                            "check": {"runs": 4, "shapes": 2, "failures": [],
                                      "worst_error_over_tolerance": {"cuda": 0.2, "triton": 0.3}}},
                "time_to_accuracy": {"status": "ok", "adapt_time_fraction": 0.08}}
    goals = {goal: (measured, met) for goal, measured, met in kit.goals(sections)}
    assert goals["CUDA kernel >= 1.3x cuDNN-decomposed"] == ("min 1.20x", False)  # 0.048 / 0.040
    assert goals[">= 70% of roofline (memory-bound)"] == ("min 80%", True)  # 0.040 / 0.050
    assert goals["adapt reaches scratch's best in <= 10% of its time"] == ("8.0%", True)
    text = "\n".join(kit._kernel_lines(sections["kernels"]))
    assert "| dw | float32 | memory | 40 | 50 | 80 | 100 | 2 | 1.25 | 80 | 50 |" in text
