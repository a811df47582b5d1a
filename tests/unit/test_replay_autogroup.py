"""A replay worker's niceness must count against the query API's: under Linux's
autogroups (CPU shared first between sessions, then by niceness inside each) the worker
moves to a session and autogroup of its own, at the replay's niceness."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from projections.replay import _in_an_autogroup, _own_autogroup

AUTOGROUP = Path("/proc/self/autogroup")
# Inside a CPU cgroup of its own (CI's container), a process is in no autogroup and the
# file reads empty: those machines run only the test below the two skipped ones.
NO_AUTOGROUP = "this process is in no autogroup (autogroups off, or a CPU cgroup)"


def _child(nice: int, path: Path,
           out: multiprocessing.queues.Queue[tuple[str, int, int]]) -> None:
    _own_autogroup(nice, path)
    out.put((path.read_text(), os.getsid(0), os.getpid()))


def _in_child(nice: int, path: Path = AUTOGROUP) -> tuple[str, int, int]:
    context = multiprocessing.get_context("fork")
    out: multiprocessing.queues.Queue[tuple[str, int, int]] = context.Queue()
    child = context.Process(target=_child, args=(nice, path, out))
    child.start()
    got = out.get(timeout=10)
    child.join(10)
    return got


@pytest.mark.skipif(not _in_an_autogroup(AUTOGROUP), reason=NO_AUTOGROUP)
def test_a_niced_worker_gets_an_autogroup_of_its_own_at_its_niceness() -> None:
    ours = AUTOGROUP.read_text().split()[0]
    group, session, pid = _in_child(10)
    name, _, nice = group.split()
    assert name != ours
    assert nice == "10"
    assert session == pid


@pytest.mark.skipif(not _in_an_autogroup(AUTOGROUP), reason=NO_AUTOGROUP)
def test_a_worker_at_niceness_0_stays_where_it_was() -> None:
    group, session, _ = _in_child(0)
    assert group.split()[0] == AUTOGROUP.read_text().split()[0]
    assert session == os.getsid(0)


def test_a_worker_in_no_autogroup_keeps_its_session_and_writes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "autogroup"
    empty.write_text("")  # what /proc/self/autogroup reads in a CPU cgroup of its own
    group, session, _ = _in_child(10, empty)
    assert group == ""
    assert session == os.getsid(0)
