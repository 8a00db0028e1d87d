"""Data-parallel training under ``torchrun``: the process group and what ranks must share.

Under ``torchrun --nproc_per_node N`` (env ``WORLD_SIZE``), each rank builds the same
model (same seed), draws the same windows and takes its shard of them;
DistributedDataParallel (``gloo`` on CPU, ``nccl`` on CUDA) averages the gradients.
The contrastive term sees each rank's local batch (``batch_size // N`` windows).
Only rank 0 writes the checkpoint and figures. Without ``WORLD_SIZE`` (or with 1),
:class:`Dist` is a single process and every method is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Dist"]


@dataclass
class Dist:
    """This process's rank in the training group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend)
            owns = True
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), owns_group=owns)

    def broadcast(self, value: float) -> float:
        """Rank 0's value on every rank (so that every rank stops at the same epoch)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank.

        DDP broadcasts them before each forward, but each rank's last forward then
        updates its own copy; this makes validation and the saved state agree.
        """
        if self.world == 1:
            return
        import torch.distributed as dist

        for buf in module.buffers():
            dist.broadcast(buf, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
