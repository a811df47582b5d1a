"""Background processes with PID files and logs under $RUN_DIR, and bounded readiness waits."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stack.config import StackConfig
from stack.waiting import WaitTimeout, wait_until


class StackError(RuntimeError):
    """A component could not be installed or started; the message names it."""


def pid_file(config: StackConfig, name: str) -> Path:
    return config.pids / f"{name}.pid"


def log_file(config: StackConfig, name: str) -> Path:
    return config.logs / f"{name}.log"


def read_pid(config: StackConfig, name: str) -> int | None:
    try:
        return int(pid_file(config, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # Field 3 is the state; a zombie has exited and only waits to be reaped.
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def is_running(config: StackConfig, name: str) -> bool:
    pid = read_pid(config, name)
    return pid is not None and pid_alive(pid)


def spawn(
    config: StackConfig,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    drop: Sequence[str] = (),
) -> int:
    """Start argv detached in its own session, logging to $RUN_DIR/logs/<name>.log.
    Our environment is inherited except the names in `drop` (secrets not meant for it)."""
    config.pids.mkdir(parents=True, exist_ok=True)
    config.logs.mkdir(parents=True, exist_ok=True)
    with open(log_file(config, name), "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**{k: v for k, v in os.environ.items() if k not in drop}, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            **as_user(user),
        )
    pid_file(config, name).write_text(f"{proc.pid}\n")
    return proc.pid


def as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop to `user` with its own group only (not root's)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def stop(config: StackConfig, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> bool:
    """Stop a component gracefully, then by force; True if it was running."""
    pid = read_pid(config, name)
    if pid is None or not pid_alive(pid):
        pid_file(config, name).unlink(missing_ok=True)
        return False
    signal_group(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        signal_group(pid, signal.SIGKILL)
        while pid_alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    pid_file(config, name).unlink(missing_ok=True)
    return True


def kill_now(proc: subprocess.Popen[Any] | None) -> None:
    """SIGKILL a child process (a crash, as a test or benchmark stages one) and reap it."""
    assert proc is not None, "never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def terminate(proc: subprocess.Popen[Any] | None, timeout: float) -> bool:
    """SIGTERM a child process and reap it, SIGKILL if it outlives timeout; False then."""
    if proc is None or proc.poll() is not None:
        return True
    proc.terminate()
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return False


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_ready(
    check: Callable[[], bool], timeout: float, what: str, log: Path | None = None,
    pid: int | None = None,
) -> None:
    """Poll check() until it holds; any failure of the probe means "not yet". The error
    names the component and shows its log, also when it exited during start-up."""
    def ready() -> bool:
        if pid is not None and not pid_alive(pid):
            raise StackError(f"{what} exited during start-up; see {log}{tail(log)}")
        try:
            return check()
        except Exception:  # noqa: BLE001 - any failure of a probe means "not yet"
            return False

    try:
        wait_until(ready, timeout, what)
    except WaitTimeout:
        raise StackError(f"{what} did not become ready within {timeout:.0f}s; "
                         f"see {log}{tail(log)}") from None


def tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n  last lines:\n    " + "\n    ".join(text)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def listening_inodes(port: int) -> set[int]:
    """Socket inodes of the TCP listeners on `port` (any address), from /proc/net."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXADDR:HEXPORT; state 0A is LISTEN.
            listening = len(fields) > 9 and fields[3] == "0A"
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    except OSError:  # gone, or not ours to look at
        pass
    return found


def _group_members(pgid: int) -> list[int]:
    """The processes of a session we spawned (start_new_session: pgid == the leader's pid)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" of the command name: state, ppid, pgrp, ...
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
            members.append(int(entry.name))
    return members or [pgid]


def port_owners(port: int) -> list[int]:
    """PIDs that hold a listener on `port` (those we may look at)."""
    inodes = listening_inodes(port)
    if not inodes:
        return []
    return sorted(int(e.name) for e in Path("/proc").iterdir()
                  if e.name.isdigit() and _socket_inodes(int(e.name)) & inodes)


def owns_port(pid: int, port: int) -> bool:
    """Whether the listener on `port` belongs to `pid` or a process of its session: the
    check that keeps a stale process of another stack from passing for ours."""
    inodes = listening_inodes(port)
    return bool(inodes) and any(_socket_inodes(p) & inodes for p in _group_members(pid))


def taken_message(name: str, port: int, setting: str) -> str:
    owners = port_owners(port)
    by = f" (pid {', '.join(map(str, owners))})" if owners else ""
    return (f"{name}: port {port} is taken by another process{by}; set {setting} to a "
            "free port, or stop what listens there")
