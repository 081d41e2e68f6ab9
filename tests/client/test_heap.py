"""The client's heap policy (`client.heap`) does what restore and prune rely on: freed large
buffers go back to the system, and `trim` returns the freed holes of smaller ones. Each case runs
in a fresh Python process (the policy is process-wide) and reads its RssAnon from /proc."""

from __future__ import annotations

import subprocess
import sys

PROLOGUE = """
import sys
from pathlib import Path
from client import heap

def anon_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024
"""

# Buffers of 2 MiB, each followed by a small one that stays: freed, they are holes under the
# heap's top unless each was its own mapping. A freed 4 MiB buffer first raises glibc's dynamic
# mmap threshold past them, as a restore's first frames do.
LARGE = """
if sys.argv[1] == "bound":
    assert heap.bound_heap()
raised = bytearray(4 << 20)
del raised
large, pins = [], []
for _ in range(50):
    large.append(bytearray(b"x") * (2 << 20))
    pins.append(bytearray(b"x") * 2000)
del large
print(anon_mib())
"""

# 200 MiB of 4 kB blocks with every 32nd kept: what is freed is holes, which glibc keeps.
SMALL = """
held = [bytes(4000) for _ in range(50_000)]
pins = held[::32]
del held
freed = anon_mib()
if sys.argv[1] == "trim":
    heap.trim()
print(freed, anon_mib())
"""


def _run(code: str, mode: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", PROLOGUE + code, mode], capture_output=True, text=True, check=True
    )
    return [int(n) for n in out.stdout.split()]


def test_bound_heap_returns_freed_large_buffers() -> None:
    (kept_by_default,) = _run(LARGE, "default")
    (kept_when_bound,) = _run(LARGE, "bound")
    assert kept_by_default > 60  # of the 100 MiB freed: glibc's arenas keep it
    assert kept_when_bound < 30


def test_trim_returns_the_freed_holes_of_small_buffers() -> None:
    freed, untrimmed = _run(SMALL, "keep")
    assert untrimmed > 150 and freed > 150  # of about 200 MiB freed, nearly all is kept
    freed, trimmed = _run(SMALL, "trim")
    assert freed > 150 and trimmed < 50
