"""``vprefer demo``: the whole loop, offline, on CPU, on the stand-in world (:mod:`vprefer.demo.run`), and its
report page, where every number comes with the sentence that says what it means (:mod:`vprefer.demo.page`)."""

from vprefer.demo.run import run_demo

__all__ = ["run_demo"]
