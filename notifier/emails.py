"""Decision events rendered as e-mails to the student: pure, deterministic, no sending."""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import default as stock_policy
from email.utils import format_datetime

from schemas.messages import REJECTION_REASONS, Decision, RejectionReason, StudentSignedUp

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


def render(decision: Decision, course: CourseInfo | None, sender: str) -> EmailMessage:
    msg = EmailMessage(policy=default_policy if decision.email.isascii() else utf8_policy)
    msg["From"] = sender
    msg["To"] = _recipient(decision)
    msg["Subject"] = _one_line(_subject(decision, course))
    msg["Date"] = format_datetime(decision.occurred_at)
    msg["Message-ID"] = message_id(decision.event_id)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Event-Id"] = decision.event_id
    msg["X-Correlation-Id"] = decision.correlation_id
    msg["X-Signup-Id"] = decision.signup_id
    msg.set_content(_text(decision, course), cte="quoted-printable")
    msg.add_alternative(_html(decision, course), subtype="html", cte="quoted-printable")
    # Quoted-printable bodies never contain "=_", so this boundary cannot clash.
    msg.set_boundary(f"=_{decision.event_id}")
    return msg


def _recipient(decision: Decision) -> Address:
    name = _one_line(decision.name)
    if decision.email.isascii():
        return Address(display_name=name, addr_spec=decision.email)
    local, _, domain = decision.email.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def _one_line(value: str) -> str:
    printable = "".join(c for c in value if unicodedata.category(c) != "Cc" or c.isspace())
    return " ".join(printable.split())


def _subject(decision: Decision, course: CourseInfo | None) -> str:
    title = _title(decision, course)
    if isinstance(decision, StudentSignedUp):
        return f"Sign-up accepted: {title}"
    return f"Sign-up not accepted: {title}"


def _title(decision: Decision, course: CourseInfo | None) -> str:
    return course.title if course is not None else decision.course_id


def _text(decision: Decision, course: CourseInfo | None) -> str:
    return "\n\n".join(_paragraphs(decision, course, str)) + "\n"


def _html(decision: Decision, course: CourseInfo | None) -> str:
    body = "\n".join(f"<p>{p}</p>" for p in _paragraphs(decision, course, html.escape))
    return HTML_PAGE.format(body=body)


def _paragraphs(decision: Decision, course: CourseInfo | None, esc: Escape) -> list[str]:
    return [
        f"Hello {esc(decision.name)},",
        _outcome(decision, course, esc),
        f"Sign-up id: {esc(decision.signup_id)}",
    ]


def _outcome(decision: Decision, course: CourseInfo | None, esc: Escape) -> str:
    what = _course_phrase(decision, course, esc)
    if isinstance(decision, StudentSignedUp):
        return f"You are enrolled in {what}. {_seat(decision)}"
    return f"We could not enroll you in {what}: {esc(_reason(decision.reason))}."


def _reason(reason: str) -> str:
    # A reason this version does not know (a newer processor's) still gets a sentence.
    for known in REJECTION_REASONS:
        if reason == known:
            return REASONS[known]
    return f"the sign-up was rejected ({reason})"


def _course_phrase(decision: Decision, course: CourseInfo | None, esc: Escape) -> str:
    title = f"“{esc(_title(decision, course))}”"
    if course is None or not course.lecturer.strip():
        return title
    return f"{title}, taught by {esc(course.lecturer)}"


def _seat(decision: StudentSignedUp) -> str:
    if decision.capacity is None:
        return f"You hold seat {decision.seats_taken}."
    return f"You hold seat {decision.seats_taken} of {decision.capacity}."
