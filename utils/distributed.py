"""torchrun support: the same code runs single-process (no torchrun) and distributed."""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist


def init(device: torch.device, timeout_minutes: float = 30.0) -> tuple[int, int]:
    """Start the process group when launched by torchrun; returns (rank, world_size). A
    collective that waits longer than ``timeout_minutes`` for a process fails the job."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if device.type == "cuda":  # bound to this process's GPU: NCCL then never guesses it
            dist.init_process_group("nccl", device_id=device, timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate each rank's strided shard (rank r holds rows r, r + W, ...) of a matrix back
    into the original order; ``total`` is the number of rows over all ranks. A rank with no row
    (fewer rows than ranks) may hold a (0, 0) tensor: the width is the others'."""
    if not dist.is_initialized():
        return local
    w = dist.get_world_size()
    per_rank = -(-total // w)
    width = torch.tensor(local.shape[1], device=local.device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    padded = torch.zeros((per_rank, int(width)), dtype=local.dtype, device=local.device)
    if len(local):  # an empty shard may have no width
        padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    out = torch.stack(parts, dim=1).flatten(0, 1)  # row i*W + r comes from rank r
    return out[:total]


def broadcast_buffers(module: torch.nn.Module):
    """Rank 0's buffers (BatchNorm running statistics) to every rank. DDP syncs them only at
    the start of a forward, so after the last training step each rank holds its own; evaluating
    with those would score each shard of the test set with a slightly different model."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def once_per_node(fetch):
    """``fetch()``, a download that returns at once where its files are in place: first on rank 0,
    then, where they are still missing (a folder local to each node), on the first process of
    every other node; the other processes wait for both. A shared folder is thus filled once per
    job, a node-local one once per node."""
    if is_main():
        fetch()
    barrier()
    if local_rank() == 0 and not is_main():
        fetch()
    barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block before the other ranks (e.g. it downloads, they read the cache)."""
    if not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
