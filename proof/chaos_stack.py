"""The native stack as the chaos suite drives it: its own on free ports in a temporary
directory, or the running one; restarts with `python -m stack up`, as an operator would.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stack import postgres
from stack.config import ROOT, StackConfig
from stack.probes import get_json
from stack.procs import pid_alive, read_pid
from stack.procs import stop as stop_component
from stack.services import services

UP_TIMEOUT = 300.0


class ChaosError(RuntimeError):
    """The suite could not carry a scenario out (not an audit failure)."""


def temporary_config(run_dir: Path, brokers: int = 1) -> StackConfig:
    """Free ports for everything, one processor to begin with, a token of its own."""
    env = {**os.environ, "KAFKA_BROKERS": str(brokers), "PROCESSORS": "1"}
    return StackConfig.on_free_ports(run_dir, admin_token=f"chaos-{secrets.token_urlsafe(16)}",
                                     env=env)


@dataclass
class Stack:
    config: StackConfig
    env: dict[str, str]
    owned: bool  # started by the suite in a temporary directory

    def processor_url(self, name: str) -> str:
        two = replace(self.config, processors=2)
        return next(s.url for s in services(two) if s.name == name)

    async def up(self, processors: int = 1) -> float:
        """`python -m stack up`: start whatever is not running; seconds it took."""
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stack", "up", cwd=ROOT,
            env={**self.env, "PROCESSORS": str(processors)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), UP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ChaosError(f"`python -m stack up` took longer than {UP_TIMEOUT:.0f}s") from None
        if proc.returncode:
            raise ChaosError(f"`python -m stack up` failed:\n{out.decode(errors='replace')}")
        return time.monotonic() - began

    def down(self) -> str:
        done = subprocess.run([sys.executable, "-m", "stack", "down"], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=180)
        return done.stdout + done.stderr

    def pid(self, name: str) -> int | None:
        pid = read_pid(self.config, name)
        return pid if pid is not None and pid_alive(pid) else None

    def alive(self, name: str) -> bool:
        return self.pid(name) is not None

    def signal(self, name: str, sig: signal.Signals) -> int:
        pid = self.pid(name)
        if pid is None:
            raise ChaosError(f"{name} is not running, so it cannot get {sig.name}")
        os.kill(pid, sig)
        return pid

    async def stop(self, name: str) -> None:
        """Stop one component gracefully, as `python -m stack down` would."""
        if name == postgres.NAME:
            await asyncio.to_thread(postgres.stop_server, self.config)
        else:
            await asyncio.to_thread(stop_component, self.config, name)

    async def processor_health(self, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(get_json, self.processor_url(name) + "/healthz", 1)

    async def wait_processors(self, names: Iterable[str], timeout: float) -> float:
        """Wait until exactly these processors decide every partition, none rebalancing."""
        names = list(names)
        began = time.monotonic()
        everything = list(range(self.config.partitions))
        while time.monotonic() - began < timeout:
            health = [await self.processor_health(n) for n in names]
            if all(h and h["assigned"] and not h["rebalancing"] and not h["recovering"]
                   for h in health):
                owned = sorted(p for h in health if h for p in h["assigned"])
                if owned == everything:
                    return time.monotonic() - began
            await asyncio.sleep(0.25)
        raise ChaosError(f"{names} did not share the {len(everything)} partitions within "
                         f"{timeout:.0f}s: {[await self.processor_health(n) for n in names]}")

    def logs_dir(self) -> Path:
        return self.config.logs

