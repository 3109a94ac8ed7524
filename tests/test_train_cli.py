"""`qdeploy train` on the command line: options, --resume, --lr auto, catapult logging, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qdeploy.cli import main
from qdeploy.nqm.catapult import CatapultDetector
from qdeploy.training.metrics import read_metrics
from qdeploy.training.probing import CatapultHook
from qdeploy.training.trainer import StepInfo
from tests.train_helpers import TINY, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_args(tmp_path, *extra: str) -> list[str]:
    return ["train", "--model", TINY, "--checkpoint", str(tiny_checkpoint(tmp_path / "weights")),
            "--image-size", "32", "--batch-size", "16", "--max-samples", "32", "--workers", "0",
            "--no-progress", *extra]


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_train_then_resume_with_a_bigger_budget(tmp_path) -> None:
    out = tmp_path / "run"
    first = _invoke(_tiny_args(tmp_path, "--out", str(out), "--mode", "finetune", "--epochs", "1",
                               "--optimizer", "sgd", "--lr", "0.01"))
    assert first.exit_code == 0, first.output
    assert "finetune" in first.output and "device hours" in first.output
    assert json.loads((out / "summary.json").read_text())["steps"] == 2

    # Only the typed options change the saved run: mode, optimizer and lr come from the checkpoint.
    second = _invoke(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert second.exit_code == 0, second.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["mode"] == "finetune"
    assert summary["config"]["optimizer"] == "sgd" and summary["config"]["lr"] == 0.01
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]

    refused = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--mode", "scratch"])
    assert refused.exit_code == 2
    assert "error: --resume continues the saved run, which fixes --mode" in refused.output


def test_bad_command_lines_fail_with_one_line(tmp_path) -> None:
    missing = CliRunner().invoke(main, _tiny_args(tmp_path, "--data", str(tmp_path / "nowhere")))
    assert missing.exit_code == 2
    assert missing.output.startswith("error: data folder") and "does not exist" in missing.output
    no_out = CliRunner().invoke(main, ["train", "--resume"])
    assert no_out.exit_code == 2 and "--resume needs --out" in no_out.output
    adamw = CliRunner().invoke(main, _tiny_args(tmp_path, "--lr", "auto", "--optimizer", "adamw"))
    assert adamw.exit_code == 2 and "add --optimizer sgd" in adamw.output
    bad_lr = CliRunner().invoke(main, _tiny_args(tmp_path, "--lr", "fast"))
    assert bad_lr.exit_code == 2 and "neither a number" in bad_lr.output


def test_lr_auto_trains_at_the_probed_rate_and_logs_sharpness(tmp_path) -> None:
    # 8 images in batches of 8: every step sees the whole set, i.e. full-batch gradient
    # descent, the setting the probe scans. Plain SGD (no momentum, decay, smoothing, clipping
    # or schedule) then retraces the scan at the recommended rate. Two probe steps only: at
    # catapult rates the trajectory is unstable, and float rounding (the probe's batch order
    # differs) grows quickly with more steps.
    out = tmp_path / "auto"
    probe_steps = 2
    result = _invoke(_tiny_args(tmp_path, "--out", str(out), "--max-samples", "8", "--batch-size", "8",
                                "--image-size", "24", "--lr", "auto", "--lr-probe-steps", str(probe_steps),
                                "--momentum", "0", "--weight-decay", "0", "--label-smoothing", "0",
                                "--max-grad-norm", "0", "--scheduler", "constant", "--warmup-steps", "0",
                                "--epochs", "3", "--sharpness-every", "2"))
    assert result.exit_code == 0, result.output
    assert "--lr auto" in result.output and "lambda0" in result.output
    summary = json.loads((out / "summary.json").read_text())
    probe = summary["lr_probe"]
    assert summary["config"]["optimizer"] == "sgd"  # implied by --lr auto
    assert summary["config"]["lr"] == probe["recommended_lr"] == probe["sgd_lr"]  # momentum 0: factor 1
    assert probe["critical_lr"] == pytest.approx(2 / probe["lambda0"])
    scanned = next(p for p in probe["scan"] if p["lr"] == probe["recommended_lr"])
    assert scanned["regime"] in ("catapult", "monotone")

    rows = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert all(r["lr"] == probe["recommended_lr"] for r in rows if "loss" in r)
    assert losses[0] == pytest.approx(scanned["initial_loss"], rel=1e-4)
    assert losses[probe_steps] == pytest.approx(scanned["final_loss"], rel=1e-3)
    assert max(losses) == pytest.approx(scanned["peak_loss"], rel=1e-3)
    sharpness = [r for r in rows if "sharpness" in r]
    assert [r["step"] for r in sharpness] == [2] and sharpness[0]["sharpness"] > 0


def test_catapult_events_reach_metrics_jsonl(tmp_path) -> None:
    """A spike-and-recovery loss curve through the trainer's hook: one event row with sharpness."""
    hook = CatapultHook(CatapultDetector(spike_factor=2.0))
    losses = [2.0, 1.5, 1.0, 3.5, 6.0, 2.5, 0.9, 0.8]
    rows = []
    for step, loss in enumerate(losses, start=1):
        info = StepInfo(step, 0, loss, 0.1, 16, None, None, True)
        rows.append(hook(info))
    events = [row for row in rows if row]
    assert len(events) == 1
    event = events[0]
    assert event["event"] == "catapult"
    assert (event["start_step"], event["peak_step"], event["end_step"]) == (4, 5, 7)
    assert (event["loss_before"], event["peak_loss"], event["loss_after"]) == (1.0, 6.0, 0.9)


