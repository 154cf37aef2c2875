"""Worker processes that end with the process that started them.

A worker pool's processes must not outlive a parent killed with SIGKILL (which runs no
clean-up): :func:`die_with_parent` asks Linux to send the worker SIGKILL when its
parent dies (``prctl(PR_SET_PDEATHSIG)``), and on every system starts a daemon thread
that ends the worker once it has been handed to another parent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def _watch(parent: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


def die_with_parent(parent: int | None = None, *, interval: float = 0.5) -> None:
    """End this process when ``parent`` (default: the current parent process) dies.

    Parameters
    ----------
    parent : int, optional
        The process id to follow; if it is not this process's parent any more when this
        is called, the process ends at once.
    interval : float, default=0.5
        Seconds between the watch thread's checks.
    """
    ppid = os.getppid()
    if parent is not None and ppid != parent:
        if ppid == 1:  # the parent is already gone
            os._exit(1)
        parent = ppid  # started by a helper process (forkserver): follow that one
    parent = ppid if parent is None else parent
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch thread below still ends the process
        if os.getppid() != parent:  # died between the check and prctl
            os._exit(1)
    threading.Thread(target=_watch, args=(parent, interval), daemon=True, name="gradtune-parent-watch").start()
