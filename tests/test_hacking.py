"""Reward hacking, watched (issue 31): the training reward vs a held-out reward on the eval prompts, the
warning when they part, and the recipe's stop.

Wrong versions made by hand once: the rule firing on one noisy evaluation (patience ignored), on both
rewards falling (train gain not required), on a held-out reward merely flat at its best (strict "below");
stop_on_hacking ignored (the run goes on to max_steps); the held-out reward scored on other images than the
training one."""

import json

import pytest
import torch

from vprefer.recipes import RecipeError
from vprefer.rl import GRPOConfig, GRPOTrainer
from vprefer.rl.common import config_from_yaml
from vprefer.rl.hacking import HackingMonitor, divergence


def test_divergence_needs_the_held_out_reward_below_its_best_for_patience_evaluations_while_training_rises():
    rising = [0.0, 0.1, 0.2, 0.3, 0.4]
    assert divergence(list(zip(range(5), rising, [0.0, 0.1, 0.05, 0.02, 0.01])), 2) is not None
    assert "since step 1" in divergence(list(zip(range(4), rising, [0.0, 0.1, 0.05, 0.02])), 2)
    assert divergence(list(zip(range(3), rising, [0.0, 0.1, 0.05])), 2) is None  # one evaluation below: noise
    assert divergence(list(zip(range(4), rising, [0.0, 0.1, 0.05, 0.02])), 3) is None
    assert divergence(list(zip(range(4), rising, [0.0, 0.1, 0.12, 0.15])), 2) is None  # both rise: learning
    assert divergence(list(zip(range(4), [0.0, 0.1, 0.05, 0.0], [0.0, 0.1, 0.05, 0.02])), 2) is None  # both fall
    assert divergence(list(zip(range(4), rising, [0.0, 0.1, 0.1, 0.1])), 2) is None  # flat at its best
    assert divergence(list(zip(range(4), rising, [0.0, 0.1, 0.05, 0.02])), 0) is None  # 0 = never
    wobble = [0.5, 0.5003, 0.4999, 0.5001]  # a level held-out reward's noise is not a fall
    assert divergence(list(zip(range(4), rising, wobble)), 2) is not None
    assert divergence(list(zip(range(4), rising, wobble)), 2, min_delta=0.01) is None
    assert divergence(list(zip(range(4), rising, [0.5, 0.6, 0.55, 0.54])), 2, min_delta=0.01) is not None
    # of tied bests the latest counts: the training reward has not risen since the held-out one last stood there
    assert divergence([(0, 0.0, 0.1), (1, 0.3, 0.1), (2, 0.3, 0.05), (3, 0.3, 0.02)], 2) is None


def test_the_monitor_warns_once_and_a_resumed_run_replays_the_whole_history(caplog, tmp_path):
    m = HackingMonitor(patience=2)
    train, held = [0.0, 0.1, 0.2, 0.3, 0.4], [0.0, 0.1, 0.05, 0.02, 0.01]
    with caplog.at_level("WARNING", logger="vprefer.rl.hacking"):
        out = [m.observe(s, {"eval/train_reward": t, "eval/holdout_reward": h}) for s, t, h in zip(range(5), train, held)]
    assert [o["hacking/diverged"] for o in out] == [0, 0, 0, 1, 1]
    assert out[-1]["hacking/train_gain"] == pytest.approx(0.4) and out[-1]["hacking/holdout_gain"] == pytest.approx(0.01)
    assert len([r for r in caplog.records if "reward hacking" in r.message]) == 1
    assert m.observe(5, {"eval/train_reward": 1.0}) == {}  # no held-out reward: nothing to watch
    rows = [{"step": s, "eval/train_reward": t, "eval/holdout_reward": h} for s, t, h in zip(range(5), train, held)]
    log = tmp_path / "metrics.jsonl"  # an earlier run in the same folder first: not this run's history
    log.write_text("".join(json.dumps(r) + "\n" for r in [{"phase": "before", "step": 0, "eval/train_reward": 9.0,
                                                           "eval/holdout_reward": 9.0}, {"phase": "before", **rows[0]},
                                                          *rows[1:]]))
    r = HackingMonitor(patience=2)
    r.replay(log, upto=3)
    assert [p[0] for p in r.points] == [0, 1, 2, 3] and r.signal is not None
    # resumed twice: the evaluation at step 2 was logged by the killed run and again by the resumed one
    log.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], rows[1], {**rows[2], "eval/holdout_reward": 0.3},
                                                          rows[2]]))
    r = HackingMonitor(patience=2)
    r.replay(log, upto=4)
    assert [p[0] for p in r.points] == [0, 1, 2] and r.points[2][2] == 0.05 and r.signal is None
    nan = HackingMonitor(patience=1)
    assert nan.observe(0, {"eval/train_reward": 0.0, "eval/holdout_reward": float("nan")}) == {} and not nan.points


