"""Decision events rendered as e-mails to the student: pure, deterministic, no sending.

One e-mail per decision about a student: accepted, waitlisted (with the position),
rejected, promoted, withdrawn, withdrawal rejected. Each carries the sign-up's withdrawal
token when the notifier has the secret to compute it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import quoprimime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import default as stock_policy
from email.utils import format_datetime
from functools import lru_cache

from schemas.messages import (
    REJECTION_REASONS,
    Decision,
    RejectionReason,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
    WithdrawalRejected,
)

# Every event about a student that gets an e-mail.
Notice = Decision | StudentWaitlisted | StudentPromoted | StudentWithdrew | WithdrawalRejected

# A fixed right-hand side, so the Message-ID depends on the event alone and a re-sent
# decision carries the same id whatever the sender setting.
MESSAGE_ID_DOMAIN = "course-signup"

REASONS: dict[RejectionReason, str] = {
    "course_full": "the course is full",
    "course_not_found": "there is no such course",
    "already_enrolled": "you already hold a seat in this course",
}

HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"></head><body>
{body}
</body></html>
"""


class _HeaderClasses(HeaderRegistry):
    """The standard header classes, each built once. The stock registry builds a new class
    (`type(...)`) for every header it is asked for, which was half the CPU of rendering
    and serialising an e-mail; the headers and bytes are the same."""

    def __init__(self) -> None:
        super().__init__()
        self._built: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = super().__getitem__(name)
        return built


default_policy = stock_policy.clone(header_factory=_HeaderClasses())
# An internationalised address needs RFC 6532 (raw UTF-8) headers; the mailer's server
# must then offer SMTPUTF8.
utf8_policy = default_policy.clone(utf8=True)


@dataclass(frozen=True)
class CourseInfo:
    title: str
    lecturer: str


Escape = Callable[[str], str]


def message_id(event_id: str) -> str:
    return f"<{event_id}@{MESSAGE_ID_DOMAIN}>"


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str


def render(decision: Notice, course: CourseInfo | None, sender: str,
           to: Recipient | None = None, withdrawal_token: str | None = None) -> EmailMessage:
    """The e-mail about `decision` to `to` (by default the address in the decision itself,
    which only the first decisions carry)."""
    if to is None:
        if not isinstance(decision, StudentSignedUp | SignUpRejected | StudentWaitlisted):
            raise ValueError(f"a {type(decision).__name__} names no recipient")
        to = Recipient(decision.email, decision.name)
    msg = EmailMessage(policy=default_policy if to.email.isascii() else utf8_policy)
    msg["From"] = sender
    msg["To"] = _recipient(to)
    msg["Subject"] = _one_line(_subject(decision, course))
    msg["Date"] = format_datetime(decision.occurred_at)
    msg["Message-ID"] = message_id(decision.event_id)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Event-Id"] = decision.event_id
    msg["X-Correlation-Id"] = decision.correlation_id
    msg["X-Signup-Id"] = decision.signup_id
    msg.set_content(_text(decision, course, to, withdrawal_token), cte="quoted-printable")
    msg.add_alternative(_html(decision, course, to, withdrawal_token), subtype="html",
                        cte="quoted-printable")
    # Quoted-printable bodies never contain "=_", so this boundary cannot clash.
    msg.set_boundary(f"=_{decision.event_id}")
    return msg


def _recipient(to: Recipient) -> Address:
    name = _one_line(to.name)
    if to.email.isascii():
        return Address(display_name=name, addr_spec=to.email)
    local, _, domain = to.email.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


# The control characters (Unicode category Cc: C0, DEL and C1) that are not whitespace,
# mapped to nothing: one str.translate instead of a test per character.
_CONTROLS = {c: None for c in (*range(0x20), *range(0x7F, 0xA0)) if not chr(c).isspace()}


def _one_line(value: str) -> str:
    """`value` without control characters, its whitespace runs one space each."""
    return " ".join(value.translate(_CONTROLS).split())


SUBJECTS = {
    StudentSignedUp: "Sign-up accepted",
    SignUpRejected: "Sign-up not accepted",
    StudentWaitlisted: "On the waiting list",
    StudentPromoted: "A seat for you",
    StudentWithdrew: "Withdrawal confirmed",
    WithdrawalRejected: "Withdrawal not possible",
}


def _subject(decision: Notice, course: CourseInfo | None) -> str:
    return f"{SUBJECTS[type(decision)]}: {_title(decision, course)}"


def _title(decision: Notice, course: CourseInfo | None) -> str:
    return course.title if course is not None else decision.course_id


def _text(decision: Notice, course: CourseInfo | None, to: Recipient,
          token: str | None) -> str:
    return "\n\n".join(_paragraphs(decision, course, to, token, str)) + "\n"


def _html(decision: Notice, course: CourseInfo | None, to: Recipient,
          token: str | None) -> str:
    paragraphs = _paragraphs(decision, course, to, token, html.escape)
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return HTML_PAGE.format(body=body)


