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
