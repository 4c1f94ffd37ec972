"""A process that ends with its parent: Linux's parent-death signal, for children that must not outlive the
process they work for (torchrun's workers, the data loader's workers, the flows' commands)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux; elsewhere a no-op). Ends at
    once if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return  # not allowed here: the launcher's own clean-up still applies
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
