"""Ctrl-C and SIGTERM as a request to stop at the next safe point.

Python's default SIGINT handler (and a handler that raises KeyboardInterrupt on SIGTERM)
raises the exception wherever the main thread happens to be. Inside the Python code of
``threading`` or ``concurrent.futures`` that can be between a lock's acquire and the
``with`` block that releases it: the lock stays held, the pool's worker threads wait on
it for ever and the process hangs at exit after having written its log. So while a
training or a sweep runs, the first SIGINT or SIGTERM only sets a flag that the loop
reads between steps (:meth:`StopRequest.check`); a second one raises KeyboardInterrupt at
once, for a user who insists.
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing.Self from Python 3.11 on
    from typing_extensions import Self

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: installs the flag-setting handlers (main thread only) and restores
    the previous ones on exit; a signal the process ignores (a sweep's worker ignores
    Ctrl-C, which its parent handles) stays ignored. ``requested`` is the number of the
    first signal, or None."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:  # ignored stays ignored
                    self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def check(self) -> None:
        """Raise KeyboardInterrupt here, at a safe point, when a stop was requested."""
        if self.requested is not None:
            raise KeyboardInterrupt