@pytest.mark.slow
def test_builtin_default_adapts_the_pretrained_model(tmp_path) -> None:
    """`qdeploy train` defaults (built-in EfficientNet-Lite0 on digits-shift), shortened."""
    out = tmp_path / "default"
    result = _invoke(["train", "--out", str(out), "--image-size", "32", "--batch-size", "16", "--max-steps", "40",
                      "--train-primary", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "efficientnet_lite0" and summary["data"] == "digits-shift" and summary["mode"] == "adapt"
    assert summary["adapt_report"]["layers"]  # quadratic terms were added to the pretrained model
    assert summary["final_val_acc"] > summary["initial_val_acc"] + 0.2


def test_benchmark_refuses_a_missing_data_folder_in_one_line(tmp_path) -> None:
    """benchmarks/adapt_vs_scratch.py reports bad input like the CLI: one line, status 2, nothing written."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "adapt_vs_scratch.py"
    runs, report = tmp_path / "runs", tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(script), "--data", str(tmp_path / "missing"), "--runs", str(runs),
                             "--json", str(report)], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: data folder {tmp_path / 'missing'} does not exist; pass an ImageFolder directory (one sub-folder "
        "per class) or the built-in 'digits-shift'"]
    assert not runs.exists() and not report.exists()


def test_the_cli_defaults_are_the_train_config_defaults() -> None:
    from qdeploy.commands.train import train as train_command
    from qdeploy.training import TrainConfig

    params = train_command.make_context("train", []).params
    params.pop("resume")
    assert params.pop("latency_budget") is None  # a plan before the run, not a TrainConfig field
    assert params.pop("plan_trials") is None  # the plan's own defaults (PlanOptions) apply
    assert params.pop("plan_scoring") is None
    assert TrainConfig(**params) == TrainConfig()  # each default is defined once, in TrainConfig


def test_the_progress_line_keeps_its_numbers_whole_in_a_log() -> None:
    import io

    from rich.console import Console

    from qdeploy.training.progress import ProgressBar

    log = io.StringIO()
    with ProgressBar(132, 0, True, Console(file=log, width=80)) as bar:  # a file: not a terminal, 80 columns
        bar.evaluated(0.9471)
        bar.step(132, 2, 0.5427, 3.16e-07, 31.4)
    assert "…" not in log.getvalue() and "val acc 94.71%  lr 3.16e-07  31 img/s" in log.getvalue()
