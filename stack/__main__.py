"""Brings the native stack up and down.

Run: python -m stack up | down | status   (the Makefile's `make up` and `make down`)
     python -m stack topics | migrate     (only create the topics / apply the migrations,
                                           on KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL if set)

Settings come from the environment: RUN_DIR, KAFKA_PORT, PG_PORT, SMTP_PORT,
COMMAND_API_PORT, QUERY_API_PORT, ADMIN_TOKEN, PARTITIONS, PROCESSORS (number of
course processor workers, default 1), STACK_ONLY (a comma-separated subset to start).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from stack import browser, kafka, postgres, smtp
from stack.config import StackConfig
from stack.procs import StackError, is_running, read_pid, stop
from stack.services import services
from stack.services import start as start_service


def up(config: StackConfig, only: set[str] | None = None) -> None:
    """Start what is not running, in dependency order; `only` limits it to some components."""
    began = time.monotonic()
    config.run_dir.mkdir(parents=True, exist_ok=True)
    wanted = (lambda name: True) if not only else (lambda name: name in only)
    if wanted("kafka"):
        _step("kafka", lambda: kafka.start(config))
        kafka.ensure_topics(config)
    if wanted("postgres"):
        _step("postgres", lambda: postgres.start(config))
        postgres.migrate(config)
    if wanted("smtp"):
        _step("smtp", lambda: smtp.start(config))
    for service in services(config):
        if not wanted(service.name):
            continue
        if not service.built():
            print(f"  {service.name:<12} not built yet")
            continue
        _step(service.name, lambda s=service: start_service(config, s))
    print(f"stack is up in {time.monotonic() - began:.1f}s (data under {config.run_dir})\n")
    print(summary(config))


def _step(name: str, start: object) -> None:
    t0 = time.monotonic()
    started = start()  # type: ignore[operator]
    state = f"started in {time.monotonic() - t0:.1f}s" if started else "already running"
    print(f"  {name:<12} {state}", flush=True)


def summary(config: StackConfig) -> str:
    lines = [
        f"Kafka bootstrap   127.0.0.1:{config.kafka_port}",
        f"PostgreSQL        {config.database_url}",
        f"SMTP sink         127.0.0.1:{config.smtp_port}  (mail in {config.mail_dir})",
    ]
    for service in services(config):
        if service.built():
            lines.append(f"{service.name:<17} {service.url}  (metrics: {service.url}/metrics)")
    lines.append(f"Dashboard         {config.query_url}/")
    lines.append(f"OpenAPI           {config.command_url}/docs  {config.query_url}/docs")
    lines.append(f"Admin token       {config.admin_token()}")
    return "\n".join(lines)


def prepare(config: StackConfig) -> None:
    """Install what the stack and its tests need (broker jars, PostgreSQL, and Chromium for
    the dashboard's end-to-end test) without starting anything."""
    kafka.ensure_jars(config)
    postgres.bin_dir()
    print(f"  ready: Kafka {config.kafka_version} jars, PostgreSQL in {postgres.bin_dir()}, "
          f"Chromium at {browser.chromium()}")


def down(config: StackConfig) -> None:
    for service in reversed(services(config)):
        _report(service.name, stop(config, service.name))
    _report("smtp", stop(config, smtp.NAME))
    _report("postgres", postgres.stop_server(config))
    _report("kafka", stop(config, kafka.NAME, timeout=60))


def _report(name: str, was_running: bool) -> None:
    print(f"  {name:<12} {'stopped' if was_running else 'not running'}")


def status(config: StackConfig) -> int:
    names = [kafka.NAME, postgres.NAME, smtp.NAME, *(s.name for s in services(config))]
    down_count = 0
    for name in names:
        running = is_running(config, name)
        down_count += not running
        print(f"  {name:<12} {'running pid ' + str(read_pid(config, name)) if running else 'down'}")
    return 1 if down_count else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description="native stack control")
    commands = ["up", "down", "status", "env", "prepare", "topics", "migrate"]
    parser.add_argument("command", choices=commands)
    args = parser.parse_args(argv)
    config = StackConfig.from_env()
    try:
        if args.command == "up":
            only = {n.strip() for n in os.environ.get("STACK_ONLY", "").split(",") if n.strip()}
            up(config, only or None)
        elif args.command == "down":
            down(config)
        elif args.command == "topics":
            kafka.ensure_topics(config, os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
        elif args.command == "migrate":
            import migrations

            url = os.environ.get("DATABASE_URL") or config.database_url
            print("applied:", migrations.apply(url))
        elif args.command == "prepare":
            prepare(config)
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
