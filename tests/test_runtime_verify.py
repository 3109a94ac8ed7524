"""qdeploy verify: backends against PyTorch, tolerances, the eval set, and the drift localizer."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from qdeploy.cli import main
from qdeploy.errors import QDeployError
from qdeploy.store import VerifyReport
from qdeploy.runtime import load_engine
from qdeploy.runtime.drift import block_of, localize_drift
from qdeploy.data.eval_set import load_eval_set
from qdeploy.compare import Tolerance, compare, compare_all, resolve_tolerance
from qdeploy.runtime.parity import verify
from qdeploy.runtime.torch_engine import TorchEngine
from tests.runtime_fixtures import INPUT_SIZE

CORRUPTED_LAYER = "layer3.0.conv2"


@pytest.fixture(scope="module")
def corrupted(tiny_export, tmp_path_factory):
    """The decomposed file with one quadratic layer's primary weights scaled by 1.5."""
    proto = onnx.load(str(tiny_export.onnx / "decomposed.onnx"))
    (weight,) = [t for t in proto.graph.initializer if t.name == f"{CORRUPTED_LAYER}.primary.weight"]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    path = tmp_path_factory.mktemp("corrupt") / "decomposed.onnx"
    onnx.save(proto, str(path))
    return path


def test_compare_outputs_statistics() -> None:
    reference = np.array([[1.0, 2.0, 4.0, 0.0, -1.0, 3.0], [0.0, 5.0, 1.0, 2.0, 3.0, 4.0]])
    output = reference.copy()
    output[0, 2] = 4.4  # +0.4: same ranking
    output[1, 0] = 6.0  # class 0 jumps to the top of sample 1
    stats = compare(reference, output, Tolerance(atol=0.0, rtol=0.1), "s", labels=np.array([2, 0]))
    assert stats.max_abs == pytest.approx(6.0) and stats.max_rel == pytest.approx(6.0 / 5.0)
    assert stats.mean_abs == pytest.approx(6.4 / 12)
    assert stats.median_abs == 0.0 and stats.quantile_abs == pytest.approx(np.quantile([0] * 10 + [0.4, 6.0], 0.99))
    assert stats.top1_agreement == 0.5 and stats.top5_agreement == 0.5  # sample 1's top-5 set changed
    assert stats.reference_accuracy == 0.5 and stats.backend_accuracy == 1.0
    assert not stats.passed
    assert compare(reference, reference + 0.4, Tolerance(atol=0.0, rtol=0.1)).passed  # 0.4 <= 0.1 * 5
    assert not compare(reference, reference + 0.6, Tolerance(atol=0.0, rtol=0.1)).passed


def test_every_output_is_compared_with_its_own_tolerance() -> None:
    reference = {"logits": np.array([[1.0, 2.0]]), "features": np.array([[10.0, 0.0]])}
    output = {"logits": np.array([[1.0, 2.0]]), "features": np.array([[10.5, 0.0]])}  # only the second output drifts
    loose, tight = Tolerance(0.0, 0.1), Tolerance(0.0, 0.01)
    results = compare_all("s", reference, output, {"logits": tight, "features": loose}, labels=np.array([1]))
    assert [(c.output, c.passed) for c in results] == [("logits", True), ("features", True)]
    assert results[0].reference_accuracy == 1.0 and results[1].reference_accuracy is None  # labels score the logits
    results = compare_all("s", reference, output, tight)
    assert [(c.output, c.passed) for c in results] == [("logits", True), ("features", False)]
    with pytest.raises(QDeployError, match=r"s: the outputs differ: reference \['features', 'logits'\], backend \['logits'\]"):
        compare_all("s", reference, {"logits": output["logits"]}, tight)
    with pytest.raises(QDeployError, match="no tolerance for output\\(s\\) features"):
        compare_all("s", reference, output, {"logits": tight})


def test_the_comparator_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, qdeploy.compare; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_tolerance_presets_and_overrides() -> None:
    assert resolve_tolerance("fp32") == Tolerance(1e-5, 1e-4)
    assert resolve_tolerance("fp16", atol=0.5) == Tolerance(0.5, 2e-2)
    assert resolve_tolerance("int8", rtol=0.3).rtol == 0.3
    with pytest.raises(QDeployError, match="unknown tolerance preset 'bf8'"):
        resolve_tolerance("bf8")
    with pytest.raises(QDeployError, match="--atol must be >= 0"):
        resolve_tolerance("fp32", atol=-1.0)


def test_every_local_backend_matches_pytorch_on_random_and_real_images(tiny_export) -> None:
    reference = TorchEngine(tiny_export.folder, input_size=INPUT_SIZE)
    eval_set = load_eval_set("digits-shift", reference.model, INPUT_SIZE, limit=24)
    assert eval_set.images.shape == (24, 3, *INPUT_SIZE) and set(eval_set.labels) <= set(range(10))
    engines = [load_engine(tiny_export.onnx / f"{mode}.onnx", "ort-cpu") for mode in ("decomposed", "fused")]
    engines.append(load_engine(tiny_export.folder, "torch", input_size=INPUT_SIZE))
    for engine in engines:
        report = verify(engine, reference, resolve_tolerance("fp32"), eval_set, random_batches=(1, 3), batch_size=10)
        assert report.passed, report
        assert [s["name"] for s in report.sets] == ["random_b1", "random_b3", "digits-shift"]
        real = report.sets[-1]
        assert real["top1_agreement"] == 1.0 and real["reference_accuracy"] == real["backend_accuracy"]
        assert real["max_rel"] < 1e-4 and real["cosine"] > 0.999999


