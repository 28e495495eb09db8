"""Stand-ins for tests, the demo and CPU benchmarks: the embedded judge server and its pixel-statistics
scoring, the synthetic preference world, tiny models and pipelines built from configs, toy rewards.

Production code never imports this package (a test checks it); the ``demo`` and ``judge-server``
commands, and the CLI's building of tiny recipes' stand-ins (``stand_ins``), do.
"""
