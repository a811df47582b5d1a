"""PostgreSQL adapter: the record of handled decisions and the courses learned from the log."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final, LiteralString

import psycopg
from psycopg.rows import TupleRow

from notifier.batch import HeldKey
from notifier.emails import CourseInfo
from notifier.handler import Contact
from schemas.personal import KEY_IN_USE_LOCK

_RECORD_HANDLED: Final = (
    "INSERT INTO sent_notifications (event_id, signup_id)"
    " VALUES (%(event)s, %(signup)s) ON CONFLICT (event_id) DO NOTHING")
# The same, and the key held for the send released, in one round trip.
_RECORD_HANDLED_AND_RELEASE: Final = (
    "WITH recorded AS (" + _RECORD_HANDLED + ")"
    " SELECT pg_advisory_unlock_shared(%(lock)s, hashtext(%(key)s))")
# How long a course the notifier has no row for is taken as unknown before it is looked
# up again: another instance may learn it meanwhile (a rebalance), but without this
# every e-mail of such a course cost a query (a notifier started at the log's end, as
# the bench's burst starts it, never sees the CourseCreated of the courses it mails for).
UNKNOWN_COURSE_SECONDS: Final = 30.0


class PostgresStore:
    """One autocommit connection, reopened on the next call after it broke.

    Every statement is idempotent, so a caller may simply repeat one that failed.
    A session the server ended while it sat idle (PostgreSQL restarted, an idle timeout)
    is replaced at a batch's first statement (`begin`), which then runs again; a lost
    session anywhere else fails the call, as the key-in-use locks it held went with it.
    """

    def __init__(self, conninfo: str, connect_timeout: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._conninfo = conninfo
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[TupleRow] | None = None
        # One cursor for every statement of the session: `Connection.execute` builds a
        # new one each time, a cost per statement that the notifier pays per e-mail.
        self._cursor: psycopg.Cursor[TupleRow] | None = None
        self._courses: dict[str, CourseInfo] = {}
        self._unknown: dict[str, float] = {}  # course id: when it was found missing
        self._held: str | None = None  # the key id whose key-in-use lock this session holds
        # Set by `begin`: the next statement may replace a lost session and run again.
        self._renewable = False

    def begin(self) -> None:
        """A batch starts: this session holds no lock now (each batch releases all of its
        own, or the session that held them is gone). If the server has ended the session
        meanwhile, the batch's first statement opens a new one and runs again there,
        instead of failing the batch. Without this, after a restart of PostgreSQL each
        lane's stale session failed once in turn, and each failure doubled the outage's
        backoff: e-mails resumed 14-99 s after a 10 s restart in the chaos suite."""
        self._renewable = self._conn is not None and not self._conn.closed

    def already_handled(self, event_id: str) -> bool:
        row = self._execute("SELECT 1 FROM sent_notifications WHERE event_id = %s", (event_id,))
        return row is not None

    def record_handled(self, event_id: str, signup_id: str) -> None:
        """Record the decision as handled (the primary key makes a second record a no-op)
        and, in the same round trip, release a held key: the send it guarded is over."""
        self.record_releasing(event_id, signup_id, self._held)
        self._held = None

    # ------------------------------------------------------------ a batch's (batch.py)

    def handled_saving(self, event_ids: Sequence[str],
                       contacts: Sequence[tuple[str, str, str, Contact]]) -> set[str]:
        """Which of `event_ids` were handled before, and, in the same round trip, the
        contacts (event id, sign-up, course, contact) of those that were not saved."""
        rows = self._fetch(
            "WITH handled AS (SELECT event_id FROM sent_notifications"
            "  WHERE event_id = ANY(%(ids)s::text[])),"
            " saved AS (INSERT INTO notifier_contacts (signup_id, course_id, key_id,"
            "  email_sealed, name_sealed)"
            "  SELECT c.signup_id, c.course_id, c.key_id, c.email_sealed, c.name_sealed"
            "  FROM unnest(%(events)s::text[], %(signups)s::text[], %(courses)s::text[],"
            "   %(keys)s::text[], %(emails)s::bytea[], %(names)s::bytea[])"
            "   AS c(event_id, signup_id, course_id, key_id, email_sealed, name_sealed)"
            "  WHERE c.event_id NOT IN (SELECT event_id FROM handled)"
            "  ON CONFLICT (signup_id) DO NOTHING)"
            " SELECT event_id FROM handled",
            {"ids": list(event_ids), "events": [c[0] for c in contacts],
             "signups": [c[1] for c in contacts], "courses": [c[2] for c in contacts],
             "keys": [c[3].key_id for c in contacts],
             "emails": [c[3].email_sealed for c in contacts],
             "names": [c[3].name_sealed for c in contacts]})
        return {str(row[0]) for row in rows}

    def save_contacts(self, contacts: Sequence[tuple[str, str, Contact]]) -> None:
        self._execute(
            "INSERT INTO notifier_contacts (signup_id, course_id, key_id, email_sealed,"
            " name_sealed) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[],"
            " %s::bytea[], %s::bytea[]) ON CONFLICT (signup_id) DO NOTHING",
            ([c[0] for c in contacts], [c[1] for c in contacts],
             [c[2].key_id for c in contacts], [c[2].email_sealed for c in contacts],
             [c[2].name_sealed for c in contacts]))

    def contacts_of(self, signup_ids: Sequence[str]) -> dict[str, Contact]:
        rows = self._fetch(
            "SELECT signup_id, key_id, email_sealed, name_sealed FROM notifier_contacts"
            " WHERE signup_id = ANY(%s)", (list(signup_ids),))
        return {str(r[0]): Contact(str(r[1]), bytes(r[2]), bytes(r[3])) for r in rows}

    def hold_keys(self, key_refs: Sequence[str]) -> list[HeldKey | None]:
        """Per reference (as `hold_key`), its key held, or None if it names no key: one
        shared key-in-use lock per reference, taken in key-id order (an erasure's order),
        each released by `record_releasing` or `release_keys`. The keys are read after
        the locks, by the next statement, so a deletion committed meanwhile is seen."""
        found = self._fetch(
            # OFFSET 0 keeps the sort below the lock calls: they run in key-id order.
            "SELECT ord, key_id, pg_advisory_lock_shared(%(lock)s, hashtext(key_id)) FROM ("
            " SELECT r.ord, f.key_id FROM unnest(%(refs)s::uuid[]) WITH ORDINALITY AS r(ref, ord)"
            " CROSS JOIN LATERAL ("
            "  SELECT key_id::text AS key_id FROM signup_keys WHERE key_ref = r.ref"
            "  UNION ALL SELECT key_id::text FROM student_keys WHERE key_id = r.ref"
            "  LIMIT 1) AS f ORDER BY f.key_id OFFSET 0) AS ordered",
            {"refs": list(key_refs), "lock": KEY_IN_USE_LOCK})
        key_ids = {int(row[0]) - 1: str(row[1]) for row in found}
        keys = {str(r[0]): bytes(r[1]) for r in self._fetch(
            "SELECT key_id::text, key FROM student_keys WHERE key_id = ANY(%s::uuid[])",
            (sorted(set(key_ids.values())),))} if key_ids else {}
        return [None if (key_id := key_ids.get(n)) is None else HeldKey(key_id, keys.get(key_id))
                for n in range(len(key_refs))]

    def release_keys(self, key_ids: Sequence[str]) -> None:
        """Release one lock per id. Never raises: if the statement fails, the session is
        closed, which releases every lock it held."""
        try:
            self._execute("SELECT count(pg_advisory_unlock_shared(%s, hashtext(k)))"
                          " FROM unnest(%s::text[]) AS k", (KEY_IN_USE_LOCK, list(key_ids)))
        except psycopg.Error:
            self.close()

    def record_releasing(self, event_id: str, signup_id: str, key_id: str | None) -> None:
        """`record_handled` that releases the lock of `key_id` (if any) in the same round
        trip, instead of the key of `hold_key`."""
        params: dict[str, object] = {"event": event_id, "signup": signup_id}
        if key_id is None:
            self._execute(_RECORD_HANDLED, params)
        else:
            self._execute(_RECORD_HANDLED_AND_RELEASE,
                          {**params, "lock": KEY_IN_USE_LOCK, "key": key_id})

    # ------------------------------------------------------------ one at a time

    def hold_key(self, key_ref: str) -> bytes | None:
        """The data key a decision's `key_id` refers to, held until `release_key`; None
        once the student is erased. Not cached: an erasure takes effect at its commit,
        with no copy left here to drop.

        `key_ref` is the sign-up's own reference (signup_keys), or, in records from
        before those, the student's key id itself. Held means the key-in-use lock,
        shared, on this session (no transaction stays open): an erasure waits for it
        before deleting the key, so it cannot report `done` while this process may
        still send to the student. The lock comes first, then the read of the key, in
        its own statement: a deletion committed meanwhile is seen. Needs SELECT on
        signup_keys and student_keys, nothing more (advisory locks are PUBLIC).
        """
        self.release_key()
        # The key id and its lock in one round trip (the lock taken once, for the one row);
        # the key itself is read by the next statement, whose snapshot follows the lock.
        found = self._execute(
            "SELECT key_id, pg_advisory_lock_shared(%(lock)s, hashtext(key_id)) FROM ("
            " SELECT key_id::text AS key_id FROM signup_keys WHERE key_ref = %(ref)s"
            " UNION ALL SELECT key_id::text FROM student_keys WHERE key_id = %(ref)s"
            " LIMIT 1) AS found",
            {"ref": key_ref, "lock": KEY_IN_USE_LOCK})
        if found is None:
            return None
        key_id = str(found[0])
        self._held = key_id
        row = self._execute("SELECT key FROM student_keys WHERE key_id = %s", (key_id,))
        if row is None:
            self.release_key()
            return None
        return bytes(row[0])

    def release_key(self) -> None:
        """Let an erasure of the held key go ahead (a closed session released it already)."""
        held, self._held = self._held, None
        if held is not None and self._conn is not None and not self._conn.closed:
            self._execute("SELECT pg_advisory_unlock_shared(%s, hashtext(%s))",
                          (KEY_IN_USE_LOCK, held))

    def save_contact(self, signup_id: str, course_id: str, contact: Contact) -> None:
        self.save_contacts([(signup_id, course_id, contact)])

    def contact(self, signup_id: str) -> Contact | None:
        row = self._execute(
            "SELECT key_id, email_sealed, name_sealed FROM notifier_contacts"
            " WHERE signup_id = %s", (signup_id,))
        return None if row is None else Contact(str(row[0]), bytes(row[1]), bytes(row[2]))

    def save_course(self, course_id: str, course: CourseInfo) -> None:
        self._execute(
            "INSERT INTO notifier_courses (course_id, title, lecturer) VALUES (%s, %s, %s)"
            " ON CONFLICT (course_id) DO UPDATE"
            " SET title = EXCLUDED.title, lecturer = EXCLUDED.lecturer",
            (course_id, course.title, course.lecturer),
        )
        self._courses[course_id] = course
        self._unknown.pop(course_id, None)

    def course(self, course_id: str) -> CourseInfo | None:
        # A course changes only by CourseChanged, which save_course puts here too. After a
        # rebalance another notifier may have learned a change this cache missed: titles
        # in e-mails may then lag until a restart, which is all they are used for.
        # A course no instance has learned is asked for again after UNKNOWN_COURSE_SECONDS.
        cached = self._courses.get(course_id)
        if cached is not None:
            return cached
        missing_since = self._unknown.get(course_id)
        if missing_since is not None and self._clock() - missing_since < UNKNOWN_COURSE_SECONDS:
            return None
        row = self._execute(
            "SELECT title, lecturer FROM notifier_courses WHERE course_id = %s", (course_id,)
        )
        if row is None:
            self._unknown[course_id] = self._clock()
            return None
        self._unknown.pop(course_id, None)
        course = CourseInfo(title=str(row[0]), lecturer=str(row[1]))
        self._courses[course_id] = course
        return course

    def close(self) -> None:
        # Closing the session releases its advisory locks.
        self._held = None
        self._cursor = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _fetch(self, sql: LiteralString, params: tuple[object, ...] | dict[str, object]
               ) -> list[TupleRow]:
        return self._run(sql, params).fetchall()

    def _run(self, sql: LiteralString, params: tuple[object, ...] | dict[str, object]
             ) -> psycopg.Cursor[TupleRow]:
        renewable, self._renewable = self._renewable, False
        try:
            return self._cursor_of_session().execute(sql, params)
        except psycopg.OperationalError:
            self.close()
            if not renewable:
                raise
        try:  # on a new session: a down server fails here, as before
            return self._cursor_of_session().execute(sql, params)
        except psycopg.OperationalError:
            self.close()
            raise

    def _cursor_of_session(self) -> psycopg.Cursor[TupleRow]:
        if self._conn is None or self._conn.closed or self._cursor is None:
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
            )
            self._cursor = self._conn.cursor()
        return self._cursor

    def _execute(self, sql: LiteralString,
                 params: tuple[object, ...] | dict[str, object]) -> TupleRow | None:
        cursor = self._run(sql, params)
        return cursor.fetchone() if cursor.description is not None else None
