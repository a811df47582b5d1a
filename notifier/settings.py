"""The notifier's settings, read from the environment (12-factor)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service_kit.settings import LogLevel, lower


class Settings(BaseSettings):
    """Every knob of the notifier; field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(case_sensitive=False, frozen=True)

    kafka_bootstrap_servers: str = Field(min_length=1)
    database_url: str = Field(min_length=1)

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    smtp_security: Annotated[Literal["none", "starttls", "tls"], BeforeValidator(lower)] = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    mail_from: str = "Course Sign-up <no-reply@courses.example.org>"
    # The command API's key of the withdrawal tokens (schemas.withdrawal): with it every
    # e-mail carries the sign-up's token; without it the e-mails have none.
    withdrawal_secret: SecretStr | None = None

    # HOST is what every service of the docker-compose file reads (0.0.0.0 there).
    notifier_host: str = Field(default="127.0.0.1",
                               validation_alias=AliasChoices("NOTIFIER_HOST", "HOST"))
    notifier_port: int = Field(default=6068, ge=1, le=65535)
    notifier_group_id: str = Field(default="notifier", min_length=1)
    # Static group membership: a restarted instance with the same id gets its partitions
    # back at once instead of waiting for the session timeout of its dead predecessor.
    notifier_instance_id: str | None = None
    notifier_session_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)

    # Capped exponential backoff with jitter: attempt n waits
    # min(max, initial * multiplier**(n-1)) scaled by a random factor in [0.5, 1].
    notifier_retry_initial_seconds: float = Field(default=0.5, gt=0)
    notifier_retry_max_seconds: float = Field(default=60.0, gt=0)
    notifier_retry_multiplier: float = Field(default=2.0, ge=1)
    # A permanent SMTP failure (5xx, refused recipient) is tried this often, then
    # dead-lettered.
    notifier_permanent_attempts: int = Field(default=3, ge=1)
    # A message the server keeps answering 4xx (while others go through) is dead-lettered
    # after this long; 0 keeps retrying it forever. Server outages never count.
    notifier_transient_give_up_seconds: float = Field(default=2 * 24 * 3600, ge=0)
    # Messages waiting for a retry at most; at the limit the consumer pauses.
    notifier_max_parked: int = Field(default=1000, ge=1)
    # SMTP connections (each with its own PostgreSQL session) sending in parallel, one
    # course's batch on each at a time; 1 sends one e-mail at a time. A crash may repeat
    # at most one e-mail per connection. Why 8 (the lanes, not the CPU, bound the rate)
    # and what it was measured at: notifier/README.md, "Parallel sending".
    notifier_smtp_connections: int = Field(default=8, ge=1, le=64)

    log_level: LogLevel = "INFO"
