"""The chaos suite's check for commands that reached Kafka although their client saw the
killed command API drop the connection: each such sign-up is decided exactly once,
whichever first decision it got (accepted, waitlisted or rejected). Pure; no I/O."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from proof.audit import Logged
from proof.chaos import Evidence, lost_answers
from proof.chaos_load import Attempt, Request
from schemas.messages import SignUpRejected, StudentSignedUp, StudentWaitlisted

NOW = datetime(2026, 9, 1, tzinfo=UTC)
COURSE = "compilers"


def _base(kind: str, n: int, signup_id: str) -> dict[str, Any]:
    return dict(event_id=f"ev-{n}", event_type=kind, occurred_at=NOW, course_id=COURSE,
                causation_id=f"cmd-{n}", correlation_id=f"corr-{n}", signup_id=signup_id)


def _decision(kind: str, n: int, signup_id: str) -> Logged:
    student: dict[str, Any] = dict(email="", name="", date_of_birth=date(2001, 2, 3))
    message: Any
    if kind == "accepted":
        message = StudentSignedUp(**_base("StudentSignedUp", n, signup_id), **student,
                                  seats_taken=1)
    elif kind == "waitlisted":
        message = StudentWaitlisted(**_base("StudentWaitlisted", n, signup_id), **student,
                                    position=1)
    else:
        message = SignUpRejected(**_base("SignUpRejected", n, signup_id), email="", name="",
                                 reason="course_full")
    return Logged(0, n, 0, (), message)


def _lost_request(signup_id: str) -> Request:
    """A request whose first attempt lost its connection, retried to its sign-up id."""
    return Request(key=f"key-{signup_id}", course_id=COURSE, student=None,  # type: ignore[arg-type]
                   email=None, signup_id=signup_id,
                   attempts=[Attempt(0.0, 0.1, 0, None), Attempt(0.2, 0.3, 202, None)])


def _check(decisions: list[Logged]) -> bool:
    run = SimpleNamespace(load=SimpleNamespace(requests=[_lost_request("s-1")]), notes=[])
    # Two SignUp commands for s-1: the one whose answer was lost, and its retry.
    evidence = Evidence(log=None, decisions=decisions,  # type: ignore[arg-type]
                        commands=Counter({"s-1": 2}), accepted={})
    return lost_answers(run, evidence).ok  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["accepted", "waitlisted", "rejected"])
def test_a_retried_command_decided_once_passes_whatever_its_decision(kind: str) -> None:
    assert _check([_decision(kind, 1, "s-1")])


@pytest.mark.parametrize("kind", ["accepted", "waitlisted", "rejected"])
def test_a_retried_command_decided_twice_fails(kind: str) -> None:
    assert not _check([_decision(kind, 1, "s-1"), _decision(kind, 2, "s-1")])


def test_a_retried_command_never_decided_fails() -> None:
    assert not _check([_decision("accepted", 1, "s-other")])
