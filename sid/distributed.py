"""Work split over the processes of `accelerate launch` / torchrun, for the parts that are not
the HF `Trainer` (which does its own): evaluation (`sid.evaluation`) and the embedding pass
(`sid.embed.embed_items`).

A lone process never touches `torch.distributed`; several processes without an accelerator
(or told to use the CPU) join a gloo group.
"""

from __future__ import annotations

import os

import torch


def distributed_state(device: str | torch.device | None = None):
    """accelerate's `PartialState` when this process is one of several (`accelerate launch`,
    torchrun, or an initialised process group), else None. Without an accelerator (or with
    `device="cpu"`) the processes talk over gloo on the CPU."""
    import torch.distributed as dist

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    grouped = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not (launched or grouped):
        return None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator else torch.cuda.is_available()
    cpu = (
        parse_flag_from_env("ACCELERATE_USE_CPU")
        or not has_accelerator
        or (device is not None and torch.device(device).type == "cpu")
    )
    state = PartialState(cpu=cpu)
    return state if state.num_processes > 1 else None


def process_slice(count: int, num_processes: int = 1, process_index: int = 0) -> tuple[int, int]:
    """[lo, hi) of the `count` units that process `process_index` of `num_processes` takes:
    contiguous blocks in process order, the first `count % num_processes` one unit longer (as
    `PartialState.split_between_processes`), so the blocks in order are every unit once."""
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} of {num_processes} processes")
    per, extra = divmod(count, num_processes)
    lo = process_index * per + min(process_index, extra)
    return lo, lo + per + (1 if process_index < extra else 0)


__all__ = ["distributed_state", "process_slice"]
