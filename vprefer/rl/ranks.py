"""What must differ between processes (random streams) and what must be combined across them (metrics).

Why a stream per rank: with the same seed on every process, every rank draws the
same timesteps and noise (DPO), the same starting latents (ReFL) and the same
VAE posterior samples, so 8 GPUs see one (t, noise) draw 8 times. The reference
scripts seed ``seed + process_index``; so does ``RankStreams``. Model
initialisation stays on the shared seed (DDP also broadcasts rank 0's weights).

Why the streams are checkpointed: accelerate restores the *global* RNGs on
``load_state``, but the loops draw from their own ``random.Random`` and
``torch.Generator``; without saving those, ``--resume`` replays the pair /
prompt / timestep sequence from update 0. Each rank saves its own file.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# metrics whose per-process values are kept beside their mean (the draws show that ranks differ;
# the losses let a reader check the mean)
PER_RANK_PREFIXES = ("draw/", "loss/", "t_index")


class RankStreams:
    """A Python and a torch random stream for one process, seeded ``seed + rank``."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank
        self.py = random.Random(seed + rank)
        self.torch = torch.Generator().manual_seed(seed + rank)

    def path(self, folder: Path) -> Path:
        return Path(folder) / f"rng-rank{self.rank}.json"

    def save(self, folder: Path) -> None:
        version, state, gauss = self.py.getstate()
        blob = base64.b64encode(self.torch.get_state().numpy().tobytes()).decode()
        self.path(folder).write_text(json.dumps({"rank": self.rank, "python": [version, list(state), gauss],
                                                 "torch": blob}))

    def load(self, folder: Path, step: int) -> bool:
        """Restore this rank's streams; a rank with no saved file (more processes than before) starts fresh
        streams from (seed, rank, step), so it does not replay update 0's draws either."""
        p = self.path(folder)
        if not p.exists():
            log.warning("%s: no random state for rank %d (more processes than the checkpoint had): "
                        "fresh streams from seed %d + rank + step %d", folder, self.rank, self.seed, step)
            self.py = random.Random(hash((self.seed, self.rank, step)))
            self.torch = torch.Generator().manual_seed(self.seed + self.rank + 1_000_003 * step)
            return False
        d = json.loads(p.read_text())
        version, state, gauss = d["python"]
        self.py.setstate((version, tuple(state), gauss))
        raw = base64.b64decode(d["torch"])
        self.torch.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        return True


def mean_over_processes(acc, metrics: dict) -> dict:
    """Numeric metrics averaged over every process (the reference scripts gather losses before logging;
    rank 0's own value is one sample of N). Per-process values of draws and losses are kept under
    ``per_rank``. Every process must call this at the same point: it is a collective."""
    if acc.num_processes == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")
                  and not k.startswith("distributed/"))
    if not keys:
        return metrics
    t = torch.tensor([[float(metrics[k]) for k in keys]], device=acc.device, dtype=torch.float64)
    every = acc.gather(t).cpu()  # (processes, keys)
    out = dict(metrics)
    for i, k in enumerate(keys):
        out[k] = float(every[:, i].mean())
    out["per_rank"] = {k: every[:, i].tolist() for i, k in enumerate(keys) if k.startswith(PER_RANK_PREFIXES)}
    return out
