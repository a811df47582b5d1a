"""The monitoring of the native stack, pure: its settings and ports, the Prometheus and
Alertmanager configurations it writes, the jar checksums, the apt policy. No process
is started (end to end: tests/e2e/test_alerts.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from stack import maven, monitoring, packages
from stack.config import StackConfig
from stack.procs import StackError


def _config(**env: str) -> StackConfig:
    return StackConfig.from_env({"RUN_DIR": "/nonexistent/run", "ADMIN_TOKEN": "t" * 16} | env)


def test_the_contract_s_defaults_and_their_environment_variables() -> None:
    config = _config()
    assert (config.prometheus_port, config.alertmanager_port, config.ops_email) == (
        9090, 9093, "ops@localhost")
    assert config.alertmanager_cluster_port is None  # gossip off
    moved = _config(PROMETHEUS_PORT="19090", ALERTMANAGER_PORT="19093", OPS_EMAIL="oncall@x.org",
                    ALERTMANAGER_CLUSTER_PORT="19094", KAFKA_EXPORTER_PORT="19404")
    assert (moved.prometheus_port, moved.alertmanager_port, moved.alertmanager_cluster_port,
            moved.kafka_exporter_port, moved.ops_email) == (19090, 19093, 19094, 19404,
                                                             "oncall@x.org")



def test_the_default_ports_are_all_different() -> None:
    # Kafka's controller once took KAFKA_PORT + 1 = 9093, Alertmanager's port: `make up`
    # on the defaults stopped at Alertmanager.
    config = _config()
    ports = {"kafka": config.kafka_port, "kafka controller": config.kafka_controller_port,
             "postgres": config.pg_port, "smtp": config.smtp_port,
             "command api": config.command_api_port, "query api": config.query_api_port,
             "processor": config.processor_port, "projector": config.projector_port,
             "notifier": config.notifier_port, "prometheus": config.prometheus_port,
             "alertmanager": config.alertmanager_port,
             "kafka exporter": config.kafka_exporter_port}
    clashes = {p: [n for n, q in ports.items() if q == p] for p in ports.values()}
    assert {p: names for p, names in clashes.items() if len(names) > 1} == {}


def test_a_child_python_m_stack_addresses_the_same_monitoring(tmp_path: Path) -> None:
    config = StackConfig.from_env({"RUN_DIR": str(tmp_path), "ADMIN_TOKEN": "t" * 16,
                                   "PROMETHEUS_PORT": "19090", "OPS_EMAIL": "oncall@x.org",
                                   "ALERT_TIME_SCALE": "0.1", "PROMETHEUS_INTERVAL": "2s"})
    child = StackConfig.from_env(config.stack_env({}))
    fields = ("prometheus_port", "alertmanager_port", "alertmanager_cluster_port",
              "kafka_exporter_port", "ops_email", "prometheus_interval", "alert_time_scale",
              "alert_group_wait", "alert_group_interval")
    assert [getattr(child, f) for f in fields] == [getattr(config, f) for f in fields]


def test_stacks_side_by_side_get_ports_of_their_own(tmp_path: Path) -> None:
    config = StackConfig.on_free_ports(tmp_path, admin_token="t" * 16)
    ports = [config.kafka_port, config.kafka_controller_port, config.pg_port, config.smtp_port,
             config.command_api_port, config.query_api_port, config.processor_port,
             config.projector_port, config.notifier_port, config.prometheus_port,
             config.alertmanager_port, config.kafka_exporter_port]
    assert len(set(ports)) == len(ports)
    assert config.prometheus_port != 9090 and config.alertmanager_port != 9093
    cluster = StackConfig.on_free_ports(tmp_path, admin_token="t" * 16,
                                        env={"ALERTMANAGER_CLUSTER_PORT": "9094"})
    assert cluster.alertmanager_cluster_port not in (None, 9094)


def test_each_of_three_brokers_has_an_exporter_port_of_its_own(tmp_path: Path) -> None:
    config = StackConfig.on_free_ports(tmp_path, admin_token="t" * 16, env={"KAFKA_BROKERS": "3"})
    nodes = config.kafka_nodes()
    exporters = [n.exporter_port for n in nodes]
    assert exporters[0] == config.kafka_exporter_port and len(set(exporters)) == 3
    every = {p for n in nodes for p in (n.port, n.controller_port, n.exporter_port)}
    assert len(every) == 9


def test_prometheus_scrapes_every_component_labelled_by_its_pid_name() -> None:
    config = _config(PROCESSORS="2", KAFKA_EXPORTER_PORT="9404")
    scraped = monitoring.prometheus_config(config)
    jobs = {job["job_name"]: job for job in scraped["scrape_configs"]}  # type: ignore[attr-defined]
    assert set(jobs) == {"processor", "projector", "notifier", "command-api", "query-api",
                         "kafka", "prometheus", "alertmanager"}
    targets = {group["labels"]["component"]: group["targets"][0]
               for job in jobs.values() for group in job["static_configs"]}
    assert targets["processor"] == f"127.0.0.1:{config.processor_port}"
    assert targets["processor-2"] == f"127.0.0.1:{config.processor_port + 11}"
    assert targets["kafka"] == "127.0.0.1:9404"
    assert scraped["global"]["external_labels"] == {"cluster": "course-signup"}  # type: ignore[index]
    alerting = scraped["alerting"]["alertmanagers"][0]["static_configs"][0]  # type: ignore[index]
    assert alerting["targets"] == [f"127.0.0.1:{config.alertmanager_port}"]


def test_stack_only_scrapes_what_it_starts() -> None:
    jobs = monitoring.scrape_targets(_config(), {"kafka", "smtp", "prometheus", "alertmanager"})
    assert jobs == {"kafka": ["kafka"], "prometheus": ["prometheus"],
                    "alertmanager": ["alertmanager"]}


def test_alertmanager_mails_every_group_and_its_resolution_through_the_sink() -> None:
    config = _config(SMTP_PORT="2626", OPS_EMAIL="oncall@example.org")
    routed = monitoring.alertmanager_config(config)
    assert routed["global"]["smtp_smarthost"] == "127.0.0.1:2626"  # type: ignore[index]
    assert routed["global"]["smtp_require_tls"] is False  # type: ignore[index]
    assert routed["route"]["group_by"] == ["alertname", "cluster"]  # type: ignore[index]
    receivers = routed["receivers"]
    assert isinstance(receivers, list) and len(receivers) == 1
    assert receivers[0]["email_configs"] == [{"to": "oncall@example.org", "send_resolved": True}]


def test_test_alerts_shrink_but_keep_enough_samples() -> None:
    assert monitoring.scaled("30s", 0.1) == "3s"
    assert monitoring.scaled("1m", 0.1, floor=8) == "8s"
    with pytest.raises(ValueError):
        monitoring.seconds("5 minutes")


def test_jars_are_checked_against_the_committed_sums(tmp_path: Path) -> None:
    jar = tmp_path / "thing-1.0.jar"
    jar.write_bytes(b"the jar")
    sums = tmp_path / "jars.sha1"
    right = hashlib.sha1(b"the jar").hexdigest()  # noqa: S324
    sums.write_text(f"# comment\n{right}  thing-1.0.jar\n")
    maven.verify([jar], sums)
    sums.write_text(f"{'0' * 40}  thing-1.0.jar\n")
    with pytest.raises(StackError, match="thing-1.0.jar: SHA-1 .* differs"):
        maven.verify([jar], sums)
    sums.write_text(f"{right}  other-1.0.jar\n")
    with pytest.raises(StackError, match="thing-1.0.jar: no checksum"):
        maven.verify([jar], sums)


def test_the_committed_sums_cover_the_broker_and_the_exporter_agent() -> None:
    listed = maven.expected()
    assert "jmx_prometheus_javaagent-1.0.1.jar" in listed
    assert "kafka_2.13-4.1.1.jar" in listed and "kafka-clients-4.1.1.jar" in listed
    assert all(len(digest) == 40 for digest in listed.values())


def test_apt_installs_start_no_service(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    with packages.no_service_starts(policy):
        assert policy.read_text().rstrip().endswith("exit 101")
        assert policy.stat().st_mode & 0o111
    assert not policy.exists()
    policy.write_text("#!/bin/sh\nexit 0\n")  # somebody else's policy stays as it is
    with packages.no_service_starts(policy):
        assert policy.read_text() == "#!/bin/sh\nexit 0\n"
    assert policy.exists()
