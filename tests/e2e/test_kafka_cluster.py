"""`python -m stack` with KAFKA_BROKERS: three KRaft nodes with replicated topics, the
refusal of another cluster shape in the same RUN_DIR, and a stack that trusts only the
processes it started."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from schemas import topics
from stack.config import StackConfig
from stack.procs import owns_port, pid_alive
from stack.waiting import wait_until
from tests.infra import stack_config_for_tests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PROJECT_TOPICS = (topics.COMMANDS, topics.EVENTS, topics.COMMANDS_DLQ, topics.EVENTS_DLQ,
                  topics.NOTIFIER_DLQ)


def _stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stack", command], env=env, text=True,
                          capture_output=True, timeout=300)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="course-signup-cluster-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(run_dir: Path, brokers: int, only: str) -> dict[str, str]:
    env = stack_config_for_tests(run_dir).stack_env()
    return {**env, "KAFKA_BROKERS": str(brokers), "KAFKA_HEAP": "384m", "STACK_ONLY": only}


def test_three_brokers_replicate_every_topic_and_stop_together(run_dir: Path) -> None:
    env = _env(run_dir, 3, "kafka")
    try:
        up = _stack("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        pids = {n: int((run_dir / "pids" / f"{n}.pid").read_text())
                for n in ("kafka-1", "kafka-2", "kafka-3")}
        assert not (run_dir / "pids" / "kafka.pid").exists()
        assert all((run_dir / "logs" / f"{n}.log").exists() for n in pids)
        [line] = [ln for ln in up.stdout.splitlines() if ln.startswith("Kafka bootstrap")]
        bootstrap = line.split()[2]
        assert len(bootstrap.split(",")) == 3 and bootstrap.startswith(
            f"127.0.0.1:{env['KAFKA_PORT']},")
        service_env = _stack("env", env).stdout
        for setting in (f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}", "KAFKA_REPLICATION_FACTOR=3",
                        "KAFKA_MIN_INSYNC_REPLICAS=2", "PRODUCE_TIMEOUT_SECONDS=15"):
            assert f"export {setting}" in service_env, setting

        login = StackConfig.from_env(env).kafka_client_config()
        admin = AdminClient({**login, "bootstrap.servers": bootstrap})
        metadata = admin.list_topics(timeout=10)
        assert sorted(metadata.brokers) == [1, 2, 3]
        for name in PROJECT_TOPICS:
            assert all(len(p.replicas) == 3 for p in metadata.topics[name].partitions.values())
        configs = admin.describe_configs(
            [ConfigResource(ConfigResource.Type.TOPIC, n) for n in PROJECT_TOPICS])
        assert {r.name: f.result()["min.insync.replicas"].value
                for r, f in configs.items()} == dict.fromkeys(PROJECT_TOPICS, "2")
        broker = ConfigResource(ConfigResource.Type.BROKER, "1")
        settings = admin.describe_configs([broker])[broker].result()
        # Kafka's internal topics are made on first use, with these.
        assert {k: settings[k].value for k in (
            "offsets.topic.replication.factor", "transaction.state.log.replication.factor",
            "transaction.state.log.min.isr", "default.replication.factor",
            "min.insync.replicas")} == {
            "offsets.topic.replication.factor": "3",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2", "default.replication.factor": "3",
            "min.insync.replicas": "2"}

        # A topic that exists with fewer replicas than asked is reported, not used silently.
        admin.delete_topics([topics.NOTIFIER_DLQ])[topics.NOTIFIER_DLQ].result(30)
        wait_until(lambda: topics.NOTIFIER_DLQ not in admin.list_topics(timeout=10).topics,
                   30, f"{topics.NOTIFIER_DLQ} deleted")
        admin.create_topics([NewTopic(topics.NOTIFIER_DLQ, 4, 1)])[topics.NOTIFIER_DLQ].result(30)
        checked = _stack("topics", env)
        assert checked.returncode == 0, checked.stderr
        assert (f"WARNING: topic {topics.NOTIFIER_DLQ} has 1 replica(s) per partition, fewer "
                "than the 3 asked for") in checked.stderr

        # Another shape in the same RUN_DIR is refused before anything starts.
        refused = _stack("up", {**env, "KAFKA_BROKERS": "1"})
        assert refused.returncode == 1
        assert "holds a 3-broker Kafka cluster, but KAFKA_BROKERS=1" in refused.stderr

        again = _stack("up", env)
        assert again.returncode == 0 and "already running" in again.stdout
        down = _stack("down", env)
        assert down.returncode == 0, down.stderr
        assert all(f"{n:<12} stopped" in down.stdout for n in pids)
        assert not any(pid_alive(pid) for pid in pids.values())
        assert all((run_dir / f"kafka-{i}" / "data" / "meta.properties").exists()
                   for i in (1, 2, 3)), "down keeps the data"
    finally:
        _stack("down", env)


def _processes_using(run_dir: Path) -> list[int]:
    """PIDs whose command line names run_dir (a broker's server.properties is in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(run_dir).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_single_node_run_dir_refuses_three_brokers_and_starts_nothing(run_dir: Path) -> None:
    data = run_dir / "kafka" / "data"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("node.id=1\ncluster.id=abc\nversion=1\n")
    refused = _stack("up", _env(run_dir, 3, "kafka,postgres,smtp"))
    assert refused.returncode == 1
    assert "holds a single-broker Kafka, but KAFKA_BROKERS=3" in refused.stderr
    assert "Nothing was started" in refused.stderr
    assert not list((run_dir / "pids").glob("*.pid"))
    assert not (run_dir / "kafka-1").exists()


def test_a_service_port_held_by_another_process_is_an_error_naming_both(run_dir: Path) -> None:
    env = _env(run_dir, 1, "smtp,query-api")
    port = int(env["QUERY_API_PORT"])
    with socket.socket() as other:  # "the old stack's" service on our port
        other.bind(("127.0.0.1", port))
        other.listen()
        assert owns_port(os.getpid(), port)
        failed = _stack("up", env)
    assert failed.returncode == 1
    assert (f"query-api: port {port} is taken by another process (pid {os.getpid()}); "
            "set QUERY_API_PORT") in failed.stderr
    assert "nothing was started" in failed.stderr
    assert not list((run_dir / "pids").glob("*.pid")), "the SMTP sink was started all the same"


def test_a_port_answered_by_another_process_is_not_ours() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                                     start_new_session=True)
        try:
            assert owns_port(os.getpid(), port)
            assert not owns_port(bystander.pid, port)
        finally:
            bystander.kill()
            bystander.wait()
    assert not owns_port(os.getpid(), port)  # nobody listens any more


def test_a_cluster_that_cannot_form_is_stopped_again_not_left_half_started(
        run_dir: Path) -> None:
    # Node 3's log dir says it is node 7: Kafka refuses to start it, so no quorum of all
    # three can ever form; the two nodes that did start must not be left running.
    data = run_dir / "kafka-3" / "data"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text(
        "node.id=7\ndirectory.id=AAAAAAAAAAAAAAAAAAAAAA\nversion=1\n"
        "cluster.id=q1Sh-9_ISia_zwGINzRvyQ\n")
    (data.parent / "scram-formatted").touch()  # formatted by this version, with SASL
    env = _env(run_dir, 3, "kafka")
    try:
        failed = _stack("up", env)
        assert failed.returncode == 1, failed.stdout
        assert "no half-started cluster is left running" in failed.stderr
        assert not list((run_dir / "pids").glob("kafka*.pid"))
        assert not _processes_using(run_dir), "a node of the failed cluster still runs"
    finally:
        _stack("down", env)
