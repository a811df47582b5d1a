"""Apache Kafka in KRaft mode (combined broker and controller) from the official Maven jars."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from stack import packages
from stack.config import (
    KAFKA_ADMIN_PRINCIPAL,
    KAFKA_BROKER_PRINCIPAL,
    KAFKA_SERVICE_PRINCIPALS,
    ROOT,
    KafkaNode,
    StackConfig,
)
from stack.procs import (
    StackError,
    is_running,
    log_file,
    pid_alive,
    port_open,
    read_pid,
    signal_group,
    spawn,
    stop,
    tail,
    taken_message,
)
from stack.secrets import write_secret

POM = ROOT / "stack" / "kafka-pom.xml"
LOG4J = ROOT / "stack" / "kafka-log4j2.properties"
NAME = "kafka"

# Topic -> extra configs. The event log is the source of truth, kept forever.
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}


def topic_configs() -> dict[str, dict[str, str]]:
    from schemas import topics

    return {
        topics.COMMANDS: {"retention.ms": str(7 * 24 * 3600 * 1000)},
        topics.EVENTS: dict(FOREVER),
        topics.COMMANDS_DLQ: dict(FOREVER),
        topics.EVENTS_DLQ: dict(FOREVER),
        topics.NOTIFIER_DLQ: dict(FOREVER),
    }


def libs_dir(config: StackConfig) -> Path:
    return config.cache_dir / f"kafka-{config.kafka_version}" / "libs"


def ensure_jars(config: StackConfig) -> Path:
    """Fetch the broker and its runtime classpath once into the cache, with Maven."""
    libs = libs_dir(config)
    if (libs / f"kafka_2.13-{config.kafka_version}.jar").exists():
        return libs
    packages.ensure_command("java", "openjdk-17-jre-headless")
    packages.ensure_command("mvn", "maven")
    print(f"fetching Apache Kafka {config.kafka_version} jars with Maven into {libs}", flush=True)
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=libs.parent, prefix="libs-"))
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-Dkafka.version={config.kafka_version}", "-DincludeScope=runtime",
         f"-DoutputDirectory={staging}"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise StackError(
            f"kafka: Maven could not fetch the broker jars:\n{result.stdout}{result.stderr}"
        )
    # Rename is atomic: a half-finished download is never taken for a complete one.
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def server_properties(config: StackConfig, node: KafkaNode) -> str:
    nodes = config.kafka_nodes()
    replicas, min_isr = config.replication_factor, config.min_insync_replicas
    if len(nodes) == 1:
        # One node, formatted --standalone: a dynamic quorum of itself.
        quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{node.controller_port}"
    else:
        # N voters fixed at format time: a majority of them elects the active controller.
        quorum = "controller.quorum.voters=" + ",".join(
            f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    broker_password = config.kafka_password(KAFKA_BROKER_PRINCIPAL)
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        # Clients and the brokers among themselves: SASL/SCRAM-SHA-512, every principal
        # created at format time (format_storage). The controllers' listener takes PLAIN
        # with the brokers' own password (KRaft controllers cannot check SCRAM: the
        # credentials live in the metadata log they serve). No TLS yet: README.
        f"listeners=CLIENT://127.0.0.1:{node.port},"
        f"CONTROLLER://127.0.0.1:{node.controller_port}",
        f"advertised.listeners=CLIENT://127.0.0.1:{node.port}",
        "inter.broker.listener.name=CLIENT",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        "listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.client.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{KAFKA_BROKER_PRINCIPAL}" password="{broker_password}";',
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{KAFKA_BROKER_PRINCIPAL}" password="{broker_password}" '
        f'user_{KAFKA_BROKER_PRINCIPAL}="{broker_password}";',
        # ACLs (stack/kafka_acls.py): a principal may do only what is granted to it;
        # the brokers and the operator may do everything.
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{KAFKA_BROKER_PRINCIPAL};User:{KAFKA_ADMIN_PRINCIPAL}",
        "allow.everyone.if.no.acl.found=false",
        quorum,
        f"log.dirs={node.home / 'data'}",
        f"num.partitions={config.partitions}",
        # Kafka's internal topics (consumer offsets, transaction state) and any topic
        # created without explicit settings (faust's assignor topic) get the same
        # replication as the project's own: min(3, N), and from 3 brokers on a write
        # counts only once two replicas have it.
        f"default.replication.factor={replicas}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={replicas}",
        "offsets.topic.num.partitions=10",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        "transaction.state.log.num.partitions=10",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        # A replica that was down catches up and is elected again: no unclean election,
        # so an acknowledged write is never dropped for a replica that lacks it.
        "unclean.leader.election.enable=false",
        # A broker that stops heartbeating is fenced (and its partitions get new
        # leaders) after this long; Kafka's default is 9 s. The command API waits up to
        # PRODUCE_TIMEOUT_SECONDS for an acknowledgement, which must cover the fencing
        # plus the election, so that a lost broker fails no request.
        f"broker.session.timeout.ms={session_timeout_ms(config)}",
        f"broker.heartbeat.interval.ms={session_timeout_ms(config) // 4}",
        "group.initial.rebalance.delay.ms=0",
        # Topics are created by the project with explicit settings, never by accident.
        "auto.create.topics.enable=false",
        "",
    ])


def session_timeout_ms(config: StackConfig) -> int:
    return 9000 if config.kafka_brokers == 1 else 6000


def java_command(config: StackConfig, main: str, *args: str) -> list[str]:
    libs = ensure_jars(config)
    return [
        "java", "-Xms256m", f"-Xmx{config.kafka_heap}", "-XX:+UseG1GC",
        "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J}",
        "-cp", f"{libs}/*", main, *args,
    ]


def format_storage(config: StackConfig, node: KafkaNode, cluster_id: str) -> Path:
    props = node.home / "server.properties"
    node.home.mkdir(parents=True, exist_ok=True)
    write_secret(props, server_properties(config, node))  # it holds the brokers' password
    if (node.home / "data" / "meta.properties").exists():
        if not (node.home / "scram-formatted").exists():
            raise StackError(f"{node.name}: {node.home} was formatted by an older version of "
                             "the stack, without SASL principals. Move "
                             f"{config.run_dir} away (or `make down` and delete it) and start "
                             "again.")
        return props
    # One node: a quorum of itself (--standalone); more: the voters are in the config.
    standalone = ["--standalone"] if config.kafka_brokers == 1 else []
    # Every principal's SCRAM credential goes into the cluster's first metadata, so the
    # brokers can check a login from their first second. The passwords pass on the
    # command line of this short-lived local process only (the StorageTool has no
    # other way in); nothing logs them.
    scram = [arg for name in principals()
             for arg in ("--add-scram",
                         f"SCRAM-SHA-512=[name={name},password={config.kafka_password(name)}]")]
    result = subprocess.run(
        java_command(config, "kafka.tools.StorageTool", "format", *standalone,
                     f"--cluster-id={cluster_id}", "-c", str(props), *scram),
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise StackError(
            f"{node.name}: formatting the KRaft log dir failed:\n{result.stdout}{result.stderr}"
        )
    (node.home / "scram-formatted").touch()
    return props


def principals() -> list[str]:
    """Every SCRAM principal of the cluster: the brokers, the operator, each service."""
    return [KAFKA_BROKER_PRINCIPAL, KAFKA_ADMIN_PRINCIPAL,
            *sorted(set(KAFKA_SERVICE_PRINCIPALS.values()))]


def admin_properties(config: StackConfig) -> str:
    """The operator's client configuration: Java tools (`--command-config`), librdkafka."""
    settings = config.kafka_client_config(KAFKA_ADMIN_PRINCIPAL)
    java_jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                 f'username="{settings["sasl.username"]}" '
                 f'password="{settings["sasl.password"]}";')
    return "".join(f"{k}={v}\n" for k, v in settings.items()) + f"sasl.jaas.config={java_jaas}\n"


