"""The stand-in judge speaks the OpenAI protocol: checked with the real openai client."""

import base64
import io
import json
import time

import openai
import pytest

from vprefer.testing.helpers import free_port, png_bytes


def client(judge):
    return openai.OpenAI(api_key="k", base_url=judge.base_url, max_retries=0)


def image_msg(data: bytes, prompt="a red square"):
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return [{"role": "user", "content": [{"type": "text", "text": f'Prompt: "{prompt}"'},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_corrupt_image_is_a_400(judge):
    with pytest.raises(openai.BadRequestError, match="undecodable"):
        client(judge).chat.completions.create(model="m", messages=image_msg(png_bytes()[:50]))


def test_red_beats_blue_on_a_red_prompt_and_store_lists_by_metadata(judge):
    c = client(judge)
    def pf(colour):
        r = c.chat.completions.create(model="m", messages=image_msg(png_bytes(colour, (64, 64))),
                                      store=True, metadata={"vprefer_request_id": str(colour)})
        ans = json.loads(r.choices[0].message.content.split("```json")[1].split("```")[0])
        return ans["images"][0]["prompt_following"]["score"]
    assert pf((220, 30, 30)) > pf((30, 60, 220))
    page = c.chat.completions.list(metadata={"vprefer_request_id": str((220, 30, 30))})
    assert len(page.data) == 1


def test_files_and_batches_round_trip(judge):
    c = client(judge)
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "a cat"}]}}
    f = c.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                         metadata={"k": "v"})
    for _ in range(100):
        b = c.batches.retrieve(b.id)
        if b.status == "completed":
            break
        time.sleep(0.02)
    assert b.status == "completed" and b.request_counts.completed == 1
    out = [json.loads(x) for x in c.files.content(b.output_file_id).read().splitlines()]
    assert out[0]["custom_id"] == "r1" and "in fine detail" in out[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert [x.id for x in c.batches.list()] == [b.id]

def _stats_pid(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=5) as r:  # a fresh connection each
        return json.loads(r.read())["pid"]


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not hasattr(__import__("socket"), "SO_REUSEPORT"), reason="SO_REUSEPORT is Linux/BSD")
def test_several_workers_answer_on_one_port_and_stop_with_the_server():
    """Throughput benchmarks run the judge in several processes (one tops out near 120 requests/s): both
    must answer on the one port, and stopping the server must stop every worker (none left behind)."""
    import signal
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "vprefer", "judge-server", "--port", str(port), "--workers", "2"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            try:
                pids.add(_stats_pid(port))
            except OSError:
                time.sleep(0.1)
        assert len(pids) == 2 and srv.pid in pids  # the kernel spread fresh connections over both processes
        served: dict[int, int] = {}
        while len(served) < 2 and time.monotonic() < deadline:  # each worker answers the real protocol
            with openai.OpenAI(api_key="k", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0) as c:
                r = c.chat.completions.create(model="m", messages=image_msg(png_bytes()))  # a fresh connection
            assert r.choices[0].message.content
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=5) as s:
                st = json.loads(s.read())
            if st["requests"]:
                served[st["pid"]] = st["requests"]
        assert set(served) == pids
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=30)
    worker = (pids - {srv.pid}).pop()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "a judge worker outlived the server"


def test_several_workers_need_a_port():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "vprefer", "judge-server", "--port", "0", "--workers", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "give --port" in (p.stdout + p.stderr)
