"""The notifier against a real broker, database and SMTP sink, run as `python -m notifier`.

Each test starts its own notifier in a fresh consumer group that begins at the current
end of course-events, produces synthetic events for random courses and recipients,
and finds its e-mails in the sink's folder by their X-Event-Id header.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.headerregistry import AddressHeader
from functools import partial
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from schemas import codec, topics
from schemas.messages import (
    CourseCreated,
    Decision,
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
from service_kit.kafka_auth import client_config
from stack import smtp
from stack.config import ROOT
from stack.ports import free_port
from stack.procs import kill_now, stop, terminate
from stack.waiting import wait_until
from tests.infra import Infra
from tests.support import headers_of

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- the sink's folder


class Mailbox:
    """The sink's .eml files by X-Event-Id; each file is parsed once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[str, email.message.Message] = {}

    def by_event(self) -> dict[str, list[email.message.Message]]:
        # Headers of an SMTPUTF8 message are raw UTF-8 (RFC 6532): parse them as text.
        parser = email.parser.HeaderParser(policy=email.policy.default)
        for path in sorted(self.folder.glob("*.eml")):
            if path.name not in self.seen:
                self.seen[path.name] = parser.parsestr(path.read_text("utf-8", "replace"))
        found: dict[str, list[email.message.Message]] = {}
        for msg in self.seen.values():
            found.setdefault(str(msg["X-Event-Id"]), []).append(msg)
        return found

    def counts(self, event_ids: list[str]) -> Counter[str]:
        found = self.by_event()
        return Counter({e: len(found.get(e, [])) for e in event_ids})

    def has_all(self, event_ids: list[str]) -> bool:
        counts = self.counts(event_ids)
        return all(counts[e] >= 1 for e in event_ids)


@pytest.fixture
def mailbox(infra: Infra) -> Mailbox:
    if infra.mail_dir is None:
        pytest.skip("needs the project's own SMTP sink (unset SMTP_HOST)")
    return Mailbox(infra.mail_dir)


# ---------------------------------------------------------------- events


@dataclass
class Log:
    """Produces synthetic events to course-events and remembers where they landed."""

    producer: Producer
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # event id -> (p, o)

    def produce(self, key: str, value: bytes, event_id: str, correlation_id: str,
                traced: bool = False) -> None:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            self.positions[event_id] = (msg.partition() or 0, msg.offset() or 0)

        # `traced`: as the processor marks the events of a command its caller traces.
        headers: list[tuple[str, str | bytes | None]] = [
            ("correlation_id", correlation_id.encode())]
        if traced:
            headers.append(("traced", b"1"))
        self.producer.produce(topics.EVENTS, key=key.encode(), value=value, headers=headers,
                              on_delivery=delivered)
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


@dataclass
class Course:
    log: Log
    course_id: str = field(default_factory=lambda: f"course-{uuid.uuid4().hex[:12]}")
    title: str = field(default_factory=lambda: f"Course {uuid.uuid4().hex[:6]} für Zoë")
    decisions: list[Decision] = field(default_factory=list)

    def meta(self, event_type: str) -> dict[str, object]:
        return dict(event_id=str(uuid.uuid4()), event_type=event_type,
                    occurred_at=datetime.now(UTC), course_id=self.course_id,
                    causation_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()))

    def create(self) -> Course:
        event = CourseCreated(**self.meta("CourseCreated"), title=self.title,  # type: ignore[arg-type]
                              lecturer="Grace Hopper", capacity=1000)
        self.log.produce(self.course_id, codec.encode(event), event.event_id, event.correlation_id)
        return self

    def decide(self, accepted: bool = True, domain: str = "example.org",
               name: str = "Ann Lee", local: str = "", traced: bool = False) -> Decision:
        address = f"{local}{uuid.uuid4().hex[:10]}@{domain}"
        decision: Decision
        if accepted:
            decision = StudentSignedUp(**self.meta("StudentSignedUp"),  # type: ignore[arg-type]
                                       signup_id=str(uuid.uuid4()), email=address, name=name,
                                       date_of_birth=date(2000, 1, 2),
                                       seats_taken=len(self.decisions) + 1, capacity=1000)
        else:
            decision = SignUpRejected(**self.meta("SignUpRejected"),  # type: ignore[arg-type]
                                      signup_id=str(uuid.uuid4()), email=address, name=name,
                                      reason="course_full")
        self.repeat(decision, traced)
        self.decisions.append(decision)
        return decision

    def repeat(self, decision: Decision, traced: bool = False) -> None:
        self.log.produce(self.course_id, codec.encode(decision), decision.event_id,
                         decision.correlation_id, traced)

    @property
    def event_ids(self) -> list[str]:
        return [d.event_id for d in self.decisions]