def _cfg(tmp_path, pipe, **kw):
    base = dict(output_dir=str(tmp_path / "grpo"), pretrained=str(pipe), create_tiny_if_missing=False,
                report_to=[], eval_prompts=["a red car", "a blue house"], eval_every=1, max_steps=6,
                group_size=2, groups_per_step=1, num_steps=3, inner_epochs=1, logging_steps=1,
                rewards=["vprefer.testing.toy_rewards:redness"])
    return config_from_yaml(GRPOConfig, "grpo-tiny", **{**base, **kw})


HELD = "vprefer.testing.toy_rewards:not_redness"  # scored only by the real evaluate (not the scripted one)


class Scripted(GRPOTrainer):
    """The real loop (updates, saving) with evaluations scripted: training reward up, held-out up then down."""
    TRAIN = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    HELD = [0.0, 0.1, 0.05, 0.02, 0.01, 0.0, -0.1]

    def evaluate(self, tag=None):
        return {"eval/train_reward": self.TRAIN[self.step_no], "eval/holdout_reward": self.HELD[self.step_no]}


@pytest.mark.parametrize("stop,patience,ends", [(True, 2, 3), (True, 3, 4), (False, 2, 6)])
def test_stop_on_hacking_ends_the_run_at_the_warning_and_saves_why(tiny_sd, tmp_path, stop, patience, ends):
    tr = Scripted(_cfg(tmp_path, tiny_sd, stop_on_hacking=stop, hacking_patience=patience), prompts=["a car"],
                  holdout_reward=HELD)
    hist = tr.train()
    rl = json.loads((tmp_path / "grpo" / "vprefer_rl.json").read_text())
    assert rl["steps"] == ends and any((tmp_path / "grpo").glob("*.safetensors"))
    stopped = [h for h in hist if h.get("phase") == "stopped"]
    if stop:
        assert len(stopped) == 1 and f"stopped at step {ends} of 6" in stopped[0]["reason"]
        assert "since step 1" in rl["stopped"]
    else:
        assert not stopped and "stopped" not in rl
        assert next(h for h in hist if h.get("phase") == "after")["hacking/diverged"] == 1.0


def test_both_rewards_score_the_same_eval_images_and_a_judge_server_can_be_the_held_out_one(tiny_sd, tmp_path):
    """The held-out reward given as ``module:function`` or as a reward server's URL: the same function as the
    training reward gives the same number on the same eval images (over HTTP: to 8-bit PNG rounding); its
    negation gives minus that."""
    from vprefer.rl.reward_server import RewardServer
    from vprefer.testing.toy_rewards import RednessReward

    with RewardServer(RednessReward(), {"redness": 1.0}).start() as srv:
        for holdout, sign, tol in (("vprefer.testing.toy_rewards:redness", 1, 1e-6),
                                   ("vprefer.testing.toy_rewards:not_redness", -1, 1e-6), (srv.url, 1, 3e-3)):
            tr = GRPOTrainer(_cfg(tmp_path, tiny_sd, max_steps=1), prompts=["a car"], holdout_reward=holdout)
            m = tr.evaluate()
            assert m["eval/train_reward"] == pytest.approx(m["eval/train/redness"])
            assert m["eval/holdout_reward"] == pytest.approx(sign * m["eval/train_reward"], abs=tol)
            assert abs(m["eval/train_reward"]) > 0.01


