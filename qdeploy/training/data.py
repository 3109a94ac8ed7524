"""Datasets and loaders for a run: the built-in sets or an ImageFolder, sharded per rank.

Each epoch's order is a function of (seed, epoch) alone (DistributedSampler's shuffle), so a
resumed run replays the interrupted epoch's order and skips the batches already done, and
N processes together see exactly the batches one process would (a global batch split
across ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from qdeploy.data.image_folder import collate_skipping_bad
from qdeploy.data.splits import capped, default_image_size, in_memory, labelled_splits
from qdeploy.training.config import TrainConfig
from qdeploy.training.distributed import DistContext


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    classes: tuple[str, ...]
    image_size: int
    in_memory: bool  # tensor-backed: loader workers would cost more to start than they save


def build_data(config: TrainConfig, model: nn.Module) -> DataBundle:
    """Train/val sets normalised with the model's own mean/std, at the run's image size."""
    size = config.image_size or default_image_size(config.data, model)
    train, val, classes = labelled_splits(config.data, model, size, config.val_fraction, config.seed)
    return DataBundle(capped(train, config.max_samples, config.seed), capped(val, config.max_samples, config.seed + 1),
                      classes, size, in_memory=in_memory(config.data))


def train_loader(bundle: DataBundle, context: DistContext, batch_per_rank: int, epoch: int,
                 skip_batches: int, config: TrainConfig, pin_memory: bool) -> DataLoader:
    """This rank's batches of `epoch`, from batch `skip_batches` on (resume mid-epoch)."""
    sampler = DistributedSampler(bundle.train, num_replicas=context.world_size, rank=context.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)
    sampler.set_epoch(epoch)
    order = list(sampler)[skip_batches * batch_per_rank:]
    workers = 0 if bundle.in_memory else config.workers
    return DataLoader(bundle.train, batch_size=batch_per_rank, sampler=order, drop_last=True,
                      num_workers=workers, collate_fn=collate_skipping_bad, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))


def steps_per_epoch(bundle: DataBundle, context: DistContext, batch_per_rank: int) -> int:
    return len(bundle.train) // context.world_size // batch_per_rank


def val_loader(bundle: DataBundle, context: DistContext, batch_per_rank: int, config: TrainConfig,
               pin_memory: bool) -> DataLoader:
    """Every val image exactly once across ranks (strided shards, no padding duplicates)."""
    shard = Subset(bundle.val, range(context.rank, len(bundle.val), context.world_size))
    workers = 0 if bundle.in_memory else config.workers
    return DataLoader(shard, batch_size=2 * batch_per_rank, shuffle=False, num_workers=workers,
                      collate_fn=collate_skipping_bad, pin_memory=pin_memory)
