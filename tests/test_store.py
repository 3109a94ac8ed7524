"""The model store: every command takes what the previous one wrote (issue #13's user cases)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

import qdeploy
from qdeploy.cli import main
from qdeploy.workflows.bench import expand_targets
from qdeploy.errors import QDeployError
from qdeploy.store import (ExportReport, PythonBackendParameters, TrainingRecord, VerifyReport, load, locate,
                           read_record, read_report, save)
from tests.conftest import engine_info
from tests.runtime_fixtures import tiny_adapted

RECORD = TrainingRecord("digits-shift", image_size=32, seed=1, val_fraction=0.3)


@pytest.fixture()
def run(tmp_path):
    """A train run folder as `qdeploy train --out RUN` leaves it: the model in RUN/model."""
    folder = tmp_path / "run"
    save(tiny_adapted(), folder / "model", record=RECORD)
    (folder / "summary.json").write_text("{}")
    return folder


def test_load_takes_a_run_folder_and_its_model_folder(run) -> None:
    expected = tiny_adapted()(torch.ones(1, 3, 32, 32))
    for path in (run, run / "model", run / "model" / "model.safetensors"):
        stored = load(path)
        assert (stored.kind, stored.model_folder) == ("model", run / "model")
        assert stored.record == RECORD and stored.input_size == (32, 32) and stored.eval_data == "digits-shift"
        assert torch.equal(stored.model(torch.ones(1, 3, 32, 32)), expected)


def test_load_takes_export_folders_and_files_beside_their_report(tiny_export) -> None:
    stored = locate(tiny_export.onnx)
    assert stored.kind == "export" and stored.model_folder == tiny_export.folder
    assert [p.name for p in stored.files] == ["decomposed.onnx", "fused.onnx"]
    for name in ("decomposed.onnx", "fused.onnx"):
        stored = locate(tiny_export.onnx / name)
        assert (stored.kind, stored.files, stored.model_folder) == ("onnx", (tiny_export.onnx / name,),
                                                                     tiny_export.folder)
        assert stored.report.input["shape"][2:] == [32, 32]
        assert torch.equal(stored.build()(torch.ones(1, 3, 32, 32)), tiny_export.model(torch.ones(1, 3, 32, 32)))


def test_a_plan_resolves_through_its_engine_json(tiny_export, tmp_path) -> None:
    plan = tmp_path / "engine" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"not a real plan")
    engine_info(onnx_path=str(tiny_export.onnx / "fused.onnx")).write(plan.parent)
    stored = locate(plan)
    assert (stored.kind, stored.model_folder) == ("plan", tiny_export.folder)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist; pass a train run folder, its model/ folder, an export folder"),
    (lambda p: p.mkdir(), "holds no qdeploy model (no adapter.json, base.json, model/ or export_report.json)"),
    (lambda p: (p.mkdir(), (p / "summary.json").write_text("{}")), "a train run without model/adapter.json"),
    (lambda p: (p.mkdir(), (p / "adapter.json").write_text("{oops")), "adapter.json is not readable JSON"),
    (lambda p: (p.mkdir(), (p / "base.json").write_text('{"format": "other/1"}')),
     "has format 'other/1', expected 'qdeploy-base/1'"),
    (lambda p: p.write_text("x"), "neither ONNX, a plan, nor weights in a model folder"),
])
def test_missing_foreign_partial_and_corrupt_paths_are_one_line(tmp_path, make, message) -> None:
    path = tmp_path / "thing"
    make(path)
    with pytest.raises(QDeployError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load(path)
    assert "\n" not in str(info.value)


def test_a_model_folder_without_weights_is_incomplete(run) -> None:
    (run / "model" / "model.safetensors").unlink()
    with pytest.raises(QDeployError, match="has its config but no model.safetensors: the model folder is incomplete"):
        load(run)


def test_a_failed_save_leaves_the_previous_folder(run, monkeypatch) -> None:
    before = (run / "model" / "adapter.json").read_bytes()
    monkeypatch.setattr("qdeploy.store.models.safetensors_bytes", lambda state: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save(tiny_adapted(), run / "model")
    assert (run / "model" / "adapter.json").read_bytes() == before
    assert read_record(run / "model") == RECORD


def test_export_takes_the_run_folder(run, tmp_path) -> None:
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(out), "--mode", "decomposed", "--no-tune",
                                       "--no-rewrites"])
    assert result.exit_code == 0, result.output
    assert locate(out).model_folder == run / "model"  # the report names the model folder itself


def test_export_refuses_an_onnx_file_naming_what_it_takes(tiny_export) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_export.onnx / "fused.onnx")])
    assert result.exit_code == 2 and "is already an onnx file or folder; pass the model it came from" in result.output


def test_bench_of_one_exported_file_finds_the_base_in_its_report(tiny_export, tmp_path) -> None:
    targets, model_folder, size = expand_targets([tiny_export.onnx / "fused.onnx"], ("ort-cpu",))
    assert [t.label for t in targets] == ["fused ort-cpu"] and model_folder == tiny_export.folder and size == (32, 32)
    lone = tmp_path / "lone.onnx"  # the same file without its report: no base to compare with
    shutil.copy(tiny_export.onnx / "fused.onnx", lone)
    assert expand_targets([lone], ("ort-cpu",))[1] is None


def test_one_import_adapts_saves_and_loads(tmp_path) -> None:
    model = qdeploy.load_base_model("test_resnet", pretrained=False)
    model, report = qdeploy.adapt(model, count_model_flops=False)
    qdeploy.save(model, tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(qdeploy.load(tmp_path / "m").model(x), model(x)) and report.layers


def test_export_of_a_run_defaults_to_the_trained_image_size(run, tmp_path) -> None:
    done = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "onnx"), "--mode", "decomposed",
                                     "--no-tune"], terminal_width=200)
    assert done.exit_code == 0, done.output
    assert read_report(tmp_path / "onnx").input["shape"][1:] == [3, RECORD.image_size, RECORD.image_size]


def test_a_plan_with_a_foreign_engine_json_is_one_line(tmp_path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0")
    (tmp_path / "engine.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(QDeployError, match=r"engine.json is not a qdeploy EngineInfo .*re-create it with `qdeploy build`"):
        locate(plan)


def test_export_model_of_a_stored_model_takes_its_trained_size(run, tmp_path) -> None:
    from qdeploy.export import ExportOptions, export_model

    report = export_model(run, tmp_path / "onnx", ExportOptions(modes=("decomposed",), tune=False, rewrites=False))
    assert report.image_size == (32, 32) and report.source == str(run / "model")
    assert read_report(tmp_path / "onnx") == report  # one writer, one reader: the same record back


def test_int8_of_a_stored_model_calibrates_on_the_split_it_did_not_train_on(run) -> None:
    from qdeploy.export import ExportOptions
    from qdeploy.export.onnx_export import for_stored

    options = for_stored(locate(run), ExportOptions(modes=("decomposed",), precision="int8"))
    assert options.calibration == "digits-shift" and options.calibration_split == {"seed": 1, "val_fraction": 0.3}
    elsewhere = for_stored(locate(run), ExportOptions(modes=("decomposed",), precision="int8", calibration="photos"))
    assert elsewhere.calibration_split == {}  # not its training data: that folder's own split


@pytest.mark.parametrize("artifact, document", [
    (ExportReport, {"format": "qdeploy-export-report/2", "files": {}}),
    (TrainingRecord, {"data": "digits-shift", "image_size": 32}),
    (VerifyReport, {"format": "qdeploy-verify-report/1", "backend": "ort-cpu"}),
])
def test_an_older_or_foreign_record_is_one_line_naming_the_fix(artifact, document, tmp_path) -> None:
    path = tmp_path / "record.json"
    path.write_text(json.dumps(document))
    with pytest.raises(QDeployError, match=r"re-create it with `qdeploy \w+`") as caught:
        artifact.read(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_records_round_trip_through_json() -> None:
    assert TrainingRecord.from_json(json.loads(json.dumps(RECORD.to_json())), "x") == RECORD
    params = PythonBackendParameters("model.onnx", "ort-cpu", 2, ("/a.so", "/b.so"))
    assert PythonBackendParameters.from_config(params.to_config(), "x") == params
    with pytest.raises(QDeployError, match="needs a 'model_file' parameter"):
        PythonBackendParameters.from_config({}, "config.pbtxt")
