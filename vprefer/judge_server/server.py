"""An OpenAI-compatible stand-in judge server, for offline demos and tests.

It speaks the parts of the protocol vprefer uses — ``POST /v1/chat/completions``
(image inputs, ``response_format``, ``store``/``metadata``), ``GET
/v1/chat/completions?metadata[k]=v`` (stored completions), ``/v1/files``,
``/v1/batches`` and ``POST /v1/images/generations`` — and scores images by the
pixel statistics documented in :mod:`vprefer.judge_server.scoring`. It says so
in every rationale. Caption requests (images, no rubric) get captions and image
generations get deterministic drawings (:mod:`vprefer.judge_server.media`).

Fault injection (all seeded, all switchable at runtime through ``POST /_config``):
latency, 429 with ``Retry-After``, 500, malformed answers, stalls longer than the
client's timeout, position bias, judge noise, and failed lines in batch error files.
``GET /_stats`` reports how many times each request id was answered, which is
how tests prove that nothing is paid twice, and what the server billed (tokens,
images), which is how client-side cost accounting is checked. :func:`vprefer.judge_server.serve.serve`
runs it in several processes on one port, for throughput benchmarks.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from vprefer.images import BadImage, decode_data_url
from vprefer.schema import ASPECTS
from vprefer.judge_server.media import caption_text, generations, is_caption_request
from vprefer.judge_server.scoring import judge


@dataclass
class Faults:
    latency_s: float = 0.0
    rate_429: float = 0.0
    rate_500: float = 0.0
    retry_after_s: float = 0.05
    malformed_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 5.0
    position_bias: float = 0.0
    judge_noise: float = 0.0  # sd of the noise on each score (points of the 1-5 scale): a judge right often, not always
    batch_error_rate: float = 0.0
    batch_delay_s: float = 0.0
    seed: int = 0
    api_key: str = ""  # when set, requests must carry "Authorization: Bearer <api_key>" (else 401)
    capacity: int = 0  # a replica's batch slots: at most this many requests inside their latency (0: no limit)


class JudgeState:
    def __init__(self, faults: Faults):
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.answered: Counter[str] = Counter()
        self.requests = 0
        self.stored: list[dict] = []
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.billed: Counter[str] = Counter()  # what the server charged: input/output tokens, images
        self.slots = threading.Semaphore(faults.capacity) if faults.capacity else None  # fixed at start

    def bill(self, rid: str | None, usage: dict, images: int = 0) -> None:
        with self.lock:
            if rid:
                self.answered[rid] += 1
            self.billed["input_tokens"] += usage.get("prompt_tokens", usage.get("input_tokens", 0))
            self.billed["output_tokens"] += usage.get("completion_tokens", usage.get("output_tokens", 0))
            self.billed["images"] += images

    def roll(self, p: float) -> bool:
        with self.lock:
            return self.rng.random() < p


def _text_and_images(messages: list[dict]) -> tuple[str, list, str]:
    texts, images, system = [], [], ""
    for m in messages:
        c = m.get("content")
        if m.get("role") == "system":
            system += c if isinstance(c, str) else ""
            continue
        for part in ([{"type": "text", "text": c}] if isinstance(c, str) else c or []):
            if part.get("type") == "text":
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                images.append(decode_data_url(part["image_url"]["url"]))
    return "\n".join(texts), images, system


def _schema_aspects(body: dict) -> tuple[list[str], bool]:
    try:
        schema = body["response_format"]["json_schema"]["schema"]
        req = schema["properties"]["images"]["items"]["required"]
        return [a for a in req if a != "image"], "ranking" in schema["properties"]
    except (KeyError, TypeError):
        return list(ASPECTS), True


def completion(state: JudgeState, body: dict) -> dict:
    """Answer one chat-completions body (shared by the HTTP endpoint and the batch worker)."""
    import re

    text, images, system = _text_and_images(body.get("messages", []))
    m = re.search(r'Prompt:\s*"(.*)"', text, re.S)
    prompt = m.group(1) if m else text
    if is_caption_request(system, text, images):  # recaptioning: a caption from the image's pixels
        try:
            answer = caption_text(system, images[0])
        except (OSError, ValueError) as e:
            raise BadImage(f"undecodable image ({e})") from None
    elif images:
        aspects, ranking = _schema_aspects(body)
        sc = re.search(r"from (\d+) \(worst\) to (\d+)", system)
        lo, hi = (int(sc.group(1)), int(sc.group(2))) if sc else (1, 5)
        try:
            verdict = judge(prompt, images, aspects, lo, hi, state.faults.position_bias, ranking,
                            noise=state.faults.judge_noise, seed=state.faults.seed)
        except (OSError, ValueError) as e:  # images are decoded lazily: a corrupt one surfaces here
            raise BadImage(f"undecodable image ({e})") from None
        answer = json.dumps(verdict)
        if "response_format" not in body:
            answer = f"Here is my judgement.\n```json\n{answer}\n```"
    elif "tags" in system:  # text-only: prompt upsampling, about as long as the instruction asks (15-30 tags)
        answer = (f"{prompt.strip().rstrip('.')}, highly detailed, natural lighting, sharp focus, balanced "
                  "composition, rich colours, soft shadows, shallow depth of field, 35mm photo, golden hour, "
                  "clean background, centered subject, crisp edges, fine texture, vivid, award winning, 8k")
    else:  # a descriptive caption of 40-80 words
        answer = (f"{prompt.strip().rstrip('.')}, shown in fine detail: the subject sits at the centre of a "
                  "balanced composition, lit by soft natural light from the left that casts gentle shadows and "
                  "brings out texture. The colours are rich but natural, the background is clean and slightly "
                  "out of focus, and the whole scene is sharp, calm and carefully framed, like a professional "
                  "photograph taken with a 35mm lens at eye level.")
    if state.roll(state.faults.malformed_rate):
        answer = answer[: len(answer) // 2] + " ... sorry, I lost track"
    # billed like a real server: all message text (system included) and the structured-output schema at ~4
    # characters a token, plus 85 tokens per low-detail image
    schema_chars = len(str(body["response_format"]["json_schema"]["schema"])) if body.get("response_format") else 0
    n_in = (len(system) + len(text) + schema_chars) // 4 + 85 * len(images) if images else \
        sum(len(str(x)) for x in body.get("messages", [])) // 4
    n_out = len(answer) // 4
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "vprefer-judge"), "metadata": body.get("metadata") or None,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": answer, "refusal": None}}],
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: avoid the 40 ms delayed-ACK stall
    server: "JudgeServer"

    def log_message(self, *a) -> None:  # quiet
        pass

    def _send(self, code: int, obj: dict | bytes | None = None, headers: dict | None = None) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if not isinstance(obj, bytes) else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, msg: str, typ: str = "invalid_request_error", headers: dict | None = None):
        self._send(code, {"error": {"message": msg, "type": typ, "code": None, "param": None}}, headers)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # ---------------------------------------------------------------- routes
    def _authorized(self) -> bool:
        key = self.server.state.faults.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._error(401, "Incorrect API key provided.", "invalid_request_error")
            return False
        return True

    def do_GET(self) -> None:
        st, url = self.server.state, urlparse(self.path)
        if url.path.startswith("/v1/") and not self._authorized():
            return
        parts = url.path.rstrip("/").split("/")
        if url.path == "/_stats":
            with st.lock:
                return self._send(200, {"answered": dict(st.answered), "requests": st.requests, "pid": os.getpid(),
                                        "batches": len(st.batches), "billed": dict(st.billed)})
        if url.path == "/health":
            return self._send(200, {"ok": True})
        if url.path == "/v1/chat/completions":
            q = {k[len("metadata["):-1]: v[0] for k, v in parse_qs(url.query).items() if k.startswith("metadata[")}
            with st.lock:
                data = [c for c in st.stored if all((c.get("metadata") or {}).get(k) == v for k, v in q.items())]
            return self._send(200, {"object": "list", "data": data, "has_more": False,
                                    "first_id": data[0]["id"] if data else None,
                                    "last_id": data[-1]["id"] if data else None})
        if url.path == "/v1/batches":
            with st.lock:
                data = sorted(st.batches.values(), key=lambda b: b["created_at"], reverse=True)
            return self._send(200, {"object": "list", "data": data, "has_more": False,
                                    "first_id": data[0]["id"] if data else None,
                                    "last_id": data[-1]["id"] if data else None})
        if len(parts) == 4 and parts[2] == "batches":
            b = st.batches.get(parts[3])
            return self._send(200, b) if b else self._error(404, f"no batch {parts[3]}")
        if len(parts) >= 4 and parts[2] == "files":
            f = st.files.get(parts[3])
            if not f:
                return self._error(404, f"no file {parts[3]}")
            if len(parts) == 5 and parts[4] == "content":
                return self._send(200, f["content"])
            return self._send(200, {k: v for k, v in f.items() if k != "content"})
        return self._error(404, f"no route GET {url.path}")

    def do_POST(self) -> None:
        st, path = self.server.state, urlparse(self.path).path.rstrip("/")
        raw = self._body()
        if path.startswith("/v1/") and not self._authorized():
            return
        if path == "/_config":
            for k, v in json.loads(raw).items():
                setattr(st.faults, k, type(getattr(st.faults, k))(v))
            return self._send(200, asdict(st.faults))
        if path == "/v1/chat/completions":
            return self._chat(json.loads(raw))
        if path == "/v1/images/generations":
            return self._images(json.loads(raw))
        if path == "/v1/files":
            return self._upload(raw)
        if path == "/v1/batches":
            return self._create_batch(json.loads(raw))
        if path.startswith("/v1/batches/") and path.endswith("/cancel"):
            b = st.batches.get(path.split("/")[3])
            if not b:
                return self._error(404, "no such batch")
            b["status"] = "cancelled" if b["status"] not in ("completed", "failed") else b["status"]
            return self._send(200, b)
        return self._error(404, f"no route POST {path}")

    def _faulted(self) -> bool:
        """Latency, then maybe an injected 429/500 (sent here: True) or a stall."""
        st, f = self.server.state, self.server.state.faults
        with st.lock:
            st.requests += 1
        if f.latency_s:
            if st.slots is not None:  # a replica at capacity queues requests, as a serving engine's batch does
                with st.slots:
                    time.sleep(f.latency_s)
            else:
                time.sleep(f.latency_s)
        if st.roll(f.rate_429):
            self._error(429, "rate limited (injected)", "rate_limit_error", {"Retry-After": str(f.retry_after_s)})
            return True
        if st.roll(f.rate_500):
            self._error(500, "server error (injected)", "server_error")
            return True
        if st.roll(f.stall_rate):
            time.sleep(f.stall_s)
        return False

    def _chat(self, body: dict) -> None:
        st = self.server.state
        if self._faulted():
            return
        try:
            resp = completion(st, body)
        except BadImage as e:
            return self._error(400, str(e))
        rid = self.headers.get("X-Vprefer-Request-Id") or (body.get("metadata") or {}).get("vprefer_request_id")
        st.bill(rid, resp["usage"])
        if body.get("store"):
            with st.lock:
                st.stored.append(resp)
        self._send(200, resp)

    def _images(self, body: dict) -> None:
        if self._faulted():
            return
        try:
            resp = generations(body)
        except (ValueError, TypeError) as e:
            return self._error(400, str(e))
        self.server.state.bill(self.headers.get("X-Vprefer-Request-Id"), resp["usage"], len(resp["data"]))
        self._send(200, resp)

    def _upload(self, raw: bytes) -> None:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
        fields = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
        if "file" not in fields or "purpose" not in fields:
            return self._error(400, "multipart upload needs 'file' and 'purpose'")
        content = fields["file"].get_payload(decode=True)
        fid = self.server.state_add_file(content, fields["purpose"].get_payload(decode=True).decode(),
                                         fields["file"].get_filename() or "upload.jsonl")
        self._send(200, {k: v for k, v in self.server.state.files[fid].items() if k != "content"})

    def _create_batch(self, body: dict) -> None:
        st = self.server.state
        if body.get("input_file_id") not in st.files:
            return self._error(400, f"no file {body.get('input_file_id')}")
        bid = f"batch_{uuid.uuid4().hex[:20]}"
        now = int(time.time())
        b = {"id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
             "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
             "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
             "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
             "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
             "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata")}
        with st.lock:
            st.batches[bid] = b
        threading.Thread(target=self.server.process_batch, args=(bid,), daemon=True).start()
        self._send(200, b)


class JudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None, *,
                 reuse_port: bool = False):
        self.allow_reuse_port = reuse_port  # read when the socket is bound, inside super().__init__
        super().__init__((host, port), Handler)
        self.state = JudgeState(faults or Faults())

    @property
    def base_url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-answer (a cancelled run, a benchmark's timeout) is not an error of
        the server: no traceback for it. Anything else is still printed."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)

    def state_add_file(self, content: bytes, purpose: str, filename: str) -> str:
        fid = f"file-{uuid.uuid4().hex[:20]}"
        with self.state.lock:
            self.state.files[fid] = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                     "filename": filename, "purpose": purpose, "status": "processed",
                                     "content": content}
        return fid

    def process_batch(self, bid: str) -> None:
        st = self.state
        b = st.batches[bid]
        lines = [json.loads(x) for x in st.files[b["input_file_id"]]["content"].splitlines() if x.strip()]
        b.update(status="in_progress", in_progress_at=int(time.time()))
        b["request_counts"]["total"] = len(lines)
        if st.faults.batch_delay_s:
            time.sleep(st.faults.batch_delay_s)
        out, err = [], []
        for line in lines:
            if b["status"] == "cancelled":
                break
            cid = line["custom_id"]
            if st.roll(st.faults.batch_error_rate):
                err.append({"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": cid, "response": None,
                            "error": {"code": "server_error", "message": "injected batch line failure"}})
                b["request_counts"]["failed"] += 1
                continue
            try:
                body = completion(st, line["body"])
                resp = {"status_code": 200, "request_id": uuid.uuid4().hex, "body": body}
            except BadImage as e:
                resp = {"status_code": 400, "request_id": uuid.uuid4().hex,
                        "body": {"error": {"message": str(e), "type": "invalid_request_error"}}}
            st.bill(cid, (resp["body"].get("usage") or {}) if resp["status_code"] == 200 else {})
            out.append({"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": cid, "response": resp,
                        "error": None})
            b["request_counts"]["completed"] += 1
        b.update(status="finalizing", finalizing_at=int(time.time()))
        with st.lock:
            st.rng.shuffle(out)  # output order is not guaranteed: clients must join on custom_id
        enc = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
        if out:
            b["output_file_id"] = self.state_add_file(enc(out), "batch_output", f"{bid}_output.jsonl")
        if err:
            b["error_file_id"] = self.state_add_file(enc(err), "batch_output", f"{bid}_error.jsonl")
        if b["status"] != "cancelled":
            b.update(status="completed", completed_at=int(time.time()))

    def start(self) -> "JudgeServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
