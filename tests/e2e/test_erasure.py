"""Forgetting a student, through the running stack: crypto-shredding end to end.

A student signs up for several courses and gets e-mails; a decision of theirs is in
flight (the processor paused) when the erasure comes; the command API, the processor
and the notifier are then killed (SIGKILL) and `make up` restarts them. Afterwards
the erasure is done; no byte the system keeps (every record of every Kafka topic,
a pg_dump, the processor's local state, every log, every other file under $RUN_DIR
except the mail sink, which is the students' own mailbox) holds the student's
e-mail address or name in any letter case; no further e-mail went to them; their
seats stay taken; the statistics at two dates are the same before, after, and after
a replay; another student's data still opens.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import httpx
import psycopg
from confluent_kafka import Consumer

from schemas import topics
from schemas.codec import decode
from schemas.messages import StudentSignedUp
from schemas.personal import unseal
from service_kit.kafka_auth import client_config
from stack import postgres
from stack.waiting import eventually
from tests.e2e.conftest import RunningStack
from tests.support import every_record, headers_of

DATES = ("2031-01-15", "2047-08-01")


def _post(stack: RunningStack, path: str, body: dict, admin: bool = False) -> dict:
    headers = {"Authorization": f"Bearer {stack.config.admin_token()}"} if admin else {}
    response = httpx.post(stack.config.command_url + path, json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return dict(response.json())


def _get(stack: RunningStack, path: str) -> dict | None:
    # The admin token opens every route of the query API (the erasures' too).
    response = httpx.get(stack.config.query_url + path, headers=stack.admin, timeout=10)
    return dict(response.json()) if response.status_code == 200 else None


def _course(stack: RunningStack, capacity: int) -> str:
    course_id = f"erase-{uuid.uuid4().hex[:10]}"
    _post(stack, "/courses", {"course_id": course_id, "title": "Forgetting",
                              "lecturer": "Dr. Shred", "capacity": capacity}, admin=True)
    eventually(lambda: _get(stack, f"/courses/{course_id}/stats"), 60, "the course")
    return course_id


def _stats(stack: RunningStack, courses: list[str]) -> list[dict | None]:
    return [_get(stack, f"/courses/{c}/stats?as_of={d}") for c in courses for d in DATES]


def _mails(stack: RunningStack) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in stack.config.mail_dir.glob("*.eml")]


def _mailed(stack: RunningStack, signup_ids: set[str]) -> bool | None:
    seen = {m.get("X-Signup-Id") for m in _mails(stack)}
    return True if signup_ids <= seen else None


def _pid(stack: RunningStack, name: str) -> int:
    return int((stack.config.pids / f"{name}.pid").read_text().strip())


def _every_kafka_record(servers: str) -> bytes:
    """Keys, values and headers of every record of every topic (Kafka's own included),
    aborted ones included."""
    chunks: list[bytes] = []
    for msg in every_record(servers):
        chunks += [str(msg.topic()).encode(), msg.key() or b"", msg.value() or b""]
        chunks += [k.encode() + v for k, v in headers_of(msg).items()]
    return b"\x00".join(chunks)


def _pg_dump(stack: RunningStack) -> bytes:
    done = subprocess.run([str(postgres.bin_dir() / "pg_dump"), "--dbname",
                           stack.config.database_url], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def _files(root: Path, skip: tuple[Path, ...]) -> dict[Path, bytes]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not any(path.is_relative_to(s) for s in skip):
            found[path] = path.read_bytes()
    return found


def _metric(stack: RunningStack, name: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{stack.config.notifier_port}/metrics", timeout=5).text
    values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(name)]
    return values[0] if values and values[0] >= 1 else None


def _assert_nowhere(stack: RunningStack, words: list[str], kafka_bytes: bytes) -> None:
    """No word, in any letter case, in Kafka, a pg_dump, or any file under $RUN_DIR but
    the mail sink's folder (the students' own mailboxes) and PostgreSQL's data files."""
    config = stack.config
    places = {"kafka records": kafka_bytes, "pg_dump": _pg_dump(stack)}
    places.update({str(p): b for p, b in _files(
        config.run_dir, skip=(config.mail_dir, postgres.data_dir(config))).items()})
    for where, data in places.items():
        lowered = data.lower()
        for word in words:
            assert word.encode() not in lowered, f"{word!r} found in {where}"


