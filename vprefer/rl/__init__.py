"""Generator fine-tuning: ReFL and Diffusion-DPO against VP-Score, online GRPO against any list of rewards, with LoRA
on diffusers pipelines (SD 1.5/SDXL, SD 3.x, FLUX)."""

from vprefer.rl.dpo import DiffusionDPOConfig, DiffusionDPOTrainer
from vprefer.rl.grpo import GRPOConfig, GRPOTrainer
from vprefer.rl.grpo_math import grpo_loss
from vprefer.rl.losses import diffusion_dpo_loss, refl_loss
from vprefer.rl.refl import ReFLConfig, ReFLTrainer

__all__ = ["ReFLConfig", "ReFLTrainer", "DiffusionDPOConfig", "DiffusionDPOTrainer", "GRPOConfig", "GRPOTrainer",
           "refl_loss", "diffusion_dpo_loss", "grpo_loss"]
