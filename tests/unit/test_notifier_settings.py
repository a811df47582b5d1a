"""The notifier's settings from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from notifier.settings import Settings
from notifier.worker import Policy, consumer_config

REQUIRED = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:5433/coursesignup"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "SMTP_USERNAME", "SMTP_PASSWORD",
                 "MAIL_FROM", "NOTIFIER_PORT", "NOTIFIER_GROUP_ID", "NOTIFIER_INSTANCE_ID",
                 "LOG_LEVEL", "HOST", "NOTIFIER_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)


def test_defaults() -> None:
    s = Settings()  # type: ignore[call-arg]
    assert (s.smtp_security, s.notifier_port, s.notifier_group_id) == ("none", 6068, "notifier")
    assert s.mail_from == "Course Sign-up <no-reply@courses.example.org>"
    assert Policy.of(s).backoff.ceiling(100) == s.notifier_retry_max_seconds


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_SECURITY", "STARTTLS")
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
    monkeypatch.setenv("log_level", "debug")
    s = Settings()  # type: ignore[call-arg]
    assert s.smtp_security == "starttls" and s.log_level == "DEBUG"
    assert "s3cret" not in repr(s)


def test_the_http_interface_follows_host_as_in_docker_compose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().notifier_host == "127.0.0.1"  # type: ignore[call-arg]
    monkeypatch.setenv("HOST", "0.0.0.0")
    assert Settings().notifier_host == "0.0.0.0"  # type: ignore[call-arg]
    monkeypatch.setenv("NOTIFIER_HOST", "127.0.0.2")
    assert Settings().notifier_host == "127.0.0.2"  # type: ignore[call-arg]


def test_an_unknown_security_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_SECURITY", "ssl3")
    with pytest.raises(ValidationError):
        Settings()  # type: ignore[call-arg]


def test_the_consumer_reads_committed_and_commits_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_INSTANCE_ID", "notifier-1")
    config = consumer_config(Settings())  # type: ignore[call-arg]
    assert config["isolation.level"] == "read_committed"
    assert config["enable.auto.commit"] is False
    assert config["group.id"] == "notifier" and config["group.instance.id"] == "notifier-1"
