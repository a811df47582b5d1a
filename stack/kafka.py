"""Apache Kafka in KRaft mode (combined broker and controller) from the official Maven jars."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from stack import packages
from stack.config import ROOT, StackConfig
from stack.procs import StackError, is_running, log_file, port_open, spawn, wait_until

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


def server_properties(config: StackConfig) -> str:
    data = config.run_dir / "kafka" / "data"
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"listeners=PLAINTEXT://127.0.0.1:{config.kafka_port},"
        f"CONTROLLER://127.0.0.1:{config.kafka_controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{config.kafka_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{config.kafka_controller_port}",
        f"log.dirs={data}",
        f"num.partitions={config.partitions}",
        # One node: every internal topic has a single replica.
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=10",
        "share.coordinator.state.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
        # Topics are created by the project with explicit settings, never by accident.
        "auto.create.topics.enable=false",
        "",
    ])


def java_command(config: StackConfig, main: str, *args: str) -> list[str]:
    libs = ensure_jars(config)
    return [
        "java", "-Xms256m", f"-Xmx{config.kafka_heap}", "-XX:+UseG1GC",
        "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J}",
        "-cp", f"{libs}/*", main, *args,
    ]


def format_storage(config: StackConfig) -> Path:
    home = config.run_dir / "kafka"
    props = home / "server.properties"
    home.mkdir(parents=True, exist_ok=True)
    props.write_text(server_properties(config))
    if (home / "data" / "meta.properties").exists():
        return props
    cluster_id = _kraft_cluster_id()
    result = subprocess.run(
        java_command(config, "kafka.tools.StorageTool", "format", "--standalone",
                     f"--cluster-id={cluster_id}", "-c", str(props)),
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise StackError(
            f"kafka: formatting the KRaft log dir failed:\n{result.stdout}{result.stderr}"
        )
    return props


def _kraft_cluster_id() -> str:
    import base64

    # URL-safe base64 of a UUID, as Kafka's own random-uuid; about one in 64 starts
    # with "-", which is why it is passed as --cluster-id=<id>, never as a separate word.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def start(config: StackConfig) -> bool:
    """Start the broker unless it runs; True if this call started it."""
    if is_running(config, NAME):
        return False
    if port_open(config.kafka_port):
        raise StackError(f"kafka: port {config.kafka_port} is taken by another process; "
                         "set KAFKA_PORT to a free port")
    props = format_storage(config)
    pid = spawn(config, NAME, java_command(config, "kafka.Kafka", str(props)))
    wait_until(lambda: _metadata_ok(config), 90, "kafka (broker)", log_file(config, NAME), pid)
    return True


def _metadata_ok(config: StackConfig) -> bool:
    from confluent_kafka.admin import AdminClient

    if not port_open(config.kafka_port):
        return False
    # log_level 0: a refused connection while the broker boots is expected, not news.
    admin = AdminClient({"bootstrap.servers": config.kafka_bootstrap, "log_level": 0})
    return len(admin.list_topics(timeout=2).brokers) > 0


def ensure_topics(config: StackConfig, bootstrap: str | None = None) -> None:
    """Create the project's topics with their settings; existing ones are left as they are."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap or config.kafka_bootstrap,
                         "log_level": 3})
    existing = admin.list_topics(timeout=10).topics
    wanted = [
        NewTopic(name, config.partitions, 1, config=cfg)
        for name, cfg in topic_configs().items()
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=30).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"kafka: could not create topic {name}: {exc}") from exc


