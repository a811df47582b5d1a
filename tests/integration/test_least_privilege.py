"""Who may connect (issue 18): each service's PostgreSQL role and Kafka principal is
refused what its service does not need, and nobody gets in without a password.

Against the native stack of the session (tests/infra.py), whose roles, principals and
ACLs are made by the same code as `make up`.
"""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from schemas import topics
from service_kit.kafka_auth import ClientConfig
from stack import kafka
from stack.config import PG_OWNER, PG_SERVICE_ROLES, StackConfig
from tests.infra import Infra


@pytest.fixture(scope="module")
def stack(infra: Infra) -> StackConfig:
    assert infra.config is not None, "roles and principals are the native stack's"
    return infra.config


def refused(url: str, statement: str) -> str:
    """The error class PostgreSQL answers `statement` with, as `url`'s role."""
    with (psycopg.connect(url, autocommit=True, connect_timeout=5) as conn,
          pytest.raises(psycopg.Error) as caught):
        conn.execute(statement)
    return type(caught.value).__name__


def test_query_api_may_not_read_the_students_keys(stack: StackConfig) -> None:
    url = stack.service_database_url("query-api")
    assert refused(url, "SELECT student_hash, key FROM student_keys") == "InsufficientPrivilege"
    assert refused(url, "SELECT student_hash FROM erasures") == "InsufficientPrivilege"
    with psycopg.connect(url) as conn:  # what it serves, it reads
        conn.execute("SELECT count(*) FROM course_stats").fetchone()
        conn.execute("SELECT status, completed_at FROM erasures LIMIT 1").fetchall()
    assert refused(url, "DELETE FROM course_stats") == "InsufficientPrivilege"


def test_projector_may_not_read_the_students_keys(stack: StackConfig) -> None:
    url = stack.service_database_url("projector")
    assert refused(url, "SELECT key FROM student_keys") == "InsufficientPrivilege"
    assert refused(url, "SELECT * FROM erasures") == "InsufficientPrivilege"
    with psycopg.connect(url) as conn:
        conn.execute("SELECT generation FROM projection_generations FOR UPDATE").fetchall()
        conn.rollback()


def test_notifier_reads_a_key_by_id_but_never_which_student_it_belongs_to(
        stack: StackConfig) -> None:
    url = stack.service_database_url("notifier")
    assert refused(url, "SELECT student_hash FROM student_keys") == "InsufficientPrivilege"
    assert refused(url, "DELETE FROM student_keys") == "InsufficientPrivilege"
    assert refused(url, "SELECT * FROM signup_requests") == "InsufficientPrivilege"
    assert refused(url, "INSERT INTO signup_keys (key_ref, key_id) VALUES"
                        " (gen_random_uuid(), gen_random_uuid())") == "InsufficientPrivilege"
    with psycopg.connect(url) as conn:
        conn.execute("SELECT key FROM student_keys WHERE key_id = gen_random_uuid()").fetchall()
        # A decision's key reference leads to its key; the lock while sending needs no grant.
        conn.execute("SELECT key_id FROM signup_keys WHERE key_ref = gen_random_uuid()").fetchall()
        conn.execute("SELECT pg_advisory_lock_shared(1, 2), pg_advisory_unlock_shared(1, 2)")


@pytest.mark.parametrize("service", ["query-api", "projector"])
def test_the_read_side_may_not_see_the_sign_up_records(stack: StackConfig, service: str) -> None:
    url = stack.service_database_url(service)
    for table in ("signup_keys", "signup_requests"):
        assert refused(url, f"SELECT * FROM {table}") == "InsufficientPrivilege", table


def test_command_api_may_not_touch_the_read_side(stack: StackConfig) -> None:
    url = stack.service_database_url("command-api")
    assert refused(url, "SELECT * FROM signup_decisions") == "InsufficientPrivilege"
    assert refused(url, "UPDATE student_keys SET key = key") == "InsufficientPrivilege"


@pytest.mark.parametrize("service", sorted(PG_SERVICE_ROLES))
def test_no_service_role_changes_the_schema(stack: StackConfig, service: str) -> None:
    url = stack.service_database_url(service)
    assert refused(url, "CREATE TABLE intruder (x int)") == "InsufficientPrivilege"
    assert refused(url, "CREATE TEMP TABLE intruder (x int)") == "InsufficientPrivilege"
    assert refused(url, "ALTER TABLE course_stats ADD COLUMN x int") == "InsufficientPrivilege"
    assert refused(url, "DROP TABLE sent_notifications") == "InsufficientPrivilege"


