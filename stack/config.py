"""Where the stack lives and which ports it uses, read once from the environment."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Not passed on to a stack of ours: servers set for tests or operators elsewhere, and a
# subset selection meant for another `python -m stack up`.
NOT_INHERITED = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SMTP_HOST", "SMTP_PORT",
                 "STACK_ONLY")


def _cache_home(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "course-signup"


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path
    cache_dir: Path
    kafka_port: int
    kafka_controller_port: int
    pg_port: int
    smtp_port: int
    command_api_port: int
    query_api_port: int
    processor_port: int
    projector_port: int
    notifier_port: int
    partitions: int
    kafka_version: str
    kafka_heap: str
    processors: int
    admin_token_override: str | None = None
    pseudonym_secret_override: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StackConfig:
        def port(name: str, default: int) -> int:
            return int(env.get(name) or default)

        kafka_port = port("KAFKA_PORT", 9092)
        return cls(
            run_dir=Path(env.get("RUN_DIR") or ROOT / ".run").resolve(),
            cache_dir=Path(env.get("STACK_CACHE_DIR") or _cache_home(env)),
            kafka_port=kafka_port,
            kafka_controller_port=port("KAFKA_CONTROLLER_PORT", kafka_port + 1),
            pg_port=port("PG_PORT", 5433),
            smtp_port=port("SMTP_PORT", 2525),
            command_api_port=port("COMMAND_API_PORT", 8000),
            query_api_port=port("QUERY_API_PORT", 8001),
            processor_port=port("PROCESSOR_PORT", 6066),
            projector_port=port("PROJECTOR_PORT", 6067),
            notifier_port=port("NOTIFIER_PORT", 6068),
            partitions=int(env.get("PARTITIONS") or 4),
            kafka_version=env.get("KAFKA_VERSION") or "4.1.1",
            kafka_heap=env.get("KAFKA_HEAP") or "768m",
            processors=int(env.get("PROCESSORS") or 1),
            admin_token_override=env.get("ADMIN_TOKEN") or None,
            pseudonym_secret_override=env.get("PSEUDONYM_SECRET") or None,
        )

    @property
    def pids(self) -> Path:
        return self.run_dir / "pids"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def mail_dir(self) -> Path:
        return self.run_dir / "mail"

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/coursesignup"

    @property
    def command_url(self) -> str:
        return f"http://127.0.0.1:{self.command_api_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_api_port}"

    @property
    def python(self) -> str:
        return sys.executable

    def admin_token(self) -> str:
        """The token from ADMIN_TOKEN, else one generated once into $RUN_DIR/admin-token."""
        return self.admin_token_override or self._secret("admin-token")

    def pseudonym_secret(self) -> str:
        """The key of the seat keys' HMAC: PSEUDONYM_SECRET, else generated once into
        $RUN_DIR/pseudonym-secret. Changing it makes every stored seat key unfindable."""
        return self.pseudonym_secret_override or self._secret("pseudonym-secret")

    def _secret(self, name: str) -> str:
        path = self.run_dir / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32) + "\n")
            path.chmod(0o600)
        return path.read_text().strip()

    def stack_env(self, base: Mapping[str, str] = os.environ) -> dict[str, str]:
        """The environment under which `python -m stack` addresses this very stack:
        `base` without the variables that would point services elsewhere, plus the
        overrides that from_env() reads back."""
        env = {k: v for k, v in base.items() if k not in NOT_INHERITED}
        env.update({
            "RUN_DIR": str(self.run_dir), "KAFKA_PORT": str(self.kafka_port),
            "KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port),
            "PG_PORT": str(self.pg_port), "SMTP_PORT": str(self.smtp_port),
            "COMMAND_API_PORT": str(self.command_api_port),
            "QUERY_API_PORT": str(self.query_api_port),
            "PROCESSOR_PORT": str(self.processor_port),
            "PROJECTOR_PORT": str(self.projector_port),
            "NOTIFIER_PORT": str(self.notifier_port),
            "ADMIN_TOKEN": self.admin_token(), "PARTITIONS": str(self.partitions),
            "PSEUDONYM_SECRET": self.pseudonym_secret(),
            "KAFKA_VERSION": self.kafka_version, "KAFKA_HEAP": self.kafka_heap,
        })
        return env

    def service_env(self) -> dict[str, str]:
        """The 12-factor settings every service reads; the same names work under compose."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "DATABASE_URL": self.database_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_SECURITY": "none",
            "PARTITIONS": str(self.partitions),
            "ADMIN_TOKEN": self.admin_token(),
            "PSEUDONYM_SECRET": self.pseudonym_secret(),
            "COMMAND_API_PORT": str(self.command_api_port),
            "QUERY_API_PORT": str(self.query_api_port),
            "PROCESSOR_PORT": str(self.processor_port),
            "PROJECTOR_PORT": str(self.projector_port),
            "NOTIFIER_PORT": str(self.notifier_port),
            "PROCESSOR_DATA_DIR": str(self.run_dir / "processor"),
        }
