"""Brings the native stack up and down.

Run: python -m stack up | down | status   (the Makefile's `make up` and `make down`)
     python -m stack topics | acls | migrate  (only create the topics / the services' ACLs /
                                           apply the migrations, on KAFKA_BOOTSTRAP_SERVERS
                                           (logging in with KAFKA_SASL_*) / DATABASE_URL
                                           if set)

Settings come from the environment: RUN_DIR, KAFKA_PORT (the first broker's),
KAFKA_BROKERS (number of Kafka nodes, default 1), PG_PORT, SMTP_PORT, COMMAND_API_PORT,
QUERY_API_PORT, ADMIN_TOKEN, PARTITIONS, PROCESSORS (number of course processor workers,
default 1), STACK_ONLY (a comma-separated subset to start); monitoring: PROMETHEUS_PORT,
ALERTMANAGER_PORT, ALERTMANAGER_CLUSTER_PORT (off if unset), KAFKA_EXPORTER_PORT (the
first broker's JMX exporter), OPS_EMAIL, PROMETHEUS_INTERVAL, ALERT_TIME_SCALE,
ALERT_GROUP_WAIT, ALERT_GROUP_INTERVAL.
     python -m stack checksums            (after a deliberate change of a Maven jar's
                                           version: rewrite stack/jars.sha1) `topics` also reads
KAFKA_REPLICATION_FACTOR and KAFKA_MIN_INSYNC_REPLICAS for a cluster of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping

from stack import browser, kafka, maven, monitoring, postgres, smtp
from stack.config import StackConfig
from stack.procs import (
    StackError,
    is_running,
    log_file,
    owns_port,
    port_open,
    port_owners,
    read_pid,
    stop,
    taken_message,
)
from stack.services import services
from stack.services import start as start_service


def up(config: StackConfig, only: set[str] | None = None) -> None:
    """Start what is not running, in dependency order; `only` limits it to some components."""
    began = time.monotonic()
    wanted = (lambda name: True) if not only else (lambda name: name in only)
    if wanted("kafka"):
        kafka.check_layout(config)  # before anything starts: never a half-started cluster
    preflight(config, wanted)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    if wanted("kafka"):
        _step("kafka" if config.kafka_brokers == 1 else f"kafka x{config.kafka_brokers}",
              lambda: kafka.start(config))
        kafka.report(kafka.ensure_topics(config))
        kafka.ensure_access(config)
    if wanted("postgres"):
        _step("postgres", lambda: postgres.start(config))
        postgres.migrate(config)
    if wanted("smtp"):
        _step("smtp", lambda: smtp.start(config))
    for service in services(config):
        if not wanted(service.name):
            continue
        _step(service.name, lambda s=service: start_service(config, s))
    if wanted(monitoring.ALERTMANAGER):
        _step(monitoring.ALERTMANAGER, lambda: monitoring.start_alertmanager(config))
    if wanted(monitoring.PROMETHEUS):
        _step(monitoring.PROMETHEUS, lambda: monitoring.start_prometheus(config, only))
    verify(config, wanted)
    print(f"stack is up in {time.monotonic() - began:.1f}s (data under {config.run_dir})\n")
    print(summary(config))


def preflight(config: StackConfig, wanted: Callable[[str], bool]) -> None:
    """Every port a component that is not running yet will listen on must be free: a
    port held by another process (another stack's worker, say) stops `up` before it
    starts anything, naming each such component and port."""
    ports = [*((n.name, n.port, "kafka", "KAFKA_PORT") for n in config.kafka_nodes()),
             *((n.name, n.controller_port, "kafka", "KAFKA_PORT") for n in config.kafka_nodes()),
             (postgres.NAME, config.pg_port, "postgres", "PG_PORT"),
             (smtp.NAME, config.smtp_port, "smtp", "SMTP_PORT"),
             *((n.name, n.exporter_port, "kafka", "KAFKA_EXPORTER_PORT")
               for n in config.kafka_nodes()),
             *((s.name, s.port, s.name, s.port_setting) for s in services(config)),
             *monitoring.ports(config)]
    taken = [taken_message(name, port, setting) for name, port, part, setting in ports
             if wanted(part) and not is_running(config, name) and port_open(port)]
    if taken:
        raise StackError("nothing was started, since:\n  " + "\n  ".join(taken))


def verify(config: StackConfig, wanted: Callable[[str], bool]) -> None:
    """After the start: each component's own process still runs and still holds its
    port. A process that died after its first answer, or a port answered by somebody
    else, is a start-up error naming both, not a healthy stack."""
    ports = [*((n.name, n.port, "kafka") for n in config.kafka_nodes()),
             (postgres.NAME, config.pg_port, "postgres"), (smtp.NAME, config.smtp_port, "smtp"),
             *((s.name, s.port, s.name) for s in services(config)),
             *((n.name, n.exporter_port, "kafka") for n in config.kafka_nodes()),
             *((name, port, part) for name, port, part, _ in monitoring.ports(config))]
    for name, port, part in ports:
        if not wanted(part):
            continue
        pid = read_pid(config, name)
        if pid is None or not is_running(config, name):
            raise StackError(f"{name} (port {port}) exited after start-up; see "
                             f"{log_file(config, name)}")
        if not owns_port(pid, port):
            raise StackError(f"{name} (pid {pid}) does not hold its port {port}"
                             + (f", pid {port_owners(port)} does" if port_owners(port) else "")
                             + f"; see {log_file(config, name)}")


def _step(name: str, start: object) -> None:
    t0 = time.monotonic()
    started = start()  # type: ignore[operator]
    state = f"started in {time.monotonic() - t0:.1f}s" if started else "already running"
    print(f"  {name:<12} {state}", flush=True)


def summary(config: StackConfig) -> str:
    lines = [
        f"Kafka bootstrap   {config.kafka_bootstrap}  ({config.kafka_brokers} broker(s), "
        f"replication factor {config.replication_factor}, "
        f"min.insync.replicas {config.min_insync_replicas})",
        f"PostgreSQL        127.0.0.1:{config.pg_port}/{postgres.DATABASE}  (roles with "
        "passwords; the owner's connection string is in the file below)",
        f"SMTP sink         127.0.0.1:{config.smtp_port}  (mail in {config.mail_dir})",
    ]
    for service in services(config):
        lines.append(f"{service.name:<17} {service.url}  (metrics: {service.url}/metrics)")
    lines.append(f"Prometheus        http://127.0.0.1:{config.prometheus_port}/  (alerts: "
                 f"http://127.0.0.1:{config.prometheus_port}/alerts)")
    lines.append(f"Alertmanager      http://127.0.0.1:{config.alertmanager_port}/  (mails to "
                 f"{config.ops_email} land in {config.mail_dir})")
    lines.append(f"Dashboard         {config.query_url}/")
    lines.append(f"OpenAPI           {config.command_url}/docs  {config.query_url}/docs")
    lines.append(f"Admin token       {config.admin_token()}")
    lines.append(f"Analyst token     {config.analyst_token()}  (statistics and dashboard: "
                 "Bearer, or any user name with it as the password)")
    lines.append(f"Operator logins   {config.kafka_admin_properties} (Kafka), "
                 f"{config.postgres_admin_url_file} (PostgreSQL)")
    return "\n".join(lines)


def prepare(config: StackConfig) -> None:
    """Install what the stack and its tests need (broker jars, PostgreSQL, and Chromium for
    the dashboard's end-to-end test) without starting anything."""
    kafka.ensure_jars(config)
    kafka.ensure_jmx_agent(config)
    postgres.bin_dir()
    monitoring.ensure_installed()
    print(f"  ready: Kafka {config.kafka_version} jars and the JMX exporter (SHA-1 checked), "
          f"PostgreSQL in {postgres.bin_dir()}, Prometheus and Alertmanager, "
          f"Chromium at {browser.chromium()}")


def down(config: StackConfig) -> None:
    # Processors started with a larger PROCESSORS than this call's (scaled up, then
    # down in the setting only) have pid files too: stop them first, with the rest.
    known = {service.name for service in services(config)}
    for name in sorted(p.stem for p in config.pids.glob("processor-*.pid")):
        if name not in known:
            _report(name, stop(config, name))
    for name in (monitoring.PROMETHEUS, monitoring.ALERTMANAGER):
        _report(name, stop(config, name))
    for service in reversed(services(config)):
        _report(service.name, stop(config, service.name))
    _report("smtp", stop(config, smtp.NAME))
    _report("postgres", postgres.stop_server(config))
    for name, was_running in kafka.stop_all(config, timeout=60):
        _report(name, was_running)


def _report(name: str, was_running: bool) -> None:
    print(f"  {name:<12} {'stopped' if was_running else 'not running'}")


def status(config: StackConfig) -> int:
    names = [*kafka.names(config), postgres.NAME, smtp.NAME, *(s.name for s in services(config)),
             monitoring.ALERTMANAGER, monitoring.PROMETHEUS]
    down_count = 0
    for name in names:
        running = is_running(config, name)
        down_count += not running
        print(f"  {name:<12} {'running pid ' + str(read_pid(config, name)) if running else 'down'}")
    return 1 if down_count else 0


def replay_env(config: StackConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment, with the addresses replay reads set to this stack's where unset."""
    defaults = {"KAFKA_BOOTSTRAP_SERVERS": config.kafka_bootstrap,
                "DATABASE_URL": config.database_url}
    if not environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        # Our own cluster: replay reads and writes as the operator. Another cluster
        # named in the environment comes with its own login there (or none).
        defaults |= {k: v for k, v in config.kafka_client_env().items()
                     if k.startswith("KAFKA_SASL_")}
    return {**defaults, **{k: v for k, v in environ.items() if v or k not in defaults}}


def replay(config: StackConfig, args: list[str]) -> None:
    """`make replay`: run `projections.replay` against the native stack (KAFKA_PORT and
    PG_PORT as `make up` reads them), unless the environment names other servers."""
    os.execve(sys.executable, [sys.executable, "-m", "projections.replay", *args],
              replay_env(config, os.environ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description="native stack control")
    commands = ["up", "down", "status", "env", "prepare", "topics", "acls", "migrate", "replay",
                "checksums"]
    parser.add_argument("command", choices=commands)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "replay":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        config = StackConfig.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            only = {n.strip() for n in os.environ.get("STACK_ONLY", "").split(",") if n.strip()}
            up(config, only or None)
        elif args.command == "down":
            down(config)
        elif args.command == "topics":
            kafka.report(kafka.ensure_topics(
                config, os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                int(os.environ.get("KAFKA_REPLICATION_FACTOR") or config.replication_factor),
                int(os.environ.get("KAFKA_MIN_INSYNC_REPLICAS") or config.min_insync_replicas)))
        elif args.command == "acls":
            from stack import kafka_acls

            count = kafka_acls.ensure_acls(config, os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
            print(f"ACLs in place: {count}")
        elif args.command == "migrate":
            import migrations

            url = os.environ.get("DATABASE_URL") or config.database_url
            print("applied:", migrations.apply(url))
        elif args.command == "replay":
            replay(config, rest)
        elif args.command == "prepare":
            prepare(config)
        elif args.command == "checksums":
            kafka.fetch_jars(config)
            agent = maven.copy(":".join(monitoring.JMX_AGENT), config.cache_dir / "jmx-exporter")
            maven.write_sums([*kafka.libs_dir(config).glob("*.jar"), agent])
            print(f"wrote {maven.SUMS}")
        elif args.command == "env":
            for key, value in config.service_env().items():
                print(f"export {key}={value}")
        else:
            return status(config)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
