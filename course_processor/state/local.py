"""The processor's tables on local disk, holding exactly the committed state.

One RocksDB per partition of course-commands under PROCESSOR_DATA_DIR, with a column
family per table and one more for the changelog offsets the data reflects.

Why writes are staged. In exactly_once a command's table changes, its event and its
offset are one Kafka transaction. faust's own RocksDB store writes every put to disk
at once, outside that transaction, and nothing takes it back when the transaction
aborts (robinhood/faust#340): a worker killed, fenced or rebalanced mid-transaction
would keep, on disk, seats that the log never granted. So, as Quix Streams'
checkpoints and Kafka Streams' KIP-892 do:

1. A table write of a transaction is staged in memory, per partition; reads see the
   staged value first, then the disk.
2. A commit takes the staged writes of its partitions aside when it starts
   (`begin_commit`): every changelog record that carried them was handed to the
   producer before, and the commit flushes those into the transaction. Once Kafka
   has committed, they go to disk together with the offsets of those records, in one
   atomic WriteBatch (`finish_commit`). Writes staged while the commit runs wait
   for the next one, so the disk never holds a write the commit did not carry.
3. When the transaction aborts (a rebalance restarts the producers; any write or
   commit failure ends the process) the staged writes are dropped (`drop_staged`).

A command's output records (its events, or a dead letter) are staged the same way,
next to its table writes (`stage_record`), and taken aside by the same
`begin_commit`: the commit sends both in the partition's transaction, so a
transaction holds all of a command's records and table writes or none of them.

So what is on disk is always a prefix of the committed changelog, and the stored
offset says where that prefix ends: on start and on rebalance a partition reads only
the changelog records after it (restore.py). A crash between the Kafka commit and the
WriteBatch leaves the disk one transaction behind the changelog, which the restore
then reads; nothing on disk is ever ahead of the log.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from rocksdict import AccessType, Rdict, WriteBatch, WriteOptions

from course_processor.state.memory import HeapTrimmer, MemoryBudget

log = logging.getLogger(__name__)

OFFSETS = "_changelog_offsets"
# In the offsets family: when the partition's data last moved forward (epoch seconds).
WRITTEN_AT = b"~written-at"
# A partition's disk older than this may have missed a tombstone that compaction has
# dropped from the changelog since (delete.retention.ms, 24 h by default): it is not
# trusted, and is restored whole instead.
STALE_AFTER_SECONDS = 12 * 3600
# Key -> value, or None for a deletion; per table.
Changes = dict[str, dict[bytes, bytes | None]]


class OutRecord(NamedTuple):
    """A record a command writes to a topic (an event, a dead letter), staged until the
    commit sends it in the transaction of the command's partition."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int  # when it was decided (epoch milliseconds): the record's timestamp

_NO_WAL = WriteOptions()
_NO_WAL.disable_wal = True  # type: ignore[method-assign,assignment]  # a property at run time


