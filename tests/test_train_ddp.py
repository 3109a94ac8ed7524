"""torchrun semantics on CPU: 2 gloo processes reproduce the 1-process first-step gradient.

Each process is what torchrun would start: RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in
the environment and `qdeploy.training.train` called with the same global batch size. The
model is ConvNeXt (LayerNorm): per-rank BatchNorm statistics would make the gradients differ
by design (DDP does not synchronise BatchNorm), which is not what this test is about.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qdeploy.training import TrainConfig, train

WORKER = r"""
import sys
import torch
from safetensors.torch import save_file
from tests.test_train_ddp import first_step_gradient

torch.set_num_threads(1)
save_file(first_step_gradient(sys.argv[1], world_size=int(sys.argv[3])), sys.argv[2])
"""


def first_step_gradient(out: str, world_size: int) -> dict[str, torch.Tensor]:
    """Train one step on a global batch of 8 and return rank 0's gradients after DDP's all-reduce."""
    grads: dict[str, torch.Tensor] = {}

    def keep_first_gradient(info) -> None:
        if info.step == 1 and info.is_main:
            grads.update({n: p.grad.detach().clone().contiguous()
                          for n, p in info.model.named_parameters() if p.grad is not None})

    config = TrainConfig(model="convnext_atto", mode="scratch", out=out, image_size=32, batch_size=8,
                         max_samples=16, max_steps=1, workers=0, progress=False, max_grad_norm=None)
    summary = train(config, hooks=[keep_first_gradient]).summary
    assert summary["world_size"] == world_size
    return grads


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_like(tmp_path: Path, world_size: int) -> dict[str, torch.Tensor]:
    """Start `world_size` processes as torchrun would; rank 0's gradients."""
    repo = Path(__file__).resolve().parents[1]
    out, grads = tmp_path / "ddp", tmp_path / "grads.safetensors"
    port = _free_port()
    processes = []
    for rank in range(world_size):
        env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        processes.append(subprocess.Popen([sys.executable, "-c", WORKER, str(out), str(grads), str(world_size)],
                                          env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    assert (out / "model" / "adapter.json").is_file()  # rank 0 wrote the outputs
    return load_file(grads)


@pytest.mark.usefixtures("one_torch_thread")
def test_two_gloo_processes_give_the_single_process_gradient(tmp_path) -> None:
    distributed = _torchrun_like(tmp_path, 2)
    single = first_step_gradient(str(tmp_path / "single"), world_size=1)
    assert single.keys() == distributed.keys() and len(single) > 10
    assert any(value.abs().sum() > 0 for value in single.values())
    for name, value in single.items():
        torch.testing.assert_close(distributed[name], value, rtol=1e-4, atol=1e-6, msg=name)
