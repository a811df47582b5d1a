"""The notifier alone: how fast it drains decisions already in the log, and its CPU per e-mail.

Run: python -m proof.bench_notifier [--signups 3000] [--rounds 2] [--profile P [--on-cpu]]

Figure 1 with the notifier measures the whole path at once, so the notifier's share is
hard to see in it. This starts the bench's stack (`proof.bench_stack`, notifier and
SMTP sink stopped), signs up `--signups` students over HTTP on 50 live courses and
waits until every decision is projected. Then, each round: the notifier's group back
to the offsets before those decisions, its sent-records and contacts emptied, the SMTP
sink and the notifier started, and the time from the notifier's start until every
e-mail is a file in the sink, with the notifier's and the sink's CPU over that time.
Each round mails the same sealed decisions again, as a fresh deployment would.
Prints one JSON line per round; the load average says how shared the machine was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
from confluent_kafka import Consumer, TopicPartition

from proof import bench_kafka as bk
from proof import bench_stack as bs
from service_kit.kafka_auth import client_config

COURSES = 50


async def create_courses(stack: bs.BenchStack, courses: list[str]) -> None:
    headers = {"Authorization": f"Bearer {stack.config.admin_token()}"}
    async with aiohttp.ClientSession(stack.config.command_url) as client:
        for course in courses:
            async with client.post("/courses", headers=headers, json={
                    "course_id": course, "title": f"Drain {course}", "lecturer": "Dr. Mail",
                    "capacity": 100_000}) as response:
                response.raise_for_status()


def rewind(bootstrap: str, group: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({**client_config(), "bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        bk.commit_retrying(consumer, [TopicPartition("course-events", p, o)
                                      for p, o in offsets.items()])
    finally:
        consumer.close()


def mails(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for entry in entries if entry.name.endswith(".eml"))


def user_system_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds a process has used so far, in user mode and in the kernel."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def drain(stack: bs.BenchStack, start: dict[int, int], expected: int, timeout: float,
          profile: Path | None = None, on_cpu: bool = False) -> dict[str, object]:
    rewind(stack.bootstrap, "notifier", start)
    bs.scalar(stack.database_url, "WITH a AS (DELETE FROM sent_notifications RETURNING 1),"
              " b AS (DELETE FROM notifier_contacts RETURNING 1) SELECT 1")
    folder = stack.config.mail_dir
    folder.mkdir(parents=True, exist_ok=True)
    # The earlier rounds' files stay: on ext4 without a journal (this machine's disk),
    # creating a file makes the kernel look first at each inode of its block group
    # deleted in the last one to six minutes (`recently_deleted`); deleting the last
    # round's thousands here would charge that to the sink, per message, as system time.
    before = mails(folder)
    stack.cli("up", only="smtp")
    began = time.monotonic()
    stack.cli("up", only="notifier")
    pids = {name: stack.pid(name) for name in ("notifier", "smtp")}
    cpu0 = {name: user_system_cpu(pid) for name, pid in pids.items()}
    spies = [] if profile is None or shutil.which("py-spy") is None else [
        # Waiting included (--idle): where the notifier's threads spend their time; or,
        # with --on-cpu, only the samples of threads running: where the CPU goes.
        subprocess.Popen(["py-spy", "record", "--pid", str(pid),
                          *([] if on_cpu else ["--idle"]), "-d", "6", "-r",
                          "200", "-f", "raw", "-o", f"{profile}.{name}.txt"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, pid in pids.items()]
    deadline = began + timeout
    first = None
    try:
        while (count := mails(folder) - before) < expected and time.monotonic() < deadline:
            if first is None and count:
                first = time.monotonic()
            time.sleep(0.05)
        seconds = time.monotonic() - began
        cpu = {name: [b - a for a, b in zip(cpu0[name], user_system_cpu(pid), strict=True)]
               for name, pid in pids.items()}
        mailed = mails(folder) - before
    finally:
        for spy in spies:
            spy.wait(30)
        for name in ("notifier", "smtp"):
            bs.stop_component(stack, name)
    sending = seconds - ((first or began) - began)
    return {"mailed": mailed, "expected": expected, "seconds": round(seconds, 2),
            "mails_per_s": round(mailed / seconds, 1),
            # From the first e-mail in the sink on: without the notifier's start-up.
            "mails_per_s_sending": round(mailed / sending, 1),
            "cpu_ms_per_mail": {n: round(1000 * sum(c) / max(mailed, 1), 3)
                                for n, c in cpu.items()},
            # The kernel's share (sockets, file creation) apart from the process's own.
            "cpu_ms_per_mail_user_system": {n: [round(1000 * t / max(mailed, 1), 3) for t in c]
                                            for n, c in cpu.items()},
            "cpu_percent_of_one_core": {n: round(100 * sum(c) / seconds, 1)
                                        for n, c in cpu.items()},
            "loadavg": bs.loadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signups", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy the notifier and the sink for 6 s each round, raw "
                             "stacks to PROFILE.<round>.<process>.txt")
    parser.add_argument("--on-cpu", action="store_true",
                        help="profile only running threads (py-spy without --idle)")
    args = parser.parse_args()
    with bs.running_stack() as stack:
        courses = [f"drain-{i:03d}" for i in range(COURSES)]
        # From before the courses: each round learns them, as a fresh notifier would.
        start = bk.end_offsets(stack.bootstrap, "course-events")
        asyncio.run(create_courses(stack, courses))
        bs.wait_processor_ready(stack, 120)
        out = stack.config.run_dir / "drain-load.json"
        result = bs.generate(stack.config.command_url, out, 600,
                             signups=",".join(courses), tag="drain", concurrency=64,
                             seconds=300, max=args.signups)
        accepted = sum(1 for row in result["rows"] if row[2] == 202)
        deadline = time.monotonic() + 300
        while bs.scalar(stack.database_url, "SELECT count(*) FROM signup_decisions") < accepted:
            if time.monotonic() > deadline:
                raise TimeoutError("decisions not projected")
            time.sleep(0.5)
        for n in range(args.rounds):
            profile = args.profile and args.profile.with_name(f"{args.profile.name}.{n + 1}")
            print(json.dumps({"round": n + 1, "signups": accepted,
                              **drain(stack, start, accepted, args.timeout, profile,
                                         args.on_cpu)}),
                  flush=True)


if __name__ == "__main__":
    main()
