"""The command API's settings, read from the environment (12-factor)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service_kit.settings import LogLevel


class Settings(BaseSettings):
    """Every knob of the command API; field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(case_sensitive=False, frozen=True)

    kafka_bootstrap_servers: str = Field(min_length=1)
    admin_token: SecretStr = Field(min_length=8)
    # The key store (student_keys, erasures): every sign-up reads its student's key there.
    database_url: str = Field(min_length=1)
    # Key of the keyed hashes that stand for a student (schemas.pseudonyms,
    # schemas.personal); the processor needs the same one. `make up` generates it.
    pseudonym_secret: SecretStr = Field(min_length=8)
    # Key of the withdrawal tokens' HMAC (schemas.withdrawal); the notifier needs the same
    # one to put the token in its e-mails. `make up` generates it.
    withdrawal_secret: SecretStr = Field(min_length=8)
    # Upper bound on a key store round trip before the request is answered 503.
    key_store_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    key_store_pool_size: int = Field(default=10, ge=1, le=100)
    host: str = "127.0.0.1"
    command_api_port: int = Field(default=8000, ge=1, le=65535)
    # Upper bound on how long a request waits for the broker's acknowledgement before
    # answering 503; also librdkafka's message.timeout.ms, so a message is never left
    # queued behind a request that already gave up.
    produce_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    max_body_bytes: int = Field(default=16 * 1024, ge=256)
    # How often the consumer lag of every group is read from Kafka for /metrics
    # (service_kit.consumer_lag); 0 turns it off.
    consumer_lag_interval_seconds: float = Field(default=5.0, ge=0, le=300)
    log_level: LogLevel = "INFO"

    @property
    def secret(self) -> bytes:
        return self.pseudonym_secret.get_secret_value().encode()

    @property
    def withdrawal_key(self) -> bytes:
        return self.withdrawal_secret.get_secret_value().encode()
