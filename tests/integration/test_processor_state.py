"""The processor's local state on a real RocksDB in a temporary directory (no Kafka).

Staged writes reach the disk only through `commit`, with the changelog offsets that
carried them; an abort (`drop_staged`) or a revoked partition (`retain`) drops them;
a store opened again after the process is gone holds exactly what was committed.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from course_processor.state.local import LocalState, OutRecord
from course_processor.state.memory import MemoryBudget

pytestmark = pytest.mark.integration

TABLES = ("courses", "seat_holders", "decided_signups")


def state(tmp_path: Path, *partitions: int) -> LocalState:
    s = LocalState(tmp_path / "state", TABLES)
    for p in partitions:
        s.open(p)
    return s


def test_a_staged_write_is_read_back_but_reaches_the_disk_only_on_commit(tmp_path: Path) -> None:
    s = state(tmp_path, 0)
    s.stage(0, "seat_holders", b"k", b"v")
    s.written("seat_holders", 0, 41, 1)

    assert s.get(0, "seat_holders", b"k") == b"v"
    assert dict(s.items(0, "seat_holders")) == {}
    assert s.persisted_offset("seat_holders", 0) is None

    s.commit({0})

    assert dict(s.items(0, "seat_holders")) == {b"k": b"v"}
    assert s.persisted_offset("seat_holders", 0) == 41
    assert s.staged_count() == 0


def test_an_abort_drops_every_staged_write_and_offset(tmp_path: Path) -> None:
    s = state(tmp_path, 0, 1)
    s.stage(0, "courses", b"c", b"1")
    s.written("courses", 0, 7, 1)
    s.commit({0})
    s.stage(0, "courses", b"c", b"2")
    s.stage(1, "courses", b"d", b"9")
    s.stage(0, "courses", b"gone", None)
    s.written("courses", 0, 8, 1)

    s.drop_staged()

    assert s.get(0, "courses", b"c") == b"1" and s.get(1, "courses", b"d") is None
    s.commit({0, 1})  # nothing staged: nothing changes, the offset stays
    assert s.persisted_offset("courses", 0) == 7 and s.persisted_offset("courses", 1) is None


def test_a_revoked_partition_loses_its_staged_writes_but_keeps_its_disk(tmp_path: Path) -> None:
    s = state(tmp_path, 0, 1)
    s.stage(1, "courses", b"kept", b"1")
    s.written("courses", 1, 3, 1)
    s.commit({1})
    s.stage(1, "courses", b"staged", b"2")

    s.retain({0})

    assert s.partitions == {0}
    with pytest.raises(KeyError):
        s.get(1, "courses", b"kept")
    s.open(1)
    assert dict(s.items(1, "courses")) == {b"kept": b"1"}


def test_a_commit_writes_only_the_committed_partitions(tmp_path: Path) -> None:
    s = state(tmp_path, 0, 1)
    s.stage(0, "courses", b"a", b"1")
    s.stage(1, "courses", b"b", b"2")
    s.written("courses", 0, 5, 1)
    s.written("courses", 1, 6, 1)

    s.commit({0})

    assert dict(s.items(0, "courses")) == {b"a": b"1"}
    assert dict(s.items(1, "courses")) == {}
    assert s.get(1, "courses", b"b") == b"2"  # still staged for partition 1's transaction
    s.commit({1})
    assert (s.persisted_offset("courses", 0), s.persisted_offset("courses", 1)) == (5, 6)


def test_a_deletion_is_staged_too(tmp_path: Path) -> None:
    s = state(tmp_path, 0)
    s.stage(0, "decided_signups", b"x", b"1")
    s.commit({0})
    s.stage(0, "decided_signups", b"x", None)

    assert s.get(0, "decided_signups", b"x") is None
    assert dict(s.items(0, "decided_signups")) == {b"x": b"1"}
    s.commit({0})
    assert dict(s.items(0, "decided_signups")) == {}


def test_the_oldest_keys_skip_staged_deletions(tmp_path: Path) -> None:
    s = state(tmp_path, 0)
    for key in (b"2026-01-01/a", b"2026-01-01/b", b"2026-01-02/c", b"~mark"):
        s.stage(0, "decided_signups", key, b"v")
    s.commit({0})

    assert s.oldest_keys(0, "decided_signups", 2) == [b"2026-01-01/a", b"2026-01-01/b"]
    s.stage(0, "decided_signups", b"2026-01-01/a", None)
    assert s.oldest_keys(0, "decided_signups", 2) == [b"2026-01-01/b", b"2026-01-02/c"]
    s.drop_staged()  # the deletion aborted: the key is live again
    assert s.oldest_keys(0, "decided_signups", 1) == [b"2026-01-01/a"]


def test_a_bulk_load_writes_the_records_and_the_offset_of_the_last(tmp_path: Path) -> None:
    s = state(tmp_path, 2)
    s.load(2, "courses", [(b"a", b"1"), (b"b", b"2"), (b"a", None)], last_offset=99)
    assert dict(s.items(2, "courses")) == {b"b": b"2"}
    assert s.persisted_offset("courses", 2) == 99


class Record:
    """A changelog record as confluent-kafka's consume() hands it over (the restore's
    input), without a broker: test_processor_crash restores from real changelogs."""

    def __init__(self, topic: str, partition: int, offset: int, key: bytes,
                 value: bytes | None) -> None:
        self._fields = topic, partition, offset, key, value

    def topic(self) -> str:
        return self._fields[0]

    def partition(self) -> int:
        return self._fields[1]

    def offset(self) -> int:
        return self._fields[2]

    def key(self) -> bytes:
        return self._fields[3]

    def value(self) -> bytes | None:
        return self._fields[4]


def test_a_restore_batch_of_interleaved_partitions_lands_in_changelog_order(
        tmp_path: Path) -> None:
    """Runs of records of several partitions and tables, a key written again and deleted
    in between: each partition's table ends as its changelog's last record per key says,
    with the offset of its last record."""
    from course_processor.state.restore import load

    s = state(tmp_path, 0, 1)
    table_of = {"c-log": "courses", "s-log": "seat_holders"}
    batch = [Record("c-log", 0, 10, b"a", b"1"), Record("c-log", 0, 11, b"b", b"1"),
             Record("c-log", 1, 5, b"a", b"x"),
             Record("c-log", 0, 12, b"a", None), Record("c-log", 0, 13, b"b", b"2"),
             Record("s-log", 0, 3, b"seat", b"s"),
             Record("c-log", 1, 6, b"a", b"y"), Record("c-log", 1, 7, b"z", b"z"),
             Record("c-log", 0, 14, b"a", b"3"), Record("c-log", 0, 15, b"c", None)]
    load(s, table_of, batch)  # type: ignore[arg-type]
    assert dict(s.items(0, "courses")) == {b"a": b"3", b"b": b"2"}
    assert dict(s.items(1, "courses")) == {b"a": b"y", b"z": b"z"}
    assert dict(s.items(0, "seat_holders")) == {b"seat": b"s"}
    assert [s.persisted_offset("courses", 0), s.persisted_offset("courses", 1),
            s.persisted_offset("seat_holders", 0), s.persisted_offset("seat_holders", 1)] \
        == [15, 7, 3, None]


def test_the_restore_gives_the_garbage_collector_back_as_it_found_it() -> None:
    import gc

    from course_processor.state.restore import paused_gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        raise RuntimeError("the read failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # not switched on by the restore
    finally:
        gc.enable()


def _stage_commit_and_die(directory: str) -> None:
    s = LocalState(Path(directory), TABLES)
    s.open(0)
    s.stage(0, "seat_holders", b"committed", b"1")
    s.written("seat_holders", 0, 10, 1)
    s.commit({0})
    s.stage(0, "seat_holders", b"uncommitted", b"2")
    s.written("seat_holders", 0, 11, 1)
    os._exit(9)  # like kill -9: no close, no flush


def test_after_the_process_dies_the_disk_holds_exactly_what_was_committed(
        tmp_path: Path) -> None:
    directory = tmp_path / "state"
    child = multiprocessing.get_context("spawn").Process(
        target=_stage_commit_and_die, args=(str(directory),))
    child.start()
    child.join(30)
    assert child.exitcode == 9

    s = LocalState(directory, TABLES)
    s.open(0)
    assert dict(s.items(0, "seat_holders")) == {b"committed": b"1"}
    assert s.persisted_offset("seat_holders", 0) == 10


def test_a_wiped_partition_starts_empty(tmp_path: Path) -> None:
    s = state(tmp_path, 0)
    s.stage(0, "courses", b"a", b"1")
    s.commit({0})
    s.wipe(0)
    s.open(0)
    assert dict(s.items(0, "courses")) == {} and s.persisted_offset("courses", 0) is None


def test_the_oldest_keys_answer_follows_every_write(tmp_path: Path) -> None:
    s = state(tmp_path, 0)
    for key in (b"2026-01-02/b", b"2026-01-03/c"):
        s.stage(0, "decided_signups", key, b"v")
    s.commit({0})
    assert s.oldest_keys(0, "decided_signups", 2) == [b"2026-01-02/b", b"2026-01-03/c"]
    s.stage(0, "decided_signups", b"2026-01-04/d", b"v")  # sorts after: same answer
    assert s.oldest_keys(0, "decided_signups", 2) == [b"2026-01-02/b", b"2026-01-03/c"]
    s.stage(0, "decided_signups", b"2026-01-01/a", b"v")  # sorts first
    assert s.oldest_keys(0, "decided_signups", 2) == [b"2026-01-01/a", b"2026-01-02/b"]
    s.stage(0, "decided_signups", b"2026-01-01/a", None)
    assert s.oldest_keys(0, "decided_signups", 2) == [b"2026-01-02/b", b"2026-01-03/c"]
    s.load(0, "decided_signups", [(b"2025-12-31/z", b"v")], last_offset=5)
    assert s.oldest_keys(0, "decided_signups", 1) == [b"2025-12-31/z"]


def test_writes_staged_while_a_commit_runs_wait_for_the_next_commit(tmp_path: Path) -> None:
    s = state(tmp_path, 0)
    s.stage(0, "courses", b"a", b"1")  # its changelog record is number 1
    s.begin_commit({0}, sequence=1)
    s.stage(0, "courses", b"b", b"2")  # number 2, handed over after the commit began
    s.written("courses", 0, 10, 1)
    s.written("courses", 0, 11, 2)

    s.finish_commit({0})

    assert dict(s.items(0, "courses")) == {b"a": b"1"}
    assert s.persisted_offset("courses", 0) == 10
    assert s.get(0, "courses", b"b") == b"2"
    s.begin_commit({0}, sequence=2)
    s.finish_commit({0})
    assert dict(s.items(0, "courses")) == {b"a": b"1", b"b": b"2"}
    assert s.persisted_offset("courses", 0) == 11


def test_an_abort_during_a_commit_drops_what_it_carried(tmp_path: Path) -> None:
    s = state(tmp_path, 0)
    s.stage(0, "courses", b"a", b"1")
    s.begin_commit({0}, sequence=1)
    assert s.get(0, "courses", b"a") == b"1"  # still read while the commit runs
    s.drop_staged()
    s.finish_commit({0})
    assert s.get(0, "courses", b"a") is None and dict(s.items(0, "courses")) == {}


def event(n: int) -> OutRecord:
    return OutRecord("course-events", b"c", f"event {n}".encode(), [("event_id", b"%d" % n)],
                     1_700_000_000_000 + n)


def test_a_commit_carries_the_records_staged_with_the_writes_and_none_after(
        tmp_path: Path) -> None:
    s = state(tmp_path, 0, 1)
    s.stage_record(0, event(1))
    s.stage(0, "courses", b"a", b"1")
    s.stage_record(0, event(2))
    s.stage_record(1, event(3))  # partition 1 is not in this commit

    s.begin_commit({0}, sequence=1)
    s.stage_record(0, event(4))  # decided while the commit runs: the next one carries it

    assert s.carried_records(0) == [event(1), event(2)]
    assert s.carried(0) == {"courses": {b"a": b"1"}}
    assert s.carried_records(1) == []
    assert s.staged_count() == 5
    s.finish_commit({0})
    assert s.carried_records(0) == []
    s.begin_commit({0, 1}, sequence=2)
    assert s.carried_records(0) == [event(4)] and s.carried_records(1) == [event(3)]


def test_an_abort_drops_the_staged_records_with_the_writes(tmp_path: Path) -> None:
    s = state(tmp_path, 0)
    s.stage_record(0, event(1))
    s.begin_commit({0}, sequence=1)
    s.stage_record(0, event(2))

    s.drop_staged()

    assert s.staged_count() == 0
    s.begin_commit({0}, sequence=2)
    assert s.carried_records(0) == []
    with pytest.raises(KeyError):
        s.stage_record(7, event(3))  # a partition this worker does not own


def test_a_disk_not_brought_forward_for_half_a_day_is_not_trusted(tmp_path: Path) -> None:
    import time

    s = state(tmp_path, 0, 1)
    s.stage(0, "courses", b"a", b"1")
    s.commit({0})
    assert not s.stale(0) and not s.stale(1)  # 1 is empty: nothing to distrust
    assert s.stale(0, now=time.time() + 13 * 3600)
    assert not s.stale(0, now=time.time() + 11 * 3600)


def _load_and_die(directory: str, persist: bool) -> None:
    s = LocalState(Path(directory), TABLES)
    s.open(0)
    s.stage(0, "courses", b"committed", b"1")
    s.written("courses", 0, 3, 1)
    s.commit({0})  # with the write-ahead log
    s.load(0, "courses", [(b"loaded", b"2")], last_offset=9)  # without it
    if persist:
        s.persist()
    os._exit(9)


@pytest.mark.parametrize("persist", [False, True])
def test_a_bulk_load_lost_in_a_crash_takes_its_offset_with_it(tmp_path: Path,
                                                            persist: bool) -> None:
    directory = tmp_path / "state"
    child = multiprocessing.get_context("spawn").Process(
        target=_load_and_die, args=(str(directory), persist))
    child.start()
    child.join(30)
    s = LocalState(directory, TABLES)
    s.open(0)
    data, offset = dict(s.items(0, "courses")), s.persisted_offset("courses", 0)
    if persist:
        assert (data, offset) == ({b"committed": b"1", b"loaded": b"2"}, 9)
    else:  # the load is gone, and so is its offset: the restore reads it again
        assert (data, offset) == ({b"committed": b"1"}, 3)


def test_every_partition_draws_on_one_memory_budget(tmp_path: Path) -> None:
    """16 partitions committing small batches, as the processor does, stay within one
    budget: the memtables of every column family of every database together, and the
    block cache they are charged to (per-database settings would allow 16 x 4 families
    x 2 memtables of 4 MB)."""
    budget = MemoryBudget(32 << 20)
    s = LocalState(tmp_path / "state", TABLES, budget)
    value = os.urandom(60)
    peak_memtables = peak_cache = 0
    for round_ in range(120):
        for p in range(16):
            s.open(p)
            for i in range(50):
                s.stage(p, "seat_holders", f"{round_:04d}-{i}-{p}".encode() * 2, value)
                s.stage(p, "decided_signups", f"{round_:04d}/{i}-{p}".encode() * 2, value)
            s.written("seat_holders", p, round_, 1)
            s.commit({p})
        peak_memtables = max(peak_memtables, budget.write_buffers.get_usage())
        peak_cache = max(peak_cache, budget.usage())
    assert 2 * budget.memtable_bytes < 120 * 16 * 100 * 90  # written: 2 memtable budgets
    assert peak_memtables <= budget.memtable_bytes * 1.25
    assert peak_cache <= budget.total_bytes * 1.25
    assert s.get(7, "seat_holders", b"0119-49-70119-49-7") == value
    assert s.persisted_offset("seat_holders", 15) == 119