@pytest.fixture
def log(infra: Infra) -> Iterator[Log]:
    producer = Producer({**client_config(),
                         "bootstrap.servers": infra.kafka_bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5})
    yield Log(producer)
    producer.flush(10)


# ---------------------------------------------------------------- the notifier process


def end_offsets(bootstrap: str, topic: str) -> list[TopicPartition]:
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4()}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [TopicPartition(topic, p, consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10)[1]) for p in partitions]
    finally:
        consumer.close()


def start_group_at_the_end(bootstrap: str, group: str, timeout: float = 30) -> None:
    """Commit the current end of course-events for `group`: earlier tests' events stay unread."""
    consumer = Consumer({**client_config(), "bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                consumer.commit(offsets=end_offsets(bootstrap, topics.EVENTS),
                                asynchronous=False)
                return
            except KafkaException:
                # Right after the broker starts, the group coordinator may still be loading.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


@dataclass
class Notifier:
    group: str
    log_path: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Notifier:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "notifier"], cwd=ROOT,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._healthy, 30, f"notifier /healthz (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def readyz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str) -> float:
        lines = [line for line in self.metrics().splitlines() if line.startswith(name)]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    def kill(self) -> None:
        kill_now(self.proc)

    def stop(self) -> None:
        terminate(self.proc, 20)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def notifier_factory(infra: Infra, tmp_path: Path) -> Iterator[Callable[..., Notifier]]:
    started: list[Notifier] = []

    def make(group: str | None = None, **extra: str) -> Notifier:
        group = group or f"notifier-test-{uuid.uuid4().hex[:8]}"
        if not any(n.group == group for n in started):
            start_group_at_the_end(infra.kafka_bootstrap, group)
        port = free_port()
        env = {**os.environ, **infra.env(),
               "NOTIFIER_PORT": str(port), "NOTIFIER_GROUP_ID": group,
               "NOTIFIER_SESSION_TIMEOUT_MS": "6000",
               "NOTIFIER_RETRY_INITIAL_SECONDS": "0.1", "NOTIFIER_RETRY_MAX_SECONDS": "1",
               "NOTIFIER_PERMANENT_ATTEMPTS": "3", "LOG_LEVEL": "INFO", **extra}
        notifier = Notifier(group, tmp_path / f"notifier-{len(started)}.log", env, port)
        started.append(notifier)
        return notifier.start()

    yield make
    for notifier in started:
        notifier.stop()


@pytest.fixture
def notifier(notifier_factory: Callable[..., Notifier]) -> Notifier:
    return notifier_factory()


# ---------------------------------------------------------------- the tests


