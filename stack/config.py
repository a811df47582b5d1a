"""Where the stack lives and which ports it uses, read once from the environment."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from stack.ports import PortPicker, port_free
from stack.secrets import generated_secret

ROOT = Path(__file__).resolve().parent.parent
# Not passed on to a stack of ours: servers set for tests or operators elsewhere, and a
# subset selection meant for another `python -m stack up`.
NOT_INHERITED = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SMTP_HOST", "SMTP_PORT",
                 "STACK_ONLY", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
# Secrets a service is given only when it uses them (service_env); never inherited from
# the environment of whoever runs `make up`.
SECRETS = ("ADMIN_TOKEN", "ANALYST_TOKEN", "PSEUDONYM_SECRET", "WITHDRAWAL_SECRET",
           "DATABASE_URL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")

# PostgreSQL: the superuser (only the stack uses it, to create roles and the database),
# the owner of the schema (migrations, replay, operators' tools) and one login role per
# service that uses the database, with the grants of migrations/0006_service_roles.sql.
PG_SUPERUSER = "postgres"
PG_OWNER = "course_owner"
PG_DATABASE = "coursesignup"
PG_SERVICE_ROLES = {"command-api": "command_api", "projector": "projector",
                    "notifier": "notifier", "query-api": "query_api"}
# Kafka: one SCRAM principal per service that talks to Kafka, the brokers themselves
# and the operator (tests, bench, chaos, `stack topics`, replay); the ACLs are in
# stack/kafka_acls.py.
KAFKA_BROKER_PRINCIPAL = "broker"
KAFKA_ADMIN_PRINCIPAL = "admin"
KAFKA_SERVICE_PRINCIPALS = {"processor": "processor", "projector": "projector",
                            "notifier": "notifier", "command-api": "command-api"}


def _cache_home(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "course-signup"


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node (broker and controller in one process) of the native cluster."""

    node_id: int
    name: str  # its PID and log file name: `kafka` alone, else `kafka-<node_id>`
    port: int  # PLAINTEXT, what clients bootstrap from
    controller_port: int
    home: Path  # server.properties and the log dir `data/`
    exporter_port: int = 0  # the JMX exporter agent's /metrics (stack/monitoring.py)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def replication_factor(brokers: int) -> int:
    """Replicas of every topic: min(3, N) (the contract)."""
    return max(1, min(3, brokers))


