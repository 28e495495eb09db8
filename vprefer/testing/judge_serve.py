"""The stand-in judge in several processes on one port: a judge that is not the bottleneck of a benchmark.

One Python process answers at most ~110-125 requests/s at 200 ms of latency on a 2-core machine (its
threads queue for the GIL; measured with a client that does nothing but send), so a throughput benchmark
against one process measures the stand-in, not the client. Several processes bind the same port with
``SO_REUSEPORT`` (Linux) and the kernel spreads connections over them, as a serving engine's own workers
would. Each keeps its own state (stored completions, files, batches, ``/_stats``): where a test reads state
back, use one.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Callable

from vprefer.errors import InputError
from vprefer.testing.judge_server import Faults, JudgeServer
def serve(port: int, faults: Faults, *, workers: int = 1, host: str = "127.0.0.1",
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (SIGINT or SIGTERM), in ``workers`` processes on one port (the first is this
    one); the others are stopped with it, and die with it if it is killed."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    if workers > 1 and port == 0:
        raise InputError("several workers share one port: give --port (0 would give each its own)")
    children = [_fork_worker(host, port, faults) for _ in range(workers - 1)]

    def stop(*_) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    srv = JudgeServer(host, port, faults, reuse_port=workers > 1)
    try:
        if on_ready is not None:
            on_ready(srv.base_url)
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        srv.server_close()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _fork_worker(host: str, port: int, faults: Faults) -> int:
    """A forked process serving ``port`` until SIGTERM; it also ends when its parent dies (Linux)."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the parent stops us
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        JudgeServer(host, port, faults, reuse_port=True).serve_forever()
    except BaseException:  # noqa: BLE001 - a forked child must never return into the parent's code
        code = 1
    os._exit(code)


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM handler still stops us
        pass
