"""One memory budget for every RocksDB a worker opens, whatever the partitions it owns.

As Kafka Streams' `BoundedMemoryRocksDBConfig`: one block cache and one write-buffer
manager, shared by every column family of every partition's database. The memtables
are charged to the same cache, so the block cache, the memtables and the index and
filter blocks (kept in the cache too) together stay near one number: `total_bytes`.
Per-database settings alone would multiply with the partitions (16 partitions x 4
column families x 2 memtables of 4 MB was 512 MB of memtables at worst).

The C heap under it is bounded too (`bound_heap`, `release_free_heap`): RocksDB,
librdkafka and CPython allocate with glibc's malloc, which keeps memory freed by a
restore in its arenas, one arena per thread that ever contended, up to 8 per core.
Measured at 0.1 M sign-ups, 16 partitions: 171 MB of arenas held 33 MB in use and
137 MB freed but kept, most of the worker's 235 MB RSS while deciding.
"""

from __future__ import annotations

import ctypes
import functools
import os
import time
from dataclasses import dataclass, field

from rocksdict import BlockBasedOptions, Cache, Options, WriteBufferManager

# The default budget of a worker's RocksDB memory (PROCESSOR_STATE_MEMORY_MB).
DEFAULT_TOTAL_BYTES = 64 << 20
# The share of the budget the memtables may take before RocksDB flushes them.
MEMTABLE_SHARE = 0.25
# A memtable fills to this at most, so a flush writes small SST files often instead
# of holding large memtables per column family.
WRITE_BUFFER_BYTES = 4 << 20
# The unit a memtable allocates memory in (RocksDB's default: an eighth of the write
# buffer). Every column family of every partition holds at least one block, and the
# write-buffer manager counts them all: with 16 partitions x 4 families the default
# 512 KB blocks alone were 32 MB, over a 16 MB memtable budget, so every write flushed.
ARENA_BLOCK_BYTES = 64 << 10
# glibc arenas the worker's threads share (mallopt M_ARENA_MAX). glibc's default, 8
# per core, gives each RocksDB, librdkafka and faust thread an arena of its own, each
# keeping what it freed; MALLOC_ARENA_MAX in the environment overrides it.
HEAP_ARENAS = 2
# Allocations this large or larger are mapped alone and unmapped when freed (mallopt
# M_MMAP_THRESHOLD; MALLOC_MMAP_THRESHOLD_ overrides it). Set, it stays: glibc's
# default starts at 128 KB but rises with each large block freed, up to 32 MB, after
# which RocksDB's compaction buffers and librdkafka's fetch buffers stay in the arenas.
MMAP_THRESHOLD_BYTES = 256 << 10
# The freed heap is given back at most this often while deciding (HeapTrimmer).
TRIM_INTERVAL_SECONDS = 1.0
_M_ARENA_MAX = -8  # malloc.h
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (has malloc_trim); None elsewhere. Looked
    up once: HeapTrimmer asks for it every interval."""
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def bound_heap(arenas: int = HEAP_ARENAS, mmap_threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """At most `arenas` glibc malloc arenas for the process, and large blocks mapped
    alone (above). Call it first thing, before any thread starts: an arena made before
    stays. False where it does not apply (not glibc); a setting named in the
    environment (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_) is the operator's and wins."""
    libc = _glibc()
    if libc is None:
        return False
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, arenas)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    return True


def release_free_heap() -> bool:
    """Give the pages malloc holds free back to the system (glibc's malloc_trim(0)).

    A restore reads the changelogs in large batches, and RocksDB compacts what it
    wrote: the heap they free stays in malloc's arenas, in the worker's RSS, until
    this. About 2 ms for 200 MB of heap. False where there is no malloc_trim.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class HeapTrimmer:
    """`release_free_heap` at most every `interval` seconds, for a loop to call often."""

    def __init__(self, interval: float = TRIM_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._last = time.monotonic()

    def tick(self, now: float | None = None) -> bool:
        """True when it gave the free heap back now."""
        now = time.monotonic() if now is None else now
        if now - self._last < self.interval:
            return False
        self._last = now
        return release_free_heap()


@dataclass
class MemoryBudget:
    """The block cache and write-buffer manager every database of a worker shares."""

    total_bytes: int = DEFAULT_TOTAL_BYTES
    cache: Cache = field(init=False)
    write_buffers: WriteBufferManager = field(init=False)

    def __post_init__(self) -> None:
        if self.total_bytes < 8 << 20:
            raise ValueError("a RocksDB memory budget under 8 MB cannot hold the memtables")
        self.cache = Cache(self.total_bytes)
        # allow_stall=False: over budget, RocksDB flushes memtables sooner rather than
        # stalling the writer (a stalled commit would hold every partition's decisions).
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            int(self.total_bytes * MEMTABLE_SHARE), False, self.cache)

    @property
    def memtable_bytes(self) -> int:
        return self.write_buffers.get_buffer_size()

    def crowded(self, column_families: int) -> bool:
        """True when this many column families' smallest memtables (one arena block
        each) take over half the memtable budget: every write would then flush."""
        return column_families * ARENA_BLOCK_BYTES * 2 > self.memtable_bytes

    def usage(self) -> int:
        """Bytes held now in the shared cache (blocks, indexes, filters, memtables)."""
        return self.cache.get_usage()

    def options(self) -> Options:
        """Options of one database or column family, drawing on this budget."""
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_bloom_filter(10, False)
        # Index and filter blocks in the cache too, so they count against the budget
        # instead of growing with the SST files outside it.
        table.set_cache_index_and_filter_blocks(True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_block_based_table_factory(table)
        opts.set_write_buffer_manager(self.write_buffers)
        opts.set_write_buffer_size(min(WRITE_BUFFER_BYTES, self.memtable_bytes // 4))
        opts.set_arena_block_size(ARENA_BLOCK_BYTES)
        opts.set_max_write_buffer_number(2)
        opts.set_max_open_files(64)
        # Column families flush together, so a crash can never leave the offsets of a
        # bulk load (written without the WAL, see local.py) on disk without their data.
        opts.set_atomic_flush(True)
        return opts
