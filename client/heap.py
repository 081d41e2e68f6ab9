"""The client process's heap policy: large buffers go back to the system when freed.

Backup and restore pass frames of 1-16 MiB between threads. glibc raises its mmap threshold each
time such a buffer is freed (up to 32 MiB), after which frames come from per-thread arenas that
keep freed memory: measured on the scale-1 practice corpus, that alone added ~70 MiB to a
restore's peak RSS (docs/design.md §2.2). A fixed threshold turns the dynamic raise off, so every
buffer of 1 MiB and more is its own mapping, returned to the system on free; `trim` hands back
the freed pages of smaller buffers after a burst (prune's repack). Owns nothing else; a no-op
where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1024 * 1024
ARENA_MAX = 2


def bound_heap() -> bool:
    """Apply the policy; return whether the C library took it."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))


def trim() -> None:
    """Give freed heap pages back to the system (glibc `malloc_trim`); a no-op elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name is not None else None
    except OSError:
        return None
