"""torchrun integration: one process per device, DistributedDataParallel, rank-0 side effects.

`torchrun` (or any launcher that sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT) starts the processes; `init_distributed` joins them with NCCL on GPUs and
gloo on CPUs. Without those variables training runs as a world of one, through the same
code path, so single-process and multi-process runs cannot drift apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from qdeploy.errors import QDeployError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, plots and writes files, so outputs are written exactly once."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(use_cuda: bool) -> DistContext:
    """Join the process group torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    context = DistContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        if context.local_rank >= torch.cuda.device_count():
            raise QDeployError(
                f"LOCAL_RANK {context.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return context


def shutdown_distributed(context: DistContext) -> None:
    if context.active and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum `tensor` over all processes in place (a no-op for a world of one)."""
    if context.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_equal(tensor: torch.Tensor, context: DistContext) -> list[torch.Tensor]:
    """Every process's copy of a same-shaped tensor, in rank order."""
    if not context.active:
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather(parts, tensor)
    return parts


def barrier(context: DistContext) -> None:
    if context.active:
        dist.barrier()
