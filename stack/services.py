"""The project's own services as background processes, and the order the stack starts in."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from stack.config import ROOT, StackConfig
from stack.procs import http_ok, is_running, log_file, spawn, wait_until


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    port: int
    health_path: str = "/readyz"
    extra_env: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def built(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


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
        )
        for i in range(config.processors)
    ]
    return [
        *processors,
        Service("projector", "projections.projector", config.projector_port, "/healthz"),
        Service("notifier", "notifier.__main__", config.notifier_port, "/healthz"),
        Service("command-api", "command_api.__main__", config.command_api_port),
        Service("query-api", "projections.api", config.query_api_port),
    ]


def start(config: StackConfig, service: Service, timeout: float = 90) -> bool:
    if is_running(config, service.name):
        return False
    module = service.module.removesuffix(".__main__")
    env = {**config.service_env(), **dict(service.extra_env), "SERVICE_NAME": service.name}
    pid = spawn(config, service.name, [config.python, "-m", module], env=env, cwd=ROOT)
    wait_until(lambda: http_ok(service.url + service.health_path), timeout,
               service.name, log_file(config, service.name), pid)
    return True
