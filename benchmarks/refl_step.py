"""ReFL step time and peak memory: LoRA vs full, with and without gradient checkpointing.

    python benchmarks/refl_step.py [--arch tiny|tiny-sdxl|tiny-sd3|sd15|sdxl|sd35m|sd35m-cpu] [--steps 5]
    python benchmarks/refl_step.py --learning     # toy reward: held-out reward before/after a short run

``--arch sd15`` / ``sdxl`` / ``sd35m`` build the SD 1.5 / SDXL base / SD 3.5 Medium architecture from configs
(random weights; for a GPU); ``sd35m-cpu`` is SD 3.5 Medium with fewer layers (benchmarks/flow_memory.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if __name__ == "__main__":
    if "--learning" in sys.argv:
        import tempfile

        from vprefer.rl import ReFLConfig, ReFLTrainer
        from vprefer.testing.tiny_pipelines import make_tiny_sd
        from vprefer.testing.toy_rewards import RednessReward

        with tempfile.TemporaryDirectory() as tmp:
            make_tiny_sd(f"{tmp}/sd")
            cfg = ReFLConfig(output_dir=f"{tmp}/o", pretrained=f"{tmp}/sd", resolution=32, max_steps=60,
                             learning_rate=3e-3, per_device_train_batch_size=2, num_steps=10, t_lo=6, t_hi=9,
                             lam=1.0, grad_scale=1.0, train_guidance_scale=1.0, guidance_scale=1.0,
                             eval_prompts=["a red cube", "a blue ball", "a cat", "a tree", "a boat", "a lamp"],
                             eval_every=0, eval_steps_sampling=10, logging_steps=10, save_steps=0, report_to=[],
                             reward_aspects={"redness": 1.0})
            h = ReFLTrainer(cfg, prompts=["a car", "a dog", "a house"], reward=RednessReward()).train()
        b = next(x for x in h if x.get("phase") == "before")["eval/reward/redness"]
        a = next(x for x in h if x.get("phase") == "after")["eval/reward/redness"]
        print(f"ReFL, toy redness reward, 6 held-out prompts: before {b:+.4f} -> after {a:+.4f} (delta {a - b:+.4f})")
    else:
        from rl_steps import main

        main("refl", __file__)
