"""A batch of one course's records on a lane: a few reads and locks for all of them, one
sent-record per e-mail, and every key lock released once, whatever happened."""

from __future__ import annotations

import smtplib
from collections import Counter
from collections.abc import Sequence

import psycopg

from notifier.batch import HeldKey, advance_batch
from notifier.emails import CourseInfo
from notifier.handler import Contact, Done, Failed, Handler
from notifier.observability import Metrics
from schemas.personal import new_data_key
from tests.unit.test_notifier_handler import (
    NOW,
    FakeDeadLetters,
    FakeMailer,
    accepted,
    job,
    later,
    sealed,
)


class FakeBulkStore:
    """PostgreSQL as the batch sees it: counts round trips and the key locks held."""

    def __init__(self) -> None:
        self.handled: dict[str, str] = {}
        self.keys: dict[str, bytes] = {}
        self.contacts: dict[str, Contact] = {}
        self.courses: dict[str, CourseInfo] = {}
        self.locks: Counter[str] = Counter()
        self.calls: list[str] = []
        self.down = False
        self.begun = 0  # batches started

    def _call(self, name: str) -> None:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        self.calls.append(name)

    def begin(self) -> None:
        # A batch starts on a session holding no lock: PostgresStore may replace the
        # session then (a restart of the server ended it), which is safe only so.
        assert not +self.locks, f"a batch starts with locks held: {+self.locks}"
        self.begun += 1

    def handled_saving(self, event_ids: Sequence[str],
                       contacts: Sequence[tuple[str, str, str, Contact]]) -> set[str]:
        self._call("handled_saving")
        handled = {e for e in event_ids if e in self.handled}
        for event_id, signup_id, _, contact in contacts:
            if event_id not in handled:
                self.contacts.setdefault(signup_id, contact)
        return handled

    def save_contacts(self, contacts: Sequence[tuple[str, str, Contact]]) -> None:
        self._call("save_contacts")
        for signup_id, _, contact in contacts:
            self.contacts.setdefault(signup_id, contact)

    def contacts_of(self, signup_ids: Sequence[str]) -> dict[str, Contact]:
        self._call("contacts_of")
        return {s: self.contacts[s] for s in signup_ids if s in self.contacts}

    def hold_keys(self, key_refs: Sequence[str]) -> list[HeldKey | None]:
        self._call("hold_keys")
        self.locks.update(key_refs)
        return [HeldKey(ref, self.keys.get(ref)) for ref in key_refs]

    def release_keys(self, key_ids: Sequence[str]) -> None:
        self.calls.append("release_keys")
        self.locks.subtract(key_ids)

    def record_releasing(self, event_id: str, signup_id: str, key_id: str | None) -> None:
        self._call("record")
        self.handled.setdefault(event_id, signup_id)
        if key_id is not None:
            self.locks[key_id] -= 1

    def save_course(self, course_id: str, course: CourseInfo) -> None:
        self.courses[course_id] = course

    def course(self, course_id: str) -> CourseInfo | None:
        return self.courses.get(course_id)

    def held(self) -> dict[str, int]:
        return {k: n for k, n in self.locks.items() if n}


def handler_on(store: FakeBulkStore, mailer: FakeMailer | None = None) -> Handler:
    return Handler(store, mailer or FakeMailer(), FakeDeadLetters(), Metrics(),  # type: ignore[arg-type]
                   "Courses <no-reply@example.org>", lambda: NOW, b"secret")


def test_a_batch_reads_and_locks_once_and_records_each_e_mail_releasing_its_key() -> None:
    store, mailer = FakeBulkStore(), FakeMailer()
    store.keys = {"k-1": (key := new_data_key())}
    jobs = [job(sealed(accepted(n), key), offset=n) for n in range(1, 6)]
    results = advance_batch(handler_on(store, mailer), jobs)
    assert [outcome for _, outcome in results] == [Done("sent")] * 5
    assert len(mailer.sent) == 5
    # One read of the sent-records that saves the contacts, one lock statement, then one
    # record per e-mail (the old one-at-a-time path: five statements per e-mail).
    assert store.calls == ["handled_saving", "hold_keys"] + ["record"] * 5
    assert store.held() == {} and store.begun == 1


