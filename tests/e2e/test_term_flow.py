"""A registration term through the whole stack, over HTTP: concurrent sign-ups and
withdrawals on a full course with a waiting list, a raised capacity, then the event log
audited at every prefix, the views against a recount, and the e-mails against the
events, each e-mail's withdrawal token used for real."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import uuid
from collections import Counter
from functools import partial

import httpx

from proof import audit
from proof.term_audit import audit_term
from schemas.messages import (
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
    WithdrawalRejected,
)
from stack.waiting import eventually
from tests.e2e.conftest import RunningStack

STUDENTS = 16
CAPACITY, WAITLIST = 4, 6
TOKEN = re.compile(r"Withdrawal token: ([A-Za-z0-9_-]{43})")
KINDS = {StudentSignedUp: "Sign-up accepted", SignUpRejected: "Sign-up not accepted",
         StudentWaitlisted: "On the waiting list", StudentPromoted: "A seat for you",
         StudentWithdrew: "Withdrawal confirmed", WithdrawalRejected: "Withdrawal not possible"}


def _create(stack: RunningStack) -> str:
    course_id = f"term-{uuid.uuid4().hex[:10]}"
    answer = httpx.post(f"{stack.config.command_url}/courses", json={
        "course_id": course_id, "title": "Term", "lecturer": "Dr. Queue",
        "capacity": CAPACITY, "waitlist_capacity": WAITLIST},
        headers={"Authorization": f"Bearer {stack.config.admin_token()}"}, timeout=30)
    assert answer.status_code == 202, answer.text
    return course_id


def _signup(stack: RunningStack, signup_id: str) -> dict | None:
    answer = httpx.get(f"{stack.config.query_url}/signups/{signup_id}", timeout=10)
    return answer.json() if answer.status_code == 200 else None


def _mails(stack: RunningStack, signup_ids: set[str]) -> list[email.message.EmailMessage]:
    found = []
    for path in stack.config.mail_dir.glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if msg.get("X-Signup-Id") in signup_ids:
            found.append(msg)
    return found


async def _concurrently(stack: RunningStack, course_id: str,
                        accepted: dict[str, str]) -> dict[str, str]:
    """Sign-ups of STUDENTS students at once, and, as their 202s arrive, withdrawals of
    every third one (with its token) racing the later sign-ups."""
    url = stack.config.command_url
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def one(i: int) -> None:
            answer = await client.post(f"/courses/{course_id}/signups", json={
                "email": f"s{i}.{uuid.uuid4().hex[:6]}@example.org", "name": f"Student {i}",
                "date_of_birth": f"{1980 + i}-03-0{1 + i % 9}"})
            assert answer.status_code == 202, answer.text
            body = answer.json()
            accepted[body["signup_id"]] = body["withdrawal_token"]
            if i % 3 == 0:
                gone = await client.post(
                    f"/courses/{course_id}/signups/{body['signup_id']}/withdrawal",
                    json={"withdrawal_token": body["withdrawal_token"]})
                assert gone.status_code == 202, gone.text

        await asyncio.gather(*(one(i) for i in range(STUDENTS)))
    return accepted


def test_a_term_over_http_keeps_every_invariant_and_mails_every_decision(
    full_stack: RunningStack,
) -> None:
    config = full_stack.config
    course_id = _create(full_stack)
    eventually(lambda: httpx.get(f"{config.query_url}/courses/{course_id}/stats",
                                 headers=full_stack.analyst, timeout=10).status_code == 200
               or None, 60, "the course")
    tokens = asyncio.run(_concurrently(full_stack, course_id, {}))
    raised = httpx.patch(f"{config.command_url}/courses/{course_id}", json={"capacity": 6},
                         headers={"Authorization": f"Bearer {config.admin_token()}"},
                         timeout=30)
    assert raised.status_code == 202
    forged = httpx.post(f"{config.command_url}/courses/{course_id}/signups/"
                        f"{next(iter(tokens))}/withdrawal", json={"withdrawal_token": "A" * 43})
    assert forged.status_code == 401

    ids = set(tokens)
    eventually(lambda: all(_signup(full_stack, s) for s in ids) or None, 90, "every decision")

    seen: list[Counter[str]] = []

    def settled() -> audit.LogSnapshot | None:
        snapshot = audit.read_log(config.kafka_bootstrap, keys=[course_id.encode()])
        kinds = Counter(type(e).__name__ for e in snapshot.events())
        seen[:] = [kinds]
        return snapshot if kinds["CourseChanged"] == 1 and (
            kinds["StudentWithdrew"] + kinds["WithdrawalRejected"]) >= (STUDENTS + 2) // 3 \
            else None

    try:
        events = eventually(settled, 90, "the withdrawals and the change decided").events()
    except AssertionError:
        print("event types in the log:", seen)
        raise
    result = audit_term(events)
    assert result.ok, result.violations
    assert result.waitlisted > 0

    # The views equal the log (and a recount of who is enrolled and waiting at the end).
    expected = audit.expected_views(events, [course_id])

    def views_agree() -> bool | None:
        stats = httpx.get(f"{config.query_url}/courses/{course_id}/stats",
                          headers=full_stack.analyst, timeout=10).json()
        row = expected.courses[course_id]
        return (stats["enrolled"], stats["waitlisted"], stats["capacity"]) == (
            row.enrolled, row.waitlisted, 6) or None

    eventually(views_agree, 30, "the statistics to equal the recount")
    for signup_id, want in expected.decisions.items():
        got = _signup(full_stack, signup_id)
        assert got is not None and got["status"] == want.status, (signup_id, got, want)
    waiting = sorted((d["position"], s) for s in ids
                     if (d := _signup(full_stack, s)) and d["status"] == "waitlisted")
    assert [p for p, _ in waiting] == list(range(1, len(waiting) + 1))

    # One e-mail per decision about a student, of the kind of its event.
    notices = [e for e in events if type(e) in KINDS]
    def all_mailed() -> list[email.message.EmailMessage] | None:
        found = _mails(full_stack, ids)
        return found if len(found) >= len(notices) else None

    mails = eventually(all_mailed, 90, f"{len(notices)} e-mails")
    assert len(mails) == len(notices)
    by_event = {m["X-Event-Id"]: m for m in mails}
    for event in notices:
        assert str(by_event[event.event_id]["Subject"]).startswith(KINDS[type(event)])

    # Each e-mail's token works: the enrolled withdraw with the token from their e-mail.
    enrolled = [s for s in ids if (_signup(full_stack, s) or {}).get("status") == "accepted"]
    for signup_id in enrolled[:2]:
        mail = next(m for m in mails if m["X-Signup-Id"] == signup_id)
        body = mail.get_body(("plain",))
        assert body is not None
        found = TOKEN.search(body.get_content())
        assert found is not None and found.group(1) == tokens[signup_id]
        answer = httpx.post(f"{config.command_url}/courses/{course_id}/signups/{signup_id}/"
                            "withdrawal", json={"withdrawal_token": found.group(1)}, timeout=30)
        assert answer.status_code == 202
        eventually(partial(_withdrawn, full_stack, signup_id), 60,
                   "the withdrawal by e-mail token")


def _withdrawn(stack: RunningStack, signup_id: str) -> bool | None:
    return (_signup(stack, signup_id) or {}).get("status") == "withdrawn" or None