def write_admin_properties(config: StackConfig) -> None:
    write_secret(config.kafka_admin_properties, admin_properties(config))


def ensure_access(config: StackConfig) -> None:
    """The services' ACLs, and $RUN_DIR/kafka-admin.properties for the operator."""
    from stack import kafka_acls

    kafka_acls.ensure_acls(config)
    write_admin_properties(config)


def _kraft_cluster_id() -> str:
    import base64

    # URL-safe base64 of a UUID, as Kafka's own random-uuid; about one in 64 starts
    # with "-", which is why it is passed as --cluster-id=<id>, never as a separate word.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _cluster_id(nodes: list[KafkaNode]) -> str:
    """The id the formatted nodes share, or a new one for a new cluster."""
    for node in nodes:
        meta = node.home / "data" / "meta.properties"
        if meta.exists():
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
    return _kraft_cluster_id()


def check_layout(config: StackConfig) -> None:
    """Refuse, before anything starts, a $RUN_DIR whose Kafka has another shape than
    KAFKA_BROKERS asks for: starting it would half-start a cluster or fork the log."""
    single = (config.run_dir / "kafka" / "data" / "meta.properties").exists()
    recorded = config.recorded_kafka_ports()
    formatted = len(recorded) if recorded is not None else (1 if single else 0)
    if formatted in (0, config.kafka_brokers):
        return
    have = "a single-broker Kafka" if formatted == 1 else f"a {formatted}-broker Kafka cluster"
    raise StackError(
        f"kafka: {config.run_dir} holds {have}, but KAFKA_BROKERS={config.kafka_brokers}. "
        "The project does not move an event log between cluster shapes. Either run with "
        f"KAFKA_BROKERS={formatted} (the data stays as it is), or start the new cluster in "
        f"another RUN_DIR (or `make down` and move {config.run_dir} away first; the event "
        "log of the old one is in it). Nothing was started."
    )


