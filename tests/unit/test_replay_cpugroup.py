"""The replay's idle CPU group (`projections.cpugroup`): where it is found, how it is
made idle, and that a refusal leaves the replay niced, not failed. Against files in a
temporary directory shaped like a cgroup; the real kernel's side is in
tests/integration/test_projections.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from projections import cpugroup
from projections.cpugroup import IdleGroup, cpu_mount, prepare

V1 = """sysfs /sys sysfs rw,nosuid 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
"""


def test_the_cgroup_v1_cpu_mount_is_found_by_its_option_not_by_a_name_like_it() -> None:
    assert cpu_mount(V1) == Path("/sys/fs/cgroup/cpu")
    assert cpu_mount("cgroup /sys/fs/cgroup/cpuacct cgroup rw,cpuacct 0 0\n") is None


def test_a_cgroup2_mount_counts_only_with_cpu_among_its_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset io memory pids\n")
    line = f"cgroup2 {tmp_path} cgroup2 rw,nosuid 0 0\n"
    assert cpu_mount(line) is None
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert cpu_mount(line) == tmp_path
    # A v1 cpu mount beside it is the one the cpu controller is bound to.
    assert cpu_mount(line + V1) == Path("/sys/fs/cgroup/cpu")


def _cgroup(path: Path, *files: str) -> Path:
    path.mkdir()
    for name in ("cgroup.procs", *files):
        (path / name).write_text("0\n")
    return path


def test_a_group_with_cpu_idle_is_marked_idle(tmp_path: Path) -> None:
    group = prepare(str(_cgroup(tmp_path / "g", "cpu.idle", "cpu.shares")))
    assert group == IdleGroup(tmp_path / "g")
    assert (tmp_path / "g" / "cpu.idle").read_text() == "1\n"
    assert (tmp_path / "g" / "cpu.shares").read_text() == "0\n"  # idle is enough


@pytest.mark.parametrize(("weight", "smallest"), [("cpu.shares", "2\n"), ("cpu.weight", "1\n")])
def test_before_cpu_idle_a_group_gets_the_smallest_weight(tmp_path: Path, weight: str,
                                                          smallest: str) -> None:
    assert prepare(str(_cgroup(tmp_path / "g", weight))) is not None
    assert (tmp_path / "g" / weight).read_text() == smallest


def test_auto_makes_the_group_under_the_cpu_mount(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup {tmp_path} cgroup rw,cpu 0 0\n")
    made = tmp_path / cpugroup.NAME
    _cgroup(made, "cpu.idle")  # the files a real cgroup directory comes with
    assert prepare("auto", mounts) == IdleGroup(made)
    assert (made / "cpu.idle").read_text() == "1\n"


def test_no_group_where_there_is_no_cpu_controller_or_it_is_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("sysfs /sys sysfs rw 0 0\n")
    with caplog.at_level(logging.INFO, logger="projections.replay"):
        assert prepare("auto", mounts) is None
        assert prepare("auto", tmp_path / "no such file") is None
    assert [r.getMessage() for r in caplog.records] == [
        "replay runs niced, in no idle CPU group: no cpu cgroup controller"] * 2
    for off in ("off", "", "none", "OFF"):
        assert prepare(off, mounts) is None


def test_a_directory_made_that_is_no_cgroup_is_removed_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """mkdir outside a cgroup mount gives a plain directory: no group, nothing left."""
    with caplog.at_level(logging.INFO, logger="projections.replay"):
        assert prepare(str(tmp_path / "plain")) is None
    assert not (tmp_path / "plain").exists()
    assert caplog.records[0].getMessage() == "replay runs niced, in no idle CPU group"


def test_a_refused_group_leaves_the_replay_niced_with_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        with caplog.at_level(logging.INFO, logger="projections.replay"):
            got = prepare(str(readonly / "g"))
    finally:
        readonly.chmod(0o700)
    assert got is None  # refused mkdir, or (root) a plain directory made and removed
    assert not (readonly / "g").exists()
    assert len(caplog.records) == 1


def test_joining_writes_the_pid_and_a_refusal_is_a_warning_not_an_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    group = IdleGroup(_cgroup(tmp_path / "g", "cpu.idle"))
    assert group.join(4242)
    assert (tmp_path / "g" / "cgroup.procs").read_text() == "4242\n"
    gone = IdleGroup(tmp_path / "gone")
    with caplog.at_level(logging.INFO, logger="projections.replay"):
        assert not gone.join(4242)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "replay process not moved to its idle CPU group")]
