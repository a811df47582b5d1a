"""The command API's settings, read from the environment (12-factor)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Every knob of the command API; field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(case_sensitive=False, frozen=True)

    kafka_bootstrap_servers: str = Field(min_length=1)
    admin_token: SecretStr = Field(min_length=8)
    host: str = "127.0.0.1"
    command_api_port: int = Field(default=8000, ge=1, le=65535)
    # Upper bound on how long a request waits for the broker's acknowledgement before
    # answering 503; also librdkafka's message.timeout.ms, so a message is never left
    # queued behind a request that already gave up.
    produce_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    max_body_bytes: int = Field(default=16 * 1024, ge=256)
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
    ] = "INFO"
