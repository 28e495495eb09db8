"""Jobs whose module and function share a name (``vprefer.annotate``, ``vprefer.ingest``, ...) callable either way.

``import vprefer; vprefer.annotate(run, preset)`` must work whichever was imported first: importing the
submodule ``vprefer.annotate`` binds the *module* to that name on the package (Python does so, and a
package cannot stop it), so the module itself is made callable: calling it calls the job.
``vprefer.annotate.annotate`` and every ``from vprefer.annotate import ...`` are unchanged.
"""

from __future__ import annotations

import sys
import types
from typing import Callable


def callable_module(name: str, job: Callable) -> None:
    """Make the module ``name`` call ``job`` when called."""

    class JobModule(types.ModuleType):
        __doc__ = job.__doc__

        def __call__(self, *args, **kwargs):
            return job(*args, **kwargs)

    sys.modules[name].__class__ = JobModule
