"""Diffusion-DPO step time and peak memory: LoRA vs full, with and without gradient checkpointing.

    python benchmarks/dpo_step.py [--arch tiny|tiny-sdxl|tiny-sd3|sd15|sdxl|sd35m|sd35m-cpu] [--steps 5]
    python benchmarks/dpo_step.py --learning      # toy pairs: implicit accuracy before/after a short run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if __name__ == "__main__":
    if "--learning" in sys.argv:
        import tempfile

        from PIL import Image

        from vprefer.rl import DiffusionDPOConfig, DiffusionDPOTrainer
        from vprefer.testing.tiny_pipelines import make_tiny_sd

        with tempfile.TemporaryDirectory() as tmp:
            make_tiny_sd(f"{tmp}/sd")
            pairs = []
            for k in range(16):
                Image.new("RGB", (32, 32), (200 + k * 3, 10 * (k % 5), 20)).save(f"{tmp}/w{k}.png")
                Image.new("RGB", (32, 32), (20, 10 * (k % 5), 200 + k * 3)).save(f"{tmp}/l{k}.png")
                pairs.append({"prompt": "a square", "win": f"{tmp}/w{k}.png", "lose": f"{tmp}/l{k}.png", "margin": 1.0})
            held = []  # other reds and blues, labelled by redness alone: a truth the trainer never saw
            for k in range(24):
                Image.new("RGB", (32, 32), (180 + k * 3, 40 + k, 60 - k)).save(f"{tmp}/hw{k}.png")
                Image.new("RGB", (32, 32), (50 - k, 30 + k, 170 + k * 3)).save(f"{tmp}/hl{k}.png")
                held.append({"prompt": "a square", "win": f"{tmp}/hw{k}.png", "lose": f"{tmp}/hl{k}.png", "margin": 1.0})
            cfg = DiffusionDPOConfig(output_dir=f"{tmp}/o", pretrained=f"{tmp}/sd", resolution=32, max_steps=60,
                                     learning_rate=2e-3, per_device_train_batch_size=4, beta=500.0, eval_prompts=[],
                                     logging_steps=1, save_steps=0, report_to=[])
            tr = DiffusionDPOTrainer(cfg, pairs=pairs)
            held_before = tr.implicit_accuracy(held)
            h = [x for x in tr.train() if "dpo/implicit_acc" in x]
            held_after = tr.implicit_accuracy(held)
        first, last = h[:10], h[-10:]
        acc = lambda xs: sum(x["dpo/implicit_acc"] for x in xs) / len(xs)  # noqa: E731
        print(f"Diffusion-DPO, toy red-over-blue pairs: implicit accuracy first 10 steps {acc(first):.2f} -> "
              f"last 10 steps {acc(last):.2f}; loss {h[0]['loss/dpo']:.4f} -> {h[-1]['loss/dpo']:.4f}; "
              f"held-out pairs (truth = redness): {held_before:.2f} -> {held_after:.2f}")
    else:
        from rl_steps import main

        main("dpo", __file__)
