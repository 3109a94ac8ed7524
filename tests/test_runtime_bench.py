"""qdeploy bench: measurements, ratios, and the JSON/CSV/PNG files it writes."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from qdeploy.cli import main
from qdeploy.errors import QDeployError
from qdeploy.runtime import load_engine
from qdeploy.runtime.benchmark import Target, measure, run_benchmark


def test_measure_respects_iterations_and_time_budget(tiny_export) -> None:
    engine = load_engine(tiny_export.onnx / "decomposed.onnx", "ort-cpu", 1)
    counted = measure(engine, "d", batch=2, threads=1, warmup=1, iterations=7)
    assert counted.iterations == 7 and counted.batch == 2
    assert counted.p50_ms <= counted.p90_ms <= counted.p99_ms and counted.mean_ms > 0
    assert counted.throughput == pytest.approx(2 * 1e3 / counted.mean_ms)
    budgeted = measure(engine, "d", batch=1, threads=1, warmup=0, iterations=100_000, time_budget_s=0.05)
    assert 1 <= budgeted.iterations < 100_000
    with pytest.raises(QDeployError, match="--iterations must be >= 1"):
        measure(engine, "d", batch=1, threads=1, iterations=0)


def test_ratios_against_first_and_base(tiny_export) -> None:
    path = tiny_export.onnx / "decomposed.onnx"
    load = lambda threads: load_engine(path, "ort-cpu", threads)  # noqa: E731
    results = run_benchmark([Target("a", load, base="b"), Target("b", load)], batches=(1, 2), threads=(1,),
                            warmup=0, iterations=3)
    assert [(m.label, m.batch) for m in results] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    by = {(m.label, m.batch): m for m in results}
    for batch in (1, 2):
        assert by[("a", batch)].vs_first == 1.0
        assert by[("b", batch)].vs_first == pytest.approx(by[("b", batch)].p50_ms / by[("a", batch)].p50_ms)
        assert by[("a", batch)].vs_base == pytest.approx(by[("a", batch)].p50_ms / by[("b", batch)].p50_ms)
        assert by[("b", batch)].vs_base is None
    with pytest.raises(QDeployError, match="distinct labels"):
        run_benchmark([Target("a", load), Target("a", load)], (1,), (1,))


def test_rounds_interleave_targets_and_pool_their_runs(tiny_export) -> None:
    path = tiny_export.onnx / "decomposed.onnx"
    order: list[str] = []
    load = lambda threads: load_engine(path, "ort-cpu", threads)  # noqa: E731
    results = run_benchmark([Target("a", load), Target("b", load)], batches=(1, 2), threads=(1,), warmup=0,
                            iterations=6, rounds=3, progress=order.append)
    assert [m.iterations for m in results] == [6, 6, 6, 6]  # 2 runs per round, pooled over 3 rounds
    # the targets take turns, and those compared at a batch run next to each other
    assert [" ".join(text.split()[:3]) for text in order] == ["a batch 1", "b batch 1", "a batch 2", "b batch 2"] * 3


def test_alternation_pairs_blocks_of_sessions_that_stop_spinning_after_a_run(tiny_export) -> None:
    from qdeploy.onnx_io import STOP_SPINNING_ENTRY

    path = tiny_export.onnx / "decomposed.onnx"
    options = lambda engine: engine.session.get_session_options()  # noqa: E731
    entry = lambda engine: options(engine).get_session_config_entry(STOP_SPINNING_ENTRY)  # noqa: E731
    assert entry(load_engine(path, "ort-cpu", 1)) == "0"  # deployed sessions keep ONNX Runtime's default
    quiet = lambda threads: load_engine(path, "ort-cpu", threads, spin_after_run=False)  # noqa: E731
    assert entry(quiet(1)) == "1"
    order: list[str] = []
    a, b = run_benchmark([Target("a", quiet, base="b"), Target("b", quiet)], batches=(1,), threads=(1,), warmup=1,
                         iterations=40, schedule="alternate", progress=order.append)
    assert a.iterations == b.iterations == 40 and order == ["a / b batch 1 threads 1"]
    assert 0.7 < a.vs_base < 1.4  # one file against itself, paired block by block
    for bad in ({"schedule": "alternate", "rounds": 3}, {"schedule": "interleaved"}):
        with pytest.raises(QDeployError, match="schedule must be one of turns, alternate"):
            run_benchmark([Target("a", quiet)], (1,), (1,), **bad)


def test_ratios_pair_each_turn_with_the_base_turn_beside_it(tiny_export, monkeypatch) -> None:
    import qdeploy.runtime.benchmark as benchmark

    # a slow phase caught the base's last two turns and the adapted file's last one
    turns = {("a", 1): [[1.1e-3] * 3, [1.1e-3] * 3, [5e-3] * 3], ("b", 1): [[1e-3] * 3, [2e-3] * 3, [2e-3] * 3]}
    monkeypatch.setattr(benchmark, "time_turns", lambda runs, *args, **kwargs: {key: turns[key] for key in runs})
    path = tiny_export.onnx / "decomposed.onnx"
    load = lambda threads: load_engine(path, "ort-cpu", threads)  # noqa: E731
    a, b = run_benchmark([Target("a", load, base="b"), Target("b", load)], batches=(1,), threads=(1,), rounds=3)
    assert a.p50_ms == pytest.approx(1.1) and b.p50_ms == pytest.approx(2.0)  # pooled percentiles: 0.55x
    assert a.vs_base == pytest.approx(1.1) and b.vs_first == pytest.approx(1 / 1.1)  # paired turn by turn


def test_bench_cli_writes_json_csv_and_plot(tiny_export, tmp_path) -> None:
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", str(tiny_export.onnx), "--batch", "1,2", "--threads", "1",
                                       "--warmup", "1", "--iterations", "3", "--rounds", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output  # a log's 80 columns do not cut the table's numbers
    report = json.loads((out / "bench.json").read_text())
    labels = ["decomposed ort-cpu", "fused ort-cpu", "base ort-cpu"]
    assert [(r["label"], r["batch"]) for r in report["results"]] == [(label, b) for label in labels for b in (1, 2)]
    assert all(r["iterations"] == 3 and r["threads"] == 1 for r in report["results"])
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [row["label"] for row in rows] == [r["label"] for r in report["results"]]
    for row, entry in zip(rows, report["results"]):
        assert float(row["p50_ms"]) == pytest.approx(entry["p50_ms"])
        if entry["label"] != "base ort-cpu":
            base = next(r for r in report["results"] if r["label"] == "base ort-cpu" and r["batch"] == entry["batch"])
            assert entry["vs_base"] == pytest.approx(entry["p50_ms"] / base["p50_ms"])  # one turn: p50 over p50
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the base ONNX file is the unadapted model: same outputs as the PyTorch base
    from qdeploy.export.base_model import base_of

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    import torch

    with torch.no_grad():
        expected = base_of(tiny_export.model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load_engine(out / "base.onnx", "ort-cpu").infer(x)["output"], expected,
                               rtol=0, atol=1e-4 * np.abs(expected).max())


def test_bench_cli_alternates_onnx_runtime_targets_as_the_plan_times_them(tiny_export, tmp_path, monkeypatch) -> None:
    import qdeploy.workflows.bench as workflow
    from qdeploy.onnx_io import STOP_SPINNING_ENTRY

    timed, real_run = [], workflow.run_benchmark

    def spy(targets, *args, **kwargs):
        sessions = {t.label: t.load(1) for t in targets}
        timed.append((kwargs["schedule"], {label: getattr(engine, "session", None) is not None
                                           and engine.session.get_session_options()
                                           .get_session_config_entry(STOP_SPINNING_ENTRY) for label, engine in
                                           sessions.items()}))
        return real_run(targets, *args, **kwargs)
    monkeypatch.setattr(workflow, "run_benchmark", spy)
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", str(tiny_export.onnx), str(tiny_export.folder), "--batch", "1",
                                       "--threads", "1", "--warmup", "1", "--iterations", "4", "--schedule",
                                       "alternate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # ONNX Runtime targets alternate with spinning stopped after each run; PyTorch takes turns
    assert timed == [("alternate", {"decomposed ort-cpu": "1", "fused ort-cpu": "1", "base ort-cpu": "1"}),
                     ("turns", {"adapted torch": False, "base torch": False})]
    report = {r["label"]: r for r in json.loads((out / "bench.json").read_text())["results"]}
    assert report["decomposed ort-cpu"]["vs_base"] > 0 and report["adapted torch"]["vs_base"] > 0
    assert all(r["iterations"] == 4 for r in report.values())
    bad = CliRunner().invoke(main, ["bench", str(tiny_export.onnx), "--schedule", "blocks", "--out", str(out)])
    assert bad.exit_code != 0 and "blocks" in bad.output


def test_bench_cli_errors(tiny_export, tmp_path) -> None:
    runner = CliRunner()
    lone = tmp_path / "lone.onnx"  # without the export report that names its model
    shutil.copy(tiny_export.onnx / "decomposed.onnx", lone)
    result = runner.invoke(main, ["bench", str(lone), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--base needs the adapted model" in result.output
    assert not (tmp_path / "b").exists()  # a refused run leaves nothing behind
    result = runner.invoke(main, ["bench", str(tiny_export.onnx), "--batch", "0", "--no-base", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--batch '0' is not a comma-separated list of integers >= 1" in result.output
    result = runner.invoke(main, ["pipeline", "--batch", "1,0", "--out", str(tmp_path / "p")])  # refused before training
    assert result.exit_code == 2 and "--batch '1,0' is not a comma-separated list of integers >= 1" in result.output
    assert not (tmp_path / "p").exists()
    result = runner.invoke(main, ["bench", str(tmp_path / "nope.onnx"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nope.onnx does not exist" in result.output


def test_profile_summary_sums_kernel_events_per_op_and_per_layer() -> None:
    from qdeploy.runtime.profile import summarize

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 999},
        {"cat": "Node", "name": "blocks.0.conv_dw/quad.Conv_1_nchwc_kernel_time", "dur": 3000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "blocks.0.conv_dw/primary.Conv_0_nchwc_kernel_time", "dur": 1000,
         "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "blocks.0.conv_dw/quad.Mul_3_kernel_time", "dur": 1000, "args": {"op_name": "Mul"}},
        {"cat": "Node", "name": "blocks.1.conv_dw/Conv_1_kernel_time", "dur": 2000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "node_Conv_7_kernel_time", "dur": 3000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "node_Conv_7_fence_before", "dur": 50, "args": {"op_name": "Conv"}},
    ]
    total, by_op, by_layer = summarize(events, runs=2)
    assert total == pytest.approx(5.0) and by_op == pytest.approx({"Conv": 4.5, "Mul": 0.5})
    assert list(by_op) == ["Conv", "Mul"]  # costliest first
    assert by_layer == {"blocks.0.conv_dw": pytest.approx({"quad Conv": 1.5, "primary Conv": 0.5, "quad Mul": 0.5}),
                        "blocks.1.conv_dw": pytest.approx({"Conv": 1.0})}


def test_bench_profile_attributes_time_to_every_quadratic_layer(tiny_export, tmp_path) -> None:
    from qdeploy.adaptation import quadratic_layers

    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", str(tiny_export.onnx / "decomposed.onnx"), "--no-base", "--batch", "2",
                                       "--threads", "1", "--warmup", "1", "--iterations", "3", "--profile",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    profiles = json.loads((out / "profile.json").read_text())["profiles"]
    assert len(profiles) == 1 and profiles[0]["batch"] == 2 and profiles[0]["runs"] == 3
    profile = profiles[0]
    assert set(profile["by_layer"]) == set(quadratic_layers(tiny_export.model))
    assert sum(profile["by_op"].values()) == pytest.approx(profile["node_ms"])
    assert 0 < profile["layers_ms"] < profile["node_ms"]
    assert "quadratic layers of decomposed.onnx" in result.output and "…" not in result.output
