"""A stand-in for ``vllm run-batch -i IN -o OUT`` (tests, demos): the stand-in judge's scoring, no model.

Reads OpenAI Batch API lines (``custom_id``, ``method``, ``url``, ``body``) and
writes vLLM's output lines, ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``, in shuffled order (as vLLM does not promise
order either). Lines can be made to fail (``status_code`` 500 and an
``error``) or to be missing from the output, which is what the offline fold
must survive.

    python -m vprefer.testing.vllm_batch -i chunk.jsonl -o out.jsonl [--fail-rate 0.1] [--drop-rate 0.1]
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from pathlib import Path

from vprefer.images import BadImage
from vprefer.judge_server.server import Faults, JudgeState, completion


def run_batch(in_path: Path, out_path: Path, *, fail_rate: float = 0.0, drop_rate: float = 0.0, seed: int = 0,
              fail_ids: frozenset[str] = frozenset(), drop_ids: frozenset[str] = frozenset()) -> dict:
    """Answer every line of ``in_path`` into ``out_path``; returns how many were answered, failed, dropped."""
    rng, state = random.Random(seed), JudgeState(Faults(seed=seed))
    out, n = [], {"answered": 0, "failed": 0, "dropped": 0}
    for raw in Path(in_path).read_bytes().splitlines():
        if not raw.strip():
            continue
        line = json.loads(raw)
        cid = line["custom_id"]
        if cid in drop_ids or rng.random() < drop_rate:
            n["dropped"] += 1
            continue
        rid = f"vllm-batch-{uuid.uuid4().hex[:16]}"
        if cid in fail_ids or rng.random() < fail_rate:
            out.append({"id": rid, "custom_id": cid, "response": {"status_code": 500, "request_id": rid, "body": None},
                        "error": "stand-in vllm run-batch: injected failure"})
            n["failed"] += 1
            continue
        try:
            body, code, err = completion(state, line["body"]), 200, None
        except BadImage as e:
            body, code, err = None, 400, str(e)
        out.append({"id": rid, "custom_id": cid, "response": {"status_code": code, "request_id": rid, "body": body},
                    "error": err})
        n["answered" if code == 200 else "failed"] += 1
    rng.shuffle(out)
    Path(out_path).write_text("".join(json.dumps(r) + "\n" for r in out))
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-i", "--input-file", required=True, type=Path)
    ap.add_argument("-o", "--output-file", required=True, type=Path)
    ap.add_argument("--fail-rate", type=float, default=0.0)
    ap.add_argument("--drop-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(run_batch(a.input_file, a.output_file, fail_rate=a.fail_rate, drop_rate=a.drop_rate, seed=a.seed))


if __name__ == "__main__":
    main()
