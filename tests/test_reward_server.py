"""Rewards as a list (VP-Score, a Python callable, a reward server) and `vprefer serve-reward`."""

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch
from typer.testing import CliRunner

from vprefer.cli import app
from vprefer.errors import InputError, ServiceError
from vprefer.recipes import RecipeError
from vprefer.reward.build import build
from vprefer.rl.grpo_math import combine_rewards
from vprefer.rl.reward_server import RewardServer, encode_png, quantized
from vprefer.rl.rewards import RemoteReward, load_rewards, reward_specs, reward_weights, score_rewards
from vprefer.testing.helpers import tiny_reward_recipe
from vprefer.testing.toy_rewards import RednessReward

PROMPTS = ["a red circle", "a blue square", "a green cat", "a dog", "a tree at night", "a boat"]
WEIGHTS = {"overall": 1.0, "aesthetics": 0.5}


@pytest.fixture(scope="module")
def vpscore(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vps")
    torch.manual_seed(0)
    model = build(tiny_reward_recipe(tmp / "r")).eval().requires_grad_(False)
    model.save_pretrained(tmp / "vpscore")
    from vprefer.reward import VPScore

    return tmp / "vpscore", VPScore.from_pretrained(tmp / "vpscore", device="cpu").requires_grad_(False)


def pixels(n=6, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed)).float() / 255


