"""Stand-ins for tests, the demo and CPU benchmarks: the synthetic preference world, tiny models and
pipelines built from configs, toy rewards, a stand-in ``vllm run-batch``, test helpers. (The judge server
the demo and ``vprefer judge-server`` run is shipped product: :mod:`vprefer.judge_server`.)

Production code never imports this package (a test checks it); the ``demo`` command and the CLI's
building of tiny recipes' stand-ins (``stand_ins``) do.
"""
