"""The processor's tables through the running stack: what repeats write, and what the
changelog topics hold."""

from __future__ import annotations

import uuid
from datetime import date

import httpx

from schemas import topics
from stack.waiting import eventually
from tests.e2e.conftest import RunningStack
from tests.support import event_in, every_record


def _create_course(stack: RunningStack, capacity: int) -> str:
    return stack.create_course("state", capacity, "State", "Dr. Disk")


def _sign_up(stack: RunningStack, course_id: str, body: dict, key: str | None = None) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    response = httpx.post(f"{stack.config.command_url}/courses/{course_id}/signups",
                          json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["signup_id"])


def _decided(stack: RunningStack, signup_ids: list[str]) -> bool | None:
    for signup_id in signup_ids:
        if httpx.get(f"{stack.config.query_url}/signups/{signup_id}", timeout=10).status_code \
                != 200:
            return None
    return True


def _records(servers: str, topic_filter: str) -> list[tuple[str, bytes | None, bytes | None]]:
    """Every record of every topic whose name contains `topic_filter`, from the start."""
    return [(str(msg.topic()), msg.key(), msg.value())
            for msg in every_record(servers, lambda topic: topic_filter in topic)]


def test_repeated_idempotency_keys_leave_no_repeated_record(full_stack: RunningStack) -> None:
    course_id = _create_course(full_stack, capacity=5)
    bodies = [{"email": f"rep{i}.{uuid.uuid4().hex[:6]}@example.org", "name": f"Repeat {i}",
               "date_of_birth": "2001-02-03"} for i in range(12)]
    keys = [str(uuid.uuid4()) for _ in bodies]
    signup_ids = {_sign_up(full_stack, course_id, b, k) for b, k in zip(bodies, keys, strict=True)
                  for _ in range(4)}
    assert len(signup_ids) == len(bodies)
    # Decided after every repeat: the same course, so the same partition, in order.
    last = _sign_up(full_stack, course_id, {"email": f"last.{uuid.uuid4().hex[:6]}@example.org",
                                            "name": "Last", "date_of_birth": "2001-02-03"})
    eventually(lambda: _decided(full_stack, [*signup_ids, last]), 90, "every decision")

    records = [r for r in _records(full_stack.config.kafka_bootstrap, topics.EVENTS)
               if r[1] == course_id.encode()]
    events = [event_in(value) for _, _, value in records if value is not None]
    assert [e.event_type for e in events].count("CourseCreated") == 1
    decided = [getattr(e, "signup_id", None) for e in events if e.event_type != "CourseCreated"]
    assert sorted(decided) == sorted([*signup_ids, last])  # type: ignore[type-var]


def test_no_personal_data_in_any_changelog_topic(full_stack: RunningStack) -> None:
    course_id = _create_course(full_stack, capacity=2)
    tag = uuid.uuid4().hex[:8]
    people = [(f"Priya.Quist{tag}@Example.org", f"Priya Quist{tag}", date(1987, 6, 5)),
              (f"olaf.rune{tag}@example.org", f"Olaf Rune{tag}", date(1979, 11, 23)),
              (f"xena.ulm{tag}@example.org", f"Xena Ulm{tag}", date(1968, 4, 30))]
    ids = [_sign_up(full_stack, course_id, {"email": e, "name": n,
                                            "date_of_birth": d.isoformat()})
           for e, n, d in people]
    eventually(lambda: _decided(full_stack, ids), 90, "the decisions")

    changelogs = _records(full_stack.config.kafka_bootstrap, "-changelog")
    assert {t for t, _, _ in changelogs} >= {"course-processor-seat_holders-changelog",
                                             "course-processor-decided_signups-changelog"}
    def joined(records: list[tuple[str, bytes | None, bytes | None]]) -> bytes:
        return b"\n".join((k or b"") + b"\x00" + (v or b"") for _, k, v in records).lower()

    blob = joined(changelogs)
    # A live place (a seat or a waiting entry of a term) keeps the student's birth date,
    # which its promotion or withdrawal carries for the statistics, as course-events does
    # in clear; it goes when the place goes. Nothing else holds one, and no changelog
    # holds an address or a name.
    without_places = joined([r for r in changelogs if not r[0].endswith("-places-changelog")])
    for email, name, born in people:
        for secret in (email.lower(), email.split("@")[0].lower(), name.lower(),
                       name.split()[1].lower()):
            assert secret.encode() not in blob, f"{secret!r} found in a changelog topic"
        assert born.isoformat().encode() not in without_places, (
            f"{born} found in a changelog topic other than places")
    # The sign-ups are in there all the same, under their ids.
    assert all(i.encode() in blob for i in ids)
