"""The course processor's settings, read once from the environment by the entry point."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from schemas import topics
from service_kit.kafka_auth import KafkaAuth
from service_kit.settings import LogLevel, describe


class SettingsError(ValueError):
    """The environment does not describe a runnable processor."""


def _env(name: str, *more: str) -> AliasChoices:
    return AliasChoices(name, *more)


class Settings(BaseSettings):
    """Every knob of the processor; the alias of each field is its environment variable."""

    model_config = SettingsConfigDict(case_sensitive=False, frozen=True, populate_by_name=True)

    kafka_bootstrap_servers: str = Field(min_length=1,
                                         validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS"))
    # The processor's own Kafka principal (service_kit.kafka_auth); unset: no SASL.
    kafka_sasl_username: str | None = Field(default=None,
                                            validation_alias=_env("KAFKA_SASL_USERNAME"))
    kafka_sasl_password: SecretStr | None = Field(default=None,
                                                  validation_alias=_env("KAFKA_SASL_PASSWORD"))
    # The key of the seat keys' HMAC (schemas.pseudonyms). Every worker of the group
    # needs the same one; `make up` generates it once into $RUN_DIR/pseudonym-secret.
    pseudonym_secret: SecretStr = Field(validation_alias=_env("PSEUDONYM_SECRET"))
    partitions: int = Field(default=4, gt=0, validation_alias=_env("PARTITIONS"))
    port: int = Field(default=6066, ge=1, le=65535, validation_alias=_env("PROCESSOR_PORT"))
    # Loopback unless told otherwise (docker compose sets HOST=0.0.0.0).
    host: str = Field(default="127.0.0.1", validation_alias=_env("PROCESSOR_HOST", "HOST"))
    # One RocksDB per owned partition lives here (state.py); it survives restarts.
    data_dir: Path = Field(default=Path(".run/processor"),
                           validation_alias=_env("PROCESSOR_DATA_DIR"))
    # One bound on the RocksDB memory of the worker, whatever the partitions it owns:
    # block cache, index and filter blocks and memtables together (state/memory.py).
    state_memory_mb: int = Field(default=64, ge=8,
                                 validation_alias=_env("PROCESSOR_STATE_MEMORY_MB"))
    log_level: LogLevel = Field(default="INFO", validation_alias=_env("LOG_LEVEL"))
    app_id: str = Field(default="course-processor", min_length=1,
                        validation_alias=_env("PROCESSOR_APP_ID"))
    # Static group membership (KIP-345): a worker restarted under the same id takes its
    # partitions back at once, without waiting out the session timeout of the process
    # that died. Unique per worker (make up uses the worker's name); unset: dynamic.
    instance_id: str | None = Field(default=None, min_length=1,
                                    validation_alias=_env("PROCESSOR_INSTANCE_ID"))
    # A dead worker's partitions move after this long; it also bounds a paused one.
    session_timeout: float = Field(default=10.0, gt=0,
                                   validation_alias=_env("PROCESSOR_SESSION_TIMEOUT"))
    # A decision becomes visible to read_committed readers when its transaction commits.
    # The worker commits as soon as it has decided everything it fetched, at least
    # commit_min_interval after the last commit began, and at most commit_interval
    # after it while input keeps coming (faust_eos/pacing.py).
    commit_interval: float = Field(default=0.1, gt=0,
                                   validation_alias=_env("PROCESSOR_COMMIT_INTERVAL"))
    commit_min_interval: float = Field(default=0.01, gt=0,
                                       validation_alias=_env("PROCESSOR_COMMIT_MIN_INTERVAL"))
    # How long the broker may hold the consumer's fetch when its partitions have nothing
    # new: a command arriving on a partition left out of the fetch in flight waits up
    # to that long (faust_eos/pacing.py). The partitions the worker never reads while
    # deciding are paused (faust_eos/recovery.py), so a fetch comes back as soon as any
    # command partition has a record. Shorter costs CPU, an empty fetch per wait.
    fetch_max_wait: float = Field(default=0.1, gt=0, le=1.5,
                                  validation_alias=_env("PROCESSOR_FETCH_MAX_WAIT"))
    # How long faust's producers gather records into one produce request. A command's
    # events and table changes no longer go that way (the commit sends them as closed
    # batches, faust_eos/transactions.py), so it bounds only records sent through
    # faust's own send path.
    linger: float = Field(default=0.02, gt=0, validation_alias=_env("PROCESSOR_LINGER"))
    # Replicas and min.insync.replicas of the changelog topics the processor creates (and
    # of faust's own topics): min(3, brokers) and 2 from three brokers on (the stack
    # sets both; see README, "Scaling").
    replication_factor: int = Field(default=1, ge=1,
                                    validation_alias=_env("KAFKA_REPLICATION_FACTOR"))
    min_insync_replicas: int = Field(default=1, ge=1,
                                     validation_alias=_env("KAFKA_MIN_INSYNC_REPLICAS"))
    # Build the tables from course-events when their changelogs were never written
    # (an upgrade from the in-memory tables, or a new app id on an old log).
    build_from_events: bool = Field(default=True,
                                    validation_alias=_env("PROCESSOR_BUILD_FROM_EVENTS"))
    commands_topic: str = Field(default=topics.COMMANDS,
                                validation_alias=_env("PROCESSOR_COMMANDS_TOPIC"))
    events_topic: str = Field(default=topics.EVENTS,
                              validation_alias=_env("PROCESSOR_EVENTS_TOPIC"))

    @property
    def dlq_topic(self) -> str:
        return topics.dlq_of(self.commands_topic)

    @property
    def broker_url(self) -> str:
        """Faust's broker URL list: kafka://host:port;kafka://host:port."""
        hosts = [h.strip() for h in self.kafka_bootstrap_servers.split(",") if h.strip()]
        return ";".join(f"kafka://{h}" for h in hosts)

    @property
    def kafka_auth(self) -> KafkaAuth:
        return KafkaAuth(username=self.kafka_sasl_username, password=self.kafka_sasl_password)

    @property
    def secret(self) -> bytes:
        return self.pseudonym_secret.get_secret_value().encode()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what from_env() hands over: the entry point passes os.environ, a test
        # its own mapping, and nothing leaks in from the process around it.
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The settings in `env` (only there: not the process environment)."""
        known = {alias.upper() for f in cls.model_fields.values()
                 for alias in getattr(f.validation_alias, "choices", ())}
        given = {k.upper(): v for k, v in env.items() if k.upper() in known and v != ""}
        try:
            return cls(**given)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise SettingsError(describe(exc, cls)) from None
