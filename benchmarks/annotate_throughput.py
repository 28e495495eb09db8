"""Online annotation throughput against the embedded judge (200 ms latency).

Prints achieved requests/s / (concurrency / latency) — the bound set by latency
and concurrency alone — and the speed-up over a sequential one-request-at-a-time
loop through the same openai client (measured on a sample, same run).

    python benchmarks/annotate_throughput.py [--sets 1000] [--concurrency 32] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

from vprefer.annotate import AnnotatorPreset, annotate
from vprefer.annotate.requests import chat_body, image_uris, plan
from vprefer.annotate.rubric import Rubric
from vprefer.ingest import ingest
from vprefer.store import Run
from vprefer.testing.synthetic import write_dataset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base_url: str, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            urllib.request.urlopen(base_url.replace("/v1", "/health"), timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("judge server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--sequential-sample", type=int, default=20)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ingest(write_dataset(tmp / "syn", a.sets, 4, size=48), tmp / "run")
        # the judge runs in its own process, as a real server would (no shared GIL with the client)
        port = free_port()
        srv = subprocess.Popen([sys.executable, "-m", "vprefer", "judge-server", "--port", str(port),
                                "--latency", str(a.latency)], stdout=subprocess.DEVNULL)
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_healthy(base_url)
        preset = AnnotatorPreset.load("local-judge", base_url=base_url, concurrency=a.concurrency,
                                      permutations=1)
        t0 = time.perf_counter()
        res = annotate(tmp / "run", preset)
        el = time.perf_counter() - t0
        rps = res.ok / el
        bound = a.concurrency / a.latency
        # sequential reference: the same requests, one at a time, same client and server
        run, rubric = Run(tmp / "run"), Rubric.load(preset.rubric)
        uris = image_uris(run)
        client = openai.OpenAI(api_key="x", base_url=base_url, max_retries=0)
        sample = plan(run, preset, rubric)[: a.sequential_sample]
        t0 = time.perf_counter()
        for r in sample:
            client.chat.completions.create(**chat_body(r, preset, rubric, run, uris))
        seq_rps = len(sample) / (time.perf_counter() - t0)
        srv.terminate()
        srv.wait()
    print(f"requests: {res.ok} ok in {el:.2f}s at concurrency {a.concurrency}, latency {a.latency * 1000:.0f} ms")
    print(f"achieved {rps:.1f} req/s; bound concurrency/latency = {bound:.1f} req/s")
    print(f"ratio achieved/bound = {rps / bound:.3f} (target >= 0.85)")
    print(f"sequential loop: {seq_rps:.2f} req/s; speed-up = {rps / seq_rps:.1f}x")


if __name__ == "__main__":
    main()
