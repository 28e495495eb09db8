"""The stand-in judge: an OpenAI-protocol server on 127.0.0.1 that reads images by their pixel statistics.

Shipped product, not a test helper: ``vprefer judge-server`` and the demo run it, and the tests use it as
the real server the ``openai`` client talks to (chat completions, stored completions, the Batch API, image
generations, fault injection). ``server`` is the HTTP server and its faults, ``serve`` the command that
starts it in a process of its own, ``scoring`` what it answers (scores read from pixels, documented
there), ``media`` the captions and images it makes. Production code never imports it (a test checks it).
"""