@pytest.mark.parametrize("role", [PG_OWNER, "postgres", *PG_SERVICE_ROLES.values()])
def test_a_connection_without_the_password_is_refused(stack: StackConfig, role: str) -> None:
    for password in ("", ":wrong"):
        url = f"postgresql://{role}{password}@127.0.0.1:{stack.pg_port}/coursesignup"
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(url, connect_timeout=5, sslmode="disable")


def test_the_owners_connection_string_is_written_privately(stack: StackConfig) -> None:
    path = stack.postgres_admin_url_file
    assert path.read_text().strip() == stack.database_url
    assert path.stat().st_mode & 0o777 == 0o600
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (PG_OWNER,)


# ------------------------------------------------------------------ Kafka


def kafka_errors_of_produce(settings: ClientConfig, topic: str) -> list[str]:
    producer = Producer({**settings, "acks": "all", "message.timeout.ms": 10000})
    reports: list[str] = []
    producer.produce(topic, key=b"intruder", value=b"x",
                     on_delivery=lambda err, _: reports.append(err.name() if err else "OK"))
    producer.flush(15)
    return reports


def kafka_errors_of_consume(settings: ClientConfig, topic: str, group: str) -> set[str]:
    consumer = Consumer({**settings, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    errors: set[str] = set()
    try:
        consumer.subscribe([topic], on_assign=lambda *_: None)
        deadline = time.monotonic() + 20
        while not errors and time.monotonic() < deadline:
            try:
                msg = consumer.poll(0.5)
            except KafkaException as exc:
                errors.add(exc.args[0].name())
                continue
            error = msg.error() if msg is not None else None
            if error is not None:
                errors.add(error.name())
    finally:
        consumer.close()
    return errors


DENIED = {"TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED"}


def test_a_client_without_credentials_is_refused(stack: StackConfig) -> None:
    for login in ({}, {**stack.kafka_client_config("projector"), "sasl.password": "wrong"}):
        settings: ClientConfig = {**login, "bootstrap.servers": stack.kafka_bootstrap,
                                  "log_level": 0}
        with pytest.raises(KafkaException):
            AdminClient(settings).list_topics(timeout=5)


@pytest.mark.parametrize(("principal", "topic"), [
    ("command-api", topics.EVENTS), ("projector", topics.COMMANDS),
    ("notifier", topics.EVENTS), ("projector", topics.NOTIFIER_DLQ),
])
def test_a_principal_may_not_write_outside_its_topics(stack: StackConfig, principal: str,
                                                      topic: str) -> None:
    assert kafka_errors_of_produce(stack.kafka_client_config(principal), topic) == [
        "TOPIC_AUTHORIZATION_FAILED"]


@pytest.mark.parametrize(("principal", "topic", "group"), [
    ("notifier", topics.COMMANDS, "notifier"),      # not its topic
    ("command-api", topics.EVENTS, "command-api"),  # reads nothing at all
    ("projector", topics.EVENTS, "notifier"),       # its topic, another service's group
])
def test_a_principal_may_not_read_another_services_topic_or_group(
        stack: StackConfig, principal: str, topic: str, group: str) -> None:
    errors = kafka_errors_of_consume(stack.kafka_client_config(principal), topic, group)
    assert errors and errors <= DENIED, errors


def test_each_service_may_reach_its_own_topics(stack: StackConfig) -> None:
    for principal, topic in [("command-api", topics.COMMANDS), ("processor", topics.EVENTS),
                             ("projector", topics.EVENTS), ("notifier", topics.EVENTS)]:
        metadata = AdminClient(stack.kafka_client_config(principal)).list_topics(
            topic, timeout=10).topics[topic]
        assert metadata.error is None and metadata.partitions, (principal, topic)


def test_the_operators_client_configuration_is_written_privately(stack: StackConfig) -> None:
    path = stack.kafka_admin_properties
    assert path.stat().st_mode & 0o777 == 0o600
    props = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert {k: props[k] for k in ("bootstrap.servers", "security.protocol", "sasl.mechanism",
                                  "sasl.username")} == {
        "bootstrap.servers": stack.kafka_bootstrap, "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "admin"}
    names = ("bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.username",
             "sasl.password")
    login: ClientConfig = {k: props[k] for k in names}
    assert topics.EVENTS in AdminClient(login).list_topics(timeout=10).topics


def test_the_java_tools_work_with_the_operators_configuration(stack: StackConfig) -> None:
    """`kafka-configs.sh --command-config $RUN_DIR/kafka-admin.properties`, as an operator
    runs it (the same class, from the jars the broker runs on)."""
    argv = kafka.java_command(stack, "kafka.admin.ConfigCommand", "--bootstrap-server",
                              stack.kafka_bootstrap, "--command-config",
                              str(stack.kafka_admin_properties), "--describe",
                              "--entity-type", "topics", "--entity-name", topics.EVENTS)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "retention.ms=-1" in done.stdout
