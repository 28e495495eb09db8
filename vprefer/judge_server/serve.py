"""The stand-in judge in several processes on one port: a judge that is not the bottleneck of a benchmark.

One Python process answers at most ~110-125 requests/s at 200 ms of latency on a 2-core machine (its
threads queue for the GIL; measured with a client that does nothing but send), so a throughput benchmark
against one process measures the stand-in, not the client. Several processes bind the same port with
``SO_REUSEPORT`` (Linux) and the kernel spreads connections over them, as a serving engine's own workers
would. Each keeps its own state (stored completions, files, batches, ``/_stats``, ``/_config``): where a
test reads or sets state, use one.

Workers are started as fresh interpreters, not forked: by the time the CLI serves, polars has started
threads, and a fork copies none of them but keeps any lock they held. The faults (which may carry the
judge's API key) reach a worker on its stdin, never its command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from typing import Callable

from vprefer.errors import InputError, ServiceError
from vprefer.judge_server.server import Faults, JudgeServer


def serve(port: int, faults: Faults, *, workers: int = 1, host: str = "127.0.0.1",
          on_ready: Callable[[str], None] | None = None, start_timeout_s: float = 60.0) -> None:
    """Serve until interrupted (SIGINT or SIGTERM), in ``workers`` processes on one port (the first is this
    one). ``on_ready`` is called once every worker listens; the others stop with this one, and die with it
    if it is killed (Linux)."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    if workers > 1 and port == 0:
        raise InputError("several workers share one port: give --port (0 would give each its own)")

    def stop(*_) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    children: list[subprocess.Popen] = []
    srv = None
    try:
        try:
            srv = JudgeServer(host, port, faults, reuse_port=workers > 1)
        except OSError as e:  # most often: the port is taken (another judge, or a leftover one)
            raise ServiceError(f"cannot listen on {host}:{port} ({e.strerror or e}); is another server on "
                               "that port? stop it, or choose another with --port") from None
        children = [_start_worker(host, port, faults) for _ in range(workers - 1)]
        for c in children:
            _wait_ready(c, start_timeout_s)
        if on_ready is not None:
            on_ready(srv.base_url)
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        if srv is not None:
            srv.server_close()
        for c in children:
            if c.poll() is None:
                c.terminate()
        for c in children:
            c.wait()


def _start_worker(host: str, port: int, faults: Faults) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "vprefer.judge_server.serve", host, str(port), str(os.getpid())],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # its errors go to our stderr
    p.stdin.write(json.dumps(asdict(faults)).encode() + b"\n")
    p.stdin.close()
    return p


def _wait_ready(p: subprocess.Popen, timeout_s: float) -> None:
    """The worker's "ready" line; a worker that could not bind is an error here, not a quieter benchmark."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        answered = bool(sel.select(timeout_s))
        line = p.stdout.readline() if answered else b""
    if line.strip() != b"ready":
        p.kill()
        p.wait()
        raise ServiceError(f"a judge worker did not start ({'it exited' if answered else 'no answer in time'}; "
                           "its error, if any, is printed above)")
    p.stdout.close()


def _worker(host: str, port: int, parent: int) -> None:
    """One extra worker: ends on SIGTERM, and when its parent dies (PR_SET_PDEATHSIG, checked once after it
    is set, in case the parent died first)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's terminate() still stops us
        pass
    if os.getppid() != parent:
        sys.exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    srv = JudgeServer(host, port, Faults(**json.loads(sys.stdin.readline())), reuse_port=True)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    srv.serve_forever()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
