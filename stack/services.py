"""The project's own services as background processes, and the order the stack starts in."""

from __future__ import annotations

from dataclasses import dataclass

from stack.config import ROOT, SECRETS, StackConfig
from stack.probes import http_ok
from stack.procs import (
    StackError,
    is_running,
    log_file,
    owns_port,
    port_open,
    read_pid,
    spawn,
    taken_message,
    wait_ready,
)


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    port: int
    health_path: str = "/readyz"
    extra_env: tuple[tuple[str, str], ...] = ()
    port_setting: str = ""  # the environment variable that moves its port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def services(config: StackConfig) -> list[Service]:
    processors = [
        Service(
            "processor" if i == 0 else f"processor-{i + 1}",
            "course_processor.__main__",
            config.processor_port + (0 if i == 0 else 10 + i),
            "/healthz",
            (("PROCESSOR_PORT", str(config.processor_port + (0 if i == 0 else 10 + i))),
             ("PROCESSOR_DATA_DIR", str(config.run_dir / f"processor-{i + 1}")),
             ("PROCESSOR_INSTANCE_ID", f"processor-{i + 1}")),
            "PROCESSOR_PORT",
        )
        for i in range(config.processors)
    ]
    return [
        *processors,
        Service("projector", "projections.projector", config.projector_port, "/healthz",
                port_setting="PROJECTOR_PORT"),
        Service("notifier", "notifier.__main__", config.notifier_port, "/healthz",
                port_setting="NOTIFIER_PORT"),
        Service("command-api", "command_api.__main__", config.command_api_port,
                port_setting="COMMAND_API_PORT"),
        Service("query-api", "projections.api", config.query_api_port,
                port_setting="QUERY_API_PORT"),
    ]


def start(config: StackConfig, service: Service, timeout: float = 90) -> bool:
    """Start the service unless it runs; True if this call started it. Only our own
    process counts: a port held by another process is an error before the start, and
    the service is ready when it answers on its port *and* holds that port itself (a
    stale worker of another stack on the same port must not pass for it)."""
    log = log_file(config, service.name)
    running = read_pid(config, service.name)
    if running is not None and is_running(config, service.name):
        if port_open(service.port) and not owns_port(running, service.port):
            raise StackError(f"{service.name} runs (pid {running}) but "
                             + taken_message(service.name, service.port,
                                             service.port_setting).split(": ", 1)[1])
        return False
    if port_open(service.port):
        raise StackError(taken_message(service.name, service.port, service.port_setting))
    module = service.module.removesuffix(".__main__")
    # Only the secrets this service uses: none inherited from whoever runs `make up`.
    env = {**config.service_env(service.name), **dict(service.extra_env)}
    pid = spawn(config, service.name, [config.python, "-m", module], env=env, cwd=ROOT,
                drop=SECRETS)
    health = service.url + service.health_path
    wait_ready(lambda: owns_port(pid, service.port) and http_ok(health),
               timeout, f"{service.name} (port {service.port})", log, pid)
    return True
