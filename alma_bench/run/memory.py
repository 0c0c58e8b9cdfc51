"""glibc malloc settings that stop a run's page-fault storm (issue 16; reports/perf.md).

PyTorch's CPU tensors come from glibc ``malloc``. By default glibc serves any block above its
mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` on free,
and it trims the heap's free top back to the kernel. An evaluation batch of 1024 CIFAR images
through resnet20 makes 64 MiB activations, so every layer of every batch maps fresh pages and
faults each one in: 8M minor faults and more system than user CPU for one 10k-image test pass
(measured: 59 s against 26 s with the settings below, bit-identical logits). Serving every
block from the heap and never trimming it keeps freed pages in the process for the next batch,
as PyTorch's CUDA caching allocator does on a GPU. The cost is that a process keeps its peak
heap until it exits.

Allocation placement changes no number: PyTorch aligns every CPU tensor to 64 bytes itself.
``ALMA_BENCH_MALLOC=default`` leaves glibc's settings alone (to measure the difference).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers from glibc's malloc.h
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
_applied: bool | None = None


def tune_malloc() -> bool:
    """Heap-only allocation without trimming, once per process; True when glibc took it.

    A no-op (False) off glibc, or under ``ALMA_BENCH_MALLOC=default``. Pool workers call it
    too: settings made with mallopt live in the process that made them."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("ALMA_BENCH_MALLOC", "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0)  # no block is ever mmap'd: freed blocks stay reusable
    ok &= mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # never give the heap's top back
    ok &= mallopt(M_TOP_PAD, 64 << 20)  # grow the heap in 64 MiB steps, not per request
    _applied = bool(ok)
    return _applied
