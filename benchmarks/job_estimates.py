"""What the budget rule's per-request estimate costs on a long journal (issue 29): before the one engine,
captions and upsampling calibrated each estimate on ``Ledger.answers()``, which re-reads the whole journal;
the engine asks ``Ledger.paid()``, kept as lines land. One run, one journal, both calls timed.

    python benchmarks/job_estimates.py [--lines 20000]

Prints seconds per call of each and their ratio, and what one estimate per item costs for a job of that
many items (the budget rule estimates every request before it is sent).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vprefer.llm import Ledger
from vprefer.store import Run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=20_000, help="answers in the journal")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp) / "run", create=True)
        led = Ledger(run, "judge-short", kind="caption")
        with led:
            led.write_many([{"event": "done", "status": "ok", "request_id": f"r{i:06d}", "caption": "a red circle " * 8,
                             "input_tokens": 900, "output_tokens": 40, "cost_usd": 0.0027} for i in range(args.lines)])
        led = Ledger(run, "judge-short", kind="caption")
        t = time.perf_counter()
        reps = 5
        for _ in range(reps):
            old = [r["cost_usd"] for r in led.answers() if r.get("status") == "ok" and r.get("cost_usd")]
        t_old = (time.perf_counter() - t) / reps
        t = time.perf_counter()
        reps_new = 100_000
        for _ in range(reps_new):
            new = led.paid()
        t_new = (time.perf_counter() - t) / reps_new
        assert len(old) == new.n and abs(sum(old) / len(old) - new.total / new.n) < 1e-12
    print(f"journal of {args.lines:,} answers")
    print(f"  Ledger.answers() (the old per-request calibration): {t_old * 1e3:.1f} ms a call "
          f"-> {t_old * args.lines / 60:.1f} CPU-minutes for one estimate per item")
    print(f"  Ledger.paid() (the engine's):                       {t_new * 1e6:.2f} us a call "
          f"-> {t_new * args.lines:.3f} s for one estimate per item")
    print(f"  ratio old / new: {t_old / t_new:,.0f}x")


if __name__ == "__main__":
    main()