def test_each_decision_becomes_one_e_mail_to_its_student(
    notifier: Notifier, log: Log, mailbox: Mailbox
) -> None:
    course = Course(log).create()
    for i in range(12):
        course.decide(accepted=i % 3 != 0, name="Zoë Ångström" if i == 5 else f"Student {i}",
                      traced=i == 1)
    # An internationalised address goes out with SMTPUTF8.
    course.decide(name="Zoë", local="zoë.")
    log.flush()

    wait_until(lambda: mailbox.has_all(course.event_ids), 30, "13 e-mails")
    found = mailbox.by_event()
    for decision in course.decisions:
        [msg] = found[decision.event_id]
        assert msg["X-Envelope-To"] == decision.email
        to = msg["To"]
        assert isinstance(to, AddressHeader)
        assert to.addresses[0].addr_spec == decision.email
        verdict = "accepted" if isinstance(decision, StudentSignedUp) else "not accepted"
        assert msg["Subject"] == f"Sign-up {verdict}: {course.title}"
        assert msg["X-Correlation-Id"] == decision.correlation_id
    assert notifier.metric("notifier_emails_sent_total") >= 13
    # The log names ids, never the student; an e-mail is logged at INFO only when its
    # sign-up is traced (one grep of its correlation id follows it), others at DEBUG.
    text = notifier.log_text()
    assert course.decisions[1].correlation_id in text
    assert course.decisions[2].correlation_id not in text
    assert all(d.email not in text and d.name not in text for d in course.decisions)


def test_a_decision_repeated_in_the_log_is_sent_once(
    notifier: Notifier, log: Log, mailbox: Mailbox
) -> None:
    course = Course(log).create()
    twice = course.decide()
    course.repeat(twice)  # right behind: a crash of the processor can do that
    log.flush()
    wait_until(lambda: mailbox.has_all([twice.event_id]), 30, "the first e-mail")
    course.repeat(twice)  # and again, long after it was sent
    marker = course.decide()  # same course, same partition: handled after the repeat
    log.flush()
    wait_until(lambda: mailbox.has_all([marker.event_id]), 30, "the marker e-mail")
    assert mailbox.counts([twice.event_id])[twice.event_id] == 1
    assert notifier.metric("notifier_duplicates_skipped_total") >= 2


def test_an_smtp_outage_delays_e_mails_and_loses_none(
    infra: Infra, notifier: Notifier, log: Log, mailbox: Mailbox
) -> None:
    if infra.config is None:
        pytest.skip("needs the project's own SMTP sink to stop and start")
    course = Course(log).create()
    log.flush()
    stop(infra.config, smtp.NAME)
    try:
        for i in range(10):
            course.decide(accepted=i % 2 == 0)
        log.flush()
        wait_until(lambda: notifier.metric("notifier_emails_retried_total") >= 2, 30,
                 "the notifier to retry against the stopped sink")
        assert mailbox.counts(course.event_ids).total() == 0
        wait_until(lambda: notifier.readyz()[0] == 503, 10, "/readyz to say 503 in the outage")
        assert notifier.readyz()[1]["reason"].startswith("dependency unavailable")
    finally:
        smtp.start(infra.config)
    wait_until(lambda: mailbox.has_all(course.event_ids), 30, "every e-mail after the outage")
    assert notifier.readyz() == (200, {"status": "ready"})
    marker = course.decide()
    log.flush()
    wait_until(lambda: mailbox.has_all([marker.event_id]), 30, "the marker e-mail")
    assert set(mailbox.counts(course.event_ids).values()) == {1}


