"""The stand-in judge speaks the OpenAI protocol: checked with the real openai client."""

import base64
import io
import json
import time

import openai
import pytest

from vprefer.testing.helpers import png_bytes


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
