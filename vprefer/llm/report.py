"""One report for every LLM job, online or Batch API: what was planned, what happened, what it cost.

A single type so that progress displays, manifests and CLI tables read the
same fields whichever way the requests went out; fields a mode does not use
stay at zero. Like every result the API returns, it is a :class:`vprefer.store.Result`
(attributes, ``report["ok"]``, ``to_dict()``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vprefer.store import Result


@dataclass
class Outcome:
    """What one request came to. ``status`` is ``ok``, ``invalid`` (answered, failed validation), ``error``
    (a permanent error, recorded) or ``pending`` (transient retries ran out, or the run stopped: nothing is
    recorded and a rerun asks again; counting these as errors told users a failure was final)."""
    status: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class Report(Result):
    # planning (filled by the job before anything is sent)
    planned: int = 0
    already_done: int = 0
    todo: int = 0
    est_input_tokens: int = 0
    est_output_tokens: int = 0
    est_cost_usd: float = 0.0
    est_basis: str = ""
    dry_run: bool = False
    # this run
    ok: int = 0
    invalid: int = 0
    error: int = 0
    pending: int = 0  # ended without an answer or a recorded error: a rerun sends it again
    in_flight: int = 0
    retries: int = 0
    recovered: int = 0
    recovering: int = 0  # now waiting for the stored answer of a request the last process left in flight
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    stopped_for_budget: bool = False
    # Batch API
    submitted: int = 0
    collected: int = 0
    open_batches: int = 0
    # offline (``vllm run-batch``) chunk files: written by this call / written before, not folded yet
    chunk_files: list[str] = field(default_factory=list)
    waiting_files: list[str] = field(default_factory=list)
    folded: dict | None = None  # results folded in: line counts
    # a pool of servers: host:port -> {ok, failed, in_flight, down} (live; empty for one server)
    servers: dict[str, dict] = field(default_factory=dict)
    # the whole run directory, after this run
    spent_total_usd: float = 0.0
    started: float = field(default_factory=time.monotonic, repr=False)

    def servers_line(self) -> str:
        """Per-server counts for a progress line (``host:port ok/failed``, ``down`` while out); empty for one."""
        return " · ".join(f"{k} {v['ok']}/{v['failed']}{' down' if v['down'] else ''}"
                          for k, v in self.servers.items())

    @property
    def done(self) -> int:
        return self.ok + self.invalid + self.error + self.pending

    def count(self, outcome: Outcome) -> None:
        self.input_tokens += outcome.input_tokens
        self.output_tokens += outcome.output_tokens
        self.cost_usd += outcome.cost_usd
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