def local(model, px, weights=WEIGHTS):
    with torch.no_grad():
        r = model.score_pixels(PROMPTS[:len(px)], px, aspects=list(weights))
    w = torch.tensor(list(weights.values()))
    return r, (r * w).sum(1) / w.abs().sum()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_reward_scores_equal_local_score_pixels(vpscore):
    folder, model = vpscore
    proc = subprocess.Popen([sys.executable, "-m", "vprefer", "serve-reward", str(folder), "--port", "0",
                             "--batch-size", "4", "--aspects", "overall=1,aesthetics=0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving VP-Score" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" on ")[1].split()[0]
        px = pixels()
        per_aspect, combined = local(model, px)
        got = RemoteReward(url, batch_size=5).score(PROMPTS, px)  # 2 requests of 5 + 1; the server batches 4
        assert set(got) == {"overall", "aesthetics", "reward"}
        torch.testing.assert_close(got["overall"], per_aspect[:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["aesthetics"], per_aspect[:, 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["reward"], combined, rtol=1e-5, atol=1e-5)
        # the same server as one entry of a rewards list, next to the local VP-Score and a Python reward
        rewards = load_rewards([{"source": url, "name": "remote"},
                                {"source": str(folder), "aspects": WEIGHTS, "weight": 0.5},
                                "vprefer.testing.toy_rewards:RednessReward"])
        assert reward_weights(rewards) == {"remote": 1.0, "vpscore": 0.5, "RednessReward": 1.0}
        scores = score_rewards(rewards, PROMPTS, px)
        torch.testing.assert_close(scores["remote"], scores["vpscore"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scores["RednessReward"], RednessReward().score_pixels(PROMPTS, px)[:, 0])
        adv, per = combine_rewards(scores, reward_weights(rewards), [0, 0, 0, 1, 1, 1])
        assert adv.shape == (6,) and set(per) == set(scores)
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert json.loads(r.read())["weights"] == WEIGHTS
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_server_answers_a_malformed_request_with_a_400_json_error(vpscore):
    _, model = vpscore
    with RewardServer(model, host="127.0.0.1", port=0).start() as server:
        def post(body: bytes):
            req = urllib.request.Request(server.url + "/score", data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        png = encode_png(pixels(1)[0])
        for body, words in ((b"{not json", "not JSON"), (b'{"prompts": ["a"]}', "expected"),
                            (json.dumps({"prompts": ["a", "b"], "images": [png]}).encode(), "2 prompts for 1 images"),
                            (json.dumps({"prompts": ["a"], "images": ["@@@"]}).encode(), "images[0] is not"),
                            (json.dumps({"prompts": [3], "images": [png]}).encode(), "must be a string")):
            code, ans = post(body)
            assert code == 400 and words in ans["error"], (body[:40], ans)
        code, ans = post(json.dumps({"prompts": ["a"], "images": [png]}).encode())
        assert code == 200 and set(ans["scores"]) == {"overall", "reward"}  # default: overall alone
        with pytest.raises(ServiceError, match="refused the request .HTTP 400: 1 prompts for 2 images"):
            RemoteReward(server.url)._post(json.dumps({"prompts": ["a"], "images": [png, png]}).encode())
        # the PNG round trip is the only change to the pixels: rounding to k/255
        px = torch.rand(2, 3, 16, 16)
        torch.testing.assert_close(RemoteReward(server.url).score(PROMPTS[:2], px)["overall"],
                                   local(model, quantized(px), {"overall": 1.0})[0][:, 0], rtol=1e-5, atol=1e-5)


def test_an_unreachable_server_is_one_line_that_never_shows_the_token():
    url = f"http://alice:s3cretTOKEN42@127.0.0.1:{free_port()}/v1?token=hushhush99"
    with pytest.raises(ServiceError) as e:
        RemoteReward(url, retries=1, timeout=2).score(["a"], pixels(1))
    msg = str(e.value)
    assert "\n" not in msg and "unreachable after 2 tries" in msg and "127.0.0.1" in msg, msg
    assert "s3cretTOKEN42" not in msg and "hushhush99" not in msg and "alice" not in msg, msg
    with pytest.raises(InputError, match="http"):
        RemoteReward("ftp://127.0.0.1:1")


def test_a_rewards_list_is_checked_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(RecipeError, match=r"rewards.0.wieght: unknown key"):
        reward_specs([{"source": "x", "wieght": 2}])
    with pytest.raises(InputError, match="two rewards are named"):
        reward_specs(["http://127.0.0.1:1", "http://127.0.0.1:2"])
    kinds = [s.kind for s in reward_specs(["https://h:1", "pkg.mod:fn", {"source": str(tmp_path), "name": "v"}])]
    assert kinds == ["http", "python", "vpscore"]
    with pytest.raises(InputError, match="cannot import module"):
        load_rewards(["no_such_module_xyz:fn"])
    (tmp_path / "my_rewards.py").write_text(
        "import torch\n"
        "def brightness(prompts, pixels):\n    return pixels.mean(dim=(1, 2, 3))\n"
        "def two(prompts, pixels):\n    return {'a': [1.0] * len(prompts), 'b': [3.0] * len(prompts)}\n"
        "def short(prompts, pixels):\n    return [0.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    px = pixels(3)
    (r,) = load_rewards(["my_rewards:brightness"])
    torch.testing.assert_close(r(PROMPTS[:3], px), px.mean(dim=(1, 2, 3)))
    (r,) = load_rewards([{"source": "my_rewards:two", "aspects": {"a": 1.0, "b": 1.0}}])
    assert r(PROMPTS[:3], px).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(InputError, match="choose with `aspects:`"):
        load_rewards(["my_rewards:two"])[0](PROMPTS[:3], px)
    with pytest.raises(InputError, match="returned 1 scores for 3 images"):
        load_rewards(["my_rewards:short"])[0](PROMPTS[:3], px)


def test_serve_reward_mistakes_are_one_line(vpscore, tmp_path):
    folder, _ = vpscore
    for args, words in (([str(tmp_path)], "not a trained VP-Score folder"),
                        ([str(folder), "--aspects", "overall=x"], "weight 'x' of 'overall' is not a number"),
                        ([str(folder), "--aspects", "beauty=1"], "not among the reward's aspects"),
                        ([str(folder), "--batch-size", "0"], "--batch-size must be >= 1")):
        r = CliRunner().invoke(app, ["serve-reward", *args, "--port", "0"])
        assert r.exit_code == 1 and words in r.output and len(r.output.strip().splitlines()) == 1, (args, r.output)
