"""Prometheus and Alertmanager from Debian's packages, as components of the native stack.

Both run as our own processes with configurations written under $RUN_DIR (never the
packages' own services, which `packages.apt_install` keeps from starting): Prometheus
scrapes every component and each broker's JMX exporter and evaluates the rules of
`ops/rules/`; Alertmanager mails every alert group to $OPS_EMAIL through the stack's
SMTP server.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from stack import packages
from stack.config import ROOT, KafkaNode, StackConfig
from stack.probes import http_ok
from stack.procs import (
    StackError,
    is_running,
    log_file,
    port_open,
    read_pid,
    signal_group,
    spawn,
    taken_message,
    wait_ready,
)

PROMETHEUS = "prometheus"
ALERTMANAGER = "alertmanager"
RULES = ROOT / "ops" / "rules"
JMX_CONFIG = ROOT / "ops" / "kafka-jmx-exporter.yml"
JMX_AGENT = ("io.prometheus.jmx", "jmx_prometheus_javaagent", "1.0.1")
# The cluster label every alert carries (Prometheus' external label): Alertmanager groups
# by it and by alertname, so a lost broker is one mail per alert, not one per series.
CLUSTER = "course-signup"


def ensure_installed() -> None:
    """Debian's `prometheus` (with promtool) and `prometheus-alertmanager`."""
    packages.ensure_command("prometheus", "prometheus")
    packages.ensure_command("prometheus-alertmanager", "prometheus-alertmanager")


def jmx_agent_args(config: StackConfig, node: KafkaNode, agent: Path) -> list[str]:
    """The broker JVM's option that serves its allow-listed MBeans on 127.0.0.1."""
    return [f"-javaagent:{agent}=127.0.0.1:{node.exporter_port}:{JMX_CONFIG}"]


# ---------------------------------------------------------------------------- configs


def scrape_targets(config: StackConfig, wanted: set[str] | None = None) -> dict[str, list[str]]:
    """Job -> component names scraped; `wanted` (STACK_ONLY) limits it to what runs."""
    from stack.services import services

    def keep(name: str, part: str) -> bool:
        return wanted is None or part in wanted or name in wanted

    jobs: dict[str, list[str]] = {}
    for service in services(config):
        job = "processor" if service.name.startswith("processor") else service.name
        if keep(service.name, service.name):
            jobs.setdefault(job, []).append(service.name)
    brokers = [n.name for n in config.kafka_nodes() if keep(n.name, "kafka")]
    if brokers:
        jobs["kafka"] = brokers
    jobs[PROMETHEUS] = [PROMETHEUS]
    if keep(ALERTMANAGER, ALERTMANAGER):
        jobs[ALERTMANAGER] = [ALERTMANAGER]
    return jobs


def _address(config: StackConfig, component: str) -> str:
    from stack.services import services

    ports = {s.name: s.port for s in services(config)}
    ports.update({n.name: n.exporter_port for n in config.kafka_nodes()})
    ports.update({PROMETHEUS: config.prometheus_port, ALERTMANAGER: config.alertmanager_port})
    return f"127.0.0.1:{ports[component]}"


