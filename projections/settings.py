"""Settings of the projector, the query API and the replay, read from the environment (12-factor).

Each entry point builds its own object (`ProjectorSettings()` and so on) in `main`;
nothing is read at import time. Field names are the environment variables, upper-cased.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service_kit.settings import LogLevel


class _Common(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, frozen=True, extra="ignore")

    database_url: str = Field(min_length=1)
    # The name of the projection's rows in projection_offsets and projection_generations.
    projection: str = Field(default="views", pattern=r"^[a-z][a-z0-9_-]{0,40}$")
    log_level: LogLevel = "INFO"


class ProjectorSettings(_Common):
    kafka_bootstrap_servers: str = Field(min_length=1)
    host: str = "127.0.0.1"
    projector_port: int = Field(default=6067, ge=1, le=65535)
    # Only for partition assignment: positions live in PostgreSQL, never in Kafka.
    projector_group_id: str = "projector"
    # Static group membership: a restarted projector (after kill -9, say) gets its
    # partitions back at once instead of after the dead member's session timeout. Each
    # instance of a scaled-out projector needs its own id; empty turns it off.
    projector_instance_id: str = "projector-0"
    projector_batch_size: int = Field(default=2000, ge=1, le=100_000)
    projector_batch_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    # Longest pause between attempts to reach PostgreSQL while it is away.
    projector_max_backoff_seconds: float = Field(default=5.0, gt=0, le=300)


class QueryApiSettings(_Common):
    # The statistics and the dashboard need the analyst token (or the admin token); an
    # erasure's status needs the admin token (projections/access.py).
    admin_token: SecretStr = Field(min_length=8)
    analyst_token: SecretStr = Field(min_length=8)
    host: str = "127.0.0.1"
    query_api_port: int = Field(default=8001, ge=1, le=65535)
    query_api_pool_size: int = Field(default=8, ge=1, le=100)
    # How long a request waits for a connection before answering 503.
    query_api_db_timeout_seconds: float = Field(default=2.0, gt=0, le=60)


class ReplaySettings(_Common):
    kafka_bootstrap_servers: str = Field(min_length=1)
    replay_batch_size: int = Field(default=10_000, ge=1, le=500_000)
    # Processes sharing the partitions; None: the cores this process may run on.
    replay_workers: int | None = Field(default=None, ge=1, le=256)
    # Niceness of the worker processes: the services on the same machine (the query API
    # above all) go first when the cores are busy.
    replay_nice: int = Field(default=10, ge=0, le=19)
    # With a niceness above 0, the workers and their PostgreSQL backends also run in an
    # idle CPU cgroup: `auto` (under the cpu controller's mount), a cgroup's path, or
    # `off` (projections/cpugroup.py). Refused (no root, no delegated cgroup): niced only.
    replay_cpu_cgroup: str = "auto"
