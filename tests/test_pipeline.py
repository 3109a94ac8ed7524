"""The README's main command, `qdeploy pipeline`: train -> export -> verify -> bench, one summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qdeploy.cli import main


def test_pipeline_runs_every_stage_and_summarises(tmp_path, monkeypatch) -> None:
    import qdeploy.workflows.bench as benchmark
    from qdeploy.onnx_io import STOP_SPINNING_ENTRY

    timed, real_run = [], benchmark.run_benchmark

    def spy(targets, *args, **kwargs):  # the bench's groups: how each is scheduled, how its sessions spin
        engines = {t.label: t.load(1) for t in targets}
        timed.append((kwargs["schedule"], {label: getattr(e, "session", None) and e.session.get_session_options()
                                           .get_session_config_entry(STOP_SPINNING_ENTRY)
                                           for label, e in engines.items()}))
        return real_run(targets, *args, **kwargs)
    monkeypatch.setattr(benchmark, "run_benchmark", spy)
    out = tmp_path / "pipeline"
    result = CliRunner().invoke(main, ["pipeline", "--out", str(out), "--max-samples", "64", "--epochs", "5",
                                       "--train-minutes", "10", "--batch", "1,2",
                                       "--bench-seconds", "0.2", "--latency-budget", "2.0"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "pipeline_summary.json").read_text())
    assert set(summary["parity"]) == {"decomposed", "fused"}
    assert all(p["passed"] and p["eval_top1_agreement"] == 1.0 for p in summary["parity"].values())
    accuracy = summary["accuracy"]
    assert accuracy["onnx_decomposed"] == accuracy["onnx_fused"]
    assert 0.0 <= accuracy["adapted_without_quadratic_terms"] <= 1.0
    # 10 steps on 64 images lift the val split well above the untrained head (with the
    # learning rate at 1e-9 every accuracy stayed at 8.4%).
    assert accuracy["adapted"] >= accuracy["step0_untrained_head"] + 0.1, accuracy
    assert 0.0 <= accuracy["finetuned_base"] <= 1.0
    training = summary["training"]
    assert training["adapt"]["steps"] == training["finetune"]["steps"] == 10  # the same budget
    assert training["adapt"]["trainable_params"] > training["finetune"]["trainable_params"]  # primary trains too
    labels = {m["label"] for m in summary["latency"]}
    int8 = summary["int8"]  # the accuracy-controlled int8 file: shipped and measured, or fp32 with a reason
    if int8["shipped"] == "int8":
        assert labels == {"decomposed ort-cpu", "fused ort-cpu", "adapted torch", "base ort-cpu", "base torch",
                          "int8 ort-cpu"}
        assert int8["passed"] and int8["fp32_top1_agreement"] >= 0.99 and set(int8["latency"]) == {"1", "2"}
        verified = json.loads((out / "verify_int8.json").read_text())["int8_vs_fp32"]  # both on every image
        assert int8["reference_accuracy"] == verified["reference_accuracy"] and 0 < int8["judged_images"]
        vs_base = {(m["label"], m["batch"]): m["vs_base"] for m in summary["latency"]}
        assert int8["latency"]["2"]["vs_base_fp32"] == vs_base[("int8 ort-cpu", 2)]
        assert int8["latency"]["2"]["vs_adapted_fp32"] == pytest.approx(vs_base[("int8 ort-cpu", 2)]
                                                                         / vs_base[("decomposed ort-cpu", 2)])
        assert (out / "verify_int8.json").is_file() and "int8 latency, batch 2" in result.output
    else:
        assert labels == {"decomposed ort-cpu", "fused ort-cpu", "adapted torch", "base ort-cpu", "base torch"}
        assert "shipping the fp32 file" in int8["reason"] and "shipped fp32" in result.output
    assert 1 <= int8["steps"] <= 9 and (out / "onnx-int8" / "decomposed.onnx").is_file()
    assert all(m["vs_base"] > 0 for m in summary["latency"] if not m["label"].startswith("base"))
    # the ONNX files are timed as the latency plan times them: alternated, spinning stopped after each run
    schedules = {schedule: sessions for schedule, sessions in timed}
    assert set(schedules["alternate"]) == {label for label in labels if label.endswith("ort-cpu")}
    assert set(schedules["alternate"].values()) == {"1"} and set(schedules["turns"]) == {"adapted torch", "base torch"}
    for name in ("train/model/adapter.json", "finetune/model/base.json", "onnx/decomposed.onnx", "onnx/fused.onnx",
                 "bench/bench.csv", "bench/bench.png", "verify_fused.json"):
        assert (out / name).is_file(), name
    assert "accuracy after adaptation" in result.output and "latency fused ort-cpu, batch 2" in result.output
    assert "plain base fine-tuned, same budget" in result.output
    plan = summary["plan"]  # the trained layers are the plan's, checked within budget at every bench batch
    assert plan["layers"] == json.loads((out / "train/model/adapter.json").read_text())["targets"]
    assert set(plan["measured"]) == {"1", "2"} and max(plan["measured"].values()) <= 2.0
    assert set(plan["bound"]) == {"1", "2"} and max(plan["bound"].values()) <= 2.0  # what the budget holds
    assert all(plan["bound"][b] >= plan["measured"][b] for b in plan["bound"])
    assert json.loads((out / "plan.json").read_text())["chosen"] == plan["layers"]
    assert "latency plan (budget 2.00x)" in result.output


def test_every_pipeline_option_is_settable_from_the_cli() -> None:
    from dataclasses import fields

    from qdeploy.commands.parsing import parse_dataclass_options
    from qdeploy.commands.pipeline import pipeline
    from qdeploy.workflows.pipeline import PipelineOptions

    args = ["--model", "resnet18", "--data", "d", "--out", "o", "--epochs", "2", "--train-minutes", "0.5",
            "--max-samples", "9", "--batch", "1,4", "--threads", "1", "--bench-seconds", "0.1", "--seed", "5",
            "--freeze-primary", "--no-baseline", "--train-threads", "2", "--latency-budget", "1.5", "--no-int8"]
    options = parse_dataclass_options(PipelineOptions, pipeline.make_context("pipeline", args).params)
    assert options == PipelineOptions("resnet18", "d", Path("o"), 2, 0.5, 9, (1, 4), 1, 0.1, 5, False, False, 2, 1.5,
                                      False)
    assert {f.name for f in fields(PipelineOptions)} == {p.name for p in pipeline.params}  # no field without option
    defaults = parse_dataclass_options(PipelineOptions, pipeline.make_context("pipeline", []).params)
    assert defaults == PipelineOptions()  # the defaults are the dataclass's, defined once
