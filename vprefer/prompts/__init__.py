"""Prompt sourcing and LLM upsampling, upstream of generation and annotation."""

from vprefer.prompts.sample import sample_prompts
from vprefer.prompts.sources import read_prompts, read_source
from vprefer.prompts.upsample import upsample

__all__ = ["read_prompts", "read_source", "sample_prompts", "upsample"]
