"""A replay worker's niceness must count against the query API's: under Linux's
autogroups (CPU shared first between sessions, then by niceness inside each) the worker
moves to a session and autogroup of its own, at the replay's niceness."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from projections.replay import _own_autogroup

AUTOGROUP = Path("/proc/self/autogroup")


def _child(nice: int, out: multiprocessing.queues.Queue[tuple[str, int, int]]) -> None:
    _own_autogroup(nice)
    out.put((AUTOGROUP.read_text(), os.getsid(0), os.getpid()))


def _in_child(nice: int) -> tuple[str, int, int]:
    context = multiprocessing.get_context("fork")
    out: multiprocessing.queues.Queue[tuple[str, int, int]] = context.Queue()
    child = context.Process(target=_child, args=(nice, out))
    child.start()
    got = out.get(timeout=10)
    child.join(10)
    return got


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="no autogroups on this kernel")
def test_a_niced_worker_gets_an_autogroup_of_its_own_at_its_niceness() -> None:
    ours = AUTOGROUP.read_text().split()[0]
    group, session, pid = _in_child(10)
    name, _, nice = group.split()
    assert name != ours
    assert nice == "10"
    assert session == pid


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="no autogroups on this kernel")
def test_a_worker_at_niceness_0_stays_where_it_was() -> None:
    group, session, _ = _in_child(0)
    assert group.split()[0] == AUTOGROUP.read_text().split()[0]
    assert session == os.getsid(0)