def test_an_erased_student_is_unreadable_everywhere_and_nothing_else_changes(
    full_stack: RunningStack,
) -> None:
    stack, config = full_stack, full_stack.config
    tag = uuid.uuid4().hex[:8]
    erin = {"email": f"Erin.Vashti{tag}@Example.org", "name": f"Erin Quorvald{tag}",
            "date_of_birth": "1991-03-04"}
    olga = {"email": f"olga.m{tag}@example.org", "name": f"Olga Mirelle{tag}",
            "date_of_birth": "2003-11-30"}
    courses = [_course(stack, 5), _course(stack, 5), _course(stack, 1)]
    late_course = _course(stack, 5)
    erin_ids = [_post(stack, f"/courses/{c}/signups", erin)["signup_id"] for c in courses]
    olga_ids = [_post(stack, f"/courses/{c}/signups", olga)["signup_id"] for c in courses[:2]]
    # Erin took the only seat of the third course; Olga asks for it too and is refused.
    olga_ids.append(_post(stack, f"/courses/{courses[2]}/signups", olga)["signup_id"])
    # Rita's mail server refuses her, quoting her address in its answer (as Postfix does).
    rita = {"email": f"Rita.Quell{tag}@refused.example.org", "name": f"Rita Xandrel{tag}",
            "date_of_birth": "1995-05-05"}
    rita_id = _post(stack, f"/courses/{courses[0]}/signups", rita)["signup_id"]
    for signup_id in [*erin_ids, *olga_ids, rita_id]:
        eventually(partial(_get, stack, f"/signups/{signup_id}"), 60, "a decision")
    eventually(lambda: _mailed(stack, set(erin_ids + olga_ids)), 60, "the e-mails")
    eventually(lambda: _metric(stack, 'notifier_emails_dead_lettered_total{reason='
                                      '"recipient_refused"}'), 60, "Rita's dead letter")
    before = _stats(stack, courses)
    assert all(s is not None for s in before)
    rita_words = [rita["email"].lower(), f"rita.quell{tag}", rita["name"].lower(),
                  f"xandrel{tag}"]
    # Before any erasure: her refused address is nowhere, only the reply's codes are.
    kafka_bytes = _every_kafka_record(config.kafka_bootstrap)
    assert b"dlq.errorrecipient_refused: 550 5.1.1\x00" in kafka_bytes + b"\x00"
    _assert_nowhere(stack, rita_words, kafka_bytes)

    # A decision of Erin's in flight: the processor is paused when she signs up again.
    os.kill(_pid(stack, "processor"), signal.SIGSTOP)
    late_id = _post(stack, f"/courses/{late_course}/signups", erin)["signup_id"]
    erasure = _post(stack, "/erasures", {"email": erin["email"].upper()}, admin=True)
    assert erasure["status"] == "pending"
    rita_erasure = _post(stack, "/erasures", {"email": rita["email"]}, admin=True)
    for name in ("command-api", "processor", "notifier"):
        os.kill(_pid(stack, name), signal.SIGKILL)
    restarted = stack.cli("up")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr

    def erasure_done() -> dict | None:
        found = _get(stack, f"/erasures/{erasure['erasure_id']}")
        return found if found is not None and found["status"] == "done" else None

    done = eventually(erasure_done, 60, "the erasure to be done")
    assert done["completed_at"] is not None
    eventually(lambda: (_get(stack, f"/erasures/{rita_erasure['erasure_id']}") or {}).get(
        "status") == "done" or None, 60, "Rita's erasure")
    assert httpx.get(f"{config.query_url}/erasures/{uuid.uuid4()}",
                     headers=stack.admin).status_code == 404

    # Her seats stay taken, her decisions still answer, the late one was decided too.
    late = eventually(lambda: _get(stack, f"/signups/{late_id}"), 90, "the late decision")
    assert late["status"] == "accepted"
    assert all((_get(stack, f"/signups/{s}") or {}).get("status") == "accepted"
               for s in erin_ids)
    assert (_get(stack, f"/signups/{olga_ids[2]}") or {}).get("reason") == "course_full"
    assert _stats(stack, courses) == before

    # No e-mail for the late decision: the notifier found no key and counted it.
    def erased_count() -> float | None:
        text = httpx.get(f"http://127.0.0.1:{config.notifier_port}/metrics", timeout=5).text
        line = [x for x in text.splitlines() if x.startswith("notifier_emails_erased_total")]
        return float(line[0].split()[1]) if line and float(line[0].split()[1]) >= 1 else None

    eventually(erased_count, 60, "the notifier to skip the erased student's decision")
    assert late_id not in {m.get("X-Signup-Id") for m in _mails(stack)}

    # Statistics the same after a replay of the whole log.
    env = {**os.environ, **config.service_env()}
    replayed = subprocess.run([sys.executable, "-m", "projections.replay", "--quiet"], env=env,
                              capture_output=True, text=True, timeout=300)
    assert replayed.returncode == 0, replayed.stderr
    assert _stats(stack, courses) == before
    assert (_get(stack, f"/signups/{late_id}") or {}).get("status") == "accepted"

    # Nowhere the system keeps data holds her address or name, in any letter case; nor
    # Rita's, whose mail server had quoted her address.
    kafka_bytes = _every_kafka_record(config.kafka_bootstrap)
    forbidden = [erin["email"].lower(), erin["email"].split("@")[0].lower(),
                 erin["name"].lower(), f"quorvald{tag}", f"vashti{tag}", *rita_words]
    _assert_nowhere(stack, forbidden, kafka_bytes)
    # The scan reads what it should: her sign-ups are in Kafka under their ids, and the
    # words searched for are those the mail sink (her mailbox, not ours) did receive.
    assert all(s.encode() in kafka_bytes for s in [*erin_ids, late_id])
    erin_mail = [m for m in _mails(stack) if m.get("X-Signup-Id") == erin_ids[0]][0]
    assert erin_mail["To"].addresses[0].addr_spec.lower() == erin["email"].lower()
    mailbox = b"\n".join(_files(config.mail_dir, skip=()).values()).lower()
    assert erin["email"].lower().encode() in mailbox, "the scan would not see the address"

    # Olga's data still opens with her key.
    with psycopg.connect(config.database_url) as conn:
        keys = {str(k): bytes(v) for k, v in conn.execute(
            "SELECT s.key_ref::text, k.key FROM signup_keys s JOIN student_keys k USING (key_id)")}
    opened, erin_refs = [], set()
    consumer = Consumer({**client_config(), "bootstrap.servers": config.kafka_bootstrap,
                         "group.id": str(uuid.uuid4()), "isolation.level": "read_committed",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topics.EVENTS])
    try:
        for _ in range(60):
            for msg in consumer.consume(1000, 1.0):
                value = msg.value()
                if msg.error() is None and value:
                    event = decode(value)
                    if isinstance(event, StudentSignedUp) and event.signup_id in erin_ids:
                        erin_refs.add(event.key_id)
                    if isinstance(event, StudentSignedUp) and event.signup_id in olga_ids \
                            and event.key_id in keys and event.email_sealed:
                        opened.append(unseal(keys[event.key_id], event.signup_id, "email",
                                             event.email_sealed))
            if len(opened) >= 2 and len(erin_refs) == len(erin_ids):
                break
    finally:
        consumer.close()
    assert opened[:2] == [olga["email"].lower()] * 2
    # Each of Erin's sign-ups carries its own key reference (the log does not link them
    # to each other), and none of them points anywhere now.
    assert len(erin_refs) == len(erin_ids) and not erin_refs & set(keys)
