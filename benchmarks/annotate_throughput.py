"""Online annotation throughput against the embedded judge in separate processes (200 ms latency).

Prints, for each concurrency, achieved requests/s / (concurrency / latency) —
the bound set by latency and concurrency alone — and the client's CPU time per
request (user + system CPU of this process during ``annotate()``, which
includes planning and folding; the judge's CPU is in its own processes). Beside
it, the same ratio for a *bare sender*: pre-encoded request bodies written on
raw keep-alive sockets, the answer read and dropped (no client library, no
journal, no parsing) — what this judge on this machine allows a client that
costs nothing; ``ours / bare`` is the client's own share of the shortfall. The
judge runs in ``--judge-workers`` processes on one port (one Python process
answers at most ~120 requests/s here, whatever the client). Then a
pool: judge servers with a fixed capacity (``--capacity`` batch slots each, as
a vLLM replica has), one server vs two behind one preset; the ratio should be
close to 2. Finally the speed-up over a sequential one-request-at-a-time loop
through the same openai client (measured on a sample, same run).

    python benchmarks/annotate_throughput.py [--sets 1000] [--concurrency 32 64] [--latency 0.2] [--judge-workers 2]

One JSON line last (for ``benchmarks/device.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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
from vprefer.testing.helpers import free_port
from vprefer.testing.synthetic import write_dataset

def wait_healthy(base_url: str, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            urllib.request.urlopen(base_url.replace("/v1", "/health"), timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("judge server did not start")


def start_judge(latency: float, capacity: int = 0, workers: int = 1) -> tuple[subprocess.Popen, str]:
    """The judge in processes of its own, as a real server would be (no shared GIL with the client)."""
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "vprefer", "judge-server", "--port", str(port),
                            "--latency", str(latency), "--capacity", str(capacity), "--workers", str(workers)],
                           stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    wait_healthy(url)
    return srv, url


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of another process and its live children (the judge's workers), from
    /proc (Linux): the judge's share of the machine."""
    def one(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        kids = []
    return one(pid) + sum(one(k) for k in kids)


def bare_rps(bodies: list[bytes], base_url: str, concurrency: int, seconds: float = 8.0) -> float:
    """Requests/s of the bare sender: ``concurrency`` keep-alive sockets, each writing a pre-encoded request
    and reading its answer (Content-Length) in a loop, for ``seconds``."""
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])

    async def worker(k: int, stop: float, done: list[int]) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while time.monotonic() < stop:
            b = bodies[i % len(bodies)]
            i += concurrency
            w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: judge\r\nAuthorization: Bearer x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the judge refused a bare request: {head.splitlines()[0]!r}")
            n = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
            await r.readexactly(n)
            done[0] += 1
        w.close()

    async def main() -> float:
        done, t0 = [0], time.monotonic()
        await asyncio.gather(*[worker(k, t0 + seconds, done) for k in range(concurrency)])
        return done[0] / (time.monotonic() - t0)

    return asyncio.run(main())