def test_sigkill_mid_stream_loses_nothing_and_duplicates_at_most_one_per_lane_and_kill(
    notifier_factory: Callable[..., Notifier], log: Log, mailbox: Mailbox
) -> None:
    group, instance = f"notifier-test-{uuid.uuid4().hex[:8]}", f"i-{uuid.uuid4().hex[:8]}"
    # Four lanes over the four courses' partitions: each may have one e-mail in the
    # window between the server's 250 and the sent-record when the kill comes.
    lanes = 4
    notifier = notifier_factory(group, NOTIFIER_INSTANCE_ID=instance,
                                NOTIFIER_SMTP_CONNECTIONS=str(lanes))
    courses = [Course(log).create() for _ in range(4)]
    for i in range(300):
        courses[i % 4].decide(accepted=i % 5 != 0)
    log.flush()
    event_ids = [e for course in courses for e in course.event_ids]

    kills = 0
    def mailed(fraction: float) -> bool:
        return mailbox.counts(event_ids).total() >= fraction * len(event_ids)

    for fraction in (0.2, 0.6):
        wait_until(partial(mailed, fraction), 60, f"{fraction:.0%} of the e-mails")
        notifier.kill()
        kills += 1
        notifier = notifier_factory(group, NOTIFIER_INSTANCE_ID=instance,
                                    NOTIFIER_SMTP_CONNECTIONS=str(lanes))
    wait_until(lambda: mailbox.has_all(event_ids), 90, "every e-mail after the kills")

    counts = mailbox.counts(event_ids)
    duplicates = sum(n - 1 for n in counts.values())
    assert min(counts.values()) == 1
    assert duplicates <= kills * lanes, f"{duplicates} duplicates after {kills} kills"


