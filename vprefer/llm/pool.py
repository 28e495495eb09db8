"""A pool of interchangeable servers (vLLM / SGLang replicas, several providers' endpoints) behind one client.

Routing is least-outstanding-requests: each request goes to the healthy server
with the fewest requests in flight (ties: the one that has served least), which
balances replicas of different speeds without knowing their speeds. A server
that fails (connection error, timeout, 5xx, 429) is taken out for a cooldown
that doubles with each consecutive failure (``backoff_base_s`` up to
``backoff_max_s``, or the server's ``Retry-After``) and gets requests again
after it; its first success puts it back for good. When every server is out,
the one that comes back first is tried (a pool never refuses to send).

Each server's connections are split over several HTTP clients (``SHARD``
connections' worth of concurrency each, used in turn): the HTTP library's
connection pool scans all its idle connections on every request, which at
concurrency 64 cost more client CPU than the request itself (profiled).

Servers are labelled by host:port only: a URL may carry a token in its user
info or query, and labels reach progress lines and reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import openai


def label_for(url: str | None, index: int) -> str:
    """``host:port`` of a URL, never its user info, path or query (where tokens hide)."""
    if not url:
        return f"server{index + 1}"
    p = urlparse(url)
    host = p.hostname or f"server{index + 1}"
    return f"{host}:{p.port}" if p.port else host


SHARD = 8  # concurrent requests per HTTP client of a server


@dataclass
class Server:
    label: str
    clients: list[openai.AsyncOpenAI]
    outstanding: int = 0
    ok: int = 0
    failed: int = 0
    fails_in_row: int = 0
    down_until: float = 0.0
    turn: int = 0

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The next of this server's HTTP clients, in turn."""
        self.turn = (self.turn + 1) % len(self.clients)
        return self.clients[self.turn]

    def stats(self, now: float) -> dict:
        return {"ok": self.ok, "failed": self.failed, "in_flight": self.outstanding, "down": self.down_until > now}


@dataclass
class Pool:
    servers: list[Server]
    cooldown_base_s: float = 1.0
    cooldown_max_s: float = 60.0
    stats: dict[str, dict] = field(default_factory=dict)  # label -> counts; shared with the Report

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for s in self.servers:  # two replicas on one host:port (unlikely) still get two labels
            seen[s.label] = seen.get(s.label, 0) + 1
            if seen[s.label] > 1:
                s.label = f"{s.label}#{seen[s.label]}"
        self._publish()

    def pick(self, now: float | None = None) -> Server:
        now = time.monotonic() if now is None else now
        up = [s for s in self.servers if s.down_until <= now]
        if not up:
            return min(self.servers, key=lambda s: s.down_until)
        return min(up, key=lambda s: (s.outstanding, s.ok + s.failed))

    def healthy_besides(self, server: Server, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return any(s is not server and s.down_until <= now for s in self.servers)

    def begin(self, server: Server) -> None:
        server.outstanding += 1
        self._publish()

    def succeeded(self, server: Server) -> None:
        server.outstanding -= 1
        server.ok += 1
        server.fails_in_row, server.down_until = 0, 0.0
        self._publish()

    def failed(self, server: Server, hint_s: float | None = None, *, transient: bool = True) -> None:
        """A request failed on ``server``; transient failures take it out for a cooldown."""
        server.outstanding -= 1
        server.failed += 1
        if transient:
            server.fails_in_row += 1
            cool = min(self.cooldown_max_s, self.cooldown_base_s * 2 ** (server.fails_in_row - 1))
            if hint_s is not None:
                cool = min(self.cooldown_max_s, max(cool, hint_s))
            server.down_until = time.monotonic() + cool
        self._publish()

    def _publish(self) -> None:
        now = time.monotonic()
        for s in self.servers:
            self.stats[s.label] = s.stats(now)

    def summary(self) -> str:
        """One line for progress displays: ``host:port ok/failed[ down]`` per server (only for a real pool)."""
        if len(self.servers) < 2:
            return ""
        now = time.monotonic()
        return " · ".join(f"{s.label} {s.ok}/{s.failed}{' down' if s.down_until > now else ''}"
                          for s in self.servers)

    async def close(self) -> None:
        for s in self.servers:
            for c in s.clients:
                await c.close()
