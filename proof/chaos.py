"""Fault injection under load, one scenario at a time, each followed by the invariant audit.

Run: python -m proof.chaos [--short] [--scenario NAME ...] [--use-running] [--keep]
                           [--results PATH] [--list]          (`make chaos`)

Without --use-running it starts a stack of its own (`python -m stack up`) on free ports in
a temporary directory and stops it at the end; with it, it uses the stack that the
environment describes (RUN_DIR, KAFKA_PORT, ... as `make up` reads them). Every restart
is what an operator would type: `python -m stack up`, which starts whatever is not
running. `--short` is the reduced run that `make test` uses (tests/e2e/test_chaos.py): every
scenario but kill-two-brokers and pause-leader-broker, with less load and shorter pauses.

Scenarios (`--list`), each on courses of its own with random ids:
  kill-processor     SIGKILL of the course processor three times under load
  kill-projector     SIGKILL of the projector
  kill-notifier      SIGKILL of the notifier (at most one duplicate e-mail per kill)
  kill-command-api   SIGKILL of the command API with a burst of requests in flight; the
                     client retries the same Idempotency-Key until it gets a 202
  kill-kafka         SIGKILL of the broker, restarted after a while: the command API answers
                     503 meanwhile, never a 202 and never a hang, and recovers by itself
  restart-postgres   PostgreSQL stopped (fast shutdown) and started again
  restart-smtp       the SMTP sink stopped and started again
  pause-processor    two processors; one SIGSTOPped past its session timeout, then SIGCONTed
  scale-processors   1 -> 2 -> 1 processors
On a stack of three brokers of its own (KAFKA_BROKERS=3, replication factor 3,
min.insync.replicas=2):
  kill-leader-broker SIGKILL the broker leading most partitions of course-commands and
                     course-events, restarted after 20 s: every request answered 202, no
                     decision stall over 15 s, the broker back in every ISR (in --short)
  kill-two-brokers   SIGKILL two of the three: 503 with Retry-After meanwhile, never a 202;
                     restarted, everything resumes
  pause-leader-broker SIGSTOP the busiest leader past its session timeout, then SIGCONT:
                     every request answered 202, the broker back in every ISR

Without --use-running each cluster shape gets a stack of its own, one after the other;
with it, only the scenarios that fit the running stack's KAFKA_BROKERS run.

Load: sign-ups at a steady rate with at most N in flight, from a pool of students, some
retried by the same student in other letter case, some re-sent with the same
Idempotency-Key after their 202. A request that fails (no answer, 5xx) is retried with
the same Idempotency-Key (backoff 0.2 s doubling to 1 s, faster than Retry-After so that
recovery is measured to the second) until it gets a 202, for at most a few minutes.

After the load the suite waits, bounded, until every 202 sign-up is decided and projected,
the projector has read the whole log and every decision has its e-mail; then it audits
(proof/audit.py): every 202 sign-up has exactly one distinct decision in course-events
(read_committed, from offset 0); no course over capacity, one seat per student, accepted
== min(capacity, students); the live views equal both the views recomputed from the log
and a full replay into shadow tables (not swapped in); one e-mail per decision, at most one
extra per notifier kill. Scenario checks come on top (503s while the broker is away,
nothing written by a fenced processor after it resumed, ...).

Table columns: sign-ups = distinct sign-ups that got a 202; non-202 answers = attempts
answered otherwise (503, another error, no answer), each retried with its key; dups seen
= decision records in the log repeating an event_id, of which reprocessed = a command
decided more than once (after a crash or a rebalance; the rest answer a SignUp the client
sent again with the same key); recover = from the fault's end (restart typed, dependency
back, SIGCONT, scale step typed; for a broker lost from a cluster, which heals by itself,
the kill or SIGSTOP) to the first new output of what the fault hit (a decision record, on
every partition for a lost broker; a 202, a projector batch, an e-mail, a finished
rebalance), worst fault of the scenario; stall = the longest gap between two decisions in
one partition while the load ran; caught up = from the last fault's end until everything
was decided, projected and e-mailed.

Results go to $RUN_DIR/chaos/results.json (--results); when a scenario fails, its records
of course-events go beside them (evidence-<scenario>-<time>.jsonl), and so do the logs of
a stack the suite started. The process exits 1 if any audit failed.

The stack handling is in proof/chaos_stack.py, the client in proof/chaos_load.py, the
audit in proof/audit.py.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from proof import audit, chaos_cluster, term_audit
from proof.chaos_load import CourseSpec, Load, Plan, create_courses, now
from proof.chaos_stack import UP_TIMEOUT, ChaosError, Stack, temporary_config
from proof.demo import table
from schemas import topics
from schemas.messages import (
    SignUp,
    SignupDecision,
    StudentPromoted,
    StudentWithdrew,
    WithdrawalRejected,
)
from stack import kafka
from stack.config import StackConfig, operator_login
from stack.procs import pid_alive, port_open
from stack.services import services


@dataclass(frozen=True)
class Profile:
    name: str
    rate: float  # sign-up requests started per second
    concurrency: int  # requests in flight at most (a burst comes on top)
    warmup: float  # seconds of load before the first fault
    between: float  # seconds of load between two faults
    tail: float  # seconds of load after the last fault
    down: float  # a killed process stays down this long before the operator restarts it
    outage: float  # a stopped dependency stays away this long
    burst: int  # requests fired at once just before the command API is killed
    api_kills: int
    give_up: float  # a request is retried with its Idempotency-Key for this long
    settle: float  # bound on waiting for decisions, projection and e-mails after the load
    past_timeout: float  # a paused processor stays stopped this long past its session timeout
    rejoin: bool  # restart the fenced processor and wait until it shares the partitions again
    broker_down: float  # a killed broker of a cluster is restarted after this long
    majority_outage: float  # two of three brokers stay away this long
    broker_past_timeout: float  # a paused broker stays stopped this long past its session


FULL = Profile("full", rate=30, concurrency=24, warmup=6, between=10, tail=6, down=3,
               outage=15, burst=150, api_kills=2, give_up=240, settle=240, past_timeout=5,
               rejoin=True, broker_down=20, majority_outage=20, broker_past_timeout=10)
SHORT = Profile("short", rate=12, concurrency=16, warmup=3, between=3, tail=3, down=1,
                outage=6, burst=60, api_kills=1, give_up=180, settle=150, past_timeout=3,
                rejoin=False, broker_down=20, majority_outage=10, broker_past_timeout=5)

# The stall goal of a broker lost from a three-broker cluster: the cluster
# fences it after broker.session.timeout.ms (6 s) and elects new leaders; decisions on
# its partitions may pause that long and a little more, never longer than this.
CLUSTER_STALL_GOAL_S = 15.0
ISR_REJOIN_TIMEOUT_S = 120.0


# ------------------------------------------------------------------ faults and checks


@dataclass
class Fault:
    name: str
    probes: tuple[str, ...]  # what must resume: decide, accept, project, mail, rebalance
    started: float
    ended: float | None = None
    recovered: dict[str, float | None] = field(default_factory=dict)  # probe -> seconds
    notes: list[str] = field(default_factory=list)

    @property
    def recovered_s(self) -> float | None:
        values = [self.recovered.get(p) for p in self.probes]
        return None if any(v is None for v in values) else max(v for v in values if v is not None)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Evidence:
    """What the audit read after the load: for the scenarios' own checks."""

    log: audit.LogSnapshot
    decisions: list[audit.Logged]  # decision records of the scenario's courses, log order
    commands: Counter[str]  # SignUp commands in course-commands per sign-up id
    accepted: dict[str, str]


