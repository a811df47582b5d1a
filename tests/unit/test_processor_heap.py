"""The processor's C heap: freed memory given back, large blocks mapped alone.

Real glibc malloc, no mocks: each check runs in a fresh interpreter, since the malloc
settings are the process's and these tests must not change pytest's own.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from course_processor.state.memory import HeapTrimmer

GLIBC = hasattr(ctypes.CDLL(None), "malloc_trim")
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc malloc only (malloc_trim, mallopt)")

_MALLOC = """
import ctypes, os
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss_anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
"""


def run(code: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", _MALLOC + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=60, env=env, check=True)
    return out.stdout.strip()


@needs_glibc
def test_the_heap_a_restore_frees_leaves_the_rss() -> None:
    """200 MB in 2 KB blocks, as a restore's batches leave it: freed, every page but
    the last block's stays in the RSS until release_free_heap gives it back."""
    before, freed, released = map(int, run("""
        from course_processor.state.memory import release_free_heap
        blocks = [libc.malloc(2000) for _ in range(100_000)]
        for b in blocks[:-1]:
            ctypes.memset(b, 1, 2000)
        before = rss_anon_mb()
        for b in blocks[:-1]:  # the last one holds the top of the heap
            libc.free(b)
        freed = rss_anon_mb()
        assert release_free_heap()
        print(before, freed, rss_anon_mb())
    """).split())
    assert freed > before - 50  # malloc keeps it
    assert released < freed - 150


@needs_glibc
def test_large_blocks_are_mapped_alone_after_bound_heap() -> None:
    """glibc raises its mmap threshold when a large mapped block is freed, and then
    serves blocks below it from the arenas, where they stay once freed. bound_heap fixes
    the threshold: a 512 KB block after a 4 MB one is still mapped alone."""
    probe = """
        from course_processor.state.memory import bound_heap
        {setup}
        libc.free(libc.malloc(4 << 20))  # raises glibc's threshold to 4 MB
        before = libc.mallinfo2().hblkhd
        block = libc.malloc(512 << 10)
        print((libc.mallinfo2().hblkhd - before) >> 10)
    """
    assert run(probe.format(setup="")) == "0"  # glibc alone: in an arena
    assert run(probe.format(setup="assert bound_heap()")) == "516"  # mapped alone
    # The operator's MALLOC_MMAP_THRESHOLD_ wins (it also stops glibc raising it).
    env = {"MALLOC_MMAP_THRESHOLD_": str(8 << 20), "PATH": "/usr/bin:/bin"}
    assert run(probe.format(setup="assert bound_heap()"), env) == "0"


def test_the_trimmer_gives_the_heap_back_at_most_once_per_interval() -> None:
    trimmer = HeapTrimmer(interval=10.0)
    start = trimmer._last
    assert not trimmer.tick(start + 9.9)
    assert trimmer.tick(start + 10.0) is GLIBC
    assert not trimmer.tick(start + 19.9)
    assert trimmer.tick(start + 20.1) is GLIBC
