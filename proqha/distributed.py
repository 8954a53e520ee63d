"""torch.distributed helpers for runs started by torchrun: one small module, as torchvision's references keep.

Outside torchrun (no WORLD_SIZE, or 1) everything is a no-op and ``rank() == 0``.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("PROQHA_DIST_TIMEOUT_S", "600")))


def launched() -> bool:
    """Whether this process was started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> None:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU), with a timeout so a dead
    rank ends the job instead of hanging it. Idempotent."""
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Only the main process writes files, metrics and progress."""
    return rank() == 0


def local_device(requested: torch.device) -> torch.device:
    """Under torchrun on CUDA each rank uses its own GPU."""
    if active() and requested.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return requested


def broadcast(obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place on each rank)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def decide_on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give every rank its result; a ProqhaError it raises is raised on
    every rank (so no rank is left waiting)."""
    from proqha.errors import ProqhaError

    result, error = None, None
    if is_main():
        try:
            result = fn()
        except ProqhaError as exc:
            error = str(exc)
    result, error = broadcast((result, error))
    if error is not None:
        raise ProqhaError(error)
    return result