# A registration term in the load: the two small courses keep a waiting list, and a
# share of the accepted sign-ups withdraw with their tokens, freeing seats that go to
# the waiting students; the term audit checks FIFO at every prefix of the log.
WAITLIST = 10
WITHDRAW_SHARE = 0.1


class Run:
    """One scenario: its courses, load, faults, checks and notes."""

    def __init__(self, name: str, stack: Stack, profile: Profile,
                 client: aiohttp.ClientSession, query: aiohttp.ClientSession,
                 mails: audit.MailIndex) -> None:
        self.name, self.stack, self.profile = name, stack, profile
        self.client, self.query, self.mails = client, query, mails
        self.rng = random.Random()
        tag = uuid.uuid4().hex[:8]
        self.courses = [CourseSpec(f"{name}-{slug}-{tag}", capacity, weight, waiting)
                        for slug, capacity, weight, waiting in
                        (("tiny", 5, 3, WAITLIST), ("small", 25, 3, WAITLIST),
                         ("medium", 150, 2, 0), ("large", 100_000, 2, 0))]
        self.load = Load(client, Plan(self.courses, self.rng, tag), profile.rate,
                         profile.concurrency, profile.give_up, WITHDRAW_SHARE)
        self.faults: list[Fault] = []
        self.checks: list[Check] = []
        self.notes: list[str] = []
        self.post_checks: list[Callable[[Evidence], Check]] = []
        self.watchers: list[asyncio.Task[None]] = []
        self.notifier_kills = 0
        self.began = time.monotonic()

    def say(self, message: str) -> None:
        print(f"  [{time.monotonic() - self.began:6.1f}s] {message}", flush=True)

    async def load_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # the load runs meanwhile

    def fault(self, name: str, *probes: str) -> Fault:
        fault = Fault(name, probes, now())
        self.faults.append(fault)
        self.say(name)
        return fault

    async def restart(self, fault: Fault, processors: int = 1) -> None:
        """The operator's fix: `python -m stack up`; the fault ends when it is typed."""
        fault.ended = now()
        took = await self.stack.up(processors)
        self.say(f"`python -m stack up` returned after {took:.1f}s")

    async def kill(self, name: str, *probes: str, label: str = "") -> Fault:
        """SIGKILL a component, leave it down a moment, restart it with `stack up`."""
        fault = self.fault(f"SIGKILL {name}{label}", *probes)
        pid = self.stack.signal(name, signal.SIGKILL)
        await self.until(lambda: not pid_alive(pid), 10, f"{name} (pid {pid}) to die")
        baselines = {p: await self.probe_value(p) for p in probes}
        await asyncio.sleep(self.profile.down)
        await self.restart(fault)
        self.watch(fault, baselines)
        return fault

    async def probe_value(self, probe: str) -> int | None:
        """A counter that grows with the output of the component a probe watches."""
        if probe == "mail":
            return await asyncio.to_thread(self.mails.count)
        if probe == "project":
            return await asyncio.to_thread(self._projected)
        return None

    def _projected(self) -> int | None:
        try:
            with psycopg.connect(self.stack.config.database_url, connect_timeout=2) as conn:
                return sum(audit.projection_positions(conn).values())
        except psycopg.Error:
            return None

    def watch(self, fault: Fault, baselines: dict[str, int | None]) -> None:
        """Measure, live, when the projector or the notifier produces again."""
        for probe in fault.probes:
            if probe in ("mail", "project"):
                self.watchers.append(asyncio.create_task(
                    self._watch(fault, probe, baselines.get(probe))))

    async def _watch(self, fault: Fault, probe: str, baseline: int | None) -> None:
        assert fault.ended is not None
        deadline = time.monotonic() + self.profile.settle
        while time.monotonic() < deadline:
            value = await self.probe_value(probe)
            if value is not None and baseline is None:
                baseline = value  # unknown before (database away): progress from here on
            elif value is not None and baseline is not None and value > baseline:
                fault.recovered[probe] = now() - fault.ended
                return
            await asyncio.sleep(0.2)
        fault.recovered[probe] = None

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        began = time.monotonic()
        while not condition():
            if time.monotonic() - began > timeout:
                raise ChaosError(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(0.1)
        return time.monotonic() - began


# ------------------------------------------------------------------ scenarios


async def kill_processor(run: Run) -> None:
    p = run.profile
    await run.load_for(p.warmup)
    for i in range(3):
        await asyncio.sleep(run.rng.uniform(0, 1.5))  # a random moment of the stream
        await run.kill("processor", "decide", label=f" ({i + 1}/3)")
        took = await run.stack.wait_processors(["processor"], 120)
        run.say(f"processor owns every partition again after {took:.1f}s")
        await run.load_for(p.between if i < 2 else p.tail)


async def kill_projector(run: Run) -> None:
    await run.load_for(run.profile.warmup)
    await run.kill("projector", "project")
    await run.load_for(run.profile.tail)


async def kill_notifier(run: Run) -> None:
    await run.load_for(run.profile.warmup)
    run.notifier_kills += 1
    await run.kill("notifier", "mail")
    await run.load_for(run.profile.tail)


async def kill_command_api(run: Run) -> None:
    p = run.profile
    await run.load_for(p.warmup)
    for i in range(p.api_kills):
        await run.load.burst(p.burst)
        # A few ms in: some commands are produced and acknowledged by Kafka, their HTTP
        # answers not yet written.
        await asyncio.sleep(run.rng.uniform(0.005, 0.03))
        await run.kill("command-api", "accept", label=f" ({i + 1}/{p.api_kills})")
        await run.load_for(p.between if i + 1 < p.api_kills else p.tail)
    run.post_checks.append(lambda ev: lost_answers(run, ev))


def lost_answers(run: Run, ev: Evidence) -> Check:
    """Commands that reached Kafka although their client saw the connection die: the
    retry with the same key was answered with the same sign-up and decided once."""
    failed_first = {r.signup_id: r.resent for r in run.load.requests
                    if r.signup_id and r.attempts and r.attempts[0].status == 0}
    # Commands sent with a 202 answered: one, plus one if the client re-sent the key after.
    lost = [s for s, resent in failed_first.items() if ev.commands[s] >= 2 + resent]
    run.notes.append(f"{len(failed_first)} requests lost their connection to the killed "
                     f"command API; {len(lost)} of them had reached Kafka before (their answer "
                     f"was lost after the produce), each retried to the same sign-up id")
    decisions: dict[str, set[str]] = {}
    for d in ev.decisions:
        if isinstance(d.message, SignupDecision):
            decisions.setdefault(d.message.signup_id, set()).add(d.message.event_id)
    decided_once = all(len(decisions.get(s, ())) == 1 for s in lost)
    return Check("a command produced twice (answer lost, key retried) is one sign-up",
                 decided_once, f"{len(lost)} such sign-ups")


async def kill_kafka(run: Run) -> None:
    p, stack = run.profile, run.stack
    await run.load_for(p.warmup)
    api_pid = stack.pid("command-api")
    fault = run.fault("SIGKILL kafka", "accept", "decide")
    stack.signal("kafka", signal.SIGKILL)
    await asyncio.sleep(p.outage)
    dead = [s.name for s in services(stack.config) if not stack.alive(s.name)]
    if dead:
        fault.notes.append(f"died while the broker was away: {dead}")
        run.say(f"died while the broker was away: {dead}")
    back = asyncio.create_task(listening(stack.config.kafka_port, UP_TIMEOUT))
    await run.restart(fault)
    back_at = await back
    run.say(f"the broker listens again {back_at - (fault.ended or back_at):.1f}s after the "
            f"restart")
    await run.load_for(p.tail)
    dead = [s.name for s in services(stack.config) if not stack.alive(s.name)]
    if dead:
        fault.notes.append(f"died after the broker came back: {dead}; restarted with stack up")
        run.say(f"died after the broker came back: {dead}; restarting with `python -m stack up`")
        await stack.up()
    run.checks.append(Check("the command API recovered by itself (same process)",
                            api_pid is not None and stack.pid("command-api") == api_pid,
                            f"pid {api_pid} -> {stack.pid('command-api')}"))
    run.post_checks.append(lambda ev: broker_outage_answers(run, fault, back_at))


async def listening(port: int, timeout: float) -> float:
    """When the port accepts connections again (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(port_open, port):
            return now()
        await asyncio.sleep(0.1)
    raise ChaosError(f"port {port} did not open within {timeout:.0f}s")


def broker_outage_answers(run: Run, fault: Fault, back_at: float) -> Check:
    """While the broker is away: 503 with Retry-After, never a 202, never a hang."""
    grace = 1.0  # requests acknowledged just before the kill may still be answered
    away = [a for a in run.load.attempts() if fault.started + grace <= a.started < back_at]
    answered_away = [a for a in away if a.finished <= back_at]
    statuses = Counter(a.status for a in answered_away)
    slowest = max((a.finished - a.started for a in away), default=0.0)
    unavailable = [a for a in answered_away if a.status == 503]
    ok = (statuses[202] == 0 and bool(unavailable)
          and all(a.retry_after for a in unavailable) and slowest <= 5.0 + 3.0)
    return Check("broker away: 503 with Retry-After, no 202, no hang", ok,
                 f"answers while away {dict(statuses)}, all 503s with Retry-After: "
                 f"{all(a.retry_after for a in unavailable)}, slowest request {slowest:.1f}s")


async def kill_leader_broker(run: Run) -> None:
    """Three brokers: SIGKILL the one leading most partitions of course-commands and
    course-events, restart it after a while. The cluster heals by itself (new leaders
    after the fencing), so the fault counts from the kill, not from the restart."""
    p, stack = run.profile, run.stack
    await run.load_for(p.warmup)
    node, led, total = await asyncio.to_thread(chaos_cluster.busiest_leader,
                                                stack.config.kafka_bootstrap)
    name = f"kafka-{node}"
    pids = {n: stack.pid(n) for n in ("command-api", "processor", "projector", "notifier")}
    fault = run.fault(f"SIGKILL {name} (leads {led} of {total} partitions), restart "
                      f"after {p.broker_down:.0f}s", "accept", "decide-all")
    victim = stack.signal(name, signal.SIGKILL)
    fault.ended = now()
    await run.until(lambda: not pid_alive(victim), 10, f"{name} (pid {victim}) to die")
    await asyncio.sleep(p.broker_down)
    restarted = now()
    took = await stack.up()
    run.say(f"`python -m stack up` restarted {name} in {took:.1f}s")
    await rejoins_isr(run, fault, node, restarted, "restarted", "its restart")
    await run.load_for(p.tail)
    run.checks.append(survivors(stack, pids))
    run.checks.append(await deciding(run))
    await restart_the_dead(run, fault)
    run.post_checks.append(lambda ev: only_202(run, "one broker of three lost"))
    run.post_checks.append(lambda ev: stall_within(run, ev, CLUSTER_STALL_GOAL_S))


async def kill_two_brokers(run: Run) -> None:
    """Three brokers: SIGKILL two of them. With one replica left no write reaches
    min.insync.replicas=2 (and no controller quorum is left), so sign-ups get 503 with
    Retry-After; restarted, everything resumes."""
    p, stack = run.profile, run.stack
    await run.load_for(p.warmup)
    node, _, _ = await asyncio.to_thread(chaos_cluster.busiest_leader,
                                         stack.config.kafka_bootstrap)
    others = [n for n in range(1, stack.config.kafka_brokers + 1) if n != node]
    victims = [f"kafka-{node}", f"kafka-{others[0]}"]
    fault = run.fault(f"SIGKILL {' and '.join(victims)} for {p.majority_outage:.0f}s",
                      "accept", "decide-all")
    for name in victims:
        stack.signal(name, signal.SIGKILL)
    await asyncio.sleep(p.majority_outage)
    dead = [s.name for s in services(stack.config) if not stack.alive(s.name)]
    if dead:
        fault.notes.append(f"died while two brokers were away: {dead}; restarted by stack up")
        run.say(fault.notes[-1])
    await run.restart(fault)
    back_at = now()
    await run.load_for(p.tail)
    dead = [s.name for s in services(stack.config) if not stack.alive(s.name)]
    if dead:
        fault.notes.append(f"died after the brokers came back: {dead}; restarted with stack up")
        run.say(fault.notes[-1])
        await stack.up()
    run.post_checks.append(lambda ev: majority_lost_answers(run, fault, back_at))


async def pause_leader_broker(run: Run) -> None:
    """Three brokers: SIGSTOP the busiest leader past its session timeout, then SIGCONT.
    The cluster fences it and elects new leaders meanwhile; resumed, it finds itself
    fenced, registers again and catches up. No operator action: the fault counts from
    the SIGSTOP."""
    from stack.kafka import session_timeout_ms

    p, stack = run.profile, run.stack
    await run.load_for(p.warmup)
    node, led, total = await asyncio.to_thread(chaos_cluster.busiest_leader,
                                               stack.config.kafka_bootstrap)
    name = f"kafka-{node}"
    timeout = session_timeout_ms(stack.config) / 1000
    pause = timeout + p.broker_past_timeout
    pids = {n: stack.pid(n) for n in ("command-api", "processor", "projector", "notifier")}
    fault = run.fault(f"SIGSTOP {name} (leads {led} of {total} partitions) for {pause:.0f}s "
                      f"(session timeout {timeout:.0f}s)", "accept", "decide-all")
    pid = stack.signal(name, signal.SIGSTOP)
    fault.ended = now()
    try:
        await asyncio.sleep(pause)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = now()
    run.say(f"SIGCONT {name}")
    await rejoins_isr(run, fault, node, resumed, "resumed", "SIGCONT")
    await run.load_for(p.tail)
    run.checks.append(Check(f"{name} kept running (same pid)", pid_alive(pid), f"pid {pid}"))
    run.checks.append(survivors(stack, pids))
    run.checks.append(await deciding(run))
    await restart_the_dead(run, fault)
    run.post_checks.append(lambda ev: only_202(run, "one broker of three paused"))
    # Leaders move once the paused broker is fenced, but when it coordinates one of the
    # processor's transactions, the commit in flight waits for its answer on a
    # connection that stays open (aiokafka has no shorter bound on a transactional
    # request), so that partition's decisions wait for the SIGCONT. Bound: the pause,
    # plus the 15 s of a lost broker.
    run.post_checks.append(lambda ev: stall_within(run, ev, pause + CLUSTER_STALL_GOAL_S))


async def restart_the_dead(run: Run, fault: Fault) -> None:
    """A service that died anyway (a failed check above) is restarted as an operator
    would, so that the audit can still tell whether anything accepted was lost."""
    dead = [s.name for s in services(run.stack.config) if not run.stack.alive(s.name)]
    if dead:
        fault.notes.append(f"died: {dead}; restarted with `python -m stack up` for the audit")
        run.say(fault.notes[-1])
        await run.stack.up()


async def rejoins_isr(run: Run, fault: Fault, node: int, since: float, how: str,
                      after: str) -> None:
    """Check that broker `node` is back in every ISR in time, and note when it was."""
    rejoined, missing = await chaos_cluster.wait_in_isr(run.stack.config.kafka_bootstrap, node,
                                                        ISR_REJOIN_TIMEOUT_S)
    if rejoined is not None:
        fault.notes.append(f"kafka-{node} back in every ISR {now() - since:.1f}s after {after}")
        run.say(fault.notes[-1])
    run.checks.append(Check(f"the {how} broker rejoins the ISR within "
                            f"{ISR_REJOIN_TIMEOUT_S:.0f}s", rejoined is not None,
                            f"still out of the ISR of {missing[:5]}" if missing else ""))


async def deciding(run: Run, timeout: float = 60) -> Check:
    """A process that runs is not yet a processor that decides: it must own every
    partition again, neither rebalancing nor restoring."""
    try:
        took = await run.stack.wait_processors(["processor"], timeout)
    except ChaosError as exc:
        return Check("the processor owns every partition again", False, str(exc)[:300])
    return Check("the processor owns every partition again", True, f"within {took:.1f}s")


def survivors(stack: Stack, before: dict[str, int | None]) -> Check:
    """Losing one broker of three is no reason for any service to die or restart."""
    changed = {n: (pid, stack.pid(n)) for n, pid in before.items() if stack.pid(n) != pid}
    return Check("every service kept running (same pids)", not changed,
                 f"changed: {changed}" if changed else "")


def only_202(run: Run, what: str) -> Check:
    answers = Counter(a.status for a in run.load.attempts())
    other = {status: n for status, n in answers.items() if status != 202}
    run.notes.append(f"answers: {dict(answers)}")
    return Check(f"{what}: every request answered 202 (no 503, no error, no hang)", not other,
                 f"{sum(answers.values())} answers, other than 202: {other}")


def stall_within(run: Run, ev: Evidence, goal: float) -> Check:
    stall = longest_stall(run, ev)
    return Check(f"longest decision stall <= {goal:.0f}s", stall is not None and stall <= goal,
                 f"{seconds(stall)}s")


def majority_lost_answers(run: Run, fault: Fault, back_at: float) -> Check:
    """While two of three brokers are away: 503 with Retry-After, never a 202, never a
    hang. An attempt started in the outage may end after the restart, with a 202 then."""
    assert fault.ended is not None
    grace = 1.0  # requests acknowledged just before the kills may still be answered
    attempts = run.load.attempts()
    # Answered while the two were away (the restart not yet typed): 503s only.
    away = [a for a in attempts if fault.started + grace <= a.finished < fault.ended]
    statuses = Counter(a.status for a in away)
    early = statuses[202]  # a 202 before the brokers were even restarted
    unavailable = [a for a in away if a.status == 503]
    slowest = max((a.finished - a.started for a in attempts
                   if fault.started <= a.started < fault.ended), default=0.0)
    limit = produce_timeout(run.stack) + 3.0
    ok = (early == 0 and bool(unavailable) and all(a.retry_after for a in unavailable)
          and slowest <= limit)
    run.notes.append(f"answers while two brokers were away: {dict(statuses)}, slowest "
                     f"answer to a request sent meanwhile {slowest:.1f}s")
    return Check("two brokers of three away: 503 with Retry-After, no 202, no hang", ok,
                 f"answers before the restart {dict(statuses)}, all 503s with Retry-After: "
                 f"{all(a.retry_after for a in unavailable)}, slowest {slowest:.1f}s "
                 f"(bound {limit:.0f}s)")


def produce_timeout(stack: Stack) -> float:
    from command_api.settings import Settings

    env = stack.config.service_env()
    default = Settings.model_fields["produce_timeout_seconds"].default
    return float(env.get("PRODUCE_TIMEOUT_SECONDS") or default)


async def restart_postgres(run: Run) -> None:
    p = run.profile
    await run.load_for(p.warmup)
    baselines = {probe: await run.probe_value(probe) for probe in ("project", "mail")}
    fault = run.fault("PostgreSQL stopped", "project", "mail")
    await run.stack.stop("postgres")
    await asyncio.sleep(min(2.0, p.outage / 2))
    status, seconds = await probe_query_api(run.query, "/readyz")
    run.checks.append(Check("query API /readyz answers 503 while PostgreSQL is away",
                            status == 503, f"HTTP {status} in {seconds:.1f}s"))
    status, seconds = await probe_query_api(run.query, "/stats")
    run.notes.append(f"GET /stats while PostgreSQL was away: HTTP {status} in {seconds:.1f}s")
    await asyncio.sleep(max(0.0, p.outage - min(2.0, p.outage / 2)))
    await run.restart(fault)
    run.watch(fault, baselines)
    run.post_checks.append(lambda ev: key_store_outage_answers(run, fault))
    await run.load_for(p.tail)


def key_store_outage_answers(run: Run, fault: Fault) -> Check:
    """While PostgreSQL (the key store) is away, sign-ups cannot be sealed: 503 with
    Retry-After, never a 202 or a 500, never a hang."""
    grace = 1.0  # requests that had their key just before the stop may still be answered
    end = fault.ended or now()
    away = [a for a in run.load.attempts() if fault.started + grace <= a.started < end]
    answered_away = [a for a in away if a.finished <= end]
    statuses = Counter(a.status for a in answered_away)
    slowest = max((a.finished - a.started for a in away), default=0.0)
    unavailable = [a for a in answered_away if a.status == 503]
    ok = (set(statuses) == {503} and all(a.retry_after for a in unavailable)
          and slowest <= 2.0 + 3.0)
    return Check("key store away: sign-ups 503 with Retry-After, no 202, no 500, no hang", ok,
                 f"answers while away {dict(statuses)}, all 503s with Retry-After: "
                 f"{all(a.retry_after for a in unavailable)}, slowest request {slowest:.1f}s")


async def probe_query_api(query: aiohttp.ClientSession, path: str) -> tuple[int, float]:
    began = time.monotonic()
    try:
        async with query.get(path, timeout=aiohttp.ClientTimeout(total=15)) as response:
            await response.read()
            return response.status, time.monotonic() - began
    except (aiohttp.ClientError, TimeoutError):
        return 0, time.monotonic() - began


async def restart_smtp(run: Run) -> None:
    p = run.profile
    await run.load_for(p.warmup)
    fault = run.fault("SMTP sink stopped", "mail")
    await run.stack.stop("smtp")
    baselines = {"mail": await run.probe_value("mail")}
    await asyncio.sleep(p.outage)
    await run.restart(fault)
    run.watch(fault, baselines)
    await run.load_for(p.tail)


def session_timeout(env: dict[str, str]) -> float:
    from course_processor.settings import Settings

    return float(env.get("PROCESSOR_SESSION_TIMEOUT")
                 or Settings.model_fields["session_timeout"].default)


async def pause_processor(run: Run) -> None:
    p, stack = run.profile, run.stack
    took = await stack.up(processors=2)
    run.say(f"processor-2 started in {took:.1f}s")
    took = await stack.wait_processors(["processor", "processor-2"], 120)
    run.say(f"two processors share the partitions after {took:.1f}s")
    await run.load_for(p.warmup)
    timeout = session_timeout(stack.env)
    pause = timeout + p.past_timeout
    victim = await stack.processor_health("processor-2")  # its generation right now
    assert victim is not None
    fault = run.fault(f"SIGSTOP processor-2 for {pause:.0f}s (session timeout {timeout:.0f}s)",
                      "decide")
    pid = stack.signal("processor-2", signal.SIGSTOP)
    takeover = asyncio.create_task(stack.wait_processors(["processor"], pause + 90))
    try:
        await asyncio.sleep(pause)
    finally:
        os.kill(pid, signal.SIGCONT)
    fault.ended = now()
    run.say("SIGCONT processor-2")
    took = await takeover  # counted from the SIGSTOP
    fault.notes.append(f"processor owned every partition (took over {victim['assigned']}) "
                       f"{took:.1f}s after SIGSTOP")
    run.say(fault.notes[-1])
    await run.load_for(p.tail)
    exited = not pid_alive(pid)
    fault.notes.append("the resumed worker " + ("exited (fenced, fail-stop)" if exited
                                                else "kept running"))
    run.say(fault.notes[-1])
    if exited and p.rejoin:
        took = await stack.up(processors=2)
        run.say(f"processor-2 restarted with `PROCESSORS=2 python -m stack up` in {took:.1f}s")
    if p.rejoin:
        took = await stack.wait_processors(["processor", "processor-2"], 120)
        run.say(f"two processors share the partitions again after {took:.1f}s")
    run.post_checks.append(lambda ev: fenced(victim, fault, exited, ev))


def fenced(victim: dict, fault: Fault, exited: bool, ev: Evidence) -> Check:
    """A worker paused past its session timeout gets nothing it decides in its old
    consumer generation committed once resumed. It may rejoin the group and decide
    again in a newer generation; along every partition the committed generations
    never go back."""
    assert fault.ended is not None
    name, paused_in = victim["processor_id"], int(victim["generation"])
    late = [r for r in ev.log.records if r.header("processor_id") == name
            and int(r.header("generation") or paused_in) <= paused_in
            and r.timestamp_ms >= fault.ended * 1000]
    rejoined = sum(1 for r in ev.log.records if r.header("processor_id") == name
                   and int(r.header("generation") or 0) > paused_in)
    regressions = audit.generation_regressions(ev.log.records)
    detail = (f"{len(late)} committed records by {name} in generation <= {paused_in} "
              f"after SIGCONT; {rejoined} in a newer generation; "
              f"{len(regressions)} generation regressions")
    if regressions:
        detail += f" (first: {regressions[0]})"
    return Check("the paused worker is fenced", not late and not regressions,
                 detail + (" (it exited)" if exited else " (it kept running and rejoined)"))


async def scale_processors(run: Run) -> None:
    p, stack = run.profile, run.stack
    await run.load_for(p.warmup)
    up = run.fault("scale 1 -> 2 processors", "rebalance")
    up.ended = now()
    await stack.up(processors=2)
    await stack.wait_processors(["processor", "processor-2"], 120)
    up.recovered["rebalance"] = now() - up.ended
    run.say(f"two processors share the partitions {up.recovered['rebalance']:.1f}s later")
    await run.load_for(p.between)
    down = run.fault("scale 2 -> 1 processors (SIGTERM processor-2)", "rebalance")
    down.ended = now()
    await stack.stop("processor-2")
    await stack.wait_processors(["processor"], 120)
    down.recovered["rebalance"] = now() - down.ended
    run.say(f"processor owns every partition {down.recovered['rebalance']:.1f}s later")
    await run.load_for(p.tail)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    inject: Callable[[Run], Awaitable[None]]
    brokers: int = 1  # the Kafka cluster it runs on
    short: bool = True  # part of the reduced run (`--short`, what `make test` runs)


SCENARIOS = {s.name: s for s in [
    Scenario("kill-processor", "SIGKILL processor x3", kill_processor),
    Scenario("kill-projector", "SIGKILL projector", kill_projector),
    Scenario("kill-notifier", "SIGKILL notifier", kill_notifier),
    Scenario("kill-command-api", "SIGKILL command API, requests in flight", kill_command_api),
    Scenario("kill-kafka", "SIGKILL broker, restart", kill_kafka),
    Scenario("restart-postgres", "PostgreSQL stopped, started", restart_postgres),
    Scenario("restart-smtp", "SMTP sink stopped, started", restart_smtp),
    Scenario("pause-processor", "2 processors, SIGSTOP one past session timeout",
             pause_processor),
    Scenario("scale-processors", "processors 1 -> 2 -> 1", scale_processors),
    Scenario("kill-leader-broker", "3 brokers: SIGKILL the busiest leader, restart after 20s",
             kill_leader_broker, brokers=3),
    Scenario("kill-two-brokers", "3 brokers: SIGKILL two, restart", kill_two_brokers,
             brokers=3, short=False),
    Scenario("pause-leader-broker", "3 brokers: SIGSTOP the busiest leader past its session "
             "timeout", pause_leader_broker, brokers=3, short=False),
]}


# ------------------------------------------------------------------ settle and audit


@dataclass
class Result:
    scenario: str
    title: str
    ok: bool
    signups: int = 0
    requests: int = 0
    attempts: int = 0
    duplicates: int = 0  # decision records repeating an event_id
    repeated_commands: int = 0  # of those: answers to a SignUp sent again (same key)
    reprocessed: int = 0  # of those: a command decided again (after a crash or rebalance)
    recover_s: float | None = None
    stall_s: float | None = None
    caught_up_s: float | None = None
    non_202: int = 0  # attempts answered other than 202 (503, other errors, no answer)
    duration_s: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


async def settle(run: Run) -> tuple[audit.LogSnapshot, float | None]:
    """Wait, bounded, until every 202 sign-up is decided and projected, the projector has
    read the whole log and every decision of these courses has its e-mail; returns the log
    and when all that held (None: not within the bound)."""
    deadline = time.monotonic() + run.profile.settle
    accepted = sorted(run.load.accepted())
    url = run.stack.config.database_url

    def projected() -> bool:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM signup_decisions WHERE signup_id = ANY(%s)",
                               (accepted,)).fetchone()
            return row is not None and row[0] == len(accepted)

    done = await poll(projected, deadline)
    log = await asyncio.to_thread(audit.read_log, run.stack.config.kafka_bootstrap)
    scope = {c.course_id for c in run.courses}
    mailed_for = {r.message.event_id for r in log.records
                  if isinstance(r.message, SignupDecision)
                  and r.message.course_id in scope}

    def caught_up() -> bool:
        with psycopg.connect(url, connect_timeout=5) as conn:
            positions = audit.projection_positions(conn)
        if any(positions.get(p, 0) < end for p, end in log.data_ends.items()):
            return False
        return mailed_for <= {m.event_id for m in run.mails.refresh()}

    done = await poll(caught_up, deadline) and done
    return log, now() if done else None


async def poll(condition: Callable[[], bool], deadline: float) -> bool:
    """Call condition (blocking, in a thread) until it holds or the deadline passes."""
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(condition):
                return True
        except psycopg.Error:
            pass  # not reachable yet: keep waiting
        await asyncio.sleep(0.5)
    return False


def examine(run: Run, log: audit.LogSnapshot) -> tuple[list[Check], Evidence, int]:
    """The audit proper; returns its checks, the evidence and the duplicates seen."""
    config = run.stack.config
    scope = [c.course_id for c in run.courses]
    accepted = run.load.accepted()
    events = log.events()
    checks = []
    decisions = audit.audit_decisions(events, accepted, scope)
    checks.append(Check("every 202 has exactly one decision; no course over capacity; one "
                        "seat per student; accepted = min(capacity, students)", decisions.ok,
                        "; ".join(decisions.violations) or
                        f"{decisions.decided}/{decisions.signups} decided, "
                        f"{decisions.decisions} decisions, {decisions.duplicates} repeats"))
    in_scope_events = [e for e in events if e.course_id in set(scope)]
    term = term_audit.audit_term(in_scope_events)
    checks.append(Check("term: capacity and waiting list at every prefix, FIFO promotions "
                        "in the transaction of the freed seat, one place per student",
                        term.ok, "; ".join(term.violations) or
                        f"{term.waitlisted} waitlisted, {term.withdrawals} withdrawals, "
                        f"{term.promotions} promotions"))
    checks.append(Check("every record of the event log decodes", not log.undecodable,
                        "; ".join(log.undecodable[:5])))
    expected = audit.expected_views(events, scope)
    with psycopg.connect(config.database_url, autocommit=True) as conn:
        live = audit.read_views(conn, scope)
    replayed = audit.replay_views(config.kafka_bootstrap, config.database_url, scope)
    problems = (audit.compare_views(expected, live, "live vs log")
                + audit.compare_views(expected, replayed, "replay vs log"))
    checks.append(Check("views equal the log and a full replay", not problems,
                        "; ".join(problems) or f"{len(expected.decisions)} decisions, "
                        f"{len(expected.courses)} courses, global row equal"))
    # One e-mail per decision about a student: the first decisions, and the promotions
    # and withdrawals after them (every withdrawal of the load names its own sign-up).
    notices = {d.event_id: d.signup_id for d in expected.decisions.values()} | {
        e.event_id: e.signup_id for e in in_scope_events
        if isinstance(e, StudentPromoted | StudentWithdrew | WithdrawalRejected)}
    mail_audit = audit.audit_mails(notices, run.mails.refresh(), run.notifier_kills)
    checks.append(Check(f"one e-mail per decision (at most {run.notifier_kills} extra)",
                        mail_audit.ok, "; ".join(mail_audit.violations) or
                        f"{mail_audit.mailed} decisions mailed, {mail_audit.extra} extra"))
    abandoned = [r.key for r in run.load.requests if r.signup_id is None]
    unexpected = [f"{r.key}: {u}" for r in run.load.requests for u in r.unexpected]
    checks.append(Check("every request got its 202 (retried with its Idempotency-Key)",
                        not abandoned and not unexpected,
                        f"{len(abandoned)} gave up; unexpected: {unexpected[:5]}"))
    in_scope = set(scope)
    commands = audit.read_log(config.kafka_bootstrap, topics.COMMANDS,
                              keys=[c.encode() for c in scope])
    evidence = Evidence(log, [r for r in log.records
                              if isinstance(r.message, SignupDecision)
                              and r.message.course_id in in_scope],
                        Counter(r.message.signup_id for r in commands.records
                                if isinstance(r.message, SignUp)), accepted)
    return checks, evidence, decisions.duplicates


def timings(run: Run, ev: Evidence) -> tuple[float | None, float | None]:
    """Fill in the post-hoc recoveries (decide, decide-all, accept); return (worst
    recovery, stall)."""
    decided = sorted(r.timestamp_ms / 1000 for r in ev.decisions)
    answered = sorted(a.finished for a in run.load.attempts() if a.status == 202)
    for fault in run.faults:
        for probe, times in (("decide", decided), ("accept", answered)):
            if probe in fault.probes and fault.ended is not None:
                i = bisect_left(times, fault.ended)
                fault.recovered[probe] = times[i] - fault.ended if i < len(times) else None
        if "decide-all" in fault.probes and fault.ended is not None:
            fault.recovered["decide-all"] = resumed_everywhere(ev, fault.ended)
    recoveries = [f.recovered_s for f in run.faults]
    worst = None if any(r is None for r in recoveries) else max(
        (r for r in recoveries if r is not None), default=None)
    return worst, longest_stall(run, ev)


def _decision_times(ev: Evidence) -> dict[int, list[float]]:
    by_partition: dict[int, list[float]] = {}
    for r in ev.decisions:
        by_partition.setdefault(r.partition, []).append(r.timestamp_ms / 1000)
    return {p: sorted(times) for p, times in by_partition.items()}


def longest_stall(run: Run, ev: Evidence) -> float | None:
    """The longest gap between two decisions in one partition while the load ran."""
    gaps = [b - a for times in _decision_times(ev).values()
            for a, b in itertools.pairwise(
                t for t in times if run.load.started_at <= t <= run.load.stopped_at)]
    return max(gaps, default=None)


def resumed_everywhere(ev: Evidence, since: float) -> float | None:
    """Seconds from `since` until every partition deciding after it had decided again:
    a fault of one broker stops only the partitions it led, so the first decision
    anywhere would say little."""
    firsts = [next(t for t in times if t >= since) - since
              for times in _decision_times(ev).values() if times and times[-1] >= since]
    return max(firsts, default=None)


async def run_scenario(scenario: Scenario, stack: Stack, profile: Profile,
                       client: aiohttp.ClientSession, query: aiohttp.ClientSession,
                       mails: audit.MailIndex, evidence_dir: Path) -> Result:
    print(f"\n== {scenario.name}: {scenario.title}", flush=True)
    run = Run(scenario.name, stack, profile, client, query, mails)
    result = Result(scenario.name, scenario.title, ok=False)
    try:
        await baseline(run)
        await create_courses(client, query, stack.config.admin_token(), run.courses)
        run.say(f"courses {[c.course_id for c in run.courses]} created; load "
                f"{profile.rate:g} sign-ups/s, at most {profile.concurrency} in flight")
        run.load.start()
        try:
            await scenario.inject(run)
        finally:
            await run.load.stop()
        run.say(f"load stopped: {len(run.load.requests)} requests, "
                f"{len(run.load.accepted())} sign-ups got a 202")
        log, caught_up_at = await settle(run)
        for watcher in run.watchers:
            await watcher  # each bounded by profile.settle
        run.say(("caught up" if caught_up_at else "NOT caught up within the bound")
                + f"; read {len(log.records)} records of {topics.EVENTS} in "
                f"{log.seconds:.1f}s; auditing")
        checks, evidence, result.duplicates = await asyncio.to_thread(examine, run, log)
        checks += run.checks + [check(evidence) for check in run.post_checks]
        result.repeated_commands, result.reprocessed = audit.repeats(
            (d.message.signup_id for d in evidence.decisions
             if isinstance(d.message, SignupDecision)),
            evidence.commands.elements())
        run.notes.append(f"{result.duplicates} repeated decision records: "
                         f"{result.repeated_commands} answer a SignUp sent again with its key, "
                         f"{result.reprocessed} come from a command decided again")
        result.recover_s, result.stall_s = timings(run, evidence)
        unrecovered = [f.name for f in run.faults if f.recovered_s is None]
        checks.append(Check("output resumed after every fault", not unrecovered,
                            f"no recovery seen after {unrecovered}" if unrecovered else ""))
        checks.append(Check(f"decided, projected and e-mailed within {profile.settle:.0f}s "
                            "after the load", caught_up_at is not None))
        last_end = max((f.ended for f in run.faults if f.ended is not None), default=None)
        if caught_up_at is not None and last_end is not None:
            result.caught_up_s = caught_up_at - last_end
        result.ok = all(c.ok for c in checks)
        result.checks = [asdict(c) for c in checks]
        if not result.ok:
            kept = dump_evidence(evidence_dir, run, log)
            run.notes.append(f"the scenario's records of {topics.EVENTS} are in {kept}")
    except Exception as exc:  # noqa: BLE001 - a broken scenario is reported, the next one runs
        result.error = f"{type(exc).__name__}: {exc}"
        run.say(f"scenario failed to run: {result.error}")
    finally:
        for watcher in run.watchers:
            watcher.cancel()
    result.signups = len(run.load.accepted())
    result.requests = len(run.load.requests)
    result.attempts = len(run.load.attempts())
    result.non_202 = sum(1 for a in run.load.attempts() if a.status != 202)
    result.faults = [{**asdict(f), "recovered_s": f.recovered_s} for f in run.faults]
    result.notes = run.notes + [f"{f.name}: {n}" for f in run.faults for n in f.notes]
    result.notes.append(f"{run.load.resent} requests re-sent with the same key after a 202")
    result.duration_s = time.monotonic() - run.began
    report(result)
    return result


def dump_evidence(evidence_dir: Path, run: Run, log: audit.LogSnapshot) -> Path:
    """Every record of the scenario's courses, in log order, one JSON object per line."""
    scope = {c.course_id for c in run.courses}
    evidence_dir.mkdir(parents=True, exist_ok=True)
    path = evidence_dir / f"evidence-{run.name}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
    with path.open("w") as out:
        for r in sorted(log.records, key=lambda r: (r.partition, r.offset)):
            if getattr(r.message, "course_id", None) in scope:
                out.write(json.dumps({
                    "partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp_ms,
                    "processor_id": r.header("processor_id"), **asdict(r.message),
                }, default=str) + "\n")
    return path


async def baseline(run: Run) -> None:
    """Every component running, one processor owning every partition."""
    stack = run.stack
    dead = [n for n in (*kafka.names(stack.config), "postgres", "smtp",
                        *(s.name for s in services(stack.config)))
            if not stack.alive(n)]
    if dead:
        run.notes.append(f"found not running before the scenario: {dead}")
    if stack.alive("processor-2"):
        await stack.stop("processor-2")
    await stack.up(processors=1)
    await stack.wait_processors(["processor"], 120)
    if stack.config.kafka_brokers > 1:
        # A broker restarted by the scenario before catches up, and leadership goes back
        # to the preferred replicas: each scenario starts from a healthy cluster.
        took = await chaos_cluster.healthy(stack.config.kafka_bootstrap, 180)
        run.say(f"every replica in sync and preferred leaders elected after {took:.1f}s")


def report(result: Result) -> None:
    for check in result.checks:
        mark = "ok  " if check["ok"] else "FAIL"
        print(f"  {mark} {check['name']}" + (f": {check['detail']}" if check["detail"] else ""))
    for note in result.notes:
        print(f"  note: {note}")
    print(f"  => {'PASS' if result.ok else 'FAIL'} in {result.duration_s:.0f}s", flush=True)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary(results: list[Result]) -> str:
    rows: list[list[object]] = [
        [r.scenario, r.signups, r.non_202, r.duplicates, r.reprocessed, seconds(r.recover_s),
         seconds(r.stall_s), seconds(r.caught_up_s), "PASS" if r.ok else "FAIL"]
        for r in results]
    return table(rows, ["scenario", "sign-ups (202)", "non-202 answers", "dups seen",
                        "of which reprocessed", "recover s", "stall s", "caught up s",
                        "verdict"])


# ------------------------------------------------------------------ entry point


async def suite(stack: Stack, profile: Profile, names: list[str],
                evidence_dir: Path) -> list[Result]:
    if stack.owned:
        print(f"starting a stack of its own under {stack.config.run_dir}", flush=True)
    took = await stack.up()
    print(f"stack up in {took:.1f}s", flush=True)
    mails = audit.MailIndex(stack.config.mail_dir)
    connections = profile.concurrency + profile.burst + 8
    client = aiohttp.ClientSession(stack.config.command_url,
                                   timeout=aiohttp.ClientTimeout(total=30),
                                   connector=aiohttp.TCPConnector(limit=connections))
    # The admin token opens every route of the query API (statistics and erasures).
    query = aiohttp.ClientSession(stack.config.query_url, timeout=aiohttp.ClientTimeout(total=30),
                                  headers={"Authorization":
                                           f"Bearer {stack.config.admin_token()}"})
    results = []
    async with client, query:
        for name in names:
            results.append(await run_scenario(SCENARIOS[name], stack, profile, client,
                                              query, mails, evidence_dir))
    return results


def write_results(path: Path, profile: Profile, results: list[Result], began: float,
                  stacks: list[Stack]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "profile": asdict(profile),
        "started_at": began,
        "duration_s": time.time() - began,
        "stacks": [{"run_dir": str(s.config.run_dir), "owned": s.owned,
                    "partitions": s.config.partitions, "brokers": s.config.kafka_brokers}
                   for s in stacks],
        "ok": bool(results) and all(r.ok for r in results),
        "table": summary(results),
        "scenarios": [asdict(r) for r in results],
    }, indent=2, default=str) + "\n")


