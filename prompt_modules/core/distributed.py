"""Data-parallel training over processes started by ``torchrun`` or ``accelerate launch``.

Every rank holds the same trainable module and sees the same *global* batch of each step (trainers derive it from
``seed`` and the step): it computes the loss on its own contiguous part of that batch (:meth:`DataParallel.part`),
and after the backward pass the gradients of the trainable parameters are averaged over the ranks
(:meth:`DataParallel.average_gradients`, the all-reduce that ``DistributedDataParallel`` performs; frozen
backbones take no part). For a loss that is a mean over samples and equal parts, the averaged gradient is the
global batch's, so N processes at global batch B train as one process at batch B, and since every rank then holds
the same state, a checkpoint written by rank 0 resumes at any world size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world_size`` training processes (``rank`` 0 writes files and logs)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def part(self, batch_size: int) -> slice:
        """This rank's contiguous share of a global batch of ``batch_size`` samples (equal shares only: the
        average of the ranks' mean losses is then the global mean)."""
        if batch_size % self.world_size:
            raise ValueError(f"the global batch size {batch_size} is not divisible by the {self.world_size} "
                             "processes: choose a multiple of the process count")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each trainable parameter's gradient by its mean over the ranks (a missing gradient counts as
        zero, as it would in a one-process run of the whole batch)."""
        if not self.active:
            return
        for param in parameters:
            if not param.requires_grad:
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(self.world_size)

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """The whole batch's rows from every rank's ``part`` (equal parts, in rank order), differentiable: a loss
        that couples samples (a contrastive loss) is then computed on the whole batch by every rank. Its gradient
        reaches each rank's part ``world_size`` times (every rank computes the same loss), which
        :meth:`average_gradients` divides out again, so the result is the one-process gradient."""
        if not self.active:
            return part
        return _Gather.apply(part.contiguous(), self.rank, self.world_size)

    def mean(self, value: float) -> float:
        """The mean of a per-rank number (a loss) over the ranks."""
        if not self.active:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item()) / self.world_size

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


class _Gather(torch.autograd.Function):
    """All-gather along dim 0; backward: the sum over ranks of the whole batch's gradient (an all-reduce),
    of which each rank keeps its own rows."""

    @staticmethod
    def forward(ctx, part: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.rows = rank, part.shape[0]
        parts = [torch.empty_like(part) for _ in range(world_size)]
        dist.all_gather(parts, part)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


#: A single process: every helper above is then a no-op.
SINGLE_PROCESS = DataParallel()


def data_parallel_from_env(backend: str | None = None) -> DataParallel:
    """The process group of a ``torchrun`` / ``accelerate launch`` run (``RANK`` and ``WORLD_SIZE`` in the
    environment), initialised once (gloo on CPU, nccl with CUDA unless ``backend`` says otherwise); a plain
    ``python`` run is :data:`SINGLE_PROCESS`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size())
