"""One record through the notifier's handler, with in-memory stand-ins for SMTP, DB and Kafka."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import smtplib
from datetime import UTC, date, datetime
from email.message import EmailMessage
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from notifier.bootstrap import bootstrap
from notifier.emails import CourseInfo
from notifier.handler import Contact, Done, Failed, Handler, Job
from notifier.mailer import MailError, classify
from notifier.settings import Settings
from schemas import codec
from schemas.messages import (
    CourseChanged,
    CourseCreated,
    Event,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
    WithdrawalRejected,
)
from schemas.personal import new_data_key, seal
from schemas.withdrawal import withdrawal_token
from service_kit.records import Headers, SourceRecord

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WITHDRAWAL_SECRET = "unit-test-withdrawal-secret"


class FakeStore:
    def __init__(self) -> None:
        self.handled: dict[str, str] = {}
        self.courses: dict[str, CourseInfo] = {}
        self.keys: dict[str, bytes] = {}
        self.contacts: dict[str, Contact] = {}
        self.down = False
        self.held: str | None = None

    def save_contact(self, signup_id: str, course_id: str, contact: Contact) -> None:
        self.contacts.setdefault(signup_id, contact)

    def contact(self, signup_id: str) -> Contact | None:
        return self.contacts.get(signup_id)

    def hold_key(self, key_id: str) -> bytes | None:
        assert self.held is None, "a key held twice"
        self.held = key_id
        return self.keys.get(key_id)

    def release_key(self) -> None:
        self.held = None

    def already_handled(self, event_id: str) -> bool:
        return event_id in self.handled

    def record_handled(self, event_id: str, signup_id: str) -> None:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        self.handled.setdefault(event_id, signup_id)

    def save_course(self, course_id: str, course: CourseInfo) -> None:
        self.courses[course_id] = course

    def course(self, course_id: str) -> CourseInfo | None:
        return self.courses.get(course_id)


class FakeMailer:
    def __init__(self, store: FakeStore | None = None) -> None:
        self.sent: list[tuple[EmailMessage, str]] = []
        self.fail_with: BaseException | None = None
        self.store = store
        self.held_while_sending: list[str | None] = []

    def send(self, raw: bytes, recipient: str) -> None:
        # Kept parsed, as a reader's mail program would see it.
        msg = email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.default)
        if self.store is not None:
            self.held_while_sending.append(self.store.held)
        if self.fail_with is not None:
            raise MailError(classify(self.fail_with))
        self.sent.append((msg, recipient))


class FakeDeadLetters:
    def __init__(self) -> None:
        self.letters: list[tuple[SourceRecord, Headers]] = []

    def send(self, record: SourceRecord, headers: Headers) -> None:
        self.letters.append((record, headers))


def meta(event_type: str, n: int = 1) -> dict[str, Any]:
    return dict(event_id=f"ev-{event_type}-{n}", event_type=event_type, occurred_at=NOW,
                course_id="intro-python", causation_id=f"cmd-{n}", correlation_id=f"corr-{n}")


def accepted(n: int = 1) -> StudentSignedUp:
    return StudentSignedUp(**meta("StudentSignedUp", n), signup_id=f"s-{n}",
                           email=f"ann{n}@example.org", name="Zoë Ångström",
                           date_of_birth=date(2001, 2, 3), seats_taken=n, capacity=10)


def rejected(n: int = 1) -> SignUpRejected:
    return SignUpRejected(**meta("SignUpRejected", n), signup_id=f"s-{n}",
                          email=f"bob{n}@example.org", name="Bob", reason="course_full")


def job(message: Event | None, offset: int = 7, value: bytes | None = None) -> Job:
    if value is None:
        assert message is not None, "a message to encode, or the raw value"
        value = codec.encode(message)
    return Job.of(SourceRecord("course-events", 2, offset, b"intro-python", value,
                               [("correlation_id", b"corr-h")]))


class NoConsumer:
    """The handler never reads Kafka: the worker around it does."""


Parts = tuple[Handler, FakeStore, FakeMailer, FakeDeadLetters]


@pytest.fixture
def parts() -> Parts:
    store, mailer, letters = FakeStore(), FakeMailer(), FakeDeadLetters()
    settings = Settings(kafka_bootstrap_servers="unused:9092", database_url="unused",  # type: ignore[call-arg]
                        mail_from="Courses <no-reply@example.org>",
                        withdrawal_secret=SecretStr(WITHDRAWAL_SECRET))
    # The service's own composition root, with fakes for every adapter.
    worker = bootstrap(settings, store=store, mailer=mailer, dead_letters=letters,
                       consumer=NoConsumer(), now=lambda: NOW)  # type: ignore[arg-type]
    assert isinstance(worker.handler, Handler) and worker.closers == []
    return worker.handler, store, mailer, letters


def test_a_course_is_learned_and_named_in_the_subject(parts: Parts) -> None:
    handler, store, mailer, _ = parts
    course = CourseCreated(**meta("CourseCreated"), title="Intro to Python",
                           lecturer="Ada", capacity=10)
    assert handler.advance(job(course)) == Done("learned")
    assert handler.advance(job(accepted())) == Done("sent")
    msg, recipient = mailer.sent[0]
    assert recipient == "ann1@example.org"
    assert msg["Subject"] == "Sign-up accepted: Intro to Python"
    assert store.handled == {"ev-StudentSignedUp-1": "s-1"}


def test_the_same_decision_twice_sends_one_e_mail(parts: Parts) -> None:
    handler, _, mailer, _ = parts
    assert handler.advance(job(rejected(), offset=1)) == Done("sent")
    assert handler.advance(job(rejected(), offset=9)) == Done("skipped")
    assert len(mailer.sent) == 1


def test_a_failed_send_records_nothing(parts: Parts) -> None:
    handler, store, mailer, _ = parts
    mailer.fail_with = ConnectionRefusedError(111, "refused")
    outcome = handler.advance(job(accepted()))
    assert isinstance(outcome, Failed) and outcome.failure.server_wide
    assert store.handled == {}


def test_after_a_failed_record_the_retry_records_without_sending_again(parts: Parts) -> None:
    handler, store, mailer, _ = parts
    store.down = True
    pending = job(accepted())
    with pytest.raises(psycopg.OperationalError):
        handler.advance(pending)
    store.down = False
    assert handler.advance(pending) == Done("sent")
    assert len(mailer.sent) == 1 and "ev-StudentSignedUp-1" in store.handled


def test_a_dead_letter_carries_the_reason_and_the_source(parts: Parts) -> None:
    handler, store, _, letters = parts
    pending = job(accepted(), offset=42)
    pending.attempts = 3
    handler.dead_letter(pending, "recipient_refused", "550 5.1.1 mailbox unavailable")
    record, headers = letters.letters[0]
    assert record.value == pending.record.value and record.key == b"intro-python"
    assert dict(headers) == {
        "correlation_id": b"corr-h",
        "dlq.reason": b"recipient_refused",
        "dlq.source.topic": b"course-events",
        "dlq.source.partition": b"2",
        "dlq.source.offset": b"42",
        "dlq.failed_at": b"2025-03-01T12:00:00.000+00:00",
        "dlq.error": b"550 5.1.1 mailbox unavailable",
        "dlq.attempts": b"3",
    }
    # Handled: a later copy of this decision is not sent.
    assert "ev-StudentSignedUp-1" in store.handled


def test_an_undecodable_record_is_dead_lettered(parts: Parts) -> None:
    handler, store, mailer, letters = parts
    assert handler.advance(job(None, value=b"\xc3\x01garbage")) == Done("dead_lettered")
    assert dict(letters.letters[0][1])["dlq.reason"] == b"undecodable"
    assert mailer.sent == [] and store.handled == {}


def test_the_log_context_has_ids_but_no_personal_data() -> None:
    context = job(accepted()).context()
    text = repr(context)
    assert context["correlation_id"] == "corr-1" and context["event_id"] == "ev-StudentSignedUp-1"
    assert "ann1@" not in text and "Zoë" not in text and "2001" not in text


def test_a_smtp_5xx_is_returned_as_a_permanent_failure(parts: Parts) -> None:
    handler, _, mailer, _ = parts
    mailer.fail_with = smtplib.SMTPRecipientsRefused({"ann1@example.org": (550, b"no")})
    outcome = handler.advance(job(accepted()))
    assert isinstance(outcome, Failed) and outcome.failure.kind == "permanent"


# ------------------------------------------------------------------ sealed personal data


def sealed(decision: StudentSignedUp, key: bytes, key_id: str = "k-1") -> StudentSignedUp:
    return dataclasses.replace(
        decision, email="", name="", key_id=key_id,
        email_sealed=seal(key, decision.signup_id, "email", decision.email),
        name_sealed=seal(key, decision.signup_id, "name", decision.name))


def test_a_sealed_decision_is_opened_with_the_students_key_and_sent(parts: Parts) -> None:
    handler, store, mailer, _ = parts
    store.keys["k-1"] = key = new_data_key()
    assert handler.advance(job(sealed(accepted(), key))) == Done("sent")
    msg, recipient = mailer.sent[0]
    assert recipient == "ann1@example.org"
    assert "Zoë Ångström" in str(msg["To"])


def test_an_e_mail_is_logged_at_info_only_when_its_sign_up_is_traced(
    parts: Parts, caplog: pytest.LogCaptureFixture,
) -> None:
    handler, store, mailer, _ = parts
    store.keys["k-1"] = key = new_data_key()
    plain = job(sealed(accepted(1), key), offset=1)
    traced = job(sealed(accepted(2), key), offset=2)
    traced.record.headers.append(("traced", b"1"))
    with caplog.at_level("INFO", logger="notifier"):
        assert handler.advance(plain) == Done("sent")
        assert handler.advance(traced) == Done("sent")
    assert len(mailer.sent) == 2
    logged = [(r.levelname, r.getMessage(), getattr(r, "offset", None)) for r in caplog.records
              if r.getMessage() == "e-mail sent"]
    assert logged == [("INFO", "e-mail sent", 2)]
    assert 'notifier_emails_sent_total{kind="accepted"} 2.0' in handler.metrics.render().decode()
    with caplog.at_level("DEBUG", logger="notifier"):
        caplog.clear()
        assert handler.advance(job(sealed(accepted(3), key), offset=3)) == Done("sent")
    assert [(r.levelname, getattr(r, "offset", None)) for r in caplog.records
            if r.getMessage() == "e-mail sent"] == [("DEBUG", 3)]


def test_an_erased_student_gets_no_e_mail_and_the_decision_counts_as_handled(
    parts: Parts,
) -> None:
    handler, store, mailer, _ = parts
    outcome = handler.advance(job(sealed(accepted(), new_data_key())))  # the key is gone
    assert outcome == Done("erased")
    assert mailer.sent == []
    assert store.handled == {"ev-StudentSignedUp-1": "s-1"}
    assert "notifier_emails_erased_total 1.0" in handler.metrics.render().decode()


def test_a_decision_sealed_under_another_key_is_dead_lettered(parts: Parts) -> None:
    handler, store, mailer, letters = parts
    store.keys["k-1"] = new_data_key()
    assert handler.advance(job(sealed(accepted(), new_data_key()))) == Done("dead_lettered")
    assert mailer.sent == []
    assert dict(letters.letters[0][1])["dlq.reason"] == b"unreadable_personal_data"


@pytest.mark.parametrize("fails", [False, True])
def test_the_key_is_held_from_reading_it_until_the_send_has_finished_or_failed(
    parts: Parts, fails: bool
) -> None:
    handler, store, mailer, _ = parts
    mailer.store = store
    mailer.fail_with = smtplib.SMTPServerDisconnected("gone") if fails else None
    store.keys["k-1"] = key = new_data_key()

    handler.advance(job(sealed(accepted(), key)))

    assert mailer.held_while_sending == ["k-1"]
    assert store.held is None  # released after


def test_an_erased_students_key_is_released_too(parts: Parts) -> None:
    handler, store, _, _ = parts
    assert handler.advance(job(sealed(accepted(), new_data_key()))) == Done("erased")
    assert store.held is None


# ------------------------------------------------------------------ a registration term


def waitlisted(n: int, key: bytes) -> StudentWaitlisted:
    return StudentWaitlisted(
        **meta("StudentWaitlisted", n), signup_id=f"s-{n}", email="", name="",
        date_of_birth=date(2001, 2, 3), position=2, key_id="k-1",
        email_sealed=seal(key, f"s-{n}", "email", f"wait{n}@example.org"),
        name_sealed=seal(key, f"s-{n}", "name", "Wai Ting"))


def later(n: int) -> list[Event]:
    cmd = f"cmd-later-{n}"
    base = dict(occurred_at=NOW, course_id="intro-python", causation_id=cmd,
                correlation_id=f"corr-{n}", signup_id=f"s-{n}")
    return [
        StudentPromoted(event_id=f"ev-p-{n}", event_type="StudentPromoted", seats_taken=3,
                        date_of_birth=date(2001, 2, 3), **base),  # type: ignore[arg-type]
        StudentWithdrew(event_id=f"ev-w-{n}", event_type="StudentWithdrew", from_="enrolled",
                        seats_taken=2, date_of_birth=date(2001, 2, 3), **base),  # type: ignore[arg-type]
        WithdrawalRejected(event_id=f"ev-r-{n}", event_type="WithdrawalRejected",
                           reason="not_enrolled", **base),  # type: ignore[arg-type]
    ]


def test_every_decision_about_a_student_is_one_e_mail_with_the_withdrawal_token(
    parts: Parts,
) -> None:
    handler, store, mailer, _ = parts
    store.keys["k-1"] = key = new_data_key()
    events = [waitlisted(1, key), *later(1)]
    assert [handler.advance(job(e)) for e in events] == [Done("sent")] * 4
    assert [handler.advance(job(e)) for e in events] == [Done("skipped")] * 4
    subjects = [m["Subject"].split(":")[0] for m, _ in mailer.sent]
    assert subjects == ["On the waiting list", "A seat for you", "Withdrawal confirmed",
                        "Withdrawal not possible"]
    assert {r for _, r in mailer.sent} == {"wait1@example.org"}
    token = withdrawal_token(WITHDRAWAL_SECRET.encode(), "intro-python", "s-1")
    for msg, _ in mailer.sent:
        body = msg.get_body(("plain",))
        assert body is not None and f"Withdrawal token: {token}" in body.get_content()
    first = mailer.sent[0][0].get_body(("plain",))
    assert first is not None and "at place 2" in first.get_content()
    metrics = handler.metrics.render().decode()
    for kind in ("waitlisted", "promoted", "withdrawn", "withdrawal_rejected"):
        assert f'notifier_emails_sent_total{{kind="{kind}"}} 1.0' in metrics


def test_a_student_erased_while_waiting_is_promoted_without_an_e_mail(parts: Parts) -> None:
    handler, store, mailer, _ = parts
    store.keys["k-1"] = key = new_data_key()
    assert handler.advance(job(waitlisted(2, key))) == Done("sent")
    del store.keys["k-1"]  # the erasure
    promotion = later(2)[0]
    assert handler.advance(job(promotion)) == Done("erased")
    assert len(mailer.sent) == 1 and promotion.event_id in store.handled


def test_a_withdrawal_of_a_sign_up_nobody_made_sends_nothing(parts: Parts) -> None:
    handler, store, mailer, _ = parts
    rejected_withdrawal = later(3)[2]
    assert handler.advance(job(rejected_withdrawal)) == Done("no_recipient")
    assert mailer.sent == [] and rejected_withdrawal.event_id in store.handled


def test_a_course_change_renames_the_course_in_later_e_mails(parts: Parts) -> None:
    handler, store, mailer, _ = parts
    store.keys["k-1"] = key = new_data_key()
    change = CourseChanged(**meta("CourseChanged"), title="Python, the sequel",
                           lecturer="Ada", capacity=40, waitlist_capacity=5)
    assert handler.advance(job(change)) == Done("learned")
    assert handler.advance(job(waitlisted(4, key))) == Done("sent")
    assert mailer.sent[0][0]["Subject"] == "On the waiting list: Python, the sequel"
