"""Kafka as a cluster: replication per broker count, the settings every part gets from
it, and the chaos suite's choice of stack. Pure; no broker, no files, no sockets."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from command_api.publisher import producer_config
from course_processor.faust_eos.app import faust_settings
from course_processor.settings import Settings
from proof.chaos import SCENARIOS, fits, longest_stall, resumed_everywhere
from stack import kafka
from stack.__main__ import replay_env
from stack.config import StackConfig, min_insync_replicas, replication_factor


@pytest.mark.parametrize(("brokers", "replicas", "min_isr"),
                         [(1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2)])
def test_replication_is_min_3_n_and_two_in_sync_from_three(
        brokers: int, replicas: int, min_isr: int) -> None:
    assert (replication_factor(brokers), min_insync_replicas(brokers)) == (replicas, min_isr)


def _config(**env: str) -> StackConfig:
    base = {"RUN_DIR": "/nonexistent/run", "ADMIN_TOKEN": "t" * 16}
    return StackConfig.from_env(base | env)


def test_one_broker_by_default_named_kafka_as_before() -> None:
    config = _config(KAFKA_PORT="9192")
    assert config.kafka_brokers == 1 and config.kafka_heap == "768m"
    [node] = config.kafka_nodes()
    # The controller at KAFKA_PORT + 100.
    assert (node.name, node.port, node.controller_port) == ("kafka", 9192, 9292)
    assert node.home == Path("/nonexistent/run/kafka")
    assert config.kafka_bootstrap == "127.0.0.1:9192"


def test_brokers_from_the_environment_with_a_smaller_heap_each() -> None:
    config = _config(KAFKA_BROKERS="3")
    assert (config.kafka_brokers, config.kafka_heap) == (3, "512m")
    assert (config.replication_factor, config.min_insync_replicas) == (3, 2)


@pytest.mark.parametrize("raw", ["0", "-1", "three"])
def test_a_broker_count_that_is_no_count_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="KAFKA_BROKERS"):
        _config(KAFKA_BROKERS=raw)


def test_services_of_one_broker_get_one_replica_and_the_api_default_timeout() -> None:
    # (Three brokers: tests/e2e/test_kafka_cluster.py, since their ports are looked up.)
    single = _config().service_env()
    assert (single["KAFKA_REPLICATION_FACTOR"], single["KAFKA_MIN_INSYNC_REPLICAS"]) == ("1", "1")
    assert "PRODUCE_TIMEOUT_SECONDS" not in single  # the command API's own 5 s


def test_single_node_properties_keep_one_replica_and_a_standalone_quorum() -> None:
    config = _config(KAFKA_PORT="9192")
    props = kafka.server_properties(config, config.kafka_nodes()[0])
    assert "controller.quorum.bootstrap.servers=127.0.0.1:9292" in props
    for line in ("default.replication.factor=1", "min.insync.replicas=1",
                 "offsets.topic.replication.factor=1",
                 "transaction.state.log.replication.factor=1",
                 "transaction.state.log.min.isr=1", "auto.create.topics.enable=false",
                 "unclean.leader.election.enable=false"):
        assert line in props.splitlines(), line


def test_processor_replicates_its_changelogs_and_faust_topics_as_told() -> None:
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2,c:3",
                                  "PSEUDONYM_SECRET": "s",
                                  "KAFKA_REPLICATION_FACTOR": "3",
                                  "KAFKA_MIN_INSYNC_REPLICAS": "2"})
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    assert faust_settings(settings)["topic_replication_factor"] == 3
    assert settings.broker_url == "kafka://a:1;kafka://b:2;kafka://c:3"
    default = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "a:1", "PSEUDONYM_SECRET": "s"})
    assert faust_settings(default)["topic_replication_factor"] == 1


def test_command_api_gives_up_on_a_hung_broker_before_the_message_times_out() -> None:
    config = producer_config("a:1,b:2,c:3", 15)
    assert config["bootstrap.servers"] == "a:1,b:2,c:3"
    assert (config["acks"], config["enable.idempotence"]) == ("all", True)
    assert (config["message.timeout.ms"], config["socket.timeout.ms"]) == (15000, 5000)
    assert producer_config("a:1", 2)["socket.timeout.ms"] == 2000


def test_chaos_runs_each_scenario_on_its_cluster_shape() -> None:
    cluster = [n for n, s in SCENARIOS.items() if s.brokers == 3]
    assert cluster == ["kill-leader-broker", "kill-two-brokers", "pause-leader-broker"]
    assert fits(SCENARIOS["kill-kafka"], 1) and not fits(SCENARIOS["kill-kafka"], 3)
    assert fits(SCENARIOS["kill-leader-broker"], 3)
    assert not fits(SCENARIOS["kill-leader-broker"], 1)
    assert [n for n in cluster if SCENARIOS[n].short] == ["kill-leader-broker"]


def _decisions(times: dict[int, list[float]]) -> Any:
    return SimpleNamespace(decisions=[SimpleNamespace(partition=p, timestamp_ms=int(t * 1000))
                                      for p, ts in times.items() for t in ts])


def test_a_lost_broker_counts_as_recovered_once_every_partition_decides_again() -> None:
    ev = _decisions({0: [0, 1, 2, 10, 11], 1: [0.5, 3, 4], 2: [1, 2]})
    # Partition 0 (led by the lost broker) resumes 7.5 s after the fault; partition 2
    # had no traffic afterwards and says nothing.
    assert resumed_everywhere(ev, 2.5) == 7.5
    assert resumed_everywhere(ev, 20) is None


def test_the_stall_is_the_longest_gap_in_one_partition_while_the_load_ran() -> None:
    ev = _decisions({0: [0, 1, 2, 10, 11], 1: [0.5, 3, 40]})
    run: Any = SimpleNamespace(load=SimpleNamespace(started_at=0.0, stopped_at=12.0))
    assert longest_stall(run, ev) == 8.0  # 2 -> 10 in partition 0; 3 -> 40 is after the load


def test_make_replay_finds_the_native_stack_unless_told_otherwise(tmp_path: Path) -> None:
    config = _config(KAFKA_PORT="19092", PG_PORT="15432", RUN_DIR=str(tmp_path))
    native = replay_env(config, {"PATH": "/bin", "DATABASE_URL": ""})
    assert native["KAFKA_BOOTSTRAP_SERVERS"] == config.kafka_bootstrap
    assert native["DATABASE_URL"] == config.database_url
    assert native["PATH"] == "/bin"
    assert (native["KAFKA_SASL_USERNAME"], native["KAFKA_SASL_PASSWORD"]) == (
        "admin", config.kafka_password("admin"))
    told = replay_env(config, {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
                               "DATABASE_URL": "postgresql://db/x"})
    assert (told["KAFKA_BOOTSTRAP_SERVERS"], told["DATABASE_URL"]) == (
        "kafka:9092", "postgresql://db/x")