def dead_letters(bootstrap: str, start: list[TopicPartition], want: set[str],
                 timeout: float = 30) -> dict[str, Message]:
    """DLQ records from `start` on whose course-events key or event id is in `want`."""
    consumer = Consumer({**client_config(),
                         "bootstrap.servers": bootstrap, "group.id": f"dlq-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.assign(start)
    found: dict[str, Message] = {}
    deadline = time.monotonic() + timeout
    try:
        while set(found) != want and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            headers = dict(msg.headers() or [])
            tag = headers.get("test.tag") or b""
            try:
                key = str(codec.decode(msg.value() or b"").event_id)  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - undecodable records are matched by their tag
                key = tag.decode() if isinstance(tag, bytes) else str(tag)
            if key in want:
                found[key] = msg
    finally:
        consumer.close()
    return found


def test_a_rejected_recipient_ends_on_the_dead_letter_topic_while_others_arrive(
    infra: Infra, notifier: Notifier, log: Log, mailbox: Mailbox
) -> None:
    start = end_offsets(infra.kafka_bootstrap, topics.NOTIFIER_DLQ)
    course = Course(log).create()
    refused = [course.decide(domain="rejected.invalid") for _ in range(2)]
    delivered = [course.decide(accepted=i % 2 == 0) for i in range(4)]
    log.flush()

    wait_until(lambda: mailbox.has_all([d.event_id for d in delivered]), 30, "the good e-mails")
    found = dead_letters(infra.kafka_bootstrap, start, {d.event_id for d in refused})
    assert set(found) == {d.event_id for d in refused}
    for decision in refused:
        msg = found[decision.event_id]
        headers = {k: v.decode() for k, v in headers_of(msg).items()}
        assert headers["dlq.reason"] == "recipient_refused"
        assert headers["dlq.source.topic"] == topics.EVENTS
        partition, offset = log.positions[decision.event_id]
        assert (int(headers["dlq.source.partition"]), int(headers["dlq.source.offset"])) == (
            partition, offset)
        assert datetime.fromisoformat(headers["dlq.failed_at"]).tzinfo is not None
        assert headers["correlation_id"] == decision.correlation_id
        # The sink's refusal quotes the address, as Postfix's does; only its codes stay.
        assert headers["dlq.error"] == "recipient_refused: 550 5.1.1"
        assert decision.email not in str(headers)
        assert msg.value() == codec.encode(decision)
    assert mailbox.counts([d.event_id for d in refused]).total() == 0
    assert all(d.email not in notifier.log_text() for d in refused)
    assert notifier.metric('notifier_emails_dead_lettered_total{reason="recipient_refused"}') >= 2


def test_an_undecodable_event_is_dead_lettered_and_the_next_one_is_sent(
    infra: Infra, notifier: Notifier, log: Log, mailbox: Mailbox
) -> None:
    start = end_offsets(infra.kafka_bootstrap, topics.NOTIFIER_DLQ)
    course = Course(log).create()
    tag = str(uuid.uuid4())
    log.producer.produce(topics.EVENTS, key=course.course_id.encode(),
                         value=b"\xc3\x01not avro at all",
                         headers=[("correlation_id", b"corr-garbage"), ("test.tag", tag.encode())])
    after = course.decide()
    log.flush()

    wait_until(lambda: mailbox.has_all([after.event_id]), 30, "the e-mail after the bad event")
    found = dead_letters(infra.kafka_bootstrap, start, {tag})
    headers = {k: v.decode() for k, v in headers_of(found[tag]).items()}
    assert headers["dlq.reason"] == "undecodable"
    assert headers["correlation_id"] == "corr-garbage"
    assert notifier.metric('notifier_emails_dead_lettered_total{reason="undecodable"}') >= 1


# ---------------------------------------------------------------- a registration term

WITHDRAWAL_SECRET = "integration-withdrawal-secret"


def test_each_decision_of_a_term_is_one_e_mail_with_a_valid_withdrawal_token(
    notifier_factory: Callable[..., Notifier], log: Log, mailbox: Mailbox
) -> None:
    notifier = notifier_factory(WITHDRAWAL_SECRET=WITHDRAWAL_SECRET)
    course = Course(log).create()
    key_id, key = str(uuid.uuid4()), new_data_key()
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO student_keys (key_id, student_hash, key) VALUES (%s, %s, %s)",
                     (key_id, f"test-{uuid.uuid4().hex}", key))
    signup_id, address = str(uuid.uuid4()), f"wait.{uuid.uuid4().hex[:8]}@example.org"
    waiting = StudentWaitlisted(
        **course.meta("StudentWaitlisted"), signup_id=signup_id, email="", name="",  # type: ignore[arg-type]
        date_of_birth=date(2000, 1, 2), position=1, key_id=key_id,
        email_sealed=seal(key, signup_id, "email", address),
        name_sealed=seal(key, signup_id, "name", "Wai Ting"))
    base = {**course.meta("x"), "signup_id": signup_id}
    later: list[Event] = [
        StudentPromoted(**{**base, "event_id": str(uuid.uuid4()),  # type: ignore[arg-type]
                           "event_type": "StudentPromoted"}, seats_taken=1,
                        date_of_birth=date(2000, 1, 2)),
        StudentWithdrew(**{**base, "event_id": str(uuid.uuid4()),  # type: ignore[arg-type]
                           "event_type": "StudentWithdrew"}, from_="enrolled", seats_taken=0,
                        date_of_birth=date(2000, 1, 2)),
        WithdrawalRejected(**{**base, "event_id": str(uuid.uuid4()),  # type: ignore[arg-type]
                              "event_type": "WithdrawalRejected"}, reason="not_enrolled"),
    ]
    for event in (waiting, *later, later[0]):  # the promotion repeated, as after a crash
        log.produce(course.course_id, codec.encode(event), event.event_id,
                    event.correlation_id)
    log.flush()
    ids = [waiting.event_id, *(e.event_id for e in later)]
    wait_until(lambda: mailbox.has_all(ids), 30, "four e-mails")
    token = withdrawal_token(WITHDRAWAL_SECRET.encode(), course.course_id, signup_id)
    found = mailbox.by_event()
    subjects = []
    for event_id in ids:
        [msg] = found[event_id]
        assert msg["X-Envelope-To"] == address
        subjects.append(str(msg["Subject"]).split(":")[0])
        whole = email.message_from_string(msg.as_string(), policy=email.policy.default)
        plain = [part.get_payload(decode=True) for part in whole.walk()
                 if part.get_content_type() == "text/plain"]
        assert f"Withdrawal token: {token}".encode() in b"".join(
            p for p in plain if isinstance(p, bytes))
    assert subjects == ["On the waiting list", "A seat for you", "Withdrawal confirmed",
                        "Withdrawal not possible"]
    assert notifier.metric('notifier_emails_sent_total{kind="promoted"}') == 1