def min_insync_replicas(brokers: int) -> int:
    """From three brokers on an acknowledged write is on two of them before the 202."""
    return 2 if brokers >= 3 else 1


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
    kafka_brokers: int = 1
    analyst_token_override: str | None = None
    # Monitoring (stack/monitoring.py): Prometheus, Alertmanager (its cluster listener
    # off unless a port is given) and the first broker's JMX exporter; further brokers'
    # exporters take free ports like their Kafka ports.
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    alertmanager_cluster_port: int | None = None
    kafka_exporter_port: int = 9404
    ops_email: str = "ops@localhost"
    # Scrape and rule evaluation interval; ALERT_TIME_SCALE multiplies every alerting
    # rule's `for:` and range, ALERT_GROUP_WAIT/ALERT_GROUP_INTERVAL are Alertmanager's:
    # the tests shrink all of them so that an alert costs seconds, not minutes.
    prometheus_interval: str = "5s"
    alert_time_scale: float = 1.0
    alert_group_wait: str = "30s"
    alert_group_interval: str = "5m"
    withdrawal_secret_override: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StackConfig:
        def port(name: str, default: int) -> int:
            return int(env.get(name) or default)

        kafka_port = port("KAFKA_PORT", 9092)
        brokers = _brokers(env.get("KAFKA_BROKERS"))
        return cls(
            run_dir=Path(env.get("RUN_DIR") or ROOT / ".run").resolve(),
            cache_dir=Path(env.get("STACK_CACHE_DIR") or _cache_home(env)),
            kafka_port=kafka_port,
            # Not KAFKA_PORT + 1: 9093 is Alertmanager's (the contract's default).
            kafka_controller_port=port("KAFKA_CONTROLLER_PORT", kafka_port + 100),
            pg_port=port("PG_PORT", 5433),
            smtp_port=port("SMTP_PORT", 2525),
            command_api_port=port("COMMAND_API_PORT", 8000),
            query_api_port=port("QUERY_API_PORT", 8001),
            processor_port=port("PROCESSOR_PORT", 6066),
            projector_port=port("PROJECTOR_PORT", 6067),
            notifier_port=port("NOTIFIER_PORT", 6068),
            partitions=int(env.get("PARTITIONS") or 4),
            kafka_version=env.get("KAFKA_VERSION") or "4.1.1",
            # Three brokers share the machine with everything else: a smaller heap each.
            kafka_heap=env.get("KAFKA_HEAP") or ("768m" if brokers == 1 else "512m"),
            processors=int(env.get("PROCESSORS") or 1),
            admin_token_override=env.get("ADMIN_TOKEN") or None,
            pseudonym_secret_override=env.get("PSEUDONYM_SECRET") or None,
            kafka_brokers=brokers,
            analyst_token_override=env.get("ANALYST_TOKEN") or None,
            prometheus_port=port("PROMETHEUS_PORT", 9090),
            alertmanager_port=port("ALERTMANAGER_PORT", 9093),
            alertmanager_cluster_port=int(env["ALERTMANAGER_CLUSTER_PORT"])
            if env.get("ALERTMANAGER_CLUSTER_PORT") else None,
            kafka_exporter_port=port("KAFKA_EXPORTER_PORT", 9404),
            ops_email=env.get("OPS_EMAIL") or "ops@localhost",
            prometheus_interval=env.get("PROMETHEUS_INTERVAL") or "5s",
            alert_time_scale=float(env.get("ALERT_TIME_SCALE") or 1),
            alert_group_wait=env.get("ALERT_GROUP_WAIT") or "30s",
            alert_group_interval=env.get("ALERT_GROUP_INTERVAL") or "5m",
            withdrawal_secret_override=env.get("WITHDRAWAL_SECRET") or None,
        )

    @classmethod
    def on_free_ports(cls, run_dir: Path, admin_token: str,
                      env: Mapping[str, str] | None = None,
                      pseudonym_secret: str | None = None) -> StackConfig:
        """A stack of its own under run_dir, for tests, benchmarks and the chaos suite:
        every port free, PROCESSOR_PORT + 11 (processor-2) too. Settings from env, by
        default none (the defaults); the downloads are cached where `make up` keeps them.
        With more than one broker the others take the next free ports above the first
        broker's at their first start (kafka_nodes)."""
        base = cls.from_env(env or {})
        port = PortPicker()
        return replace(
            base, run_dir=run_dir, cache_dir=cls.from_env(os.environ).cache_dir,
            kafka_port=port(), kafka_controller_port=port(), pg_port=port(),
            smtp_port=port(), command_api_port=port(), query_api_port=port(),
            processor_port=port(neighbour=11), projector_port=port(), notifier_port=port(),
            prometheus_port=port(), alertmanager_port=port(), kafka_exporter_port=port(),
            alertmanager_cluster_port=port() if base.alertmanager_cluster_port else None,
            admin_token_override=admin_token,
            pseudonym_secret_override=pseudonym_secret or base.pseudonym_secret_override,
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
    def kafka_layout_file(self) -> Path:
        """The ports a multi-broker cluster was created with (written at its first start)."""
        return self.run_dir / "kafka-cluster.json"

    def kafka_nodes(self) -> list[KafkaNode]:
        """The cluster's nodes: one named `kafka` under $RUN_DIR/kafka, or N named
        `kafka-1` ... `kafka-N` under $RUN_DIR/kafka-<i>. Node 1 takes KAFKA_PORT and
        the controller port; the others take the next free ports above them, chosen
        once and then read back from $RUN_DIR/kafka-cluster.json, so that a restart
        finds every node where the controller quorum expects it."""
        if self.kafka_brokers == 1:
            return [KafkaNode(1, "kafka", self.kafka_port, self.kafka_controller_port,
                              self.run_dir / "kafka", self.kafka_exporter_port)]
        recorded = self.recorded_kafka_ports()
        if recorded is not None and len(recorded) == self.kafka_brokers:
            ports = recorded
        else:
            ports = self._allocate_kafka_ports()
        return [KafkaNode(i, f"kafka-{i}", port, controller, self.run_dir / f"kafka-{i}",
                          exporter)
                for i, (port, controller, exporter) in enumerate(ports, start=1)]

    def recorded_kafka_ports(self) -> list[tuple[int, int, int]] | None:
        """(port, controller port, exporter port) per node; a layout written before the
        exporters existed gives node 1 KAFKA_EXPORTER_PORT and the others the port 10000
        above their controller's (checked for being free at the start like the rest)."""
        try:
            data = json.loads(self.kafka_layout_file.read_text())
        except FileNotFoundError:
            return None
        return [(int(n["port"]), int(n["controller_port"]),
                 int(n.get("exporter_port") or (self.kafka_exporter_port if i == 0
                                                else int(n["controller_port"]) + 10000)))
                for i, n in enumerate(data["nodes"])]

    def _allocate_kafka_ports(self) -> list[tuple[int, int, int]]:
        ports = [(self.kafka_port, self.kafka_controller_port, self.kafka_exporter_port)]
        # Not the ports of the other components either, though they may not listen yet.
        taken = {self.kafka_port, self.kafka_controller_port, self.pg_port, self.smtp_port,
                 self.command_api_port, self.query_api_port, self.projector_port,
                 self.notifier_port, self.processor_port, self.prometheus_port,
                 self.alertmanager_port, self.kafka_exporter_port,
                 *([self.alertmanager_cluster_port] if self.alertmanager_cluster_port else []),
                 *(self.processor_port + 10 + i for i in range(1, max(self.processors, 3)))}
        candidate = max(taken) + 1
        while len(ports) < self.kafka_brokers:
            triple: list[int] = []
            while len(triple) < 3:
                if candidate not in taken and port_free(candidate):
                    triple.append(candidate)
                    taken.add(candidate)
                candidate += 1
            ports.append((triple[0], triple[1], triple[2]))
        return ports

    @property
    def kafka_bootstrap(self) -> str:
        """Every broker, so that a client starts even while one of them is down."""
        return ",".join(node.address for node in self.kafka_nodes())

    @property
    def replication_factor(self) -> int:
        return replication_factor(self.kafka_brokers)

    @property
    def min_insync_replicas(self) -> int:
        return min_insync_replicas(self.kafka_brokers)

    @property
    def database_url(self) -> str:
        """The schema owner's connection string: migrations, replay, operators' tools and
        tests. Also in $RUN_DIR/postgres-admin.url. Services get their own role's."""
        return self.pg_url(PG_OWNER)

    def pg_url(self, role: str, database: str = PG_DATABASE) -> str:
        return (f"postgresql://{role}:{self.pg_password(role)}@127.0.0.1:{self.pg_port}"
                f"/{database}")

    def service_database_url(self, service: str) -> str:
        return self.pg_url(PG_SERVICE_ROLES[service])

    def pg_password(self, role: str) -> str:
        return self._password(f"postgres-{role}")

    def kafka_password(self, principal: str) -> str:
        return self._password(f"kafka-{principal}")

    def _password(self, name: str) -> str:
        # The folder of the passwords is its owner's alone too (not only each file).
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return generated_secret(self.secrets_dir / name)

    def kafka_client_env(self, principal: str = KAFKA_ADMIN_PRINCIPAL) -> dict[str, str]:
        """The settings a client of ours reads (service_kit.kafka_auth) to log in."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
                "KAFKA_SASL_USERNAME": principal,
                "KAFKA_SASL_PASSWORD": self.kafka_password(principal)}

    def kafka_client_config(self, principal: str = KAFKA_ADMIN_PRINCIPAL
                            ) -> dict[str, str | int | float | bool]:
        """confluent-kafka settings for a client of this cluster (the operator's by default)."""
        return {"bootstrap.servers": self.kafka_bootstrap, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": principal,
                "sasl.password": self.kafka_password(principal)}

    @property
    def secrets_dir(self) -> Path:
        return self.run_dir / "secrets"

    @property
    def kafka_admin_properties(self) -> Path:
        return self.run_dir / "kafka-admin.properties"

    @property
    def postgres_admin_url_file(self) -> Path:
        return self.run_dir / "postgres-admin.url"

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

    def analyst_token(self) -> str:
        """The query API's read token: ANALYST_TOKEN, else generated once into
        $RUN_DIR/analyst-token."""
        return self.analyst_token_override or self._secret("analyst-token")

    def pseudonym_secret(self) -> str:
        """The key of the seat keys' HMAC: PSEUDONYM_SECRET, else generated once into
        $RUN_DIR/pseudonym-secret. Changing it makes every stored seat key unfindable."""
        return self.pseudonym_secret_override or self._secret("pseudonym-secret")

    def withdrawal_secret(self) -> str:
        """The key of the withdrawal tokens' HMAC: WITHDRAWAL_SECRET, else generated once
        into $RUN_DIR/withdrawal-secret. Changing it voids every token already sent."""
        return self.withdrawal_secret_override or self._secret("withdrawal-secret")

    def _secret(self, name: str) -> str:
        return generated_secret(self.run_dir / name)

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
            "ADMIN_TOKEN": self.admin_token(), "ANALYST_TOKEN": self.analyst_token(),
            "PARTITIONS": str(self.partitions),
            "PSEUDONYM_SECRET": self.pseudonym_secret(),
            "WITHDRAWAL_SECRET": self.withdrawal_secret(),
            "KAFKA_VERSION": self.kafka_version, "KAFKA_HEAP": self.kafka_heap,
            "KAFKA_BROKERS": str(self.kafka_brokers),
            "PROMETHEUS_PORT": str(self.prometheus_port),
            "ALERTMANAGER_PORT": str(self.alertmanager_port),
            "ALERTMANAGER_CLUSTER_PORT": str(self.alertmanager_cluster_port or ""),
            "KAFKA_EXPORTER_PORT": str(self.kafka_exporter_port),
            "OPS_EMAIL": self.ops_email, "PROMETHEUS_INTERVAL": self.prometheus_interval,
            "ALERT_TIME_SCALE": str(self.alert_time_scale),
            "ALERT_GROUP_WAIT": self.alert_group_wait,
            "ALERT_GROUP_INTERVAL": self.alert_group_interval,
        })
        return env

    def service_env(self, service: str | None = None) -> dict[str, str]:
        """The 12-factor settings a service reads; the same names work under compose.

        With a service's name (`processor`, `projector`, ...): only the secrets that
        service uses, its own Kafka principal and PostgreSQL role. Without one: the
        operator's environment (schema owner, Kafka admin, every token), for tools that
        act for the operator (replay, reseal, a test's own command API)."""
        # With more than one broker a lost one is fenced after broker.session.timeout.ms
        # (6 s, stack/kafka.py) and its partitions get new leaders; a request waits that
        # out instead of answering 503. A hung broker (SIGSTOP) costs one client-side
        # request timeout (5 s, command_api/publisher.py) or two before the retry finds
        # the new leader: 15 s covers both and the election, under load.
        extra = {"PRODUCE_TIMEOUT_SECONDS": "15"} if self.kafka_brokers > 1 else {}
        base = extra | {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "KAFKA_REPLICATION_FACTOR": str(self.replication_factor),
            "KAFKA_MIN_INSYNC_REPLICAS": str(self.min_insync_replicas),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_SECURITY": "none",
            "PARTITIONS": str(self.partitions),
            "COMMAND_API_PORT": str(self.command_api_port),
            "QUERY_API_PORT": str(self.query_api_port),
            "PROCESSOR_PORT": str(self.processor_port),
            "PROJECTOR_PORT": str(self.projector_port),
            "NOTIFIER_PORT": str(self.notifier_port),
            "PROCESSOR_DATA_DIR": str(self.run_dir / "processor"),
        }
        return base | self.service_secrets(service)

    def service_secrets(self, service: str | None) -> dict[str, str]:
        """What `service` may know (None: the operator, who may know everything)."""
        if service is None:
            return {**self.kafka_client_env(), "DATABASE_URL": self.database_url,
                    "ADMIN_TOKEN": self.admin_token(), "ANALYST_TOKEN": self.analyst_token(),
                    "PSEUDONYM_SECRET": self.pseudonym_secret(),
                    "WITHDRAWAL_SECRET": self.withdrawal_secret()}
        name = "processor" if service.startswith("processor") else service
        found: dict[str, str] = {}
        if name in KAFKA_SERVICE_PRINCIPALS:
            found |= self.kafka_client_env(KAFKA_SERVICE_PRINCIPALS[name])
        if name in PG_SERVICE_ROLES:
            found["DATABASE_URL"] = self.service_database_url(name)
        if name in ("command-api", "query-api"):
            found["ADMIN_TOKEN"] = self.admin_token()
        if name == "query-api":
            found["ANALYST_TOKEN"] = self.analyst_token()
        if name in ("command-api", "processor"):
            found["PSEUDONYM_SECRET"] = self.pseudonym_secret()
        if name in ("command-api", "notifier"):
            # The command API checks withdrawal tokens, the notifier puts them in e-mails.
            found["WITHDRAWAL_SECRET"] = self.withdrawal_secret()
        return found


@contextlib.contextmanager
def operator_login(config: StackConfig) -> Iterator[None]:
    """While a stack of ours is in use by this very process (tests, bench, chaos), its
    Kafka clients log in as the operator: KAFKA_SASL_* in os.environ, where every client
    of the project finds its login (service_kit.kafka_auth); the old values come back
    on exit. Services started meanwhile get their own principal (service_env)."""
    names = ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
    saved = {name: os.environ.get(name) for name in names}
    login = config.kafka_client_env()
    os.environ.update({name: login[name] for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _brokers(raw: str | None) -> int:
    try:
        value = int(raw or 1)
    except ValueError:
        raise ValueError(f"KAFKA_BROKERS must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"KAFKA_BROKERS must be at least 1, got {raw!r}")
    return value
