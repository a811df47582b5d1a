"""What happens to one record of course-events: learn a course, send one e-mail, or dead-letter.

`Handler.advance` takes a job one step as far as it can go and says how it ended. It
knows nothing of consumer offsets or scheduling; `worker.py` does. A job remembers
whether its e-mail (or dead letter) already went out, so a retry after a failed
database write only writes the record and never sends twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

from notifier.emails import CourseInfo, Notice, Recipient, render_bytes
from notifier.mailer import MailError, SendFailure
from notifier.observability import Metrics
from schemas.codec import DecodeError, Message, decode
from schemas.messages import (
    CourseChanged,
    CourseChangeRejected,
    CourseCreated,
    CourseCreationRejected,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
    WithdrawalRejected,
)
from schemas.personal import SealError, unseal
from schemas.withdrawal import withdrawal_token
from service_kit.deadletter import dead_letter_headers
from service_kit.records import TRACED_NAME, Headers, SourceRecord

log = logging.getLogger("notifier")

KIND = {StudentSignedUp: "accepted", SignUpRejected: "rejected",
        StudentWaitlisted: "waitlisted", StudentPromoted: "promoted",
        StudentWithdrew: "withdrawn", WithdrawalRejected: "withdrawal_rejected"}
FirstDecision = StudentSignedUp | SignUpRejected | StudentWaitlisted
LaterNotice = StudentPromoted | StudentWithdrew | WithdrawalRejected


@dataclass(frozen=True)
class Contact:
    """How to reach the student of a sign-up, sealed as in its first decision."""

    key_id: str
    email_sealed: bytes
    name_sealed: bytes


class Store(Protocol):
    """The record of handled decisions and the courses learned (`notifier.store`)."""

    def hold_key(self, key_id: str) -> bytes | None: ...
    def release_key(self) -> None: ...
    def save_contact(self, signup_id: str, course_id: str, contact: Contact) -> None: ...
    def contact(self, signup_id: str) -> Contact | None: ...
    def already_handled(self, event_id: str) -> bool: ...
    def record_handled(self, event_id: str, signup_id: str) -> None: ...
    def save_course(self, course_id: str, course: CourseInfo) -> None: ...
    def course(self, course_id: str) -> CourseInfo | None: ...


class Mailer(Protocol):
    """Sends one e-mail, as its bytes, or raises MailError (`notifier.mailer`)."""

    def send(self, msg: bytes, recipient: str) -> None: ...


class DeadLetters(Protocol):
    """Returns once the broker has the letter, or raises DeadLetterError."""

    def send(self, record: SourceRecord, headers: Headers) -> None: ...


@dataclass
class Job:
    record: SourceRecord
    message: Message | None
    decode_error: str = ""
    attempts: int = 0  # failures of this message itself; server outages do not count
    first_failure: float | None = None
    # Set once the e-mail or the dead letter went out; then only the record may be missing.
    delivered_as: Literal["sent", "dead_lettered"] | None = None
    # Set when the worker gave up on it: (reason, detail) of the dead letter to write.
    give_up: tuple[str, str] | None = None

    @classmethod
    def of(cls, record: SourceRecord) -> Job:
        try:
            return cls(record, decode(record.value or b""))
        except DecodeError as exc:
            return cls(record, None, str(exc))

    @property
    def event_id(self) -> str | None:
        return getattr(self.message, "event_id", None)

    @property
    def correlation_id(self) -> str | None:
        return getattr(self.message, "correlation_id", None) or self.record.header(
            "correlation_id")

    @property
    def traced(self) -> bool:
        """The sign-up's caller follows it by its own correlation id (the processor's
        `traced` header): its e-mail is logged at INFO, every other one at DEBUG."""
        return self.record.header(TRACED_NAME) is not None

    def context(self) -> dict[str, object]:
        """What a log line may say about this job: ids and position, never personal data."""
        return {
            "correlation_id": self.correlation_id,
            "event_id": self.event_id,
            "event_type": type(self.message).__name__ if self.message else None,
            "signup_id": getattr(self.message, "signup_id", None),
            "partition": self.record.partition,
            "offset": self.record.offset,
        }


@dataclass(frozen=True)
class Done:
    outcome: Literal["sent", "skipped", "erased", "dead_lettered", "learned", "ignored",
                     "no_recipient"]


@dataclass(frozen=True)
class Failed:
    failure: SendFailure


Outcome = Done | Failed


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Handler:
    """One step per call; raises psycopg errors and DeadLetterError when those are down."""

    store: Store
    mailer: Mailer
    dead_letters: DeadLetters
    metrics: Metrics
    sender: str  # the From: of every e-mail
    now: Callable[[], datetime] = utc_now
    # WITHDRAWAL_SECRET, shared with the command API: every e-mail carries the sign-up's
    # withdrawal token, computed here so that it never travels through Kafka.
    withdrawal_secret: bytes | None = None

    def advance(self, job: Job) -> Outcome:
        if job.delivered_as is not None:
            self._record(job)
            return Done(job.delivered_as)
        if job.give_up is not None:
            return self.dead_letter(job, *job.give_up)
        msg = job.message
        if msg is None:
            return self.dead_letter(job, "undecodable", job.decode_error)
        if isinstance(msg, FirstDecision):
            return self._notify(job, msg)
        if isinstance(msg, LaterNotice):
            return self._notify_later(job, msg)
        if isinstance(msg, CourseCreated | CourseChanged):
            self.store.save_course(msg.course_id, CourseInfo(msg.title, msg.lecturer))
            return Done("learned")
        if isinstance(msg, CourseCreationRejected | CourseChangeRejected):
            return Done("ignored")
        # A command on the event log: somebody wrote to the wrong topic.
        return self.dead_letter(job, "unexpected_message", type(msg).__name__)

    def dead_letter(self, job: Job, reason: str, detail: str = "") -> Done:
        # A record refused at once (undecodable, say) failed once, though never retried.
        headers = dead_letter_headers(job.record, reason, self.now(), detail,
                                      max(job.attempts, 1))
        self.dead_letters.send(job.record, headers)
        job.delivered_as = "dead_lettered"
        self.metrics.dead_lettered.labels(reason).inc()
        log.warning("dead-lettered", extra={**job.context(), "reason": reason})
        self._record(job)
        return Done("dead_lettered")

    def _notify(self, job: Job, decision: FirstDecision) -> Outcome:
        if self.store.already_handled(decision.event_id):
            self.metrics.skipped.inc()
            return Done("skipped")
        if decision.key_id is None:  # from before sealing: the address is in clear
            return self._send(job, decision, Recipient(decision.email, decision.name))
        if decision.email_sealed and decision.name_sealed:
            # Later events about this sign-up (promoted, withdrew) name only its id.
            self.store.save_contact(decision.signup_id, decision.course_id, Contact(
                decision.key_id, decision.email_sealed, decision.name_sealed))
        # The key stays held until the send has finished or failed: an erasure of this
        # student waits for it, so once an erasure is done no mail to them can go out.
        key = self.store.hold_key(decision.key_id)
        try:
            if key is None:
                return self._erased(job)
            try:
                decision = opened(decision, key)
            except SealError as exc:
                return self.dead_letter(job, "unreadable_personal_data", str(exc))
            return self._send(job, decision, Recipient(decision.email, decision.name))
        finally:
            self.store.release_key()

    def _erased(self, job: Job) -> Outcome:
        """The student's key is gone: the address is unreadable for good. Recorded as
        handled, so the offset moves on, and counted."""
        self.metrics.erased.inc()
        log.info("student erased, e-mail not sent", extra=job.context())
        self._record(job)
        return Done("erased")

    def _notify_later(self, job: Job, notice: LaterNotice) -> Outcome:
        if self.store.already_handled(notice.event_id):
            self.metrics.skipped.inc()
            return Done("skipped")
        contact = self.store.contact(notice.signup_id)
        if contact is None:
            # An unknown sign-up (a withdrawal of an id nobody signed up with), or one
            # decided before sealing: no address to write to.
            log.info("no recipient for this sign-up, e-mail not sent", extra=job.context())
            self._record(job)
            return Done("no_recipient")
        key = self.store.hold_key(contact.key_id)
        try:
            if key is None:
                # Erased while waiting: still promoted in order (the seat counts), no e-mail.
                return self._erased(job)
            try:
                to = Recipient(unseal(key, notice.signup_id, "email", contact.email_sealed),
                               unseal(key, notice.signup_id, "name", contact.name_sealed))
            except SealError as exc:
                return self.dead_letter(job, "unreadable_personal_data", str(exc))
            return self._send(job, notice, to)
        finally:
            self.store.release_key()

    def _send(self, job: Job, notice: Notice, to: Recipient) -> Outcome:
        token = (None if self.withdrawal_secret is None else
                 withdrawal_token(self.withdrawal_secret, notice.course_id, notice.signup_id))
        try:
            email = render_bytes(notice, self.store.course(notice.course_id), self.sender, to,
                                 token)
        except Exception as exc:  # noqa: BLE001 - a decision that cannot be rendered
            return self.dead_letter(job, "render_failed", type(exc).__name__)
        try:
            self.mailer.send(email, to.email)
        except MailError as exc:
            return Failed(exc.failure)
        # From here until the record below is the only window in which a crash
        # sends this e-mail twice.
        job.delivered_as = "sent"
        self.metrics.sent.labels(KIND[type(notice)]).inc()
        # No line per e-mail at INFO: at a thousand e-mails a second the line cost about a
        # twentieth of the notifier's CPU. notifier_emails_sent_total counts them;
        # LOG_LEVEL=DEBUG logs each, and a traced sign-up's is at INFO, so that one grep
        # of its correlation id still follows it through every component.
        level = logging.INFO if job.traced else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "e-mail sent", extra=job.context())
        self._record(job)
        return Done("sent")

    def _record(self, job: Job) -> None:
        event_id = job.event_id
        if event_id is not None:
            self.store.record_handled(event_id, str(getattr(job.message, "signup_id", "")))


def opened(decision: FirstDecision, key: bytes) -> FirstDecision:
    """The decision with its sealed e-mail and name opened into the clear fields, in
    memory only, for rendering the e-mail."""
    if decision.email_sealed is None or decision.name_sealed is None:
        raise SealError("a key id without sealed fields")
    return replace(
        decision,
        email=unseal(key, decision.signup_id, "email", decision.email_sealed),
        name=unseal(key, decision.signup_id, "name", decision.name_sealed),
    )
