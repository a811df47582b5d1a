"""faust tables whose store is the processor's LocalState (state/local.py).

A faust table writes a changelog record for every change, in the partition of the
command being processed (the tables are co-partitioned with course-commands), and
hands the change to its store. `StagedStore` stages it in that same partition of the
LocalState; the transaction manager (transactions.py) moves it to disk once Kafka has
committed the partition's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import faust
from faust.stores.base import SerializedStore
from faust.streams import current_event
from faust.types import TP, EventT, StoreT, TableT

from course_processor.state.local import LocalState


def _partition() -> int | None:
    event = current_event()
    return None if event is None else event.message.partition


class StagedStore(SerializedStore):
    """A faust store over one table of the LocalState; writes only inside a command."""

    def __init__(self, url: str, app: faust.types.AppT, table: faust.types.CollectionT,
                 *, local: LocalState, **kwargs: Any) -> None:
        self.local = local
        super().__init__(url, app, table, **kwargs)

    def _get(self, key: bytes) -> bytes | None:
        partition = _partition()
        if partition is None:
            return self.local.find(self.table_name, key)
        return self.local.get(partition, self.table_name, key)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self.local.stage(self._writing_partition(), self.table_name, key, value)

    def _del(self, key: bytes) -> None:
        self.local.stage(self._writing_partition(), self.table_name, key, None)

    def _writing_partition(self) -> int:
        partition = _partition()
        if partition is None:
            # faust would refuse too (no partition for the changelog record): a write
            # outside a command belongs to no transaction.
            raise RuntimeError(f"table {self.table_name} written outside of a command")
        return partition

    def oldest_keys(self, limit: int) -> list[bytes]:
        """The first live keys of this table in the current command's partition."""
        return self.local.oldest_keys(self._writing_partition(), self.table_name, limit)

    def first_keys(self, prefix: bytes, limit: int) -> list[bytes]:
        """The first live keys starting with `prefix` in the current command's partition."""
        return self.local.first_keys(self._writing_partition(), self.table_name, prefix, limit)

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for partition in sorted(self.local.partitions):
            yield from self.local.items(partition, self.table_name)

    def _iterkeys(self) -> Iterator[bytes]:
        for key, _ in self._iteritems():
            yield key

    def _itervalues(self) -> Iterator[bytes | None]:
        for _, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iteritems())

    def _clear(self) -> None:
        raise NotImplementedError("the local state is never cleared in place: wipe a partition")

    def persisted_offset(self, tp: TP) -> int | None:
        return self.local.persisted_offset(self.table_name, tp.partition)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        # Offsets are stored only together with the data they describe (state.py).
        pass

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """faust's own restore path: committed changelog records, straight to disk.

        restore.py normally leaves nothing for faust to read; should faust read some
        records anyway, they come from a read_committed consumer, so they are
        committed and may go to disk at once.
        """
        by_partition: dict[int, list[tuple[bytes, bytes | None, int]]] = {}
        for event in batch:
            message = event.message
            if message.key is None:
                raise TypeError(f"changelog record without a key at offset {message.offset}")
            by_partition.setdefault(message.partition, []).append(
                (message.key, message.value, message.offset))
        for partition, records in by_partition.items():
            self.local.load(partition, self.table_name,
                            ((k, v) for k, v, _ in records), max(o for *_, o in records))

    def reset_state(self) -> None:
        pass

    async def backup_partition(self, tp: TP | int, flush: bool = True, purge: bool = False,
                               keep: int = 1) -> None:
        raise NotImplementedError("no backups: the changelog is the backup")

    def restore_backup(self, tp: TP | int, latest: bool = True, backup_id: int = 0) -> None:
        raise NotImplementedError("no backups: the changelog is the backup")


class StagedTable(faust.Table):
    """A faust.Table kept in the LocalState (set as the app's `Table` class)."""

    def _new_store(self) -> StoreT:
        # The app was given the runtime in its constructor (app.py).
        runtime = self.app.runtime  # type: ignore[attr-defined]
        return StagedStore(
            "staged://", self.app, self, local=runtime.local,
            table_name=self.name, key_type=self.key_type,
            key_serializer=self.key_serializer, value_serializer=self.value_serializer,
            value_type=self.value_type, loop=self.loop, options=self.options,
        )