def _record_layout(config: StackConfig, nodes: list[KafkaNode]) -> None:
    if config.kafka_brokers == 1 or config.kafka_layout_file.exists():
        return
    config.run_dir.mkdir(parents=True, exist_ok=True)
    config.kafka_layout_file.write_text(json.dumps({"nodes": [
        {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port}
        for n in nodes]}, indent=2) + "\n")


def names(config: StackConfig) -> list[str]:
    """PID/log names of the nodes: `kafka`, or `kafka-1` ... `kafka-N`."""
    return [node.name for node in config.kafka_nodes()]


def start(config: StackConfig) -> bool:
    """Start every node that does not run and wait until the cluster has all N brokers;
    True if this call started any."""
    check_layout(config)
    nodes = config.kafka_nodes()
    stopped = [n for n in nodes if not is_running(config, n.name)]
    if not stopped:
        return False
    for node in stopped:
        for port in (node.port, node.controller_port):
            if port_open(port):
                raise StackError(taken_message(node.name, port, "KAFKA_PORT"))
    _record_layout(config, nodes)
    cluster_id = _cluster_id(nodes)
    props = {n.name: format_storage(config, n, cluster_id) for n in stopped}
    pids = {n.name: spawn(config, n.name, java_command(config, "kafka.Kafka", str(props[n.name])))
            for n in stopped}
    # With N voters no node is ready alone: they elect a controller together, so all are
    # started before waiting, and the wait watches every one of them.
    try:
        _wait_for_cluster(config, stopped, pids, 120)
    except StackError as exc:
        # Never leave a half-started cluster behind: what this call started, it stops.
        for node in stopped:
            stop(config, node.name, timeout=30)
        raise StackError(f"{exc}\n  (stopped {', '.join(n.name for n in stopped)} again: "
                         "no half-started cluster is left running)") from exc
    return True


