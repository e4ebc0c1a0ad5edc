"""Keep freed host memory in the process, so a training step's large tensors are not faulted in
afresh at every step.

glibc's ``malloc`` serves blocks above its mmap threshold (which adapts up to 32 MiB) with
``mmap`` and unmaps them on ``free``; it also trims the heap top back to the system. A CPU
training step allocates and frees the same large activations and gradients every step, so each
step pays a page fault per 4 KiB page of those above 32 MiB. On this project's CPU machines,
SimCLR's ResNet-18 step (batch 256, 28 px) took 263,000 faults and 2.88 s, and none and 2.36 s
with the memory kept; the ConvNet's, whose tensors stay below 32 MiB, was unchanged
(``benchmarks/results/host_memory.md``).

:func:`retain_freed_memory` sets ``M_MMAP_MAX=0`` (large blocks come from the heap too) and a
trim threshold of 2 GiB (freed memory is returned only when more than that lies free at the heap's top): the process's resident size stays
at its peak instead of following the step, and later steps re-use the same pages.
It is process-wide and not undone; elsewhere than glibc (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int

_retained = False


def retain_freed_memory() -> bool:
    """Tell glibc's allocator to keep every freed block in the process (see the module
    docstring). Returns whether the setting is in force (``False`` off glibc). Idempotent."""
    global _retained
    if _retained:
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _retained = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _retained
