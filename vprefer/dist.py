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
    """With several processes: are these weights the same on every rank? (DDP should keep them so.) Under
    FSDP each rank holds a shard, so there is nothing to compare: ``params_in_sync`` is ``None``.

    Compares a three-number signature (sum, sum of squares, position-weighted sum) gathered from every
    rank, so a test or a log can say "in sync" after training without moving the weights themselves.
    Returns nothing in a single process.
    """
    import torch.distributed as td

    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return {}
    n = td.get_world_size()
    params = list(params)
    if any(hasattr(p, "full_tensor") for p in params):  # FSDP2 DTensor shards: gathered, they agree by design
        return {"distributed/processes": n, "distributed/params_in_sync": None}
    sig, at = None, 0
    with torch.no_grad():
        for p in params:  # one weight at a time: a full fine-tune's weights are never copied all at once
            flat = p.detach().float().flatten()
            pos = torch.arange(at, at + len(flat), device=flat.device).remainder(97).float()
            part = torch.stack([flat.sum(), flat.pow(2).sum(), (flat * pos).sum()])
            sig, at = (part if sig is None else sig + part), at + len(flat)
    if sig is None:
        return {}
    if td.get_backend() == "nccl":
        sig = sig.cuda()
    every = [torch.zeros_like(sig) for _ in range(n)]
    td.all_gather(every, sig)
    every = torch.stack(every).cpu()
    return {"distributed/processes": n,
            "distributed/params_in_sync": bool(torch.allclose(every, every[:1].expand_as(every), rtol=1e-6, atol=1e-6))}
