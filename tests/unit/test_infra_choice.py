"""Which Kafka and PostgreSQL the integration tests get: the choice alone, no engine."""

from __future__ import annotations

import pytest

from tests.infra import choose_backend, outside_infra


class Probe:
    def __init__(self, answers: bool) -> None:
        self.answers, self.asked = answers, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.answers


@pytest.mark.parametrize(("setting", "answers", "expected"), [
    (None, True, "docker"), (None, False, "native"),
    ("auto", True, "docker"), ("auto", False, "native"), (" AUTO ", True, "docker"),
])
def test_auto_uses_docker_exactly_when_an_engine_answers(
    setting: str | None, answers: bool, expected: str
) -> None:
    probe = Probe(answers)
    assert choose_backend(setting, probe) == expected
    assert probe.asked == 1


@pytest.mark.parametrize(("setting", "expected"), [("native", "native"), ("docker", "docker"),
                                                   ("Docker", "docker")])
def test_a_forced_backend_does_not_ask_the_engine(setting: str, expected: str) -> None:
    for answers in (True, False):
        probe = Probe(answers)
        assert choose_backend(setting, probe) == expected
        assert probe.asked == 0


def test_an_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="TEST_INFRA must be native, docker or auto"):
        choose_backend("podman", Probe(True))


def test_servers_named_in_the_environment_win_and_nothing_is_started() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "DATABASE_URL": "postgresql://db/x",
           "SMTP_HOST": "mail", "SMTP_PORT": "2525"}
    infra = outside_infra(env)
    assert infra is not None
    assert (infra.kafka_bootstrap, infra.database_url, infra.smtp_host, infra.smtp_port) == (
        "k:9092", "postgresql://db/x", "mail", 2525)
    assert infra.config is None and infra.mail_dir is None
    assert outside_infra({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}) is None
