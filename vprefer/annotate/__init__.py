"""MLLM judges over the OpenAI protocol: plan, send (online or Batch API), journal, aggregate.

Public API::

    from vprefer.annotate import AnnotatorPreset, annotate, make_pairs
    res = annotate("runs/a", AnnotatorPreset.load("gpt-4o"), max_cost=20.0)
    make_pairs("runs/a")           # rankings + pairs, written; build_pairs computes them without writing
"""

from vprefer.annotate.pairs import PairsResult, build_pairs, make_pairs, position_bias, save_pairs
from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.rubric import Rubric
from vprefer.annotate.runner import AnnotateResult, annotate
from vprefer.annotate.status import BatchStatus, batch_status

__all__ = ["AnnotatorPreset", "AnnotateResult", "BatchStatus", "PairsResult", "Rubric", "annotate", "batch_status",
           "build_pairs", "make_pairs", "position_bias", "save_pairs"]


from vprefer.api import callable_module  # noqa: E402  (vprefer.annotate(...) calls the job)

callable_module(__name__, annotate)