class PartitionDB:
    """One partition's RocksDB: a column family per table, plus the changelog offsets."""

    def __init__(self, path: Path, tables: Sequence[str], memory: MemoryBudget) -> None:
        path.mkdir(parents=True, exist_ok=True)
        families = {name: memory.options() for name in (*tables, OFFSETS)}
        self.path = path
        self.db = Rdict(str(path), memory.options(), column_families=families,
                        access_type=AccessType.read_write())
        self.families = {name: self.db.get_column_family(name) for name in families}
        self.handles = {name: self.db.get_column_family_handle(name) for name in families}

    def get(self, table: str, key: bytes) -> bytes | None:
        value = self.families[table].get(key)
        return None if value is None else bytes(value)

    def offset(self, table: str) -> int | None:
        raw = self.families[OFFSETS].get(table.encode())
        return None if raw is None else int(raw)

    def write(self, changes: Changes, offsets: Mapping[str, int], wal: bool = True) -> None:
        """All changes and offsets at once: RocksDB applies a WriteBatch atomically.

        Without the write-ahead log (bulk loads), a crash loses the memtables, data and
        offsets alike (atomic flush): the disk goes back to an earlier prefix of the
        changelog, and the next restore reads the rest again.
        """
        batch = WriteBatch(raw_mode=True)
        for table, entries in changes.items():
            handle = self.handles[table]
            for key, value in entries.items():
                if value is None:
                    batch.delete(key, handle)
                else:
                    batch.put(key, value, handle)
        for table, offset in offsets.items():
            batch.put(table.encode(), str(offset).encode(), self.handles[OFFSETS])
        batch.put(WRITTEN_AT, str(int(time.time())).encode(), self.handles[OFFSETS])
        self.db.write(batch, None if wal else _NO_WAL)

    def load(self, table: str, records: Iterable[tuple[bytes, bytes | None]],
             offset: int) -> None:
        """Committed changelog records of one table, in changelog order, and the offset
        of the last one, in one WriteBatch without the write-ahead log (see write): the
        restore's path, one pass and no copy, a later record of a key overriding an
        earlier one as RocksDB applies a batch in order."""
        batch = WriteBatch(raw_mode=True)
        handle = self.handles[table]
        put, delete = batch.put, batch.delete
        for key, value in records:
            if value is None:
                delete(key, handle)
            else:
                put(key, value, handle)
        offsets = self.handles[OFFSETS]
        batch.put(table.encode(), str(offset).encode(), offsets)
        batch.put(WRITTEN_AT, str(int(time.time())).encode(), offsets)
        self.db.write(batch, _NO_WAL)

    def flush(self) -> None:
        """Memtables to SST files: the tables first, the offsets last, so no crash can
        leave offsets on disk without the data they describe."""
        for name in (*self.families.keys() - {OFFSETS}, OFFSETS):
            self.families[name].flush(True)

    def written_at(self) -> int | None:
        raw = self.families[OFFSETS].get(WRITTEN_AT)
        return None if raw is None else int(raw)

    def keys_from(self, table: str, start: bytes) -> Iterator[bytes]:
        it = self.families[table].iter()
        it.seek(start)
        while it.valid():
            yield bytes(it.key())
            it.next()

    def items(self, table: str) -> Iterator[tuple[bytes, bytes]]:
        it = self.families[table].iter()
        it.seek_to_first()
        while it.valid():
            yield bytes(it.key()), bytes(it.value())
            it.next()

    def close(self) -> None:
        self.db.close()


