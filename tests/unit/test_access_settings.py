"""Who gets which secret, and how a client logs in to Kafka (no I/O but temp files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from course_processor.faust_eos.app import broker_credentials
from service_kit.kafka_auth import KafkaAuth, client_config
from stack import kafka, kafka_acls
from stack.__main__ import replay_env
from stack.config import StackConfig


def _config(run_dir: Path) -> StackConfig:
    return StackConfig.from_env({"RUN_DIR": str(run_dir), "ADMIN_TOKEN": "a" * 16})


def test_without_credentials_a_client_speaks_plaintext() -> None:
    assert client_config({}) == {}
    assert broker_credentials(KafkaAuth.from_env({})) is None
    assert KafkaAuth.from_env({}).aiokafka() == {"security_protocol": "PLAINTEXT"}


def test_credentials_render_for_every_client_library() -> None:
    auth = KafkaAuth.from_env({"KAFKA_SASL_USERNAME": "notifier", "KAFKA_SASL_PASSWORD": "pw"})
    assert client_config({"KAFKA_SASL_USERNAME": "notifier", "KAFKA_SASL_PASSWORD": "pw"}) == {
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "notifier", "sasl.password": "pw"}
    assert auth.aiokafka()["sasl_plain_password"] == "pw"
    faust_login = broker_credentials(auth)
    assert faust_login is not None
    assert (faust_login.username, faust_login.password, faust_login.mechanism.value,
            faust_login.protocol.value) == ("notifier", "pw", "SCRAM-SHA-512", "SASL_PLAINTEXT")
    assert "pw" not in repr(auth)  # a settings dump in a log shows no password


def test_a_username_without_a_password_is_an_error_not_a_plaintext_client() -> None:
    with pytest.raises(ValidationError, match="go together"):
        KafkaAuth.from_env({"KAFKA_SASL_USERNAME": "notifier"})


def test_each_service_gets_only_its_own_secrets(tmp_path: Path) -> None:
    config = _config(tmp_path)
    env = {name: config.service_env(name) for name in
           ("processor", "processor-2", "projector", "notifier", "command-api", "query-api")}
    has = {name: {k for k in ("ADMIN_TOKEN", "ANALYST_TOKEN", "PSEUDONYM_SECRET", "DATABASE_URL",
                              "KAFKA_SASL_USERNAME") if k in e} for name, e in env.items()}
    assert has == {
        "processor": {"PSEUDONYM_SECRET", "KAFKA_SASL_USERNAME"},
        "processor-2": {"PSEUDONYM_SECRET", "KAFKA_SASL_USERNAME"},
        "projector": {"DATABASE_URL", "KAFKA_SASL_USERNAME"},
        "notifier": {"DATABASE_URL", "KAFKA_SASL_USERNAME"},
        "command-api": {"ADMIN_TOKEN", "PSEUDONYM_SECRET", "DATABASE_URL", "KAFKA_SASL_USERNAME"},
        "query-api": {"ADMIN_TOKEN", "ANALYST_TOKEN", "DATABASE_URL"},
    }
    assert env["projector"]["DATABASE_URL"].startswith("postgresql://projector:")
    assert env["query-api"]["DATABASE_URL"].startswith("postgresql://query_api:")
    assert env["notifier"]["KAFKA_SASL_USERNAME"] == "notifier"
    assert len({e.get("KAFKA_SASL_PASSWORD") for e in env.values()}) == 5  # 4 + none
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (tmp_path / "secrets").iterdir())
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700


def test_the_broker_properties_authenticate_and_authorize(tmp_path: Path) -> None:
    config = _config(tmp_path)
    props = kafka.server_properties(config, config.kafka_nodes()[0]).splitlines()
    assert "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT" in props
    assert ("authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
            in props)
    assert "super.users=User:broker;User:admin" in props
    assert not any("PLAINTEXT://" in line for line in props)


def test_no_service_principal_may_write_course_events_but_the_processor() -> None:
    writers = {b.principal for b in kafka_acls.bindings()
               if b.name == "course-events" and b.operation.name == "WRITE"}
    assert writers == {"User:processor"}
    command_api = {(b.restype.name, b.name, b.operation.name) for b in kafka_acls.bindings()
                   if b.principal == "User:command-api"}
    assert not any(op == "READ" for _, _, op in command_api)
    # What it may see for the consumer lag it reports is metadata: groups and offsets.
    assert {(t, n, op) for t, n, op in command_api if t == "GROUP"} == {("GROUP", "*", "DESCRIBE")}
    assert ("TOPIC", "course-events", "DESCRIBE") in command_api


def test_make_replay_logs_in_as_the_operator_on_its_own_stack_only(tmp_path: Path) -> None:
    config = _config(tmp_path)
    native = replay_env(config, {"PATH": "/bin"})
    assert native["KAFKA_SASL_USERNAME"] == "admin"
    assert native["KAFKA_SASL_PASSWORD"] == config.kafka_password("admin")
    assert native["DATABASE_URL"].startswith("postgresql://course_owner:")
    elsewhere = replay_env(config, {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"})
    assert "KAFKA_SASL_USERNAME" not in elsewhere
