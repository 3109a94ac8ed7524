"""Training runs end to end on tiny models: outputs, reload, resume, crash safety, ImageFolder data."""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from qdeploy.adaptation import quadratic_layers, unadapt
from qdeploy.data.image_folder import SkippedImageWarning
from qdeploy.errors import QDeployError
from qdeploy.store import load_model
from qdeploy.training import TrainConfig, train
from qdeploy.training.data import build_data
from qdeploy.training.device import Precision, memory_format, resolve_precision
from qdeploy.training.metrics import read_metrics
from qdeploy.training.optim import lr_factor
from tests.train_helpers import tiny_config, write_image_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_losses(out) -> list[float]:
    return [row["loss"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]


def _val_accuracy(model: torch.nn.Module, config) -> float:
    """Accuracy recomputed outside the trainer, from the reloaded model and a fresh val set."""
    val = build_data(config, model).val
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        return (model(images).argmax(-1) == labels).float().mean().item()


def test_adapt_on_builtin_digits_learns_and_writes_every_output(tmp_path) -> None:
    # 32 images, 2 steps an epoch: 6 epochs revisit the same images, so the loss must fall.
    config = tiny_config(tmp_path, epochs=6, label_smoothing=0.0)
    result = train(config)
    out = result.out
    losses = _train_losses(out)
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4

    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["steps"] == 12 and summary["stop_reason"] == "epochs"
    assert summary["device_hours"] == pytest.approx(summary["wall_seconds"] / 3600)
    assert 0 < summary["trainable_params"] < summary["total_params"]  # primary frozen, quad + head train
    assert summary["classes"] == [str(d) for d in range(10)]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = read_metrics(out / "metrics.jsonl")
    evals = [row for row in rows if "val_acc" in row]
    assert [row["step"] for row in evals] == list(range(0, 13, 2))  # start + every epoch end
    assert {"lr", "wall_s", "samples_per_s"} <= set(rows[1])

    # The deliverable reloads through the foundation API and reproduces the reported accuracy.
    model = load_model(result.model_dir)
    assert quadratic_layers(model) and model.num_classes == 10
    assert _val_accuracy(model, config) == pytest.approx(summary["final_val_acc"])
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        outputs = model(images)
        assert torch.equal(outputs, load_model(out / "checkpoint")(images))
        # The quadratic terms left their zero start: removing them changes the outputs.
        assert not torch.allclose(outputs, unadapt(copy.deepcopy(model))(images))


def test_finetune_and_scratch_modes(tmp_path) -> None:
    finetune = train(tiny_config(tmp_path, mode="finetune", max_steps=2, out=str(tmp_path / "ft")))
    plain = load_model(finetune.model_dir)
    assert not quadratic_layers(plain) and plain.num_classes == 10
    assert finetune.summary["trainable_params"] == finetune.summary["total_params"]

    scratch = train(tiny_config(tmp_path, mode="scratch", checkpoint=None, max_steps=2, out=str(tmp_path / "sc")))
    model = load_model(scratch.model_dir)
    assert quadratic_layers(model)
    assert scratch.summary["trainable_params"] == scratch.summary["total_params"]
    # The quadratic architecture adapt builds, from random weights.
    assert scratch.summary["adapt_report"]["layers"] == list(quadratic_layers(model))


class _Crash(Exception):
    pass


def test_crash_keeps_last_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path) -> None:
    base = tiny_config(tmp_path, epochs=3, save_every=2, out=str(tmp_path / "crashed"))

    def crash_at_step_3(info) -> None:
        if info.step == 3:
            raise _Crash

    with pytest.raises(_Crash):
        train(base, hooks=[crash_at_step_3])
    checkpoint = tmp_path / "crashed" / "checkpoint"
    assert json.loads((checkpoint / "train_state.json").read_text())["step"] == 2
    assert not list((tmp_path / "crashed").glob(".checkpoint*"))  # no half-written folder left

    with pytest.raises(QDeployError, match="already holds a run; pass --resume"):
        train(base)
    resumed = train(base, resume=True)
    assert resumed.summary["steps"] == 6
    steps = [row["step"] for row in read_metrics(resumed.out / "metrics.jsonl") if "loss" in row]
    assert steps == [1, 2, 3, 4, 5, 6]  # the crashed step 3 was dropped and redone once

    straight = train(replace(base, out=str(tmp_path / "straight")))
    resumed_state = load_file(resumed.model_dir / "model.safetensors")
    straight_state = load_file(straight.model_dir / "model.safetensors")
    for name, value in straight_state.items():
        torch.testing.assert_close(resumed_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert _train_losses(resumed.out) == pytest.approx(_train_losses(straight.out), rel=1e-5)


def test_image_folder_with_an_undecodable_image(tmp_path) -> None:
    data = write_image_folder(tmp_path / "shapes")
    (data / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    config = tiny_config(tmp_path, data=str(data), epochs=6, max_samples=None, batch_size=8, lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config)
    assert any(issubclass(w.category, SkippedImageWarning) and "broken.png" in str(w.message) for w in caught)
    assert result.summary["classes"] == ["circle", "square", "stripes"]
    assert result.summary["skipped_images"] >= 1
    assert load_model(result.model_dir).num_classes == 3
    losses = _train_losses(result.out)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result.summary["best_val_acc"] > 0.5  # three easy patterns, chance is 1/3


def test_bad_inputs_fail_with_one_clear_error(tmp_path) -> None:
    with pytest.raises(QDeployError, match="does not exist; pass an ImageFolder directory"):
        train(tiny_config(tmp_path, data=str(tmp_path / "missing")))
    split = tmp_path / "split"
    write_image_folder(split / "train", classes=("circle", "square", "stripes"), per_class=2)
    write_image_folder(split / "val", classes=("circle", "square"), per_class=2)
    with pytest.raises(QDeployError, match=r"class mismatch: .* has 3 classes, .* has 2; only in train: \['stripes'\]"):
        train(tiny_config(tmp_path, data=str(split)))
    with pytest.raises(QDeployError, match="nothing to resume"):
        train(tiny_config(tmp_path, out=str(tmp_path / "never")), resume=True)
    with pytest.raises(QDeployError, match="--lr auto picks an SGD learning rate"):
        tiny_config(tmp_path, lr="auto")


def test_damaged_checkpoints_are_named_not_loaded(tmp_path) -> None:
    from qdeploy.training.checkpointing import OPTIMIZER_FILE, STATE_FILE, read_checkpoint, read_checkpoint_state

    (tmp_path / STATE_FILE).write_text('{"format": "qdeploy-train-checkpoint/1", "step": 3')  # cut short
    with pytest.raises(QDeployError, match="checkpoint .* is unreadable"):
        read_checkpoint_state(tmp_path)
    (tmp_path / STATE_FILE).write_text('["not", "a", "state"]')
    with pytest.raises(QDeployError, match="has format 'list', expected 'qdeploy-train-checkpoint/1'"):
        read_checkpoint_state(tmp_path)
    (tmp_path / STATE_FILE).write_text('{"format": "qdeploy-train-checkpoint/1", "optimizer": {}}')
    (tmp_path / OPTIMIZER_FILE).write_bytes(b"\x00" * 16)
    assert read_checkpoint_state(tmp_path)["format"] == "qdeploy-train-checkpoint/1"  # the JSON alone is fine
    with pytest.raises(QDeployError, match="checkpoint .* is unreadable"):
        read_checkpoint(tmp_path)


def test_nan_loss_stops_with_the_last_good_checkpoint_named(tmp_path) -> None:
    config = tiny_config(tmp_path, optimizer="sgd", lr=1e12, momentum=0.0, max_grad_norm=None, epochs=20,
                         save_every=1, label_smoothing=0.0)
    # Either the loss goes non-finite first, or an update sends the weights to Inf first.
    with pytest.raises(QDeployError, match=r"(the loss is (nan|inf) at|the weights hold NaN/Inf after) step \d+ "
                                           r".*the last good checkpoint \(step \d+\) is intact") as error:
        train(config)
    message = error.value.args[0]
    step = int(message.split(" step ")[1].split()[0])
    state = json.loads((tmp_path / "run" / "checkpoint" / "train_state.json").read_text())
    assert state["step"] == step - 1  # saved every step: the one before the failure
    assert f"(step {state['step']}) is intact" in message
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "run" / "checkpoint" / "model.safetensors").values())


