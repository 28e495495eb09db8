"""Process topology for multi-process runs, in one place.

On a machine without a GPU, accelerate treats processes started by ``torchrun``
(or ``accelerate launch`` with a multi-process config) as one distributed job
only when asked for CPU explicitly; then it uses gloo. Every entry point asks
through ``state()`` so that all of them agree (accelerate's state is a
process-wide singleton: the first caller decides).
"""

from __future__ import annotations

import torch


def state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def params_in_sync(params) -> dict:
    """With several processes: are these weights the same on every rank? (DDP should keep them so.)

    Compares a three-number signature (sum, sum of squares, position-weighted sum) gathered from every
    rank, so a test or a log can say "in sync" after training without moving the weights themselves.
    Returns nothing in a single process.
    """
    import torch.distributed as td

    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return {}
    n = td.get_world_size()
    with torch.no_grad():
        flat = torch.cat([p.detach().float().flatten() for p in params])
        pos = torch.arange(len(flat), device=flat.device).remainder(97).float()
        sig = torch.stack([flat.sum(), flat.pow(2).sum(), (flat * pos).sum()])
    if td.get_backend() == "nccl":
        sig = sig.cuda()
    every = [torch.zeros_like(sig) for _ in range(n)]
    td.all_gather(every, sig)
    every = torch.stack(every).cpu()
    return {"distributed/processes": n,
            "distributed/params_in_sync": bool(torch.allclose(every, every[:1].expand_as(every), rtol=1e-6, atol=1e-6))}