def timed(run_dir: Path, preset: AnnotatorPreset, judge_pid: int | None = None) -> tuple[float, float, int, float]:
    """(req/s, client CPU ms per request, requests ok, judge CPU ms per request)."""
    j0 = proc_cpu_s(judge_pid) if judge_pid else 0.0
    c0, t0 = cpu_s(), time.perf_counter()
    res = annotate(run_dir, preset)
    el, cpu = time.perf_counter() - t0, cpu_s() - c0
    j = (proc_cpu_s(judge_pid) - j0) if judge_pid else 0.0
    return res.ok / el, 1000 * cpu / max(1, res.ok), res.ok, 1000 * j / max(1, res.ok)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--capacity", type=int, default=16, help="batch slots per server in the pool comparison")
    ap.add_argument("--pool-sets", type=int, default=400)
    ap.add_argument("--sequential-sample", type=int, default=20)
    ap.add_argument("--judge-workers", type=int, default=2, help="judge processes on one port")
    ap.add_argument("--bare-seconds", type=float, default=8.0, help="how long the bare sender sends")
    a = ap.parse_args()
    lines, result = [], {"judge_workers": a.judge_workers, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_dataset(tmp / "syn", a.sets, 4, size=48)
        srv, base_url = start_judge(a.latency, workers=a.judge_workers)
        try:
            for k, conc in enumerate(a.concurrency):
                ingest(data, tmp / f"run{k}")
                preset = AnnotatorPreset.load("local-judge", base_url=base_url, concurrency=conc, permutations=1)
                rps, cpu_ms, ok, judge_ms = timed(tmp / f"run{k}", preset, srv.pid)
                bound = conc / a.latency
                if k == 0:
                    run, rubric = Run(tmp / "run0"), Rubric.load(preset.rubric)
                    bodies = [json.dumps(chat_body(r, preset, rubric, run, image_uris(run))).encode()
                              for r in plan(run, preset, rubric, pin=False)[:500]]
                bare = bare_rps(bodies, base_url, conc, a.bare_seconds)
                result.update({f"c{conc}_rps": round(rps, 1), f"c{conc}_ratio": round(rps / bound, 3),
                               f"c{conc}_bare_ratio": round(bare / bound, 3), f"c{conc}_client_cpu_ms": round(cpu_ms, 2),
                               f"c{conc}_judge_cpu_ms": round(judge_ms, 2)})
                result.setdefault("ratio", round(rps / bound, 3))
                lines.append(f"concurrency {conc}: {ok} ok, {rps:.1f} req/s; bound {bound:.0f} req/s; "
                             f"ratio {rps / bound:.3f}; bare sender {bare:.1f} req/s = {bare / bound:.3f} of the "
                             f"bound; ours / bare = {rps / bare:.3f}; client CPU {cpu_ms:.2f} ms/request, judge "
                             f"CPU {judge_ms:.2f} ms/request ({a.judge_workers} processes; all on the same "
                             f"{os.cpu_count()} cores)")
            # sequential reference: the same requests, one at a time, same client and server
            run, preset = Run(tmp / "run0"), AnnotatorPreset.load("local-judge", base_url=base_url)
            rubric, uris = Rubric.load(preset.rubric), image_uris(run)
            client = openai.OpenAI(api_key="x", base_url=base_url, max_retries=0)
            sample = plan(run, preset, rubric, pin=False)[: a.sequential_sample]
            t0 = time.perf_counter()
            for r in sample:
                client.chat.completions.create(**chat_body(r, preset, rubric, run, uris))
            seq_rps = len(sample) / (time.perf_counter() - t0)
        finally:
            srv.terminate()
            srv.wait()
        # a pool: servers of fixed capacity; the client's concurrency is enough to fill two
        small = write_dataset(tmp / "syn-pool", a.pool_sets, 4, size=48)
        servers = [start_judge(a.latency, a.capacity) for _ in range(2)]
        try:
            conc = 4 * a.capacity
            ingest(small, tmp / "pool1")
            one, _, _, _ = timed(tmp / "pool1", AnnotatorPreset.load(
                "local-judge", base_url=servers[0][1], concurrency=conc, permutations=1))
            ingest(small, tmp / "pool2")
            two, _, _, _ = timed(tmp / "pool2", AnnotatorPreset.load(
                "local-judge", base_urls=[u for _, u in servers], concurrency=conc, permutations=1))
        finally:
            for s, _ in servers:
                s.terminate()
                s.wait()
    for ln in lines:
        print(ln)
    print(f"pool (capacity {a.capacity} per server, concurrency {conc}): one server {one:.1f} req/s, "
          f"two {two:.1f} req/s; ratio two/one = {two / one:.2f} (bound per server {a.capacity / a.latency:.0f})")
    print(f"sequential loop: {seq_rps:.2f} req/s; speed-up at concurrency {a.concurrency[0]} = "
          f"{float(lines[0].split(', ')[1].split()[0]) / seq_rps:.1f}x")
    result.update(pool_ratio=round(two / one, 2), sequential_rps=round(seq_rps, 2),
                  sequential_speedup=round(float(lines[0].split(', ')[1].split()[0]) / seq_rps, 1))
    print(json.dumps(result))  # for benchmarks/device.py


if __name__ == "__main__":
    main()
