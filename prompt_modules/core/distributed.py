"""Data-parallel training over processes started by ``torchrun`` or ``accelerate launch``.

Every rank holds the same trainable module and sees the same *global* batch of each step (trainers derive it from
``seed`` and the step): it computes the loss on its own contiguous part of that batch (:meth:`DataParallel.part`),
and after the backward pass the gradients of the trainable parameters are averaged over the ranks
(:meth:`DataParallel.average_gradients`, the all-reduce that ``DistributedDataParallel`` performs; frozen
backbones take no part). For a loss that is a mean over samples and equal parts, the averaged gradient is the
global batch's, so N processes at global batch B train as one process at batch B, and since every rank then holds
the same state, a checkpoint written by rank 0 resumes at any world size.

What couples the samples of a batch is made to see the whole batch, so that the ranks' parts train as their rows
of a one-process batch would: a contrastive loss gathers the features (:meth:`DataParallel.gather`), BatchNorm
normalises with the whole batch's statistics and Dropout keeps its rows of the whole batch's mask
(:meth:`DataParallel.whole_batch_layers`), and random draws per sample (diffusion noise and timesteps, a VAE's
sample) are drawn for the whole batch, of which each rank keeps its rows (:meth:`DataParallel.randn`,
:meth:`DataParallel.randint`). Every rank's randomness is then a function of the seed and the step alone, the same
at every process count. Work done once before training (featurising a dataset, sampling a latent pool) is split
into contiguous shards (:meth:`DataParallel.shard`) whose results every rank receives (:meth:`DataParallel.
gather_shards`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


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

    # ----- the whole batch's randomness and batch statistics -----------------------------------------------------
    def rows(self, whole: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor that holds the whole batch (the tensor itself in one process)."""
        return whole[self.part(whole.shape[0])] if self.active else whole

    def randn(
        self, shape: Sequence[int], *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """This rank's rows of one Gaussian draw for the whole batch: ``shape`` is the part's (rows first); the
        draw has ``world_size`` times its rows and takes from the RNG what a one-process run's draw for the whole
        batch takes, so each rank gets the noise one process gives its samples. In one process, ``torch.randn``."""
        shape = tuple(int(n) for n in shape)
        whole = (shape[0] * self.world_size, *shape[1:])
        return self.rows(torch.randn(whole, generator=generator, dtype=dtype, device=device))

    def randint(
        self, high: int, rows: int, *, generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """This rank's ``rows`` of ``torch.randint(0, high, (whole batch,))`` (as :meth:`randn`)."""
        return self.rows(torch.randint(0, high, (rows * self.world_size,), generator=generator, device=device))

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks, differentiable (its backward sums the ranks' gradients, as
        :meth:`gather`'s does; :meth:`average_gradients` divides the count out)."""
        return _AllSum.apply(tensor) if self.active else tensor

    @contextlib.contextmanager
    def whole_batch_layers(self, module: nn.Module) -> Iterator[None]:
        """For the block, ``module``'s BatchNorm layers (in training) normalise with the statistics of the whole
        batch (every rank's part: the statistics are all-reduced, as ``SyncBatchNorm`` does, on any device) and
        update their running statistics with them, and its ``nn.Dropout`` layers keep this rank's rows of a mask
        drawn for the whole batch. A rank's part then trains exactly as its rows of a one-process batch. Nothing
        changes in one process."""
        if not self.active:
            yield
            return
        patched = []
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.forward = functools.partial(self._batch_norm, layer)
            elif type(layer) is nn.Dropout:
                layer.forward = functools.partial(self._dropout, layer)
            else:
                continue
            patched.append(layer)
        try:
            yield
        finally:
            for layer in patched:
                del layer.forward

    def _batch_norm(self, layer: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        if not layer.training and layer.track_running_stats:
            return type(layer).forward(layer, x)
        dims = [0, *range(2, x.ndim)]
        view = [1, -1] + [1] * (x.ndim - 2)
        count = x.numel() // x.shape[1] * self.world_size
        mean = self.all_sum(x.sum(dims)) / count
        centred = x - mean.view(view)
        var = self.all_sum((centred * centred).sum(dims)) / count  # two passes: no cancellation
        out = centred * torch.rsqrt(var + layer.eps).view(view)
        if layer.affine:
            out = out * layer.weight.view(view) + layer.bias.view(view)
        if layer.training and layer.track_running_stats:
            with torch.no_grad():
                layer.num_batches_tracked.add_(1)
                factor = layer.momentum if layer.momentum is not None else 1.0 / float(layer.num_batches_tracked)
                layer.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                layer.running_var.mul_(1 - factor).add_(var.detach() * (count / max(count - 1, 1)), alpha=factor)
        return out

    def _dropout(self, layer: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
        if not layer.training or layer.p == 0:
            return type(layer).forward(layer, x)
        # the mask a one-process run draws for the whole batch (same shape, so the same draws), scaled as dropout
        whole = torch.ones((x.shape[0] * self.world_size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return x * self.rows(F.dropout(whole, layer.p, True))

    # ----- work split once: shards of a list ---------------------------------------------------------------------
    def shard(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items (any count: the first ``count % world_size`` ranks
        take one more, a rank may take none), for work done once, such as reading and featurising a dataset."""
        share, extra = divmod(int(count), self.world_size)
        start = self.rank * share + min(self.rank, extra)
        return slice(start, start + share + (self.rank < extra))

    def gather_shards(self, part: torch.Tensor | None) -> torch.Tensor:
        """Every rank's ``part`` (rows of :meth:`shard`; ``None`` or no rows for a rank without items), concatenated
        in rank order on every rank: float tensors with the same trailing shape, sent as float32 on the CPU."""
        if not self.active:
            if part is None:
                raise ValueError("gather_shards: no rows at all")
            return part
        header = torch.full((10,), -1, dtype=torch.long)
        if part is not None and part.shape[0]:
            if part.ndim > 9:
                raise ValueError(f"gather_shards takes at most 9 dimensions, got {part.ndim}")
            header[: part.ndim] = torch.tensor(part.shape)
            header[9] = part.ndim
        headers = [torch.empty_like(header) for _ in range(self.world_size)]
        dist.all_gather(headers, header)
        shapes = [tuple(h[: int(h[9])].tolist()) for h in headers if int(h[9]) > 0]
        if not shapes or len({s[1:] for s in shapes}) != 1:
            raise ValueError(f"gather_shards: the ranks' parts do not fit together: {shapes}")
        tail, longest = shapes[0][1:], max(s[0] for s in shapes)
        padded = torch.zeros((longest, *tail), dtype=torch.float32)
        if part is not None and part.shape[0]:
            padded[: part.shape[0]] = part.detach().to("cpu", torch.float32)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        rows = [int(h[0]) if int(h[9]) > 0 else 0 for h in headers]
        return torch.cat([p[:n] for p, n in zip(parts, rows, strict=True)])


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


class _AllSum(torch.autograd.Function):
    """All-reduce (sum); backward: the all-reduced gradient (every rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = tensor.detach().clone().contiguous()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


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
