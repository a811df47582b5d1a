"""The stack under benchmark and what the bench reads from it: processes, memory, the
database, the processor's health, and the pinned load generator.

The stack is the one `make up` starts (`python -m stack up`), on free ports in a
temporary directory, as the end-to-end tests start theirs: synthetic history never
lands in the real event log under $RUN_DIR, which is kept forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from stack.config import ROOT, StackConfig, operator_login
from stack.ports import free_port
from stack.probes import deciding, http_ok, processor_health
from stack.procs import read_pid, stop, terminate
from stack.waiting import wait_until

# The notifier (and its SMTP sink) is left out: it is not on the path from a 202 to a
# projected decision, and a million seeded decisions would become a million e-mails.
COMPONENTS = "kafka,postgres,processor,projector,command-api,query-api"
GENERATOR_CPU = "1"  # the core the load generator is pinned to


@dataclass(frozen=True)
class BenchStack:
    config: StackConfig
    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return self.config.kafka_bootstrap

    @property
    def database_url(self) -> str:
        return self.config.database_url

    def cli(self, command: str, only: str | None = None) -> None:
        env = {**self.env, **({"STACK_ONLY": only} if only else {})}
        done = subprocess.run([sys.executable, "-m", "stack", command], env=env, cwd=ROOT,
                              text=True, capture_output=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"stack {command} failed:\n{done.stdout}\n{done.stderr}")

    def pid(self, name: str) -> int:
        pid = read_pid(self.config, name)
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        return pid


def stack_env(config: StackConfig) -> dict[str, str]:
    # One line per decision would be a million lines of log: warnings only.
    return {**config.stack_env(), "LOG_LEVEL": "WARNING"}


@contextlib.contextmanager
def running_stack() -> Iterator[BenchStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="course-signup-bench-"))
    config = StackConfig.on_free_ports(run_dir, admin_token="bench-admin-token")
    stack = BenchStack(config, stack_env(config))
    try:
        stack.cli("up", only=COMPONENTS)
        with operator_login(config):
            yield stack
    finally:
        with contextlib.suppress(Exception):
            stack.cli("down")
        if os.environ.get("KEEP_BENCH_RUN_DIR") is None:
            shutil.rmtree(run_dir, ignore_errors=True)


def results_dir() -> Path:
    """$RUN_DIR/bench, as `make up` reads RUN_DIR: where every benchmark writes."""
    return StackConfig.from_env(os.environ).run_dir / "bench"


def broker_from_env() -> str:
    """The broker a benchmark that starts no stack of its own runs against."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        sys.exit("KAFKA_BOOTSTRAP_SERVERS is not set")
    return servers


# ------------------------------------------------------------------ components


def stop_component(stack: BenchStack, name: str) -> None:
    stop(stack.config, name, timeout=30)


def start_component(stack: BenchStack, name: str) -> None:
    """Start a stopped service the way `make up` restarts one after a crash."""
    stack.cli("up", only=name)


def wait_processor_ready(stack: BenchStack, timeout: float) -> float:
    """Seconds until the processor owns every partition and has restored its tables."""
    began = time.monotonic()
    wait_until(lambda: len(deciding(processor_health(stack.config.processor_port)))
               == stack.config.partitions, timeout, "the processor", interval=0.5)
    return time.monotonic() - began


def processor_commands(stack: BenchStack) -> float:
    """The processor's own count of commands handled since it started (its /metrics)."""
    url = f"http://127.0.0.1:{stack.config.processor_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("processor_commands_total{"))


# ------------------------------------------------------------------ measurements


def memory(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (VmRSS, VmHWM), in MB, from /proc."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def scalar(database_url: str, sql: str) -> Any:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


# ------------------------------------------------------------------ load generator


def spawn_generator(url: str, out: Path, token: str | None = None,
                    **kwargs: Any) -> subprocess.Popen[str]:
    """Start `proof.bench_load` pinned to one core, with its options (--name value) and
    the query API's token if given; read what it measured with finish()."""
    argv = [sys.executable, "-m", "proof.bench_load", "--url", url, "--out", str(out)]
    for key, value in kwargs.items():
        argv += [f"--{key}", str(value)]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", GENERATOR_CPU, *argv]
    env = {**os.environ, **({"QUERY_TOKEN": token} if token else {})}
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)


def generate(url: str, out: Path, timeout: float, token: str | None = None,
             **options: Any) -> dict[str, Any]:
    """Run the generator to its end and return what it measured."""
    return finish(spawn_generator(url, out, token, **options), out, timeout)


def finish(proc: subprocess.Popen[str], out: Path, timeout: float) -> dict[str, Any]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["pinned_to_cpu"] = GENERATOR_CPU if shutil.which("taskset") else None
    return result


@contextlib.contextmanager
def serving(name: str, argv: list[str], env: dict[str, str], ready: str, log: Path,
            cwd: Path = ROOT, timeout: float = 60) -> Iterator[None]:
    """A server of one figure: started, awaited at its `ready` URL, stopped on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited during start-up; see {log}")
        return http_ok(ready)

    try:
        wait_until(up, timeout, f"{name} (see {log})", interval=0.2)
        yield
    finally:
        terminate(proc, 15)


@contextlib.contextmanager
def baseline_app(log: Path) -> Iterator[str]:
    """The trivial FastAPI app (proof.bench_baseline_app) on a free port, for one figure."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving("the baseline app", [sys.executable, "-m", "proof.bench_baseline_app"],
                 {"BASELINE_PORT": str(port)}, url + "/healthz", log, timeout=30):
        yield url


@contextlib.contextmanager
def plain_app(log: Path, database_url: str) -> Iterator[str]:
    """The plain-PostgreSQL baseline (proof.bench_plain_app) on a free port, against the
    stack's PostgreSQL server, with its tables empty."""
    from proof.bench_plain_app import create_schema

    create_schema(database_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving("the plain PostgreSQL app", [sys.executable, "-m", "proof.bench_plain_app"],
                 {"PLAIN_PORT": str(port), "DATABASE_URL": database_url}, url + "/healthz", log,
                 timeout=30):
        yield url
