"""How every client of ours logs in to Kafka: one settings shape for all of them.

KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD name the client's principal (SCRAM-SHA-512
over SASL_PLAINTEXT: the native stack's and compose's brokers). Both unset: no SASL,
for a cluster that authenticates nobody (an existing one the system is pointed at).
One set without the other is a settings error, never a silent fall back to no login.

The same object renders itself for confluent-kafka (librdkafka properties) and
aiokafka (keyword arguments); the processor's faust app makes its broker_credentials
from it (course_processor/faust_eos/app.py), since only that wing imports faust.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

# confluent-kafka's type of a client's settings.
ClientConfig = dict[str, str | int | float | bool]
Mechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
MECHANISM: Mechanism = "SCRAM-SHA-512"
PROTOCOL = "SASL_PLAINTEXT"  # TLS is not there yet (README, "Threat model")


class KafkaAuth(BaseModel):
    """A principal and its password, or nobody (no SASL)."""

    model_config = ConfigDict(frozen=True)

    username: str | None = None
    password: SecretStr | None = None
    mechanism: Mechanism = MECHANISM

    @model_validator(mode="after")
    def _both_or_neither(self) -> KafkaAuth:
        if (self.username is None) != (self.password is None):
            raise ValueError("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD go together: "
                             "set both, or neither for a cluster without SASL")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaAuth:
        env = os.environ if env is None else env
        return cls.model_validate({"username": env.get("KAFKA_SASL_USERNAME") or None,
                                   "password": env.get("KAFKA_SASL_PASSWORD") or None,
                                   "mechanism": env.get("KAFKA_SASL_MECHANISM") or MECHANISM})

    @property
    def enabled(self) -> bool:
        return self.username is not None

    def confluent(self) -> dict[str, str]:
        """librdkafka properties (empty without SASL)."""
        if self.username is None or self.password is None:
            return {}
        return {"security.protocol": PROTOCOL, "sasl.mechanism": self.mechanism,
                "sasl.username": self.username,
                "sasl.password": self.password.get_secret_value()}

    def aiokafka(self) -> dict[str, Any]:
        """aiokafka keyword arguments."""
        if self.username is None or self.password is None:
            return {"security_protocol": "PLAINTEXT"}
        return {"security_protocol": PROTOCOL, "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password.get_secret_value()}


def client_config(env: Mapping[str, str] | None = None) -> ClientConfig:
    """The login part of a confluent-kafka client's settings, from the environment:
    `{**client_config(), "bootstrap.servers": ..., ...}`."""
    login: ClientConfig = {**KafkaAuth.from_env(env).confluent()}
    return login
