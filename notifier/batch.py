"""Several records on one lane, of one or more courses: their reads and key locks in a few
round trips instead of a few per e-mail.

`BatchStore` is the `Store` the handler sees while it works through a batch, one job
after the other in log order, exactly as it would one at a time. Before the first job it
asks PostgreSQL at once which decisions were handled already, saving the contacts of the
others in the same statement, reads the contacts its later notices need, and takes the
key-in-use lock of every key the batch will send with (then reads those keys, in the next
statement, so a deletion committed meanwhile is seen). What stays per e-mail is its
sent-record, which also releases that e-mail's key lock: the duplicate window is still one
e-mail per lane.

Locks are taken in key-id order, the order in which an erasure takes its exclusive ones
(command_api/keys.py), so a batch and an erasure never wait for each other in a circle.
A job that ends without a record (failed, erased before the lock) has its lock released
when the batch ends; a session that broke released it already.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, cast

from notifier.emails import CourseInfo
from notifier.handler import Contact, Failed, FirstDecision, Handler, Job, LaterNotice, Outcome


@dataclass(frozen=True)
class HeldKey:
    key_id: str
    key: bytes | None  # None: erased after all (the lock is held all the same)


# An outcome per job in order, an exception where the batch stopped, None for each job
# after that, which it did not start.
Result = tuple[Job, Outcome | BaseException | None]


class BulkStore(Protocol):
    """What a batch needs of the store (`notifier.store.PostgresStore`)."""

    def begin(self) -> None: ...
    def handled_saving(self, event_ids: Sequence[str],
                       contacts: Sequence[tuple[str, str, str, Contact]]) -> set[str]: ...
    def save_contacts(self, contacts: Sequence[tuple[str, str, Contact]]) -> None: ...
    def contacts_of(self, signup_ids: Sequence[str]) -> dict[str, Contact]: ...
    def hold_keys(self, key_refs: Sequence[str]) -> list[HeldKey | None]: ...
    def release_keys(self, key_ids: Sequence[str]) -> None: ...
    def record_releasing(self, event_id: str, signup_id: str, key_id: str | None) -> None: ...
    def save_course(self, course_id: str, course: CourseInfo) -> None: ...
    def course(self, course_id: str) -> CourseInfo | None: ...


def _first(job: Job) -> FirstDecision | None:
    msg = job.message
    return msg if isinstance(msg, FirstDecision) else None


def _later(job: Job) -> LaterNotice | None:
    msg = job.message
    return msg if isinstance(msg, LaterNotice) else None


class BatchStore:
    """The handler's `Store` for one batch (see the module's docstring)."""

    def __init__(self, store: BulkStore, jobs: Sequence[Job]) -> None:
        self._store = store
        todo = [job for job in jobs if job.delivered_as is None and job.give_up is None]
        ids = [str(job.event_id) for job in todo if _first(job) or _later(job)]
        # The contacts of the first decisions, saved by the same statement that finds
        # which decisions were handled before, for those that were not.
        sealed = [(m.event_id, m.signup_id, m.course_id,
                   Contact(m.key_id, m.email_sealed, m.name_sealed))
                  for job in todo if (m := _first(job))
                  and m.key_id is not None and m.email_sealed and m.name_sealed]
        self._handled = store.handled_saving(ids, sealed) if ids else set()
        firsts = [m for job in todo if (m := _first(job)) and m.event_id not in self._handled]
        laters = [n for job in todo if (n := _later(job)) and n.event_id not in self._handled]
        self._contacts = {signup_id: contact for event_id, signup_id, _, contact in sealed
                          if event_id not in self._handled}
        missing = list({m.signup_id for m in laters} - self._contacts.keys())
        if missing:
            self._contacts.update(store.contacts_of(missing))
        # One lock per e-mail that will need one, in the order the handler asks for them.
        refs = [m.key_id for m in firsts if m.key_id is not None]
        refs += [c.key_id for m in laters if (c := self._contacts.get(m.signup_id))]
        self._keys: dict[str, deque[HeldKey | None]] = {}
        for ref, held in zip(refs, store.hold_keys(refs) if refs else [], strict=True):
            self._keys.setdefault(ref, deque()).append(held)
        self._current: str | None = None  # the key id the current job holds
        self._unreleased: list[str] = []

    def close(self) -> None:
        """Release every lock no sent-record released: failed jobs', erased students', and
        those of jobs the batch did not reach."""
        self.release_key()
        left = self._unreleased + [held.key_id for queue in self._keys.values()
                                   for held in queue if held is not None]
        self._keys.clear()
        self._unreleased = []
        if left:
            self._store.release_keys(left)

    # ---------------------------------------------------------------- Store

    def already_handled(self, event_id: str) -> bool:
        return event_id in self._handled

    def save_contact(self, signup_id: str, course_id: str, contact: Contact) -> None:
        if signup_id not in self._contacts:  # saved with the batch unless handled before
            self._store.save_contacts([(signup_id, course_id, contact)])
            self._contacts[signup_id] = contact

    def contact(self, signup_id: str) -> Contact | None:
        if signup_id not in self._contacts:
            found = self._store.contacts_of([signup_id])
            self._contacts.update(found)
        return self._contacts.get(signup_id)

    def hold_key(self, key_ref: str) -> bytes | None:
        self.release_key()
        queue = self._keys.get(key_ref)
        held = queue.popleft() if queue else self._hold_one(key_ref)
        if held is None:
            return None
        self._current = held.key_id
        return held.key

    def release_key(self) -> None:
        # Not released at once: the lock goes with the batch's end, or with a record.
        if self._current is not None:
            self._unreleased.append(self._current)
            self._current = None

    def record_handled(self, event_id: str, signup_id: str) -> None:
        self._store.record_releasing(event_id, signup_id, self._current)
        self._current = None
        self._handled.add(event_id)

    def save_course(self, course_id: str, course: CourseInfo) -> None:
        self._store.save_course(course_id, course)

    def course(self, course_id: str) -> CourseInfo | None:
        return self._store.course(course_id)

    def _hold_one(self, key_ref: str) -> HeldKey | None:
        # A key the batch did not foresee (a decision the log repeats within the batch
        # after its first copy failed, say): held on its own.
        return self._store.hold_keys([key_ref])[0]


def never(job: Job) -> bool:
    return False


def advance_each(handler: Handler, jobs: list[Job], stop: Callable[[Job], bool] = never
                 ) -> list[Result]:
    """`jobs` (each course's in log order) one after the other on `handler`. Stops at an
    exception (PostgreSQL or the broker down: that job gets it), at a failure of the
    whole SMTP server, or before a job for which `stop` says so (its partition is being
    revoked, or the worker stops); the jobs after that get None, as not started."""
    results: list[Result] = []
    try:
        for job in jobs:
            if stop(job):
                break
            outcome = handler.advance(job)
            results.append((job, outcome))
            if isinstance(outcome, Failed) and outcome.failure.server_wide:
                break
    except Exception as exc:  # noqa: BLE001 - the worker's thread decides what it means
        results.append((jobs[len(results)], exc))
    return results + [(job, None) for job in jobs[len(results):]]


def advance_batch(handler: Handler, jobs: list[Job], stop: Callable[[Job], bool] = never
                  ) -> list[Result]:
    """`advance_each`, reading and locking through one `BatchStore`."""
    if stop(jobs[0]):
        return [(job, None) for job in jobs]
    try:
        # Lanes are built with the PostgreSQL store only (bootstrap.py), which has these.
        store = cast(BulkStore, handler.store)
        store.begin()  # nothing is held between two batches
        batch = BatchStore(store, jobs)
    except Exception as exc:  # noqa: BLE001 - as in advance_each
        return [(jobs[0], exc), *((job, None) for job in jobs[1:])]
    try:
        return advance_each(replace(handler, store=batch), jobs, stop)
    finally:
        batch.close()
