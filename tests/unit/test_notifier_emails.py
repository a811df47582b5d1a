import email
import email.policy
import unicodedata
from datetime import UTC, date, datetime
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.emails import (
    REASONS,
    CourseInfo,
    _one_line,
    _template,
    message_id,
    render,
    render_bytes,
)
from schemas.messages import (
    REJECTION_REASONS,
    Decision,
    SignUpRejected,
    StudentSignedUp,
    event_id_for,
)

NOW = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
COURSE = CourseInfo(title="Intro to Python", lecturer="Ada Lovelace")
SENDER = "Course Sign-up <noreply@example.org>"


def common(n: int, event_type: str) -> dict[str, Any]:
    """The fields every decision has, for the n-th command of a test."""
    return {"event_id": event_id_for(f"cmd-{n}"), "event_type": event_type, "occurred_at": NOW,
            "course_id": "intro-python", "causation_id": f"cmd-{n}",
            "correlation_id": f"corr-{n}", "signup_id": f"signup-{n}", "email": "ann@example.org"}


def accepted(name: str = "Ann Lee", capacity: int | None = 30) -> StudentSignedUp:
    return StudentSignedUp(**common(1, "StudentSignedUp"), name=name,
                           date_of_birth=date(2000, 5, 17), seats_taken=7, capacity=capacity)


def rejected(reason: str, name: str = "Ann Lee") -> SignUpRejected:
    return SignUpRejected(**common(2, "SignUpRejected"), name=name, reason=reason)


def round_trip(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def bodies(msg: EmailMessage) -> tuple[str, str]:
    text, page = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and page is not None
    return text.get_content(), page.get_content()


def test_an_acceptance_confirms_the_seat() -> None:
    msg = round_trip(render(accepted(), COURSE, SENDER))

    text, page = bodies(msg)
    assert msg["To"].addresses[0].addr_spec == "ann@example.org"
    assert msg["From"] == SENDER
    assert msg["Subject"] == "Sign-up accepted: Intro to Python"
    assert (msg["X-Event-Id"], msg["X-Correlation-Id"]) == (event_id_for("cmd-1"), "corr-1")
    for body in (text, page):
        assert "Hello Ann Lee," in body
        assert "Intro to Python" in body and "Ada Lovelace" in body
        assert "seat 7 of 30" in body


def test_an_acceptance_without_a_known_capacity_names_the_seat_only() -> None:
    text, _ = bodies(render(accepted(capacity=None), COURSE, SENDER))

    assert "seat 7." in text and " of " not in text


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("course_full", "the course is full"),
        ("course_not_found", "there is no such course"),
        ("already_enrolled", "you already hold a seat in this course"),
        ("something_new", "something_new"),
    ],
)
def test_a_rejection_gives_the_reason_in_plain_words(reason: str, words: str) -> None:
    msg = round_trip(render(rejected(reason), COURSE, SENDER))

    text, page = bodies(msg)
    assert msg["Subject"] == "Sign-up not accepted: Intro to Python"
    assert words in text and words in page
    assert "Ada Lovelace" in text


def test_every_rejection_reason_has_wording_of_its_own() -> None:
    assert set(REASONS) == set(REJECTION_REASONS)
    assert len(set(REASONS.values())) == len(REASONS)
    for reason in REJECTION_REASONS:
        text, _ = bodies(round_trip(render(rejected(reason), COURSE, SENDER)))
        assert REASONS[reason] in text and reason not in text


def test_an_unknown_course_is_named_by_its_id_without_a_lecturer() -> None:
    msg = round_trip(render(rejected("course_not_found"), None, SENDER))

    text, page = bodies(msg)
    assert msg["Subject"] == "Sign-up not accepted: intro-python"
    assert "“intro-python”: there is no such course." in text
    assert "taught by" not in text and "None" not in text and "None" not in page


@pytest.mark.parametrize("decision", [accepted("Zoë Ångström"), rejected("course_full", "李小龙")])
def test_non_ascii_names_survive_a_round_trip(decision: Decision) -> None:
    course = CourseInfo(title="Análisis numérico — 数值分析", lecturer="Émile Borel")

    msg = round_trip(render(decision, course, "Kurse Ü <noreply@example.org>"))

    text, page = bodies(msg)
    assert msg["To"].addresses[0].display_name == decision.name
    assert msg["From"].addresses[0].display_name == "Kurse Ü"
    assert msg["Subject"].endswith("Análisis numérico — 数值分析")
    assert f"Hello {decision.name}," in text and f"Hello {decision.name}," in page
    assert "Émile Borel" in text


def test_an_internationalised_address_survives_a_round_trip() -> None:
    decision = accepted()
    decision = StudentSignedUp(**{**vars(decision), "email": "zoë@exämple.org"})

    raw = render(decision, COURSE, SENDER).as_bytes()

    # RFC 6532 raw UTF-8 headers: CPython's bytes parser leaves addresses undecoded,
    # so a reader decodes the bytes first.
    msg = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg["To"].addresses[0].addr_spec == "zoë@exämple.org"
    assert bodies(msg)[0].startswith("Hello Ann Lee,")


