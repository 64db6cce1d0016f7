"""Training beyond one process: torchrun's environment, DistributedDataParallel, rank-0 writes.

`torchrun --nproc_per_node=K -m pdcr_seg train ...` (or multi-node with torchrun's --nnodes,
--node_rank, --rdzv-endpoint) sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs
in one process and the helpers here are no-ops. Backend: NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but no CUDA device is available")
    return device


def setup(device_name: str = "auto") -> Context:
    """Joins the process group when torchrun started this process; picks the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather(ctx: Context, items: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    if not ctx.distributed:
        return items
    everyone = [None] * ctx.world_size
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part]


def broadcast(ctx: Context, value):
    """Rank 0's `value` (any picklable object), on every rank."""
    if not ctx.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def mean(ctx: Context, value: float) -> float:
    """The mean of a scalar over ranks."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()