def _wait_for_cluster(config: StackConfig, nodes: list[KafkaNode], pids: dict[str, int],
                      timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        for name, pid in pids.items():
            if not pid_alive(pid):
                raise StackError(f"{name} exited during start-up; see "
                                 f"{log_file(config, name)}{tail(log_file(config, name))}")
        pending = [n for n in pending if not _probe(config, n)]
        if pending and time.monotonic() > deadline:
            node = pending[0]
            log = log_file(config, node.name)
            raise StackError(f"{node.name} (broker on port {node.port}) did not join a cluster "
                             f"of {config.kafka_brokers} within {timeout:.0f}s; see {log}"
                             f"{tail(log)}")
        if pending:
            time.sleep(0.25)


def _probe(config: StackConfig, node: KafkaNode) -> bool:
    try:
        return _metadata_ok(config, node)
    except Exception:  # noqa: BLE001 - any failure of a probe means "not yet"
        return False


def _metadata_ok(config: StackConfig, node: KafkaNode) -> bool:
    """The node answers on its own port and sees the whole cluster registered."""
    from confluent_kafka.admin import AdminClient

    if not port_open(node.port):
        return False
    # log_level 0: a refused connection while the broker boots is expected, not news.
    admin = AdminClient({**config.kafka_client_config(), "bootstrap.servers": node.address,
                         "log_level": 0})
    brokers = admin.list_topics(timeout=2).brokers
    return len(brokers) >= config.kafka_brokers and node.node_id in brokers


def stop_all(config: StackConfig, timeout: float = 60) -> list[tuple[str, bool]]:
    """Stop every node found under $RUN_DIR/pids (of whatever shape), all at once: one at
    a time, the last ones would wait for a controller quorum that is already gone.
    Returns (name, was running) per node."""
    found = sorted({*names(config), *(p.stem for p in config.pids.glob("kafka*.pid"))})
    running = {name for name in found if is_running(config, name)}
    for name in running:
        pid = read_pid(config, name)
        if pid is not None:
            signal_group(pid, signal.SIGTERM)
    for name in found:
        stop(config, name, timeout=timeout)
    return [(name, name in running) for name in found]


# Topics the cluster holds for the project besides its own: Kafka's internal ones (made
# on first use with the broker's settings) and the processor's table changelogs.
INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")
CHANGELOG_PREFIX = "course-processor-"


def admin_config(config: StackConfig, bootstrap: str | None = None) -> dict[str, Any]:
    """The operator's client settings for this stack, or for `bootstrap` with the login
    of the environment (KAFKA_SASL_*: service_kit.kafka_auth) when another cluster is
    named."""
    from service_kit.kafka_auth import client_config

    login = client_config() if bootstrap else config.kafka_client_config()
    return {**login, "bootstrap.servers": bootstrap or config.kafka_bootstrap, "log_level": 3}


def ensure_topics(config: StackConfig, bootstrap: str | None = None,
                  replicas: int | None = None, min_isr: int | None = None) -> list[str]:
    """Create the project's topics with their settings, replicas and min.insync.replicas;
    existing ones are left as they are. Returns one line per existing topic that has
    fewer replicas (or a lower min.insync.replicas) than asked: the caller reports them,
    since Kafka does not add replicas to a topic by itself."""
    from confluent_kafka.admin import AdminClient, NewTopic

    replicas = replicas or config.replication_factor
    min_isr = min_isr or config.min_insync_replicas
    admin = AdminClient(admin_config(config, bootstrap))
    existing = admin.list_topics(timeout=10).topics
    wanted = [
        NewTopic(name, config.partitions, replicas,
                 config={**cfg, "min.insync.replicas": str(min_isr)})
        for name, cfg in topic_configs().items()
        if name not in existing
    ]
    for name, future in (admin.create_topics(wanted, request_timeout=30).items()
                         if wanted else ()):
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"kafka: could not create topic {name}: {exc}") from exc
    ours = [name for name in existing
            if name in topic_configs() or name in INTERNAL_TOPICS
            or name.startswith(CHANGELOG_PREFIX)]
    return under_replicated(admin, {n: existing[n] for n in ours}, replicas, min_isr)


def under_replicated(admin: Any, topics: dict[str, Any], replicas: int,
                     min_isr: int) -> list[str]:
    """A line per topic whose partitions have fewer replicas than `replicas`, or whose
    min.insync.replicas is below `min_isr`."""
    from confluent_kafka.admin import ConfigResource

    problems = []
    for name, meta in sorted(topics.items()):
        have = min((len(p.replicas) for p in meta.partitions.values()), default=0)
        if have < replicas:
            problems.append(f"topic {name} has {have} replica(s) per partition, fewer than "
                            f"the {replicas} asked for; add replicas with "
                            "kafka-reassign-partitions (Kafka never does it by itself)")
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in sorted(topics)]
    if min_isr > 1 and resources:
        for resource, future in admin.describe_configs(resources).items():
            value = future.result().get("min.insync.replicas")
            if value is not None and int(value.value) < min_isr:
                problems.append(f"topic {resource.name} has min.insync.replicas="
                                f"{value.value}, lower than the {min_isr} asked for")
    return problems


def report(problems: list[str]) -> None:
    for line in problems:
        print(f"  WARNING: {line}", file=sys.stderr, flush=True)
