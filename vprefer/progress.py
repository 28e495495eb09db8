"""What long commands say while they run when nobody watches a terminal, and the library notices they hide.

A live bar is for a terminal. Under ``nohup``, a cluster scheduler or ``| tee``
there is none: a bar there is either silent (rich turns itself off) or a
stream of ``\\r`` redraws in the log. :class:`PlainProgress` prints one plain
line every ``every_s`` seconds instead, so a log shows a long run moving.

:func:`quiet_notices` drops library notices a user cannot act on (a
bitsandbytes kernel hint, transformers' "torchvision is not installed, using
the PIL processor" fallbacks): printed at every command, they bury the lines
that matter. Filters on the libraries' own loggers, so nothing is imported.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

_NOTICES = {  # logger name -> message fragments never worth a line
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
    "bitsandbytes.backends.cpu.ops": ("pip install kernels",),
}


class _DropNotices(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(f in msg for f in self.fragments)


def quiet_notices() -> None:
    """Idempotent; called when ``vprefer`` is imported."""
    for name, fragments in _NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(fragments))


def no_bars_without_a_terminal() -> None:
    """Turn off the transformers / diffusers / hub progress bars (loading and writing weights) when stderr is
    not a terminal: each ``\\r`` redraw becomes a line of a log."""
    if sys.stderr.isatty():
        return
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    try:
        import diffusers

        diffusers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


class PlainProgress:
    """Call with the current state as often as you like; a line is printed at most every ``every_s`` seconds
    (and once more by :meth:`final`). ``line`` makes the text, e.g. ``120/600 · ok 118 · 3.1 req/s``;
    ``every_s=None`` prints nothing (a terminal has its live bar)."""

    def __init__(self, what: str, line: Callable[[], str], *, every_s: float | None = 30.0,
                 stream: TextIO | None = None):
        self.what, self.line, self.every_s = what, line, every_s
        self.stream = stream
        self._last = time.monotonic()
        self._printed = False

    def __call__(self, *_args) -> None:
        now = time.monotonic()
        if self.every_s is not None and now - self._last >= self.every_s:
            self._last = now
            self._emit()

    def final(self) -> None:
        if self._printed:  # a run shorter than one interval needs no line: its result table follows
            self._emit()

    def _emit(self) -> None:
        self._printed = True
        print(f"{time.strftime('%H:%M:%S')} {self.what}: {self.line()}", file=self.stream or sys.stderr, flush=True)


def eta(done: int, total: int, elapsed_s: float) -> str:
    """``ETA 2m30s`` from the rate so far; empty until something is done."""
    if done <= 0 or done >= total:
        return ""
    left = elapsed_s / done * (total - done)
    m, s = divmod(int(left), 60)
    h, m = divmod(m, 60)
    return "ETA " + (f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s")
