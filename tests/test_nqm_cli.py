"""`qdeploy lr-probe` and `qdeploy catapult` end to end, files read back."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from qdeploy.commands.nqm import catapult, lr_probe
from qdeploy.nqm import TwoLayerReLU, top_kernel_eigenvalue
from qdeploy.nqm.data import image_folder_batch


def _invoke(command, args: list[str]):
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_lr_probe_on_digits_writes_a_consistent_probe(tmp_path) -> None:
    path = tmp_path / "probe.json"
    args = ["--width", "512", "--samples", "48", "--steps", "40", "--multiples", "1,1.9,3,4.5", "--json", str(path)]
    result = _invoke(lr_probe, args)
    probe = json.loads(path.read_text())
    assert probe["critical_lr"] == pytest.approx(2 / probe["lambda0"])
    assert probe["nqm_limit_lr"] == pytest.approx(4 / probe["lambda0"])
    assert [point["lr_times_lambda0"] for point in probe["scan"]] == [1.0, 1.9, 3.0, 4.5]
    recommended = next(point for point in probe["scan"] if point["lr"] == probe["recommended_lr"])
    assert recommended["regime"] == "catapult" and recommended["peak_loss"] > recommended["initial_loss"]
    assert f"lambda0 = {probe['lambda0']:.6g}" in result.output
    assert f"recommended learning rate: {probe['recommended_lr']:.6g}" in result.output


def test_lr_probe_on_an_image_folder(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog", "fox"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(6):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    path = tmp_path / "probe.json"
    args = ["--data", str(tmp_path / "images"), "--image-size", "8", "--width", "256", "--json", str(path)]
    _invoke(lr_probe, [*args, "--multiples", "1,3", "--steps", "30"])
    x, y = image_folder_batch(tmp_path / "images", image_size=8)
    assert x.shape == (18, 3 * 8 * 8) and y.shape == (18, 3)  # one-hot targets, 3 outputs
    expected = top_kernel_eigenvalue(TwoLayerReLU(x.shape[1], 256, y.shape[1], seed=0), x)
    assert json.loads(path.read_text())["lambda0"] == pytest.approx(expected, rel=1e-4)


def test_image_folder_batch_skips_undecodable_images_with_a_warning(tmp_path) -> None:
    from qdeploy.data.image_folder import SkippedImageWarning

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.full((6, 6, 3), 200 if label == "a" else 10, np.uint8)).save(tmp_path / label / "ok.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.warns(SkippedImageWarning, match="broken.png"):
        x, y = image_folder_batch(tmp_path, image_size=4)
    assert x.shape == (2, 3 * 4 * 4) and sorted(y[:, 0].tolist()) == [-1.0, 1.0]  # one image per class left


def test_catapult_experiment_writes_figure_and_table(tmp_path) -> None:
    args = ["--out", str(tmp_path / "out"), "--width", "512", "--n-train", "32", "--steps", "80"]
    result = _invoke(catapult, [*args, "--multiples", "0.75,1.5,2.25"])
    image = matplotlib.image.imread(tmp_path / "out" / "catapult.png")
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # something was drawn
    report = json.loads((tmp_path / "out" / "catapult.json").read_text())
    lambda0 = report["lambda0"]
    runs = {(run["model"], run["multiple"]): run for run in report["runs"]}
    assert len(runs) == 9
    for (kind, multiple), run in runs.items():
        assert run["lr"] == pytest.approx(2 * multiple / lambda0)
        assert run["losses"][0] == pytest.approx(runs[("nn", multiple)]["losses"][0])  # same start
        expected = None if run["regime"] == "diverged" else max(run["test_accuracy"])
        assert run["best_test_accuracy"] == expected
    assert all(runs[(kind, 0.75)]["regime"] == "monotone" for kind in ("nn", "nqm", "linear"))
    for kind in ("nn", "nqm"):
        run = runs[(kind, 1.5)]
        assert run["regime"] == "catapult" and len(run["catapults"]) == 1
        event = run["catapults"][0]
        assert event["sharpness_after"] < 2 / run["lr"] < event["sharpness_before"]
        assert run["sharpness"][-1] < 2 / run["lr"]
    assert runs[("linear", 1.5)]["regime"] == "diverged"
    assert runs[("nqm", 2.25)]["regime"] == "diverged"
    table = {row["multiple"]: row for row in report["best_test_accuracy"]}
    assert table[1.5]["nqm"]["best_test_accuracy"] == runs[("nqm", 1.5)]["best_test_accuracy"]
    assert f"lambda0 = {lambda0:.6g}" in result.output and "diverged" in result.output


def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path) -> None:
    from qdeploy.cli import main

    path = tmp_path / "probe.json"
    for args, message in (
        (["--model", "resnet50"], "error: unknown model 'resnet50'"),
        (["--data", str(tmp_path / "missing")], "error: no such directory"),
    ):
        result = CliRunner().invoke(main, ["lr-probe", *args, "--json", str(path)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message)
    assert not path.exists()
    result = CliRunner().invoke(catapult, ["--out", str(tmp_path / "out"), "--multiples", "1,x"])
    assert result.exit_code == 2 and "comma-separated" in result.output
    assert not (tmp_path / "out").exists()
