"""A job's processes and devices: torchrun (NCCL on GPUs, gloo on CPU; only rank 0 writes),
CPU threads, and the per-epoch sampler shared out over processes.

The global batch is stated explicitly: ``per_process_batch = global_batch / world_size`` must be
an integer, and both are recorded with the results.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from hdmnet.config import Params, ParamsError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun set up (env RANK/WORLD_SIZE), or run as one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and os.environ.get("HDMNET_FORCE_CPU") != "1"
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def per_process_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ParamsError(
            f"global batch {global_batch} is not divisible by {world_size} processes; "
            "set the batch_size parameter to a multiple of the number of GPUs"
        )
    return global_batch // world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(array: np.ndarray, info: DistInfo) -> np.ndarray:
    """Sum an integer or float array over processes (metric counts, loss sums)."""
    if not info.distributed:
        return array
    tensor = torch.as_tensor(array, dtype=torch.float64)
    if info.device.type == "cuda":
        tensor = tensor.to(info.device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy().astype(array.dtype)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


class EpochSampler(torch.utils.data.Sampler[int]):
    """Deterministic shuffling per (seed, epoch), sharded over processes, resumable mid-epoch.

    The order of an epoch depends only on the seed and the epoch, so a resumed run sees exactly
    the batches an uninterrupted run would; ``skip`` drops the items already consumed.
    """

    def __init__(
        self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip_items = 0

    def set_epoch(self, epoch: int, skip_items: int = 0) -> None:
        self.epoch = epoch
        self.skip_items = skip_items

    def order(self) -> list[int]:
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            indices = rng.permutation(self.size).tolist()
        else:
            indices = list(range(self.size))
        # Pad so every process gets the same number of items (as DistributedSampler does).
        per_rank = -(-self.size // self.world_size)
        indices += indices[: per_rank * self.world_size - len(indices)]
        return indices[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip_items :])

    def __len__(self) -> int:
        return len(self.order()) - self.skip_items


def set_threads(params: Params) -> None:
    torch.set_num_threads(params.train.threads)