# One encoder and decoder for every key and value: json.dumps with a non-default
# argument builds a new JSONEncoder per call, and json.loads of bytes first guesses
# their encoding. The bytes are the same (faust's json codec writes ASCII-safe UTF-8).
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()


def json_bytes(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def json_value(raw: bytes) -> Any:
    return _DECODER.decode(raw.decode())


# Keys and values of the shapes the decider writes, to check the short path against.
_PROBE_KEYS = ("course-1", "2026-12-06/8f14e45f-ceea-467f-a6f2-1c0a1f6c1f8b",
               "c/000000000012", "\u00e9\"\\/\u2028")
_PROBE_VALUES: tuple[Any, ...] = (
    "accepted 17", {"course_id": "c", "capacity": 3, "seats_taken": 1, "title": "\u00e9"},
    {"seat_key": "k", "date_of_birth": "2000-01-01", "ticket": None})


class TableView(MutableMapping[Any, Any]):
    """One table as the decider reads and writes it, in the current command's partition.

    Reads go to the store (staged writes first, then the disk). Writes are staged in
    the local state only: unlike a faust table, which hands a changelog record to
    faust's producer buffer for every write (one at a time, three per decision), the
    commit writes one changelog record per key it carries, in its transaction
    (transactions.py), so a course's seat counter written by every sign-up of a
    commit interval goes to the changelog once.
    """

    def __init__(self, table: TableT) -> None:
        store = table.data  # type: ignore[attr-defined]
        assert isinstance(store, StagedStore)
        self.name, self.store, self.local = table.name, store, store.local
        # The decider reads and writes a dozen keys per sign-up; faust's serializer
        # registry took about 4 us per key, the json module itself a tenth of that. The
        # bytes must be faust's (the keys on disk and in the changelogs are), so the
        # short path is taken only when it gives faust's bytes for every probe.
        self.fast = fast = all(store._encode_key(k) == json_bytes(k)  # noqa: SLF001
                   for k in _PROBE_KEYS) and all(
            store._encode_value(v) == json_bytes(v)  # noqa: SLF001
            for v in _PROBE_VALUES)
        self._key: Callable[[Any], Any] = json_bytes if fast else store._encode_key  # noqa: SLF001
        self._value: Callable[[Any], Any] = (
            json_bytes if fast else store._encode_value)  # noqa: SLF001
        self._decode: Callable[[bytes], Any] = (
            json_value if fast else store._decode_value)  # noqa: SLF001
        self._decode_key: Callable[[bytes], Any] = (
            json_value if fast else store._decode_key)  # noqa: SLF001

    def __getitem__(self, key: Any) -> Any:
        raw = self.store._get(self._key(key))  # noqa: SLF001
        if raw is None:
            raise KeyError(key)
        return self._decode(raw)

    def get(self, key: Any, default: Any = None) -> Any:
        raw = self.store._get(self._key(key))  # noqa: SLF001
        return default if raw is None else self._decode(raw)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.local.stage(self.store._writing_partition(), self.name,  # noqa: SLF001
                         self._key(key), self._value(value))

    def __delitem__(self, key: Any) -> None:
        self.local.stage(self.store._writing_partition(), self.name,  # noqa: SLF001
                         self._key(key), None)

    def __iter__(self) -> Iterator[Any]:
        return (self._decode_key(k) for k in self.store._iterkeys())  # noqa: SLF001

    def oldest(self, limit: int) -> list[Any]:
        """The first `limit` live keys in the current command's partition, in key order
        (the decider's `oldest`)."""
        return [self._decode_key(k) for k in self.store.oldest_keys(limit)]

    def first(self, prefix: str, limit: int) -> list[Any]:
        """The first `limit` live keys that start with `prefix` in the current command's
        partition, in key order (the decider's `first`). Keys are JSON text
        ('"<course>/<ticket>"'): the encoded prefix without its closing quote is a byte
        prefix of every key that starts with `prefix`."""
        raw = self._key(prefix)[:-1]
        return [self._decode_key(k) for k in self.store.first_keys(raw, limit)]

    def __len__(self) -> int:
        return self.store._size()  # noqa: SLF001