def fits(scenario: Scenario, brokers: int) -> bool:
    """Single-broker scenarios need exactly one broker; cluster ones at least theirs."""
    return brokers == 1 if scenario.brokers == 1 else brokers >= scenario.brokers


def run_on(stack: Stack, profile: Profile, names: list[str], results_dir: Path,
           keep: bool) -> list[Result]:
    """The scenarios on one stack; a stack of the suite's own is stopped (and removed
    unless kept) afterwards, its logs copied beside the results if anything failed."""
    results: list[Result] = []
    try:
        results = asyncio.run(suite(stack, profile, names, results_dir))
    finally:
        failed = not results or not all(r.ok for r in results)
        if failed and stack.owned:
            kept = results_dir / f"logs-{time.strftime('%Y%m%dT%H%M%S')}"
            shutil.copytree(stack.logs_dir(), kept, dirs_exist_ok=True)
            print(f"\nlogs of the failed run copied to {kept}")
        if stack.owned:
            stack.down()
            if not keep:
                shutil.rmtree(stack.config.run_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proof.chaos",
                                     description="load with injected faults, audited")
    parser.add_argument("--short", action="store_true", help="the reduced run for CI")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="run only this scenario (repeatable)")
    parser.add_argument("--use-running", action="store_true",
                        help="use the stack the environment describes instead of starting one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stack's files")
    parser.add_argument("--results", type=Path, help="default: $RUN_DIR/chaos/results.json")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    args = parser.parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<20} {s.title}" + ("" if s.short else "  (not in --short)"))
        return 0
    profile = SHORT if args.short else FULL
    out_dir = StackConfig.from_env(os.environ).run_dir / "chaos"
    results_path = args.results or out_dir / "results.json"
    names = args.scenario or [n for n, s in SCENARIOS.items() if s.short or not args.short]
    began = time.time()
    stacks: list[Stack] = []
    results: list[Result] = []
    try:
        if args.use_running:
            config = StackConfig.from_env(os.environ)
            stacks.append(Stack(config, config.stack_env(), owned=False))
            skipped = [n for n in names if not fits(SCENARIOS[n], config.kafka_brokers)]
            if skipped:
                print(f"not run on this {config.kafka_brokers}-broker stack: {skipped}")
            names = [n for n in names if n not in skipped]
            with operator_login(config):
                results = run_on(stacks[0], profile, names, results_path.parent, args.keep)
        else:
            # One stack of its own per cluster shape: single broker, then three brokers.
            for brokers in sorted({SCENARIOS[n].brokers for n in names}):
                group = [n for n in names if SCENARIOS[n].brokers == brokers]
                config = temporary_config(
                    Path(tempfile.mkdtemp(prefix="course-signup-chaos-")), brokers)
                stacks.append(Stack(config, config.stack_env(), owned=True))
                with operator_login(config):
                    results += run_on(stacks[-1], profile, group, results_path.parent,
                                      args.keep)
    finally:
        write_results(results_path, profile, results, began, stacks)
    print(f"\nChaos ({profile.name}) in {time.time() - began:.0f}s; results in {results_path}\n")
    print(summary(results))
    return 0 if results and len(results) == len(names) and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