class LocalState:
    """Every table of the partitions this worker owns: staged writes over committed disk."""

    def __init__(self, directory: Path, tables: Sequence[str],
                 memory: MemoryBudget | None = None) -> None:
        self.directory = directory
        self.tables = tuple(tables)
        # One budget for every partition's database (memory.py).
        self.memory = memory or MemoryBudget()
        self._dbs: dict[int, PartitionDB] = {}
        self._staged: dict[int, Changes] = {}
        # Taken aside by the commit under way, until Kafka has committed it.
        self._committing: dict[int, Changes] = {}
        # The same two layers for the records the commands write (stage_record).
        self._records: dict[int, list[OutRecord]] = {}
        self._committing_records: dict[int, list[OutRecord]] = {}
        self._commit_sequence = 0
        # (table, partition) -> (sequence number, offset) of each changelog record
        # delivered and not yet on disk; sequence numbers count the records handed to
        # the producer, so a commit knows which of them it carried.
        self._written: dict[tuple[str, int], list[tuple[int, int]]] = {}
        # Per partition and table: no live key sorts before this one (see oldest_keys).
        self._floors: dict[tuple[int, str], bytes] = {}
        # Per partition and table: the last answer of oldest_keys (limit, keys), kept
        # until a write could change it.
        self._oldest: dict[tuple[int, str], tuple[int, list[bytes]]] = {}
        self._open: frozenset[int] = frozenset()
        # The heap RocksDB's flushes and compactions free, given back now and then.
        self._trimmer = HeapTrimmer()

    # -------------------------------------------------------------- partitions

    @property
    def partitions(self) -> frozenset[int]:
        # A snapshot, replaced whole: /healthz reads it while a restore thread opens.
        return self._open

    def path_of(self, partition: int) -> Path:
        return self.directory / f"partition-{partition}"

    def open(self, partition: int) -> PartitionDB:
        db = self._dbs.get(partition)
        if db is None:
            db = self._dbs[partition] = PartitionDB(self.path_of(partition), self.tables,
                                                    self.memory)
            self._open = frozenset(self._dbs)
            if self.memory.crowded(len(self._dbs) * (len(self.tables) + 1)):
                log.warning("the RocksDB memory budget is small for %d partitions: raise "
                            "PROCESSOR_STATE_MEMORY_MB", len(self._dbs))
        return db

    def retain(self, partitions: Iterable[int]) -> None:
        """Close the databases of partitions not in `partitions` (their files stay)."""
        keep = set(partitions)
        for partition in sorted(set(self._dbs) - keep):
            self._dbs.pop(partition).close()
            self._staged.pop(partition, None)
            self._records.pop(partition, None)
            self._forget_answers(partition)
        self._open = frozenset(self._dbs)

    def wipe(self, partition: int) -> None:
        """Delete a partition's files: the next open starts empty (a full restore)."""
        db = self._dbs.pop(partition, None)
        if db is not None:
            db.close()
        self._open = frozenset(self._dbs)
        self._staged.pop(partition, None)
        self._records.pop(partition, None)
        self._forget_answers(partition)
        shutil.rmtree(self.path_of(partition), ignore_errors=True)

    def close(self) -> None:
        self.retain(())

    # -------------------------------------------------------------- reads

    def get(self, partition: int, table: str, key: bytes) -> bytes | None:
        for layer in (self._staged, self._committing):
            changes = layer.get(partition)
            if changes is not None:
                entries = changes.get(table)
                if entries is not None and key in entries:
                    return entries[key]
        db = self._dbs.get(partition)
        if db is None:
            raise KeyError(f"partition {partition} is not open: not owned by this worker")
        return db.get(table, key)

    def find(self, table: str, key: bytes) -> bytes | None:
        """A key's value in whichever owned partition holds it (reads outside a command)."""
        for partition in sorted(self._dbs):
            value = self.get(partition, table, key)
            if value is not None:
                return value
        return None

    def oldest_keys(self, partition: int, table: str, limit: int) -> list[bytes]:
        """The first `limit` live keys of a table partition, in key order.

        Expiry asks this for every decision, and deletes from the start of the table.
        The answer is kept until a write could change it (new keys of the decision
        memory sort after the old ones, so that is rare), and where the first live key
        is saves walking over the deletions again (RocksDB keeps them as tombstones
        until compaction).
        """
        cached = self._oldest.get((partition, table))
        if cached is not None and cached[0] == limit:
            return list(cached[1])
        staged = {**self._committing.get(partition, {}).get(table, {}),
                  **self._staged.get(partition, {}).get(table, {})}
        floor = self._floors.get((partition, table), b"")
        on_disk: list[bytes] = []
        for key in self.open(partition).keys_from(table, floor):
            if key in staged and staged[key] is None:
                continue
            on_disk.append(key)
            if len(on_disk) >= limit:
                break
        found = sorted({*on_disk, *(k for k, v in staged.items() if v is not None)})[:limit]
        if found:
            self._floors[(partition, table)] = found[0]
        self._oldest[(partition, table)] = (limit, list(found))
        return found

    def first_keys(self, partition: int, table: str, prefix: bytes, limit: int) -> list[bytes]:
        """The first `limit` live keys of a table partition that start with `prefix`, in
        key order, staged writes included: the head of a course's waiting list. Not
        cached: the waiting list changes with every promotion."""
        staged = {**self._committing.get(partition, {}).get(table, {}),
                  **self._staged.get(partition, {}).get(table, {})}
        on_disk: list[bytes] = []
        for key in self.open(partition).keys_from(table, prefix):
            if not key.startswith(prefix):
                break
            if key in staged and staged[key] is None:
                continue
            on_disk.append(key)
            if len(on_disk) >= limit:
                break
        live = {*on_disk, *(k for k, v in staged.items()
                           if v is not None and k.startswith(prefix))}
        return sorted(live)[:limit]

    def stale(self, partition: int, now: float | None = None) -> bool:
        """True when the partition's disk was last brought forward too long ago to be
        trusted (STALE_AFTER_SECONDS); an empty disk is not stale, just empty."""
        written = self.open(partition).written_at()
        now = time.time() if now is None else now
        return written is not None and now - written > STALE_AFTER_SECONDS

    def persisted_offset(self, table: str, partition: int) -> int | None:
        return self.open(partition).offset(table)

    def items(self, partition: int, table: str) -> Iterator[tuple[bytes, bytes]]:
        """Every committed entry of one table partition (tests and tools)."""
        return self.open(partition).items(table)

    # -------------------------------------------------------------- writes

    def stage(self, partition: int, table: str, key: bytes, value: bytes | None) -> None:
        if partition not in self._dbs:
            raise KeyError(f"partition {partition} is not open: not owned by this worker")
        self._staged.setdefault(partition, {}).setdefault(table, {})[key] = value
        cached = self._oldest.get((partition, table))
        if cached is not None:
            limit, keys = cached
            if key in keys or len(keys) < limit or key < keys[-1]:
                del self._oldest[(partition, table)]
        if key < self._floors.get((partition, table), b""):
            del self._floors[(partition, table)]

    def stage_record(self, partition: int, record: OutRecord) -> None:
        """A record the command being decided in `partition` writes; the commit that
        carries the command's table writes sends it first, in the same transaction."""
        if partition not in self._dbs:
            raise KeyError(f"partition {partition} is not open: not owned by this worker")
        self._records.setdefault(partition, []).append(record)

    def written(self, table: str, partition: int, offset: int, sequence: int) -> None:
        """The changelog record handed to the producer as number `sequence` reached the
        broker, in the open transaction, at `offset`."""
        self._written.setdefault((table, partition), []).append((sequence, offset))

    def begin_commit(self, partitions: Iterable[int], sequence: int) -> None:
        """A commit of these partitions' transactions starts; it carries every record
        handed to the producer up to number `sequence`, so every write staged so far."""
        for partition in partitions:
            changes = self._staged.pop(partition, None)
            if changes:
                into = self._committing.setdefault(partition, {})
                for table, entries in changes.items():
                    into.setdefault(table, {}).update(entries)
            records = self._records.pop(partition, None)
            if records:
                self._committing_records.setdefault(partition, []).extend(records)
        self._commit_sequence = sequence

    def carried(self, partition: int) -> Changes:
        """The writes the commit under way carries for `partition` (begin_commit)."""
        return self._committing.get(partition, {})

    def carried_records(self, partition: int) -> list[OutRecord]:
        """The records the commit under way carries for `partition`, in the order the
        commands staged them (begin_commit)."""
        return self._committing_records.get(partition, [])

    def finish_commit(self, partitions: Iterable[int]) -> None:
        """Kafka committed: what the commit carried goes to disk, with its offsets."""
        for partition in partitions:
            changes = self._committing.pop(partition, {})
            self._committing_records.pop(partition, None)
            offsets = {}
            for table in self.tables:
                written = self._written.get((table, partition))
                carried = [o for seq, o in written or () if seq <= self._commit_sequence]
                if carried:
                    offsets[table] = max(carried)
                    self._written[(table, partition)] = [
                        (seq, o) for seq, o in written or () if seq > self._commit_sequence]
            if (changes or offsets) and partition in self._dbs:
                self._dbs[partition].write(changes, offsets)
        self._trimmer.tick()

    def commit(self, partitions: Iterable[int]) -> None:
        """begin_commit and finish_commit at once, with everything staged (tests, tools)."""
        chosen = set(partitions)
        self.begin_commit(chosen, sequence=2**63)
        self.finish_commit(chosen)

    def drop_staged(self) -> None:
        """Every open transaction aborted: forget what they staged."""
        self._staged.clear()
        self._committing.clear()
        self._records.clear()
        self._committing_records.clear()
        self._written.clear()
        self._floors.clear()
        self._oldest.clear()

    def staged_count(self) -> int:
        """Table writes and records staged or being committed."""
        writes = sum(len(e) for layer in (self._staged, self._committing)
                     for changes in list(layer.values()) for e in list(changes.values()))
        records = sum(len(r) for layer in (self._records, self._committing_records)
                      for r in list(layer.values()))
        return writes + records

    def load(self, partition: int, table: str,
             records: Mapping[bytes, bytes | None] | Iterable[tuple[bytes, bytes | None]],
             last_offset: int) -> None:
        """Committed changelog records, straight to disk with the offset of the last one.

        Without the write-ahead log (a restore is about a quarter faster): what a crash
        loses of it is read again from the changelog (PartitionDB.write). Call
        `persist` once the restore is done, before anything is written with the log:
        a crash must not find, in the log, commits that come after loads it lost.
        """
        pairs = records.items() if isinstance(records, Mapping) else records
        self.open(partition).load(table, pairs, last_offset)
        self._forget_answers(partition)

    def persist(self) -> None:
        """Everything loaded without the write-ahead log, to SST files (see load)."""
        for partition in sorted(self._dbs):
            self._dbs[partition].flush()

    def _forget_answers(self, partition: int) -> None:
        for key in [k for k in self._oldest if k[0] == partition]:
            del self._oldest[key]
        for key in [k for k in self._floors if k[0] == partition]:
            del self._floors[key]