def test_schedule_and_device_choices() -> None:
    config = TrainConfig(warmup_steps=2)
    factors = [lr_factor(step, config, 10) for step in range(10)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # linear warmup
    assert factors[2:] == sorted(factors[2:], reverse=True)  # then cosine decay...
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))  # ...towards 0 at step 10
    assert lr_factor(5, replace(config, scheduler="constant"), 10) == 1.0

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision(cpu, "auto").name == "fp32" and memory_format(cpu) == torch.contiguous_format
    with pytest.raises(QDeployError, match="--amp fp16 needs a CUDA device"):
        resolve_precision(cpu, "fp16")
    assert resolve_precision(gpu, "fp16") == Precision(torch.float16, scaled=True)  # fp16 needs loss scaling
    assert resolve_precision(gpu, "bf16") == Precision(torch.bfloat16, scaled=False)
    assert memory_format(gpu) == torch.channels_last


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (AMP and channels_last path)")
def test_cuda_amp_run(tmp_path) -> None:
    result = train(tiny_config(tmp_path, max_steps=3, device="cuda"))
    assert result.summary["precision"] in ("bf16", "fp16") and result.summary["device"] != "cpu"
    assert math.isfinite(result.summary["final_val_acc"])


def test_time_to_target_reads_the_first_evaluation_at_the_target(tmp_path) -> None:
    from qdeploy.training.metrics import time_to_target

    rows = [{"step": 0, "val_acc": 0.1, "train_s": 0.0}, {"step": 5, "loss": 1.0, "train_s": 2.0},
            {"step": 10, "val_acc": 0.6, "train_s": 4.0}, {"step": 20, "val_acc": 0.9, "train_s": 8.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scratch = {"step": 40, "train_s": 32.0}
    assert time_to_target(path, 0.5, scratch) == {"seconds_to_scratch_best": 4.0, "fraction_of_scratch_time": 0.125,
                                                  "steps_to_scratch_best": 10, "fraction_of_scratch_steps": 0.25}
    assert time_to_target(path, 0.95, scratch)["seconds_to_scratch_best"] is None
    # A reference at its best from step 0 gives no fraction (no division by zero).
    assert time_to_target(path, 0.05, {"step": 0, "train_s": 0.0})["fraction_of_scratch_time"] is None
