"""Recaptioning images with multimodal LLMs (ShareGPT4V, DALL-E 3, ShareGPT-4o-Image).

``caption()`` writes the ``captions`` table through the client layer;
``captions_to_prompts()`` turns captions into prompts; ``export_captions_hf()``
writes an HF dataset of image + caption.
"""

from vprefer.caption.export import captions_to_prompts, export_captions_hf
from vprefer.caption.run import caption
from vprefer.caption.style import CaptionStyle

__all__ = ["CaptionStyle", "caption", "captions_to_prompts", "export_captions_hf"]


from vprefer.api import callable_module  # noqa: E402  (vprefer.caption(...) calls the job)

callable_module(__name__, caption)
