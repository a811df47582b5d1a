"""An idle CPU group for a replay's workers and their PostgreSQL backends.

Niceness alone does not keep a replay out of the query API's way on one machine. Under
Linux's autogroups the CPU is shared first between sessions, and the replay's backends
live in the postmaster's session: however niced, they take a full session's share
against the query API (figure 4: its p99 2.3-2.8x its idle p99 during a niced replay).
A CPU cgroup marked idle (`cpu.idle = 1`, Linux 5.15+; else the smallest weight) runs
its tasks only when the CPU has nothing else to do, and a task in it is in no
autogroup, so that holds against every process on the machine.

`REPLAY_CPU_CGROUP` says where: `auto` (the default) uses `course-signup-replay` under
the `cpu` controller's mount (cgroup v1 `cpu`, or cgroup v2 with `cpu` enabled at its
root); a path names a cgroup directory, made if missing; `off` uses none. Making a
cgroup and moving a process into it need write access to both (root, or a delegated
subtree): where that is refused the replay says so in one log line and runs niced,
as before. Nothing here decides what a replay computes, only when it gets the CPU.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("projections.replay")

NAME = "course-signup-replay"
_SMALLEST_WEIGHT = {"cpu.shares": "2", "cpu.weight": "1"}  # cgroup v1, v2


def cpu_mount(mounts: str) -> Path | None:
    """Where the `cpu` controller is mounted, from /proc/self/mounts' text: a cgroup v1
    mount with the `cpu` option, else a cgroup2 mount (whose root must list `cpu`)."""
    unified: Path | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        where, kind, options = Path(fields[1]), fields[2], fields[3].split(",")
        if kind == "cgroup" and "cpu" in options:
            return where
        if kind == "cgroup2" and unified is None:
            with contextlib.suppress(OSError):
                if "cpu" in (where / "cgroup.controllers").read_text().split():
                    unified = where
    return unified


@dataclass(frozen=True)
class IdleGroup:
    """A CPU cgroup whose tasks run when nothing else wants the CPU."""

    path: Path

    def join(self, pid: int) -> bool:
        """Move process `pid` (every thread of it) into the group; False if refused."""
        try:
            (self.path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as exc:
            log.warning("replay process not moved to its idle CPU group",
                        extra={"pid": pid, "cgroup": str(self.path), "error": repr(exc)[:200]})
            return False
        return True


def prepare(setting: str, mounts: Path = Path("/proc/self/mounts")) -> IdleGroup | None:
    """The group `setting` names (see the module's docstring), made idle; None, with one
    INFO line, where there is none to be had."""
    choice = setting.strip().lower()
    if choice in ("", "off", "none"):
        return None
    if choice == "auto":
        try:
            mount = cpu_mount(mounts.read_text())
        except OSError:
            mount = None
        if mount is None:
            log.info("replay runs niced, in no idle CPU group: no cpu cgroup controller")
            return None
        path = mount / NAME
    else:
        path = Path(setting)
    made = False
    try:
        if not path.is_dir():
            path.mkdir()
            made = True
        _make_idle(path)
    except OSError as exc:
        log.info("replay runs niced, in no idle CPU group",
                 extra={"cgroup": str(path), "error": repr(exc)[:200]})
        if made:
            remove(IdleGroup(path))
        return None
    return IdleGroup(path)


def _make_idle(path: Path) -> None:
    idle = path / "cpu.idle"
    if idle.exists():
        idle.write_text("1\n")
        return
    for name, weight in _SMALLEST_WEIGHT.items():
        if (path / name).exists():
            (path / name).write_text(f"{weight}\n")
            return
    raise FileNotFoundError(f"{path} has neither cpu.idle nor a CPU weight")


def remove(group: IdleGroup | None) -> None:
    """Remove the group once the replay is over; kept while a process is still in it
    (another replay's, or a backend not yet gone)."""
    if group is not None:
        with contextlib.suppress(OSError):
            group.path.rmdir()
