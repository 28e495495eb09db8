"""What the world's pretraining commands share: one thread, and the loss figures they record."""

from __future__ import annotations

import functools

import torch


def single_threaded(fn):
    """Run ``fn`` on one torch thread, so the same command writes the same weights on any machine (a sum's
    order depends on the thread count) — and, on a shared 2-core machine, 8x faster than two threads
    contending (measured). The caller's thread count is restored afterwards."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


def loss_figures(losses: list[float], last: int = 50) -> dict:
    """The first loss and the mean of the last ``last``, as a pretraining's metadata records them."""
    tail = losses[-last:]
    return {"first_loss": losses[0] if losses else None, "last_loss": sum(tail) / len(tail) if tail else None}