def _paragraphs(decision: Notice, course: CourseInfo | None, to: Recipient,
                token: str | None, esc: Escape) -> list[str]:
    paragraphs = [
        f"Hello {esc(to.name)},",
        _outcome(decision, course, esc),
        f"Sign-up id: {esc(decision.signup_id)}",
    ]
    if token is not None:
        paragraphs.append(
            f"Withdrawal token: {esc(token)} (to leave the course or its waiting list, POST"
            f" it as withdrawal_token to /courses/{esc(decision.course_id)}/signups/"
            f"{esc(decision.signup_id)}/withdrawal of the sign-up service)")
    return paragraphs


def _outcome(decision: Notice, course: CourseInfo | None, esc: Escape) -> str:
    what = _course_phrase(decision, course, esc)
    if isinstance(decision, StudentSignedUp):
        return f"You are enrolled in {what}. {_seat(decision)}"
    if isinstance(decision, StudentWaitlisted):
        return (f"{what} is full, so you are on its waiting list, at place "
                f"{decision.position}. A seat that frees up goes to whoever has waited "
                "longest.")
    if isinstance(decision, StudentPromoted):
        return f"A seat in {what} freed up and it is yours: you are enrolled now."
    if isinstance(decision, StudentWithdrew):
        left = "the course" if decision.from_ == "enrolled" else "its waiting list"
        return f"You have withdrawn from {what}: you left {left}."
    if isinstance(decision, WithdrawalRejected):
        return (f"Your withdrawal from {what} was not possible: the sign-up holds no seat "
                "and no place on the waiting list (rejected, unknown or withdrawn already).")
    return f"We could not enroll you in {what}: {esc(_reason(decision.reason))}."


def _reason(reason: str) -> str:
    # A reason this version does not know (a newer processor's) still gets a sentence.
    for known in REJECTION_REASONS:
        if reason == known:
            return REASONS[known]
    return f"the sign-up was rejected ({reason})"


def _course_phrase(decision: Notice, course: CourseInfo | None, esc: Escape) -> str:
    title = f"“{esc(_title(decision, course))}”"
    if course is None or not course.lecturer.strip():
        return title
    return f"{title}, taught by {esc(course.lecturer)}"


def _seat(decision: StudentSignedUp) -> str:
    if decision.capacity is None:
        return f"You hold seat {decision.seats_taken}."
    return f"You hold seat {decision.seats_taken} of {decision.capacity}."


# ---------------------------------------------------------------- the bytes, directly

# Header values the email package writes out verbatim: printable ASCII, nothing to quote
# or encode; a display name of atext words only.
_PLAIN = re.compile(r"[ -~]*")
_WORDS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+( [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_TOKEN = re.compile(r"[A-Za-z0-9._-]+")
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")
MAX_LINE = 78


def render_bytes(decision: Notice, course: CourseInfo | None, sender: str,
                 to: Recipient | None = None, withdrawal_token: str | None = None) -> bytes:
    """`render(...).as_bytes()`, the same bytes, about ten times cheaper: written from a
    template when every header is plain ASCII that the email package would write as it
    is (the common case), and by the email package itself otherwise."""
    fast = _template(decision, course, sender, to, withdrawal_token)
    if fast is not None:
        return fast
    return render(decision, course, sender, to, withdrawal_token).as_bytes()


@lru_cache(maxsize=16)
def _from_line(sender: str) -> str:
    msg = EmailMessage(policy=default_policy)
    msg["From"] = sender
    return msg.as_string().split("\n\n", 1)[0]


def _template(decision: Notice, course: CourseInfo | None, sender: str,
              to: Recipient | None, token: str | None) -> bytes | None:
    if to is None:
        if not isinstance(decision, StudentSignedUp | SignUpRejected | StudentWaitlisted):
            return None  # render() says why
        to = Recipient(decision.email, decision.name)
    name, subject = _one_line(to.name), _one_line(_subject(decision, course))
    ids = (decision.event_id, decision.correlation_id, decision.signup_id)
    if not (_ADDRESS.fullmatch(to.email) and _WORDS.fullmatch(name)
            and _PLAIN.fullmatch(subject) and all(_TOKEN.fullmatch(i) for i in ids)):
        return None
    event_id = decision.event_id
    headers = [
        _from_line(sender),
        f"To: {name} <{to.email}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(decision.occurred_at)}",
        f"Message-ID: {message_id(event_id)}",
        "Auto-Submitted: auto-generated",
        f"X-Event-Id: {event_id}",
        f"X-Correlation-Id: {decision.correlation_id}",
        f"X-Signup-Id: {decision.signup_id}",
    ]
    if any(len(line) > MAX_LINE for line in headers) or "\n" in headers[0]:
        return None
    boundary = f"=_{event_id}"
    content_type = f'Content-Type: multipart/alternative; boundary="{boundary}"'
    if len(content_type) > MAX_LINE:  # folded as the email package folds it
        content_type = f'Content-Type: multipart/alternative;\n boundary="{boundary}"'
    text = _qp(_text(decision, course, to, token))
    page = _qp(_html(decision, course, to, token))
    return "\n".join([
        *headers,
        "MIME-Version: 1.0",
        content_type,
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
        "",
        text,
        f"--{boundary}",
        'Content-Type: text/html; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
        "MIME-Version: 1.0",
        "",
        page,
        f"--{boundary}--",
        "",
    ]).encode("ascii")


def _qp(body: str) -> str:
    # What set_content(cte="quoted-printable") stores for a text part.
    lines = body.encode("utf-8").splitlines()
    return quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), MAX_LINE)
