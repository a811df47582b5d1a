"""One sign-up through the whole stack: HTTP -> command -> decision -> view -> e-mail."""

from __future__ import annotations

import email
import email.policy
import uuid
from datetime import date

import httpx

from stack.waiting import eventually
from tests.e2e.conftest import RunningStack


def _create_course(stack: RunningStack, capacity: int) -> str:
    return stack.create_course("e2e", capacity, "Stream Processing", "Dr. Kreps")


def _decision(stack: RunningStack, signup_id: str) -> dict | None:
    response = httpx.get(f"{stack.config.query_url}/signups/{signup_id}", timeout=10)
    return response.json() if response.status_code == 200 else None


def _mails_for(stack: RunningStack, signup_id: str) -> list[email.message.EmailMessage]:
    found = []
    for path in stack.config.mail_dir.glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if msg.get("X-Signup-Id") == signup_id:
            found.append(msg)
    return found


def test_a_signup_is_decided_projected_and_mailed(full_stack: RunningStack) -> None:
    course_id = _create_course(full_stack, capacity=1)
    born = date(2000, 5, 17)
    bodies = [
        {"email": f"zoe.{uuid.uuid4().hex[:6]}@example.org", "name": "Zoë Ångström",
         "date_of_birth": born.isoformat()},
        {"email": f"li.{uuid.uuid4().hex[:6]}@example.org", "name": "李小龙",
         "date_of_birth": "1990-01-01"},
    ]
    first = httpx.post(f"{full_stack.config.command_url}/courses/{course_id}/signups",
                       json=bodies[0], timeout=30)
    assert first.status_code == 202, first.text
    accepted_id = first.json()["signup_id"]
    assert first.headers["Location"] == f"/signups/{accepted_id}"
    decided = eventually(lambda: _decision(full_stack, accepted_id), 60, "the first decision")
    assert decided == {"signup_id": accepted_id, "course_id": course_id, "status": "accepted",
                       "position": None, "reason": None}

    second = httpx.post(f"{full_stack.config.command_url}/courses/{course_id}/signups",
                        json=bodies[1], timeout=30)
    rejected_id = second.json()["signup_id"]
    rejected = eventually(lambda: _decision(full_stack, rejected_id), 60, "the second decision")
    assert (rejected["status"], rejected["reason"]) == ("rejected", "course_full")

    stats = httpx.get(f"{full_stack.config.query_url}/courses/{course_id}/stats",
                      params={"as_of": "2026-05-17"}, headers=full_stack.analyst,
                      timeout=10).json()
    # One student: no age figures, which would give away her birth date.
    assert (stats["enrolled"], stats["capacity"], stats["min_age"], stats["max_age"],
            stats["age_histogram"]) == (1, 1, None, None, {})

    mails = eventually(lambda: _mails_for(full_stack, accepted_id) or None, 60, "the e-mail")
    assert len(mails) == 1 and mails[0]["To"].addresses[0].addr_spec == bodies[0]["email"]
    assert "Stream Processing" in mails[0]["Subject"]
    refusal = eventually(lambda: _mails_for(full_stack, rejected_id) or None, 60, "the refusal")
    assert len(refusal) == 1


def test_unknown_course_is_rejected_with_its_reason(full_stack: RunningStack) -> None:
    course_id = f"no-such-course-{uuid.uuid4().hex[:6]}"
    response = httpx.post(f"{full_stack.config.command_url}/courses/{course_id}/signups",
                          json={"email": "ann@example.org", "name": "Ann",
                                "date_of_birth": "2001-02-03"}, timeout=30)
    assert response.status_code == 202
    signup_id = response.json()["signup_id"]
    decided = eventually(lambda: _decision(full_stack, signup_id), 60, "the decision")
    assert (decided["status"], decided["reason"]) == ("rejected", "course_not_found")


def test_every_component_reports_health_and_metrics(full_stack: RunningStack) -> None:
    config = full_stack.config
    for port in (config.command_api_port, config.query_api_port, config.processor_port,
                 config.projector_port, config.notifier_port):
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
    for port in (config.command_api_port, config.query_api_port):
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    processor = httpx.get(f"http://127.0.0.1:{config.processor_port}/metrics", timeout=10).text
    assert 'processor_consumer_lag{partition="' in processor
    assert "processor_decisions_total" in processor


def test_one_grep_follows_a_signup_and_logs_hold_no_personal_data(
    full_stack: RunningStack,
) -> None:
    course_id = _create_course(full_stack, capacity=5)
    correlation_id = f"trace-{uuid.uuid4().hex}"
    address = f"private.{uuid.uuid4().hex[:8]}@example.org"
    response = httpx.post(
        f"{full_stack.config.command_url}/courses/{course_id}/signups",
        json={"email": address, "name": "Secret Name", "date_of_birth": "1987-06-05"},
        headers={"X-Correlation-Id": correlation_id}, timeout=30)
    assert response.headers["X-Correlation-Id"] == correlation_id
    signup_id = response.json()["signup_id"]
    eventually(lambda: _mails_for(full_stack, signup_id) or None, 60, "the e-mail")

    def components_seen() -> set[str] | None:
        seen = {path.stem for path in (full_stack.config.run_dir / "logs").glob("*.log")
                if correlation_id in path.read_text(errors="replace")}
        wanted = {"command-api", "processor", "projector", "notifier"}
        return seen if wanted <= seen else None

    assert eventually(components_seen, 30, "the correlation id in every component's log")
    for path in (full_stack.config.run_dir / "logs").glob("*.log"):
        text = path.read_text(errors="replace")
        assert address not in text and "Secret Name" not in text and "1987-06-05" not in text, \
            f"personal data in {path.name}"