def test_drift_localizer_names_the_corrupted_layer(tiny_export, corrupted) -> None:
    images = np.random.default_rng(1).standard_normal((2, 3, *INPUT_SIZE)).astype(np.float32)
    tolerance = resolve_tolerance("fp32")
    clean = localize_drift(tiny_export.onnx / "decomposed.onnx", tiny_export.model, images, tolerance)
    assert clean["first_layer"] is None and clean["missing"] == []
    assert len(clean["sites"]) == 8 and all(site["passed"] for site in clean["sites"])
    drift = localize_drift(corrupted, tiny_export.model, images, tolerance)
    assert drift["first_layer"] == CORRUPTED_LAYER and drift["first_block"] == block_of(CORRUPTED_LAYER) == "layer3.0"
    passed = {site["module"]: site["passed"] for site in drift["sites"]}
    assert passed["layer1.0.conv2"] and passed["layer2.0.conv2"] and not passed["layer4.0.conv2"]


def test_verify_cli_passes_then_fails_with_the_layer_named(tiny_export, corrupted, tmp_path) -> None:
    runner = CliRunner()
    good = runner.invoke(main, ["verify", str(tiny_export.onnx / "fused.onnx"), "--backend", "ort-cpu", "--data", "digits-shift",
                                "--limit", "16", "--random-batches", "2", "--out", str(tmp_path / "good.json")])
    assert good.exit_code == 0, good.output
    report = VerifyReport.read(tmp_path / "good.json")  # reference found via export_report.json
    assert report.passed and report.backend == "ort-cpu" and report.sets[-1]["images"] == 16
    # In a log (not a terminal, 80 columns) the table names its file and keeps every number whole.
    assert "fused.onnx on ort-cpu vs PyTorch" in good.output and "…" not in good.output
    assert f"{report.sets[0]['max_abs']:.2e}" in good.output
    bad = runner.invoke(main, ["verify", str(corrupted), "--reference", str(tiny_export.folder), "--backend", "ort-cpu",
                               "--data", "none", "--out", str(tmp_path / "bad.json")], terminal_width=200)
    assert bad.exit_code == 1, bad.output
    assert f"drift starts at quadratic layer {CORRUPTED_LAYER}" in bad.output and "out of tolerance" in bad.output
    assert json.loads((tmp_path / "bad.json").read_text())["drift"]["first_layer"] == CORRUPTED_LAYER
    # a loose explicit tolerance accepts the same file
    loose = runner.invoke(main, ["verify", str(corrupted), "--reference", str(tiny_export.folder), "--data", "none",
                                 "--rtol", "10", "--out", str(tmp_path / "loose.json")])
    assert loose.exit_code == 0, loose.output


def test_verify_cli_errors(corrupted, tiny_export) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(corrupted)])
    assert result.exit_code == 2 and "cannot tell which PyTorch model" in result.output
    result = runner.invoke(main, ["verify", str(tiny_export.onnx / "decomposed.onnx"), "--random-batches", "x"])
    assert result.exit_code == 2 and "--random-batches 'x' is not a comma-separated list" in result.output


def test_drift_sites_that_cannot_be_compared_are_not_passed(tiny_export, monkeypatch) -> None:
    import qdeploy.runtime.drift as drift_module

    real = drift_module.module_outputs

    def swapped(proto, modules):  # layer1's site read from layer4's tensor: another shape
        tensors = real(proto, modules)
        tensors["layer1.0.conv2"] = tensors["layer4.0.conv2"]
        return tensors

    monkeypatch.setattr(drift_module, "module_outputs", swapped)
    images = np.random.default_rng(1).standard_normal((2, 3, *INPUT_SIZE)).astype(np.float32)
    report = localize_drift(tiny_export.onnx / "decomposed.onnx", tiny_export.model, images, resolve_tolerance("fp32"))
    site = next(s for s in report["sites"] if s["module"] == "layer1.0.conv2")
    assert site["comparable"] is False and site["passed"] is None
    assert report["uncompared"] == ["layer1.0.conv2"] and report["first_layer"] is None


def test_verify_scores_the_split_the_model_was_trained_beside(tmp_path) -> None:
    """A run with its own seed and val fraction: verify's eval set is that run's held-out split."""
    from qdeploy.data.splits import labelled_splits
    from qdeploy.training import train
    from tests.train_helpers import tiny_config

    result = train(tiny_config(tmp_path, seed=1, val_fraction=0.3, max_steps=1))
    reference = TorchEngine(result.model_dir)
    _, held_out, _ = labelled_splits("digits-shift", reference.model, 32, val_fraction=0.3, seed=1)
    _, default_val, _ = labelled_splits("digits-shift", reference.model, 32)
    assert len(held_out) != len(default_val)
    runner = CliRunner()
    done = runner.invoke(main, ["verify", str(result.model_dir), "--reference", str(result.model_dir), "--backend",
                                "torch", "--random-batches", "1", "--out", str(tmp_path / "verify.json")])
    assert done.exit_code == 0, done.output
    real = json.loads((tmp_path / "verify.json").read_text())["sets"][-1]
    assert real["name"] == "digits-shift" and real["images"] == len(held_out)
