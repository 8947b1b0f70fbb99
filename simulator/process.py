"""Child processes the simulator starts (the appliance, FreeRADIUS) die with it."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys

_PR_SET_PDEATHSIG = 1


def child_preexec() -> None:
    """Runs in the child before exec: ask Linux to send SIGTERM when the parent dies, so a
    killed lab (kill -9, a crashed test run) leaves no appliance or FreeRADIUS behind."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
