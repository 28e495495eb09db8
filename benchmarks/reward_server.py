"""What a remote reward costs: time to score one batch through the reward server vs the same VP-Score in process.

Ratio = remote seconds / local seconds for the same batch, measured in one run (median of --repeats), and the
share of the remote time spent outside the model (PNG encoding, HTTP, JSON, decoding): ``1 - local/remote``.
The server runs in a thread of this process on 127.0.0.1, so the ratio is the protocol's overhead, not the
network's; a GRPO loop waits for it once per rollout batch.

    python benchmarks/reward_server.py [--n 32] [--size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vprefer.reward.build import build
from vprefer.rl.reward_server import RewardServer, quantized
from vprefer.rl.rewards import RemoteReward
from vprefer.testing.helpers import tiny_reward_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="images in the batch")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(tiny_reward_recipe(Path(tmp) / "r")).eval().requires_grad_(False)
        prompts = [f"a prompt number {i}" for i in range(args.n)]
        px = quantized(torch.rand(args.n, 3, args.size, args.size))
        weights = {"overall": 1.0}

        def local():
            with torch.no_grad():
                return model.score_pixels(prompts, px, aspects=list(weights))[:, 0]

        with RewardServer(model, weights, batch_size=args.n).start() as server:
            client = RemoteReward(server.url, batch_size=args.n)
            remote = lambda: client.score(prompts, px)["overall"]  # noqa: E731
            assert torch.allclose(local(), remote(), atol=1e-5)  # warm-up, and the same scores
            t_local, t_remote = [], []
            for _ in range(args.repeats):
                for fn, acc in ((local, t_local), (remote, t_remote)):
                    t0 = time.perf_counter()
                    fn()
                    acc.append(time.perf_counter() - t0)
    lo, re = statistics.median(t_local), statistics.median(t_remote)
    print(json.dumps({"images": args.n, "size": args.size, "local_s": round(lo, 4), "remote_s": round(re, 4),
                      "remote_over_local": round(re / lo, 3), "share_outside_model": round(1 - lo / re, 3),
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
