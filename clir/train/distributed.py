"""Data-parallel training under ``torchrun``: the process group, each rank's share of a global batch, rank-0
writes, the gradient exchange and the thread rule. Shared by the contrastive trainer (``clir train``) and
meant for the MLM trainer too; nothing here knows what is trained.

A run is one process (``WORLD_SIZE`` unset or 1: every helper is then a no-op) or ``torchrun
--nproc_per_node N`` processes, each holding a replica. The rules:

- **Data.** Every rank reads the same seeded stream in the same order and takes a contiguous slice of each
  global batch (:meth:`Dist.share`): the global batch of step s holds the same examples for any N, and the
  stream position saved in a checkpoint is a global one.
- **Writes.** Rank 0 alone writes the run folder (:meth:`Dist.on_main` runs a check or a write there and
  raises its ClirError on every rank, so no rank waits at a collective for a rank that failed).
- **Gradients.** DistributedDataParallel averages them over ranks; a loss that every rank computes over
  the whole global batch (cross-device negatives, :func:`all_gather_with_grad`) is scaled by N before
  backward so that the average is the single-process gradient.
- **Threads.** N processes on one machine share its cores: :func:`thread_count` gives each its share."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from clir.errors import ClirError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run: rank, world size, its rank on this machine and the device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None  # "gloo" / "nccl"; None in a single process
    device: str | None = None  # the device this rank computes on (None: the trainer's default)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ data
    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of a global batch (its length a multiple of the world size)."""
        if len(items) % self.world:
            raise ValueError(f"a global batch of {len(items)} does not split over {self.world} processes")
        size = len(items) // self.world
        return list(items[self.rank * size : (self.rank + 1) * size])

    def take(self, items: Iterator[T], per_rank: int) -> list[T]:
        """This rank's share of the next global batch of ``per_rank x world`` items from ``items`` (every
        rank iterates the same seeded stream, so the global batch is the same for any world size)."""
        return self.share([next(items) for _ in range(per_rank * self.world)])

    # ------------------------------------------------------------------ control
    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only and wait for it everywhere; a ClirError it raises is raised on every
        rank, of the same type (a ResumeRefused stays one). Returns ``fn``'s result on rank 0, None
        elsewhere (see :meth:`broadcast` to share it)."""
        if not self.enabled:
            return fn()
        result: T | None = None
        error: tuple[type[ClirError], str] | None = None
        if self.is_main:
            try:
                result = fn()
            except ClirError as e:
                error = (type(e), str(e))
        error = self.broadcast(error)
        if error is not None:
            kind, message = error
            raise kind(message)
        return result

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled between this run's processes, never from disk)."""
        if not self.enabled:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def sum(self, value: float) -> float:
        """The sum of a number over ranks (e.g. masked tokens in a global MLM batch, to normalise a loss)."""
        if not self.enabled:
            return value
        import torch
        import torch.distributed as td

        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        td.all_reduce(t)
        return float(t.item())

    def mean(self, value: float) -> float:
        """The mean of a float over ranks (for logging a rank-local loss)."""
        return self.sum(value) / self.world if self.enabled else value

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any (a stop request seen by one rank stops all)."""
        if not self.enabled:
            return flag
        import torch
        import torch.distributed as td

        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return bool(t.item())

    def _comm_device(self) -> Any:
        import torch

        return torch.device(self.device) if self.backend == "nccl" and self.device else torch.device("cpu")


def setup(device: str | None = None) -> Dist:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ...), once
    per process; a single process when ``WORLD_SIZE`` is unset or 1. The backend is NCCL when this rank
    computes on a GPU, gloo on CPUs; a GPU rank uses ``cuda:LOCAL_RANK`` unless ``device`` names one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    import torch
    import torch.distributed as td

    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(torch.device(device))
    backend = "nccl" if on_gpu else "gloo"
    if not td.is_initialized():
        try:
            td.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as e:
            raise ClirError(f"could not join the {backend} process group of {world} processes: {e}") from None
    elif td.get_backend() != backend:
        raise ClirError(f"the process group uses {td.get_backend()}, this rank needs {backend}")
    return Dist(rank, world, local_rank, local_world, backend, device)


def teardown() -> None:
    """Leave the process group, if this process joined one (at the end of a run)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


# ---------------------------------------------------------------------- threads
def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_count(requested: int | None, dist: Dist) -> int | None:
    """The CPU threads this process should use: ``requested`` when set; under torchrun, the machine's
    cores divided among its processes (2 processes on 2 cores: 1 each), since OpenMP threads of processes
    that share cores spin-wait against each other; None (torch's default) for a lone process."""
    if requested:
        return requested
    if dist.local_world > 1:
        return max(1, usable_cores() // dist.local_world)
    return None


def apply_threads(requested: int | None, dist: Dist) -> int:
    """Set torch's thread count by :func:`thread_count`; returns the count in use."""
    import torch

    n = thread_count(requested, dist)
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


# ---------------------------------------------------------------------- tensors
def all_gather_with_grad(x: Any, dist: Dist, sizes: Sequence[int] | None = None) -> Any:
    """Every rank's ``x`` concatenated along dim 0 in rank order, the gradient kept on this rank's part
    (the others are constants). ``sizes``: each rank's row count when they differ (every rank must pass the
    same list); equal sizes otherwise.

    Used with a loss that every rank computes over the whole gathered batch: each rank's backward then
    gives the exact gradient of that loss through its own rows, and DDP's average over ranks needs the loss
    scaled by the world size to equal the single-process gradient."""
    if not dist.enabled:
        return x
    import torch
    import torch.distributed as td

    sizes = list(sizes) if sizes is not None else [x.shape[0]] * dist.world
    if sizes[dist.rank] != x.shape[0]:
        raise ValueError(f"rank {dist.rank} has {x.shape[0]} rows, sizes say {sizes[dist.rank]}")
    width = max(sizes)
    padded = x.detach()
    if x.shape[0] < width:
        padded = torch.cat([padded, padded.new_zeros((width - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(dist.world)]
    td.all_gather(parts, padded.contiguous())
    parts = [p[:n] for p, n in zip(parts, sizes, strict=True)]
    parts[dist.rank] = x
    return torch.cat(parts)


def wrap_ddp(model: Any, dist: Dist) -> Any:
    """``model`` in DistributedDataParallel (only parameters that require gradients are synchronised), or
    ``model`` itself in a single process. Buffers are not re-sent at every forward: BERT's are constants."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [int(dist.device.split(":")[1])] if dist.device and dist.device.startswith("cuda:") else None
    return DDP(model, device_ids=ids, forward_sync_buffers=False)


def allreduce_grads(params: Sequence[Any], dist: Dist) -> None:
    """Average the gradients of ``params`` over ranks in one flat exchange (for gradients accumulated under
    DDP's ``no_sync``, e.g. GradCache's chunked backward); a missing gradient counts as zeros."""
    if not dist.enabled:
        return
    import torch
    import torch.distributed as td
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = _flatten_dense_tensors(grads)
    td.all_reduce(flat)
    flat /= dist.world
    for g, new in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(new)