def test_a_repeat_within_the_batch_is_skipped_and_every_lock_is_released_once() -> None:
    store, mailer = FakeBulkStore(), FakeMailer()
    store.keys = {"k-1": (key := new_data_key())}
    store.handled["ev-StudentSignedUp-1"] = "s-1"  # sent before this batch
    first = sealed(accepted(1), key)
    twice = sealed(accepted(2), key)
    erased = sealed(accepted(3), new_data_key(), key_id="k-gone")
    jobs = [job(first, 1), job(twice, 2), job(twice, 3), job(erased, 4)]
    results = advance_batch(handler_on(store, mailer), jobs)
    assert [outcome for _, outcome in results] == [
        Done("skipped"), Done("sent"), Done("skipped"), Done("erased")]
    assert len(mailer.sent) == 1
    assert store.held() == {}  # the repeat's lock went with the batch's end


def test_a_failed_send_keeps_its_lock_until_the_batch_ends_and_records_nothing() -> None:
    store, mailer = FakeBulkStore(), FakeMailer()
    store.keys = {"k-1": (key := new_data_key())}
    mailer.fail_with = smtplib.SMTPRecipientsRefused({"x": (550, b"5.1.1 no")})
    results = advance_batch(handler_on(store, mailer), [job(sealed(accepted(1), key), 1)])
    [(_, outcome)] = results
    assert isinstance(outcome, Failed) and not outcome.failure.server_wide
    assert store.handled == {} and store.held() == {}


def test_a_server_outage_stops_the_batch_and_leaves_the_rest_unstarted() -> None:
    store, mailer = FakeBulkStore(), FakeMailer()
    store.keys = {"k-1": (key := new_data_key())}
    mailer.fail_with = ConnectionRefusedError(111, "refused")
    jobs = [job(sealed(accepted(n), key), offset=n) for n in range(1, 4)]
    results = advance_batch(handler_on(store, mailer), jobs)
    first = results[0][1]
    assert isinstance(first, Failed) and first.failure.server_wide
    assert [outcome for _, outcome in results[1:]] == [None, None]
    assert store.held() == {}


def test_postgresql_down_gives_the_first_job_the_error_and_starts_none() -> None:
    store = FakeBulkStore()
    store.down = True
    jobs = [job(accepted(n), offset=n) for n in range(1, 3)]
    results = advance_batch(handler_on(store), jobs)
    assert isinstance(results[0][1], psycopg.OperationalError) and results[1][1] is None


def test_a_later_notice_finds_the_contact_its_decision_saved_in_the_same_batch() -> None:
    store, mailer = FakeBulkStore(), FakeMailer()
    store.keys = {"k-1": (key := new_data_key())}
    decision = sealed(accepted(1), key)
    promoted = later(1)[0]  # about sign-up s-1, named by its id only
    results = advance_batch(handler_on(store, mailer), [job(decision, 1), job(promoted, 2)])
    assert [outcome for _, outcome in results] == [Done("sent"), Done("sent")]
    assert "contacts_of" not in store.calls and store.held() == {}
    assert [recipient for _, recipient in mailer.sent] == ["ann1@example.org"] * 2


def test_a_batch_starts_no_further_job_once_told_to_stop() -> None:
    store, mailer = FakeBulkStore(), FakeMailer()
    store.keys = {"k-1": (key := new_data_key())}
    jobs = [job(sealed(accepted(n), key), offset=n) for n in range(1, 4)]
    results = advance_batch(handler_on(store, mailer), jobs, lambda j: j.record.offset >= 2)
    assert [outcome for _, outcome in results] == [Done("sent"), None, None]
    assert len(mailer.sent) == 1 and store.held() == {}