def test_a_reward_that_only_scores_trains_grpo_and_is_refused_by_refl(tiny_sd, tmp_path):
    from vprefer.errors import InputError
    from vprefer.rl import ReFLConfig, ReFLTrainer

    tr = GRPOTrainer(_cfg(tmp_path, tiny_sd, max_steps=1, rewards=[]), prompts=["a car"],
                     reward="vprefer.testing.toy_rewards:redness")
    assert [r.name for r in tr.rewards] == ["redness"] and tr.update()["reward/redness"] != 0
    cfg = config_from_yaml(ReFLConfig, "refl-tiny", output_dir=str(tmp_path / "refl"), pretrained=str(tmp_path / "none"))
    with pytest.raises(InputError, match="differentiable"):
        ReFLTrainer(cfg, prompts=["a car"], reward="http://127.0.0.1:9/")


def test_stop_on_hacking_without_a_held_out_reward_is_refused_before_training(tiny_sd, tmp_path):
    tr = GRPOTrainer(_cfg(tmp_path, tiny_sd, stop_on_hacking=True), prompts=["a car"])
    with pytest.raises(RecipeError, match="held-out reward"):
        tr.train()
    assert not (tmp_path / "grpo" / "metrics.jsonl").exists()


def test_stop_on_hacking_without_evaluations_is_refused_before_a_load(tmp_path):
    for kw in ({"eval_every": 0}, {"eval_prompts": []}, {"hacking_patience": 0}):
        with pytest.raises(RecipeError, match="stop_on_hacking needs"):
            _cfg(tmp_path, tmp_path / "none", stop_on_hacking=True, **kw)
    with pytest.raises(RecipeError, match="hacking_patience"):
        _cfg(tmp_path, tmp_path / "none", hacking_patience=-1)


@pytest.mark.slow
def test_a_run_that_learns_what_the_held_out_reward_penalises_is_stopped(tiny_sd, tmp_path):
    """Real learning, no script: GRPO raises redness while the held-out reward is its negation, so the
    held-out reward falls as the training one rises, and stop_on_hacking ends the run before max_steps."""
    cfg = _cfg(tmp_path, tiny_sd, max_steps=24, learning_rate=1e-2, inner_epochs=4, timestep_fraction=1.0,
               group_size=4, groups_per_step=2, num_steps=6, eval_every=2, stop_on_hacking=True)
    hist = GRPOTrainer(cfg, prompts=["a car", "a dog", "a house"],
                       holdout_reward="vprefer.testing.toy_rewards:not_redness").train()
    stopped = [h for h in hist if h.get("phase") == "stopped"]
    assert stopped, [(h.get("step"), h.get("eval/train_reward"), h.get("eval/holdout_reward")) for h in hist]
    assert stopped[0]["step"] < 24
    evals = [h for h in hist if "eval/train_reward" in h]
    assert evals[-1]["eval/train_reward"] > evals[0]["eval/train_reward"]


def test_a_resumed_run_stops_where_the_whole_run_would_have(tiny_sd, tmp_path):
    """Killed after step 2 (checkpoint), resumed: the evaluations before the kill count, so it stops at step 3
    as an uninterrupted run does (from scratch the watch would see the fall only at step 5)."""
    Scripted(_cfg(tmp_path, tiny_sd, max_steps=2, save_steps=2), prompts=["a car"]).train()
    hist = Scripted(_cfg(tmp_path, tiny_sd, stop_on_hacking=True), prompts=["a car"], holdout_reward=HELD).train(resume=True)
    assert [h["step"] for h in hist if h.get("phase") == "stopped"] == [3]


def test_refl_watches_its_own_reward_weighted_as_it_trains_on_it(tiny_sd, tmp_path):
    """The base loops' eval/train_reward is self.reward weighted by reward_aspects (ReFL's objective), the
    held-out one its own number; both from one scoring of the same eval images."""
    from vprefer.rl import ReFLConfig, ReFLTrainer
    from vprefer.testing.toy_rewards import RednessReward

    cfg = config_from_yaml(ReFLConfig, "refl-tiny", output_dir=str(tmp_path / "refl"), pretrained=str(tiny_sd),
                           create_tiny_if_missing=False, report_to=[], reward_aspects={"redness": 2.0},
                           eval_prompts=["a red car", "a blue house"])
    tr = ReFLTrainer(cfg, prompts=["a car"], reward=RednessReward(), holdout_reward="vprefer.testing.toy_rewards:not_redness")
    m = tr.evaluate()
    assert m["eval/train_reward"] == pytest.approx(m["eval/reward/redness"]) and abs(m["eval/train_reward"]) > 0.01
    assert m["eval/holdout_reward"] == pytest.approx(-m["eval/train_reward"], abs=1e-6)