def prometheus_config(config: StackConfig, wanted: set[str] | None = None) -> dict[str, object]:
    """prometheus.yml (JSON is YAML): each target labelled with its `component`, the
    name of its PID and log file, so that an alert names what to look at."""
    scrapes = [{
        "job_name": job,
        "static_configs": [{"targets": [_address(config, c)], "labels": {"component": c}}
                           for c in components],
    } for job, components in scrape_targets(config, wanted).items()]
    return {
        "global": {"scrape_interval": config.prometheus_interval,
                   "scrape_timeout": config.prometheus_interval,
                   "evaluation_interval": config.prometheus_interval,
                   "external_labels": {"cluster": CLUSTER}},
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"127.0.0.1:{config.alertmanager_port}"]}]}]},
        "rule_files": [str(home(config, PROMETHEUS) / "rules" / "*.yml")],
        "scrape_configs": scrapes,
    }


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> float:
    """A Prometheus duration ('1m', '1h30m', '500ms') in seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _SECONDS[u] for n, u in parts)


def scaled(duration: str, scale: float, floor: float = 0) -> str:
    """`duration` times scale, at least floor seconds, in whole seconds."""
    return f"{max(round(seconds(duration) * scale), round(floor), 1)}s"


_FOR = re.compile(r"^(\s+for:\s*)(\S+)\s*$", re.MULTILINE)
_RANGE = re.compile(r"\[(\d+(?:ms|s|m|h|d))(?=[\]:])")
_OFFSET = re.compile(r"(\boffset\s+)(\d+(?:ms|s|m|h|d))")


def render_rules(text: str, scale: float, interval: str) -> str:
    """A rule file with every `for:`, range selector and `offset` multiplied by scale
    (the tests' short alerts); a range or offset keeps at least four scrape intervals,
    so that rate() and increase() still see samples. Scale 1 is the file as written."""
    if scale == 1:
        return text
    floor = 4 * seconds(interval)
    text = _FOR.sub(lambda m: m.group(1) + scaled(m.group(2), scale), text)
    text = _OFFSET.sub(lambda m: m.group(1) + scaled(m.group(2), scale, floor), text)
    return _RANGE.sub(lambda m: "[" + scaled(m.group(1), scale, floor), text)


def alertmanager_config(config: StackConfig) -> dict[str, object]:
    """One route, one receiver: every alert group by e-mail to $OPS_EMAIL, once when it
    fires and once more when it resolves. The local SMTP sink takes plain SMTP."""
    return {
        "global": {"smtp_smarthost": f"127.0.0.1:{config.smtp_port}",
                   "smtp_from": "alertmanager@localhost", "smtp_require_tls": False,
                   "smtp_hello": "localhost"},
        "route": {"receiver": "ops-email", "group_by": ["alertname", "cluster"],
                  "group_wait": config.alert_group_wait,
                  "group_interval": config.alert_group_interval,
                  "repeat_interval": "4h"},
        "receivers": [{"name": "ops-email", "email_configs": [
            {"to": config.ops_email, "send_resolved": True}]}],
    }


def home(config: StackConfig, name: str) -> Path:
    return config.run_dir / name


def _write_if_changed(path: Path, text: str) -> bool:
    """Write `text` unless the file holds it already; whether it changed."""
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def write_configs(config: StackConfig, wanted: set[str] | None = None) -> set[str]:
    """Write both configurations; the components whose configuration changed.

    A running Prometheus or Alertmanager is told to re-read its configuration only when it
    changed: after a reload Prometheus re-discovers its Alertmanager (throttled to every
    5 s) and drops the alerts that fire meanwhile, and a short alert that it never sends
    again (it resends once a minute) would be lost."""
    changed: set[str] = set()
    prom = home(config, PROMETHEUS)
    rules = prom / "rules"
    rules.mkdir(parents=True, exist_ok=True)
    wanted_rules: set[str] = set()
    for source in sorted(RULES.glob("*.yml")):
        if source.name.endswith("_test.yml"):
            continue
        wanted_rules.add(source.name)
        rendered = render_rules(source.read_text(), config.alert_time_scale,
                                config.prometheus_interval)
        if _write_if_changed(rules / source.name, rendered):
            changed.add(PROMETHEUS)
    for stale in rules.glob("*.yml"):
        if stale.name not in wanted_rules:
            stale.unlink()
            changed.add(PROMETHEUS)
    if _write_if_changed(prom / "prometheus.yml",
                         json.dumps(prometheus_config(config, wanted), indent=2) + "\n"):
        changed.add(PROMETHEUS)
    am = home(config, ALERTMANAGER)
    am.mkdir(parents=True, exist_ok=True)
    if _write_if_changed(am / "alertmanager.yml",
                         json.dumps(alertmanager_config(config), indent=2) + "\n"):
        changed.add(ALERTMANAGER)
    return changed


# ---------------------------------------------------------------------------- processes


def start_prometheus(config: StackConfig, wanted: set[str] | None = None) -> bool:
    """Start Prometheus unless it runs; a running one re-reads the new configuration
    (SIGHUP), so `make up` after a change of PROCESSORS scrapes the new workers."""
    ensure_installed()
    changed = write_configs(config, wanted)
    if is_running(config, PROMETHEUS):
        pid = read_pid(config, PROMETHEUS)
        if pid is not None and PROMETHEUS in changed:
            signal_group(pid, signal.SIGHUP)
        return False
    if port_open(config.prometheus_port):
        raise StackError(taken_message(PROMETHEUS, config.prometheus_port, "PROMETHEUS_PORT"))
    prom = home(config, PROMETHEUS)
    argv = ["prometheus", f"--config.file={prom / 'prometheus.yml'}",
            f"--storage.tsdb.path={prom / 'data'}", "--storage.tsdb.retention.time=15d",
            f"--web.listen-address=127.0.0.1:{config.prometheus_port}",
            f"--web.external-url=http://127.0.0.1:{config.prometheus_port}/"]
    pid = spawn(config, PROMETHEUS, argv)
    url = f"http://127.0.0.1:{config.prometheus_port}/-/ready"
    wait_ready(lambda: http_ok(url), 60, f"prometheus (port {config.prometheus_port})",
               log_file(config, PROMETHEUS), pid)
    return True


def start_alertmanager(config: StackConfig) -> bool:
    ensure_installed()
    changed = write_configs(config)
    if is_running(config, ALERTMANAGER):
        pid = read_pid(config, ALERTMANAGER)
        if pid is not None and ALERTMANAGER in changed:
            signal_group(pid, signal.SIGHUP)
        return False
    if port_open(config.alertmanager_port):
        raise StackError(taken_message(ALERTMANAGER, config.alertmanager_port,
                                       "ALERTMANAGER_PORT"))
    am = home(config, ALERTMANAGER)
    # One Alertmanager per stack: its gossip listener is off unless a port is given
    # (on by default it would take 9094 on every interface).
    cluster = (f"127.0.0.1:{config.alertmanager_cluster_port}"
               if config.alertmanager_cluster_port else "")
    argv = ["prometheus-alertmanager", f"--config.file={am / 'alertmanager.yml'}",
            f"--storage.path={am / 'data'}",
            f"--web.listen-address=127.0.0.1:{config.alertmanager_port}",
            f"--web.external-url=http://127.0.0.1:{config.alertmanager_port}/",
            f"--cluster.listen-address={cluster}"]
    pid = spawn(config, ALERTMANAGER, argv)
    url = f"http://127.0.0.1:{config.alertmanager_port}/-/ready"
    wait_ready(lambda: http_ok(url), 60, f"alertmanager (port {config.alertmanager_port})",
               log_file(config, ALERTMANAGER), pid)
    return True


def ports(config: StackConfig) -> list[tuple[str, int, str, str]]:
    """(component, port, part, setting) of each listener, for the stack's port checks."""
    listed = [(PROMETHEUS, config.prometheus_port, PROMETHEUS, "PROMETHEUS_PORT"),
              (ALERTMANAGER, config.alertmanager_port, ALERTMANAGER, "ALERTMANAGER_PORT")]
    if config.alertmanager_cluster_port:
        listed.append((ALERTMANAGER, config.alertmanager_cluster_port, ALERTMANAGER,
                       "ALERTMANAGER_CLUSTER_PORT"))
    return listed