def test_interpolated_values_are_escaped_in_the_html() -> None:
    course = CourseInfo(title="Tags & <b>bold</b>", lecturer='"Ada" <ada@x>')

    _, page = bodies(render(accepted("<script>alert(1)</script>"), course, SENDER))

    assert "<script>" not in page and "<b>" not in page and "<ada@x>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Tags &amp; &lt;b&gt;bold&lt;/b&gt;" in page


def test_line_breaks_in_a_name_cannot_inject_headers() -> None:
    msg = round_trip(render(accepted("Ann\r\nBcc: eve@example.org"), COURSE, SENDER))

    assert msg["Bcc"] is None
    assert msg["To"].addresses[0].display_name == "Ann Bcc: eve@example.org"


def test_the_message_id_is_derived_from_the_event_id() -> None:
    first = render(accepted(), COURSE, SENDER)
    again = render(accepted(), COURSE, "Other <other@example.net>")

    assert first["Message-ID"] == again["Message-ID"] == message_id(event_id_for("cmd-1"))
    assert event_id_for("cmd-1") in first["Message-ID"]
    assert render(rejected("course_full"), COURSE, SENDER)["Message-ID"] != first["Message-ID"]


def test_rendering_is_deterministic_to_the_byte() -> None:
    assert (
        render(accepted(), COURSE, SENDER).as_bytes()
        == render(accepted(), COURSE, SENDER).as_bytes()
    )


@pytest.mark.parametrize("decision", [accepted(), accepted("Zoë Ångström"),
                                      rejected("course_full", "李小龙")])
def test_header_classes_are_built_once_and_the_bytes_are_the_stock_policys(
    decision: Decision,
) -> None:
    first, second = render(decision, COURSE, SENDER), render(decision, COURSE, SENDER)
    # The stock registry makes a new class for every header of every message (slow).
    assert type(first["To"]) is type(second["To"])
    assert type(first["Subject"]) is type(second["Subject"])
    stock = email.policy.default.clone(utf8=first.policy.utf8)  # type: ignore[attr-defined]
    assert first.as_bytes() == first.as_bytes(policy=stock)


# ---------------------------------------------------------------- the bytes, from a template

_names = st.one_of(
    st.sampled_from(["Ann Lee", "Zoë Ångström", "O'Brien", 'Ann "the" Lee', "Lee, Ann",
                     "Ann  Lee ", "", "x" * 90, "Ann\r\nBcc: eve@example.org", "李雷"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=40))
_titles = st.one_of(
    st.sampled_from(["Intro to Python", "Über Typen", "A: B; C (D)", "t" * 80, ""]),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=70))
_ids = st.one_of(st.uuids().map(str), st.sampled_from(["corr-1", "a b", "x" * 70, "é"]))


@given(name=_names, title=_titles, lecturer=_names, correlation_id=_ids,
       email_address=st.sampled_from(["ann@example.org", "a.b+c@sub.example.org",
                                      "zoë@example.org", "\"a b\"@example.org"]),
       token=st.one_of(st.none(), st.sampled_from(["tok-123", "x" * 100])),
       kind=st.sampled_from(["accepted", "rejected", "no course"]))
@settings(max_examples=300, deadline=None)
def test_the_template_writes_the_email_packages_bytes(
    name: str, title: str, lecturer: str, correlation_id: str, email_address: str,
    token: str | None, kind: str,
) -> None:
    fields = {**common(1, "StudentSignedUp"), "correlation_id": correlation_id,
              "email": email_address}
    decision: Decision
    if kind == "rejected":
        decision = SignUpRejected(**{**fields, "event_type": "SignUpRejected"}, name=name,
                                  reason="course_full")
    else:
        decision = StudentSignedUp(**fields, name=name, date_of_birth=date(2000, 5, 17),
                                   seats_taken=7, capacity=30)
    course = None if kind == "no course" else CourseInfo(title, lecturer)
    expected = render(decision, course, SENDER, None, token).as_bytes()
    assert render_bytes(decision, course, SENDER, None, token) == expected


def test_the_common_e_mail_takes_the_template() -> None:
    assert _template(accepted(), COURSE, SENDER, None, "tok-1") == \
        render(accepted(), COURSE, SENDER, None, "tok-1").as_bytes()
    # An encoded-word name is the email package's to write.
    assert _template(accepted(name="Zoë Ångström"), COURSE, SENDER, None, None) is None


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
       | st.text(alphabet="ab \t\r\n\x00\x07\x1b\x1f\x7f\x85\x9f\xa0\u2028é", max_size=40))
def test_one_line_drops_exactly_the_control_characters_that_are_not_whitespace(
    value: str,
) -> None:
    per_character = "".join(c for c in value
                            if unicodedata.category(c) != "Cc" or c.isspace())
    assert _one_line(value) == " ".join(per_character.split())
