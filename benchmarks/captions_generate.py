"""Captions/s and API images/s against the stand-in server, and cost accounting vs the server's bill.

The server runs in its own process with a fixed latency, so the bound on
throughput is concurrency / latency (as for annotation). Prints, in one run:

* captions/s ÷ bound (``vprefer caption``, online, detailed style);
* images/s ÷ bound (``vprefer generate`` with a gpt-image-1-priced API generator);
* our recorded cost ÷ the server's bill (tokens and images it reports in ``/_stats``,
  at the same prices): 1.000 means every cent accounted for.

    python benchmarks/captions_generate.py [--n 400] [--concurrency 32] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from vprefer.annotate import AnnotatorPreset
from vprefer.caption import caption
from vprefer.generate import GenerateRecipe, generate
from vprefer.ingest import ingest
from vprefer.store import Run
from vprefer.testing.helpers import free_port
from vprefer.testing.synthetic import write_dataset

def stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.replace("/v1", "/_stats")) as r:
        return json.loads(r.read())


def start(latency: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "vprefer", "judge-server", "--port", str(port),
                            "--latency", str(latency)], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        try:
            urllib.request.urlopen(base.replace("/v1", "/health"), timeout=1).read()
            return srv, base
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400, help="images to caption, and images to generate")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.2)
    a = ap.parse_args()
    bound = a.concurrency / a.latency
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ingest(write_dataset(tmp / "syn", a.n // 4, 4, size=48), tmp / "run")
        srv, base = start(a.latency)
        try:
            preset = AnnotatorPreset.load("local-judge", base_url=base, concurrency=a.concurrency)
            t0 = time.perf_counter()
            cap = caption(tmp / "run", preset, style="detailed")
            cap_s = time.perf_counter() - t0
            billed = stats(base)["billed"]
            server_cap_usd = (billed["input_tokens"] * preset.prices.input_per_1m
                              + billed["output_tokens"] * preset.prices.output_per_1m) / 1e6
            ours_cap_usd = float(Run(tmp / "run").read("captions")["cost_usd"].sum())

            # API images: one gpt-image-1-priced generator, n prompts (fresh run: captions as the prompts)
            os.environ["VPREFER_JUDGE_URL"] = base
            rec = GenerateRecipe.load("generators-api-tiny")
            rec.generators = [g for g in rec.generators if g.name == "standin-gpt-image"]
            rec.generators[0].api.concurrency = a.concurrency
            (tmp / "p.txt").write_text("".join(f"a {c} circle number {i}\n" for i, c in
                                               zip(range(a.n), ["red", "blue", "green", "yellow"] * a.n)))
            from vprefer.prompts import sample_prompts

            sample_prompts(tmp / "p.txt", tmp / "gen")
            before = stats(base)["billed"]
            t0 = time.perf_counter()
            gen = generate(tmp / "gen", rec)
            gen_s = time.perf_counter() - t0
            after = stats(base)["billed"]
            spec = rec.generators[0].api
            server_gen_usd = ((after["input_tokens"] - before["input_tokens"]) * spec.input_per_1m
                              + (after["output_tokens"] - before["output_tokens"]) * spec.output_per_1m) / 1e6 \
                + (after["images"] - before["images"]) * spec.price_per_image
        finally:
            srv.terminate()
            srv.wait()
    print(f"captions: {cap.ok} in {cap_s:.2f}s = {cap.ok / cap_s:.1f}/s; bound concurrency/latency = {bound:.1f}/s; "
          f"ratio = {cap.ok / cap_s / bound:.3f}")
    print(f"API images: {gen.generated} in {gen_s:.2f}s = {gen.generated / gen_s:.1f}/s; bound = {bound:.1f}/s; "
          f"ratio = {gen.generated / gen_s / bound:.3f}")
    print(f"caption cost: ours ${ours_cap_usd:.6f} / server's bill ${server_cap_usd:.6f} = "
          f"{ours_cap_usd / server_cap_usd:.4f}; dry-run estimate was ${cap.est_cost_usd:.4f} "
          f"({cap.est_cost_usd / ours_cap_usd:.3f}x)")
    print(f"image cost: ours ${gen.cost_usd:.6f} / server's bill ${server_gen_usd:.6f} = "
          f"{gen.cost_usd / server_gen_usd:.4f}")


if __name__ == "__main__":
    main()
